//! MCP routes on the data plane (Streamable HTTP): the POST body is read (bounded)
//! and each JSON-RPC message judged by [`crate::mcp`] before anything is forwarded;
//! refused requests are answered here with JSON-RPC errors, the rest go upstream,
//! and `tools/list` answers come back filtered — in a JSON body, or in an event
//! stream rewritten one event at a time while every other event streams through.
//! GET (the server's event stream) and DELETE (ending a session) are forwarded as
//! they are; a key with MCP paused gets 403 `mcp_disabled` on GET.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use serde_json::Value;

use super::{Live, Shared, forward, respond};
use crate::auth::route::Route;
use crate::auth::{Denial, Rejection};
use crate::keys::CachedKey;
use crate::mcp::{self, Catalog, Judge, Verdict, sse};
use crate::quota::Usage;

/// What the access log says about the messages.
#[derive(Debug, Default)]
pub(super) struct Summary {
    /// The method, or `batch`.
    pub method: Option<String>,
    /// The tool(s) called, comma-separated.
    pub tool: Option<String>,
}

/// What to do with an MCP request.
pub(super) enum Step {
    /// Forward `body` (the client's, or rewritten), then fix the answer.
    Forward(Bytes, Answer),
    /// Forward the request as it is (GET, DELETE).
    Pass(Incoming),
    /// Forward the request as it is and filter the event stream it opens (GET).
    Stream(Incoming, Answer),
    /// Answer now with the outcome code for logs and metrics; nothing reaches the
    /// upstream.
    Respond(Response<Full<Bytes>>, &'static str),
}

/// How the upstream's answer must be changed.
pub(super) struct Answer {
    /// Ids of the forwarded `tools/list` requests, whose answers are filtered.
    list_ids: Vec<Value>,
    /// Filter every `tools/list`-shaped answer, whatever its id (the GET stream of
    /// a key whose tools are restricted: a resumed stream replays old answers).
    any_list: bool,
    /// keygate's own answers to refused entries of a batch, added to the upstream's.
    own: Vec<Value>,
    /// Whether the request was a batch.
    batch: bool,
    /// The key quota standing after the messages' charges, if any were charged.
    pub usage: Option<Usage>,
    key: Arc<CachedKey>,
    route: String,
    live: Arc<Live>,
    catalog: Arc<Catalog>,
}

impl Answer {
    /// An answer of `key` on `route` that changes nothing yet.
    fn new(shared: &Shared, live: &Arc<Live>, route: &Route, key: &Arc<CachedKey>) -> Self {
        Self {
            list_ids: Vec::new(),
            any_list: false,
            own: Vec::new(),
            batch: false,
            usage: None,
            key: Arc::clone(key),
            route: route.name.clone(),
            live: Arc::clone(live),
            catalog: Arc::clone(&shared.mcp),
        }
    }

    fn judge(&self) -> Judge<'_> {
        Judge {
            settings: &self.live.proxy.mcp,
            policy: &self.key.restrictions.mcp,
            catalog: &self.catalog,
            route: &self.route,
            cost: 0,
        }
    }

    fn untouched(&self) -> bool {
        self.list_ids.is_empty() && self.own.is_empty() && !self.any_list
    }

    /// Whether answers still need looking at.
    fn filtering(&self) -> bool {
        !self.list_ids.is_empty() || self.any_list
    }

    /// Filters `value` if it answers one of the `tools/list` requests; says whether it did.
    fn filter(&self, value: &mut Value) -> bool {
        let is_list_answer = value.get("method").is_none()
            && (self.any_list && value.get("result").is_some_and(|r| r.get("tools").is_some())
                || value.get("id").is_some_and(|id| self.list_ids.contains(id)));
        if is_list_answer {
            mcp::filter_tools(value, &self.judge());
        }
        is_list_answer
    }
}

/// Reads and judges an MCP request of `key` on `route`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn prepare(
    shared: &Shared,
    live: &Arc<Live>,
    route: &Route,
    key: &Arc<CachedKey>,
    method: &Method,
    headers: &HeaderMap,
    body: Incoming,
    request_id: &HeaderValue,
    summary: &mut Summary,
) -> Step {
    let settings = &live.proxy.mcp;
    let rid = request_id.to_str().unwrap_or("-");
    let policy = &key.restrictions.mcp;
    if *method == Method::GET && policy.disabled {
        summary.method = Some("GET".into());
        shared
            .metrics
            .mcp_message(&route.name, "stream", "", "mcp_disabled");
        let resp = respond::error(
            StatusCode::FORBIDDEN,
            "mcp_disabled",
            "MCP access is paused for this API key",
            request_id,
        );
        return Step::Respond(resp, "mcp_disabled");
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if *method == Method::GET || *method == Method::DELETE {
        // Only a POST carries messages: a body anywhere else would go unjudged.
        if declared.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING) {
            let resp = respond::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "on an MCP route only POST carries a body",
                request_id,
            );
            return Step::Respond(resp, "invalid_request");
        }
        if *method == Method::GET && (!policy.tools.is_empty() || policy.read_only) {
            let answer = Answer {
                any_list: true,
                ..Answer::new(shared, live, route, key)
            };
            return Step::Stream(body, answer);
        }
        return Step::Pass(body);
    }
    if *method != Method::POST {
        let mut resp = respond::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "an MCP endpoint takes POST, GET and DELETE",
            request_id,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        return Step::Respond(resp, "method_not_allowed");
    }
    let limit = settings.max_body;
    let too_large = || {
        let resp = respond::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("an MCP request body may hold at most {limit} bytes ([mcp] max_body_bytes)"),
            request_id,
        );
        Step::Respond(resp, "body_too_large")
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(),
        Err(_) => {
            let resp = respond::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
                request_id,
            );
            return Step::Respond(resp, "invalid_request");
        }
    };
    let parsed = match mcp::parse(&bytes) {
        Ok(parsed) => parsed,
        Err(m) => {
            summary.method = Some("invalid".into());
            shared
                .metrics
                .mcp_message(&route.name, "other", "", "invalid_request");
            return Step::Respond(
                json(StatusCode::BAD_REQUEST, &mcp::malformed(&m, rid)),
                "invalid_request",
            );
        }
    };
    let judge = Judge {
        settings,
        policy,
        catalog: &shared.mcp,
        route: &route.name,
        cost: route.cost,
    };
    let mut forwarded = Vec::with_capacity(parsed.messages.len());
    let mut own = Vec::new();
    let mut list_ids = Vec::new();
    let mut usage = None;
    let mut tools = Vec::new();
    for msg in parsed.messages {
        let method_label = mcp::method_label(msg.method());
        let tool = msg.tool().filter(|_| msg.method() == Some("tools/call"));
        let tool_label = match tool {
            Some(t) if settings.tool_labels.iter().any(|l| l == t) => t,
            Some(_) => "other",
            None => "",
        };
        if let Some(t) = tool {
            tools.push(t.to_owned());
        }
        let mut verdict = judge.judge(&msg);
        if let Verdict::Forward { cost } = verdict
            && cost > 0
        {
            match shared.decider.charge(key, cost).await {
                Ok(u) => usage = Some(u),
                Err(Denial::Rejected(r @ Rejection::QuotaExceeded { .. })) => {
                    verdict = Verdict::Refuse(mcp::Refusal {
                        code: "quota_exceeded",
                        message: r.message(),
                        tool: tool.map(str::to_owned),
                    });
                }
                Err(denial) => {
                    let resp = respond::denial(&denial, request_id, &live.auth.status);
                    return Step::Respond(resp, respond::code(&denial));
                }
            }
        }
        match verdict {
            Verdict::Forward { .. } => {
                shared
                    .metrics
                    .mcp_message(&route.name, method_label, tool_label, "forwarded");
                if msg.method() == Some("tools/list")
                    && let Some(id) = msg.id()
                {
                    list_ids.push(id.clone());
                }
                forwarded.push(msg);
            }
            Verdict::Refuse(refusal) => {
                shared
                    .metrics
                    .mcp_message(&route.name, method_label, tool_label, refusal.code);
                if let Some(id) = msg.id() {
                    own.push(mcp::refusal(id, &refusal, rid));
                }
            }
        }
    }
    summary.method = Some(if parsed.batch {
        "batch".to_owned()
    } else {
        forwarded
            .first()
            .and_then(|m| m.method())
            .or_else(|| own.first().map(|_| "tools/call"))
            .unwrap_or("-")
            .to_owned()
    });
    if !tools.is_empty() {
        let mut joined = tools.join(",");
        let mut end = joined.len().min(200);
        while !joined.is_char_boundary(end) {
            end -= 1;
        }
        joined.truncate(end);
        summary.tool = Some(joined);
    }
    if forwarded.is_empty() {
        // Everything refused (or refused notifications, which get no answer).
        let resp = match (parsed.batch, own.len()) {
            (_, 0) => Response::builder()
                .status(StatusCode::ACCEPTED)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default(),
            (false, _) => json(StatusCode::OK, &own[0]),
            (true, _) => json(StatusCode::OK, &Value::Array(own)),
        };
        return Step::Respond(resp, "mcp_refused");
    }
    // What was judged is what is sent: the messages as keygate parsed them, so an
    // upstream parser that reads duplicate keys differently cannot see another call.
    let mut values: Vec<Value> = forwarded.into_iter().map(|m| Value::Object(m.value)).collect();
    let body = if parsed.batch {
        Bytes::from(Value::Array(values).to_string())
    } else {
        Bytes::from(values.pop().unwrap_or_default().to_string())
    };
    Step::Forward(
        body,
        Answer {
            list_ids,
            own,
            batch: parsed.batch,
            usage,
            ..Answer::new(shared, live, route, key)
        },
    )
}

/// Forward-auth on an MCP route: the asking proxy does not send the body, so the
/// messages cannot be judged. Keys with MCP paused are refused (403 `mcp_disabled`),
/// keys with a tool allowlist or read-only mode too (403 `mcp_needs_proxy`: that
/// policy needs keygate as the reverse proxy); any other key is let through,
/// charged the route's cost per request. `Some` is the refusal and its code.
pub(super) async fn forward_auth(
    shared: &Shared,
    live: &Live,
    route: &Route,
    key: &CachedKey,
    request_id: &HeaderValue,
) -> Option<(Response<Full<Bytes>>, &'static str)> {
    let policy = &key.restrictions.mcp;
    let refuse = |code: &'static str, message: &str| {
        Some((
            respond::error(StatusCode::FORBIDDEN, code, message, request_id),
            code,
        ))
    };
    if policy.disabled {
        return refuse("mcp_disabled", "MCP access is paused for this API key");
    }
    if !policy.tools.is_empty() || policy.read_only {
        return refuse(
            "mcp_needs_proxy",
            "this API key's MCP tool policy is enforced only with keygate as the reverse proxy; forward-auth does not see the tool called",
        );
    }
    match shared.decider.charge(key, route.cost).await {
        Ok(_) => None,
        Err(denial) => Some((
            respond::denial(&denial, request_id, &live.auth.status),
            respond::code(&denial),
        )),
    }
}

fn json(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_default()
}

/// Largest JSON answer read whole to filter it (an event stream is never read whole).
const MAX_JSON_ANSWER: usize = 16 << 20;

/// The upstream's answer, with `tools/list` results filtered and keygate's own
/// answers added.
pub(super) async fn answer(resp: Response<forward::PooledBody>, answer: Answer) -> Response<super::Body> {
    if answer.untouched() || !resp.status().is_success() {
        return resp.map(http_body_util::Either::Left);
    }
    let bad_gateway = |message: &str| {
        let failed = respond::error(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            message,
            &HeaderValue::from_static("-"),
        );
        failed.map(|b| http_body_util::Either::Right(http_body_util::Either::Left(b)))
    };
    let encoded = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        // keygate asked for an unencoded answer; one it cannot read is not passed on
        // unfiltered.
        return bad_gateway("the MCP server's answer is encoded and cannot be filtered for this key");
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") {
        let (mut parts, body) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let queue = answer.own.iter().map(sse::message_event).collect();
        return Response::from_parts(
            parts,
            http_body_util::Either::Right(http_body_util::Either::Right(Filtered {
                inner: body,
                splitter: sse::Splitter::default(),
                queue,
                answer,
                done: false,
            })),
        );
    }
    if content_type.starts_with("application/json") {
        let (mut parts, body) = resp.into_parts();
        let Ok(collected) = Limited::new(body, MAX_JSON_ANSWER).collect().await else {
            return bad_gateway("the MCP server's answer could not be read");
        };
        let bytes = collected.to_bytes();
        let out = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Array(mut items)) => {
                for v in &mut items {
                    answer.filter(v);
                }
                items.extend(answer.own.iter().cloned());
                Bytes::from(Value::Array(items).to_string())
            }
            Ok(mut single) => {
                answer.filter(&mut single);
                if answer.own.is_empty() {
                    Bytes::from(single.to_string())
                } else {
                    let mut items = vec![single];
                    items.extend(answer.own.iter().cloned());
                    Bytes::from(Value::Array(items).to_string())
                }
            }
            Err(_) if answer.filtering() => {
                return bad_gateway(
                    "the MCP server's answer is not JSON and cannot be filtered for this key",
                );
            }
            Err(_) => bytes,
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        return Response::from_parts(
            parts,
            http_body_util::Either::Right(http_body_util::Either::Left(Full::new(out))),
        );
    }
    if !answer.own.is_empty() {
        // The forwarded entries needed no answer (202): keygate's answers are the body.
        let mut resp = json(StatusCode::OK, &Value::Array(answer.own.clone()));
        if !answer.batch {
            *resp.body_mut() = Full::new(Bytes::from(answer.own[0].to_string()));
        }
        return resp.map(|b| http_body_util::Either::Right(http_body_util::Either::Left(b)));
    }
    resp.map(http_body_util::Either::Left)
}

/// An event stream with keygate's answers first and `tools/list` answers filtered.
pub struct Filtered {
    inner: forward::PooledBody,
    splitter: sse::Splitter,
    queue: VecDeque<Bytes>,
    answer: Answer,
    done: bool,
}

impl Filtered {
    fn event(&mut self, event: Bytes) -> Bytes {
        if !self.answer.filtering() {
            return event;
        }
        let Some(mut value) = sse::data(&event) else {
            return event;
        };
        let mut answered = Vec::new();
        let answers: Vec<&mut Value> = match &mut value {
            Value::Array(items) => items.iter_mut().collect(),
            one => vec![one],
        };
        for v in answers {
            if self.answer.filter(v)
                && let Some(id) = v.get("id")
            {
                answered.push(id.clone());
            }
        }
        if answered.is_empty() {
            return event;
        }
        self.answer.list_ids.retain(|i| !answered.contains(i));
        sse::rewrite(&event, &value)
    }
}

impl hyper::body::Body for Filtered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if let Some(out) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    let rest = self.splitter.rest();
                    if !rest.is_empty() {
                        let out = self.event(rest);
                        self.queue.push_back(out);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !self.answer.filtering() && self.splitter.is_empty() => {
                        // Nothing left to rewrite: stream through.
                        self.queue.push_back(data);
                    }
                    Ok(data) => {
                        self.splitter.push(&data);
                        while let Some(event) = self.splitter.next_event() {
                            let out = self.event(event);
                            self.queue.push_back(out);
                        }
                        if self.splitter.is_over() {
                            // An event too long to hold while it must be looked at:
                            // cut the stream rather than pass it on unfiltered.
                            tracing::warn!(
                                route = %self.answer.route,
                                "an MCP event stream sent an event over 16 MiB; closing it"
                            );
                            self.splitter = sse::Splitter::default();
                            self.done = true;
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.queue.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
