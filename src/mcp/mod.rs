//! MCP-aware authorization for `mcp = true` routes (Streamable HTTP): what each
//! JSON-RPC message a key sends may do, what it costs, and which tools a key sees.
//!
//! Pure: the proxy reads the body, asks [`Judge::judge`] about each [`Message`], answers
//! refused requests itself with [`refusal`] and filters `tools/list` results with
//! [`filter_tools`]; [`sse`] splits an event stream so a `tools/list` answer inside
//! it can be rewritten while the rest streams through.
//!
//! Which tools are read-only: those `[mcp] read_only_tools` matches, and, unless
//! `trust_read_only_hint = false`, those the upstream announced with the
//! `readOnlyHint: true` annotation in a `tools/list` answer keygate has seen. The
//! config adds to the hints; it cannot mark a tool the upstream calls read-only as
//! writing (leave the hint untrusted and list the read-only tools instead). A tool
//! neither names is not read-only.

pub mod sse;

use dashmap::DashMap;
use serde_json::{Map, Value, json};

use crate::keys::McpPolicy;

/// The JSON-RPC error code of every refusal keygate answers on an MCP route;
/// `error.data.code` says which (`tool_not_allowed`, `mcp_disabled`,
/// `quota_exceeded`, `invalid_request`).
pub const REFUSED: i64 = -32001;

/// `[mcp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Largest request body read, in bytes (413 over it).
    pub max_body: usize,
    /// Tools (exact names and `*` globs) that are read-only.
    pub read_only_tools: Vec<String>,
    /// Believe the upstream's `readOnlyHint` annotations.
    pub trust_read_only_hint: bool,
    /// Methods (exact names and `*` globs) that cost nothing.
    pub free_methods: Vec<String>,
    /// Per-tool cost of `tools/call`, first match wins; others cost the route's cost.
    pub tool_costs: Vec<(String, u64)>,
    /// Tools named in metrics; any other tool is counted as `other`.
    pub tool_labels: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            read_only_tools: Vec::new(),
            trust_read_only_hint: true,
            free_methods: ["initialize", "ping", "tools/list", "notifications/*"]
                .map(str::to_owned)
                .to_vec(),
            tool_costs: Vec::new(),
            tool_labels: Vec::new(),
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(mut tail) = name.strip_prefix(head) else {
                return false;
            };
            // Each further `*`-separated piece must appear in order; the last one at the end.
            let pieces: Vec<&str> = rest.split('*').collect();
            let (last, middle) = pieces.split_last().unwrap_or((&"", &[]));
            for piece in middle {
                match tail.find(piece) {
                    Some(at) => tail = &tail[at + piece.len()..],
                    None => return false,
                }
            }
            tail.len() >= last.len() && tail.ends_with(last)
        }
    }
}

fn any_glob<'a>(patterns: impl IntoIterator<Item = &'a String>, name: &str) -> bool {
    patterns.into_iter().any(|p| glob(p, name))
}

/// Read-only hints learnt from the upstreams' `tools/list` answers, per route.
#[derive(Debug, Default)]
pub struct Catalog {
    hints: DashMap<(String, String), bool>,
}

/// Hints kept at most (a misbehaving upstream cannot grow the map without bound).
const MAX_HINTS: usize = 10_000;

impl Catalog {
    fn learn(&self, route: &str, tool: &str, read_only: bool) {
        if self.hints.len() < MAX_HINTS || self.hints.contains_key(&(route.to_owned(), tool.to_owned())) {
            self.hints.insert((route.to_owned(), tool.to_owned()), read_only);
        }
    }

    fn hint(&self, route: &str, tool: &str) -> bool {
        self.hints
            .get(&(route.to_owned(), tool.to_owned()))
            .is_some_and(|h| *h)
    }
}

/// What a key may do, with what it needs to judge tools.
pub struct Judge<'a> {
    /// `[mcp]`.
    pub settings: &'a Settings,
    /// The key's policy.
    pub policy: &'a McpPolicy,
    /// Learnt hints.
    pub catalog: &'a Catalog,
    /// The route's name (hints are per route).
    pub route: &'a str,
    /// The route's cost per charged message.
    pub cost: u64,
}

impl Judge<'_> {
    fn is_read_only(&self, tool: &str) -> bool {
        any_glob(&self.settings.read_only_tools, tool)
            || self.settings.trust_read_only_hint && self.catalog.hint(self.route, tool)
    }

    /// Whether the key may see and call `tool`; `Err` says why not.
    pub fn tool(&self, tool: &str) -> Result<(), String> {
        if !self.policy.tools.is_empty() && !any_glob(&self.policy.tools, tool) {
            return Err(format!("this API key may not use the tool `{tool}`"));
        }
        if self.policy.read_only && !self.is_read_only(tool) {
            return Err(format!(
                "this API key may only use read-only tools, and `{tool}` is not known to be read-only"
            ));
        }
        Ok(())
    }

    /// The verdict on one message.
    pub fn judge(&self, msg: &Message) -> Verdict {
        let method = match &msg.kind {
            // The client's answers to server requests: free, allowed even with MCP
            // paused.
            Kind::Response => return Verdict::Forward { cost: 0 },
            // Notifications proper: free and allowed even with MCP paused
            // (cancellations must get through).
            Kind::Notification { method } if method.starts_with("notifications/") => {
                return Verdict::Forward { cost: 0 };
            }
            // Anything else without an id (a `tools/call` a server might run anyway) is
            // judged like a request; a refusal is then silent, as there is no id to answer.
            Kind::Request { method, .. } | Kind::Notification { method } => method,
        };
        if self.policy.disabled && !matches!(method.as_str(), "initialize" | "ping") {
            return Verdict::Refuse(Refusal {
                code: "mcp_disabled",
                message: "MCP access is paused for this API key".into(),
                tool: None,
            });
        }
        let free = any_glob(&self.settings.free_methods, method);
        if method != "tools/call" {
            return Verdict::Forward {
                cost: if free { 0 } else { self.cost },
            };
        }
        let Some(tool) = msg.tool() else {
            return Verdict::Refuse(Refusal {
                code: "invalid_request",
                message: "tools/call needs `params.name`, the tool's name".into(),
                tool: None,
            });
        };
        if let Err(message) = self.tool(tool) {
            return Verdict::Refuse(Refusal {
                code: "tool_not_allowed",
                message,
                tool: Some(tool.to_owned()),
            });
        }
        let cost = if free {
            0
        } else {
            self.settings
                .tool_costs
                .iter()
                .find(|(p, _)| glob(p, tool))
                .map_or(self.cost, |(_, c)| *c)
        };
        Verdict::Forward { cost }
    }
}

/// What keygate does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it, charging `cost` units.
    Forward {
        /// Quota units.
        cost: u64,
    },
    /// Answer it with a JSON-RPC error; never forwarded.
    Refuse(Refusal),
}

/// A refused message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `error.data.code`.
    pub code: &'static str,
    /// `error.message`.
    pub message: String,
    /// The tool asked for, if any.
    pub tool: Option<String>,
}

/// One JSON-RPC message as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The message object.
    pub value: Map<String, Value>,
    /// What it is.
    pub kind: Kind,
}

/// The kinds of JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A call expecting an answer.
    Request {
        /// Its id (string or number).
        id: Value,
        /// Its method.
        method: String,
    },
    /// A call without an answer.
    Notification {
        /// Its method.
        method: String,
    },
    /// The client's answer to a server request.
    Response,
}

impl Message {
    /// The method, for requests and notifications.
    pub fn method(&self) -> Option<&str> {
        match &self.kind {
            Kind::Request { method, .. } | Kind::Notification { method } => Some(method),
            Kind::Response => None,
        }
    }

    /// The id, for requests.
    pub fn id(&self) -> Option<&Value> {
        match &self.kind {
            Kind::Request { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The tool of a `tools/call`.
    pub fn tool(&self) -> Option<&str> {
        self.value.get("params")?.get("name")?.as_str()
    }
}

/// A request body: one message or a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// The messages in order.
    pub messages: Vec<Message>,
    /// Whether they came as an array.
    pub batch: bool,
}

/// Why a body is not JSON-RPC: answered with this error (id `null`), HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// -32700 (parse error) or -32600 (invalid request).
    pub code: i64,
    /// What is wrong.
    pub message: String,
}

/// Parses a POST body.
///
/// # Errors
/// [`Malformed`]: not JSON (-32700), or not a JSON-RPC 2.0 message or a non-empty
/// batch of them (-32600).
pub fn parse(body: &[u8]) -> Result<Body, Malformed> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Malformed {
        code: -32700,
        message: format!("Parse error: the body is not JSON ({e})"),
    })?;
    let (values, batch) = match value {
        Value::Array(items) if items.is_empty() => return Err(invalid("an empty batch")),
        Value::Array(items) => (items, true),
        other => (vec![other], false),
    };
    let messages = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            message(v).map_err(|why| invalid(&if batch { format!("entry {i}: {why}") } else { why }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<&Value> = messages.iter().filter_map(Message::id).collect();
    if ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id)) {
        return Err(invalid("two requests in a batch with the same id"));
    }
    Ok(Body { messages, batch })
}

fn invalid(why: &str) -> Malformed {
    Malformed {
        code: -32600,
        message: format!("Invalid Request: {why}"),
    }
}

fn message(v: Value) -> Result<Message, String> {
    let Value::Object(value) = v else {
        return Err("a message must be a JSON object".into());
    };
    if value.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("`jsonrpc` must be \"2.0\"".into());
    }
    // Numbers only as integers within ±2^53, so the id a server echoes back (as
    // JavaScript would) compares equal to the one keygate saw.
    const EXACT: i64 = 1 << 53;
    let id = match value.get("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(id @ Value::Number(n)) if n.as_i64().is_some_and(|n| (-EXACT..=EXACT).contains(&n)) => {
            Some(id.clone())
        }
        Some(Value::Null) if value.contains_key("error") => Some(Value::Null),
        Some(_) => return Err("`id` must be a string or an integer (at most 2^53 in size)".into()),
    };
    let kind = match (value.get("method"), id) {
        (Some(Value::String(m)), Some(id)) if !m.is_empty() => Kind::Request {
            id,
            method: m.clone(),
        },
        (Some(Value::String(m)), None) if !m.is_empty() => Kind::Notification { method: m.clone() },
        (Some(_), _) => return Err("`method` must be a non-empty string".into()),
        (None, Some(_)) if value.contains_key("result") != value.contains_key("error") => Kind::Response,
        (None, _) => return Err("a message needs `method`, or `id` with `result` or `error`".into()),
    };
    if let Some(params) = value.get("params")
        && !params.is_object()
        && !params.is_array()
    {
        return Err("`params` must be an object or an array".into());
    }
    Ok(Message { value, kind })
}

/// The JSON-RPC error keygate answers a refused request with.
pub fn refusal(id: &Value, refusal: &Refusal, request_id: &str) -> Value {
    let mut data = json!({"code": refusal.code, "request_id": request_id});
    if let Some(tool) = &refusal.tool {
        data["tool"] = tool.as_str().into();
    }
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": REFUSED, "message": refusal.message, "data": data},
    })
}

/// The JSON-RPC error for a malformed body.
pub fn malformed(m: &Malformed, request_id: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": m.code, "message": m.message, "data": {"code": "invalid_request", "request_id": request_id}},
    })
}

/// Rewrites a `tools/list` answer in place: learns its read-only hints, then drops
/// the tools the key may not see. Anything else is left alone.
pub fn filter_tools(answer: &mut Value, judge: &Judge<'_>) {
    let Some(tools) = answer
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for tool in tools.iter() {
        if let Some(name) = tool.get("name").and_then(Value::as_str) {
            let hint = tool
                .get("annotations")
                .and_then(|a| a.get("readOnlyHint"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            judge.catalog.learn(judge.route, name, hint);
        }
    }
    tools.retain(|tool| {
        tool.get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| judge.tool(name).is_ok())
    });
}

/// The metric label of a method: the MCP methods by name, anything else `other`.
pub fn method_label(method: Option<&str>) -> &'static str {
    const KNOWN: [&str; 12] = [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "resources/subscribe",
    ];
    match method {
        None => "response",
        Some(m) if m.starts_with("notifications/") => "notification",
        Some(m) => KNOWN.into_iter().find(|k| *k == m).unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests;
