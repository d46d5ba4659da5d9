use super::*;

fn settings() -> Settings {
    Settings {
        read_only_tools: vec!["search_*".into()],
        tool_costs: vec![("report".into(), 5)],
        ..Settings::default()
    }
}

fn msg(v: Value) -> Message {
    let body = parse(v.to_string().as_bytes()).expect("a valid message");
    body.messages.into_iter().next().expect("one message")
}

fn call(tool: &str) -> Message {
    msg(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}}))
}

#[test]
fn globs_match_whole_names() {
    for (p, name, hit) in [
        ("search", "search", true),
        ("search", "search_docs", false),
        ("search_*", "search_docs", true),
        ("search_*", "research_docs", false),
        ("*_doc", "get_doc", true),
        ("*", "anything", true),
        ("a*b*c", "a-x-b-y-c", true),
        ("a*b*b", "ab", false),
        ("get_*_v2", "get_doc_v2", true),
        ("get_*_v2", "get_doc_v3", false),
    ] {
        assert_eq!(glob(p, name), hit, "{p} ~ {name}");
    }
}

#[test]
fn messages_are_requests_notifications_or_responses_and_anything_else_is_invalid() {
    let body = parse(br#"[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":3,"result":{}}]"#)
        .expect("a batch");
    assert!(body.batch);
    let kinds: Vec<_> = body
        .messages
        .iter()
        .map(|m| (m.method(), m.id().cloned()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Some("ping"), Some(json!("a"))),
            (Some("notifications/initialized"), None),
            (None, None)
        ]
    );
    assert_eq!(parse(b"{not json").map_err(|m| m.code), Err(-32700));
    for bad in [
        "[]",
        "42",
        r#"{"id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 7]"#,
        r#"{"jsonrpc":"2.0","id":1.0,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1e0,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
    ] {
        assert_eq!(parse(bad.as_bytes()).map_err(|m| m.code), Err(-32600), "{bad}");
    }
}

#[test]
fn tool_calls_follow_the_allowlist_and_read_only_mode_and_cost_per_tool() {
    let settings = settings();
    let catalog = Catalog::default();
    let judge = |policy: &McpPolicy, m: &Message| {
        Judge {
            settings: &settings,
            policy,
            catalog: &catalog,
            route: "mcp",
            cost: 1,
        }
        .judge(m)
    };
    let open = McpPolicy::default();
    let listed = McpPolicy {
        tools: vec!["search_*".into(), "get_document".into()],
        ..McpPolicy::default()
    };
    let read_only = McpPolicy {
        read_only: true,
        ..McpPolicy::default()
    };
    let paused = McpPolicy {
        disabled: true,
        ..McpPolicy::default()
    };
    let refused = |code| move |v: Verdict| matches!(v, Verdict::Refuse(r) if r.code == code);
    assert_eq!(judge(&open, &call("delete_all")), Verdict::Forward { cost: 1 });
    assert_eq!(judge(&open, &call("report")), Verdict::Forward { cost: 5 });
    assert_eq!(judge(&listed, &call("search_web")), Verdict::Forward { cost: 1 });
    assert!(refused("tool_not_allowed")(judge(&listed, &call("delete_all"))));
    assert_eq!(
        judge(&read_only, &call("search_web")),
        Verdict::Forward { cost: 1 }
    );
    assert!(refused("tool_not_allowed")(judge(
        &read_only,
        &call("get_document")
    )));
    // The upstream's hint makes a tool read-only, once seen in a tools/list answer.
    let mut answer = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": "get_document", "annotations": {"readOnlyHint": true}},
        {"name": "delete_all", "annotations": {"readOnlyHint": false}},
        {"name": "search_web"},
    ]}});
    let j = Judge {
        settings: &settings,
        policy: &read_only,
        catalog: &catalog,
        route: "mcp",
        cost: 1,
    };
    filter_tools(&mut answer, &j);
    let names: Vec<_> = answer["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["get_document", "search_web"]);
    assert_eq!(
        judge(&read_only, &call("get_document")),
        Verdict::Forward { cost: 1 }
    );
    // ... on that route only, and not when hints are not trusted.
    let other_route = Judge { route: "other", ..j };
    assert!(refused("tool_not_allowed")(
        other_route.judge(&call("get_document"))
    ));
    let untrusting = Settings {
        trust_read_only_hint: false,
        ..settings.clone()
    };
    let j = Judge {
        settings: &untrusting,
        ..j
    };
    assert!(refused("tool_not_allowed")(j.judge(&call("get_document"))));

    // Paused: only what a client needs to fail gracefully.
    let ping = msg(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}));
    let init = msg(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}));
    let list = msg(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    let note = msg(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}}));
    assert_eq!(judge(&paused, &ping), Verdict::Forward { cost: 0 });
    assert_eq!(judge(&paused, &init), Verdict::Forward { cost: 0 });
    assert_eq!(judge(&paused, &note), Verdict::Forward { cost: 0 });
    assert!(refused("mcp_disabled")(judge(&paused, &list)));
    assert!(refused("mcp_disabled")(judge(&paused, &call("search_web"))));
    // Free by default: initialize, ping, tools/list, notifications; others cost the route's.
    assert_eq!(judge(&open, &list), Verdict::Forward { cost: 0 });
    let read = msg(json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {}}));
    assert_eq!(judge(&open, &read), Verdict::Forward { cost: 1 });
    let nameless = msg(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}));
    assert!(refused("invalid_request")(judge(&open, &nameless)));
    // A call without an id is judged all the same.
    let sneaky = msg(json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete_all"}}));
    assert!(refused("tool_not_allowed")(judge(&listed, &sneaky)));
    assert!(refused("mcp_disabled")(judge(&paused, &sneaky)));
}

#[test]
fn a_refusal_answers_the_request_id_with_the_reason_in_data() {
    let r = Refusal {
        code: "tool_not_allowed",
        message: "no".into(),
        tool: Some("delete_all".into()),
    };
    assert_eq!(
        refusal(&json!(7), &r, "req-1"),
        json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32001, "message": "no",
            "data": {"code": "tool_not_allowed", "tool": "delete_all", "request_id": "req-1"}}})
    );
}
