//! The access log: one line per request on the `keygate::access` target, written
//! when the response head is known (body streaming time is not included). Fields
//! are bounded and carry no key material: the key id and org, never the key.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};

use crate::auth::AuthMethod;
use crate::auth::route::Route;
use crate::keys::CachedKey;
use crate::telemetry::{LogFormat, direct, logs};

/// The target access lines are logged on.
const TARGET: &str = "keygate::access";

/// What one request came to.
pub(super) struct Line<'a> {
    pub method: Method,
    /// The request URI; its path is logged, never its query (which may carry
    /// secrets): only a key parameter's name, as `query_key` says. Borrowed on the
    /// fast path (a copy of a URI read from a buffer is an allocation).
    pub uri: Cow<'a, Uri>,
    pub route: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub key: Option<&'a CachedKey>,
    pub request_id: &'a HeaderValue,
    pub decision: Duration,
    pub upstream: Option<Duration>,
    pub total: Duration,
    /// How a granted request was authenticated.
    pub auth: Option<AuthMethod>,
    /// The route's key query parameter when the request carried it: logged as
    /// `name=[redacted]`, its value never.
    pub query_key: Option<&'a str>,
    /// On MCP routes: the JSON-RPC method (`batch` for several messages).
    pub mcp_method: Option<String>,
    /// On MCP routes: the tool(s) called.
    pub mcp_tool: Option<String>,
}

/// The route's key query parameter, if `uri` carries it.
pub(super) fn query_key<'r>(route: &'r Route, uri: &Uri) -> Option<&'r str> {
    let name = route.key_query_param.as_deref()?;
    let query = uri.query()?;
    crate::auth::credential::query_values(query, name)
        .next()
        .map(|_| name)
}

struct Redacted<'a>(&'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=[redacted]", self.0)
    }
}

impl<'a> Line<'a> {
    /// A line for a request refused before any decision.
    pub(super) fn new(method: Method, uri: Cow<'a, Uri>, request_id: &'a HeaderValue) -> Self {
        Self {
            method,
            uri,
            route: "none",
            status: 0,
            code: "",
            key: None,
            request_id,
            decision: Duration::ZERO,
            upstream: None,
            total: Duration::ZERO,
            auth: None,
            query_key: None,
            mcp_method: None,
            mcp_tool: None,
        }
    }

    /// Writes the line at INFO (filter with `RUST_LOG=keygate::access=off`, or
    /// `[proxy] access_log = false`): straight into the log batch when keygate's
    /// own subscriber is installed without colours, through `tracing` otherwise.
    /// The bytes are the same either way.
    #[allow(
        clippy::disallowed_methods,
        reason = "a log line carries the system's time, as the subscriber's own lines do"
    )]
    pub(super) fn write(&self) {
        match logs::direct() {
            Some(format) => {
                if enabled() {
                    logs::write_direct(|out| self.format(out, format, SystemTime::now()));
                }
            }
            None => self.trace(),
        }
    }

    /// The line as a `tracing` event.
    fn trace(&self) {
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path = self.uri.path(),
            query = self.query_key.map(|name| tracing::field::display(Redacted(name))),
            route = self.route,
            status = self.status,
            code = self.code,
            key_id = self.key.map(|k| tracing::field::display(k.id)),
            org = self.key.and_then(|k| k.org_id.as_deref()),
            auth = self.auth.map(AuthMethod::as_str),
            mcp_method = self.mcp_method.as_deref(),
            mcp_tool = self.mcp_tool.as_deref(),
            request_id = self.request_id(),
            decision_us = micros(self.decision),
            upstream_us = self.upstream.map(micros),
            duration_us = micros(self.total),
            "request"
        );
    }

    /// The line [`Line::trace`] has the subscriber write, at `at`: the same fields,
    /// in the same order, absent ones left out.
    fn format(&self, out: &mut Vec<u8>, format: LogFormat, at: SystemTime) {
        let mut line = direct::Line::info(out, format, at, TARGET, "request");
        line.display("method", &self.method).str("path", self.uri.path());
        if let Some(name) = self.query_key {
            line.display("query", Redacted(name));
        }
        line.str("route", self.route)
            .number("status", u64::from(self.status))
            .str("code", self.code);
        if let Some(key) = self.key {
            line.display("key_id", key.id);
            if let Some(org) = key.org_id.as_deref() {
                line.str("org", org);
            }
        }
        if let Some(auth) = self.auth {
            line.str("auth", auth.as_str());
        }
        if let Some(method) = self.mcp_method.as_deref() {
            line.str("mcp_method", method);
        }
        if let Some(tool) = self.mcp_tool.as_deref() {
            line.str("mcp_tool", tool);
        }
        line.str("request_id", self.request_id())
            .number("decision_us", micros(self.decision));
        if let Some(upstream) = self.upstream {
            line.number("upstream_us", micros(upstream));
        }
        line.number("duration_us", micros(self.total)).end();
    }

    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// Whether the subscriber would write the access event: asked as an event with the
/// event's fields, so that a `RUST_LOG` directive naming a field (`[{error}]=off`)
/// decides as it does for the event itself.
fn enabled() -> bool {
    tracing::enabled!(
        kind: tracing::metadata::Kind::EVENT,
        target: TARGET,
        tracing::Level::INFO,
        message,
        method,
        path,
        query,
        route,
        status,
        code,
        key_id,
        org,
        auth,
        mcp_method,
        mcp_tool,
        request_id,
        decision_us,
        upstream_us,
        duration_us
    )
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    use super::*;
    use crate::keys::KeyRecord;

    /// The subscriber's clock stopped at one time.
    struct At(SystemTime);

    impl FormatTime for At {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            let mut text = Vec::new();
            direct::timestamp(&mut text, self.0);
            w.write_str(&String::from_utf8_lossy(&text))
        }
    }

    /// What the subscriber keygate installs writes for `line` at `at`.
    fn traced(line: &Line<'_>, format: LogFormat, at: SystemTime) -> String {
        traced_under("info", line, format, at).0
    }

    /// What the subscriber writes for `line` under the filter `directives`, and
    /// whether [`enabled`] said it would write it.
    fn traced_under(directives: &str, line: &Line<'_>, format: LogFormat, at: SystemTime) -> (String, bool) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&written);
        let writer = move || Capture(Arc::clone(&sink));
        let filter = tracing_subscriber::EnvFilter::new(directives);
        let subscriber = logs::subscriber(format, filter, false, writer, At(at));
        let enabled = tracing::subscriber::with_default(subscriber, || {
            line.trace();
            enabled()
        });
        let bytes = written.lock().expect("lines").clone();
        (String::from_utf8(bytes).expect("utf-8"), enabled)
    }

    #[test]
    fn the_direct_line_is_written_when_the_filter_lets_the_event_through() {
        let id = HeaderValue::from_static("req-1");
        let uri = Uri::from_static("/v1/items/1");
        let line = Line::new(Method::GET, Cow::Borrowed(&uri), &id);
        let at = std::time::UNIX_EPOCH;
        for directives in [
            "info",
            "warn",
            "info,keygate::access=off",
            "warn,keygate::access=info",
            "keygate=info",
            "info,[{error}]=off",
            "warn,[{error}]=info",
            "info,[{status}]=off",
            "warn,[{status}]=info",
            "info,keygate::access[{duration_us}]=off",
            "info,[span_elsewhere]=off",
        ] {
            let (written, enabled) = traced_under(directives, &line, LogFormat::Human, at);
            assert_eq!(enabled, !written.is_empty(), "`{directives}`: {written:?}");
        }
    }

    /// Each field the access event has, named in a directive that turns it off:
    /// [`enabled`] lists the event's fields by hand, and one it missed would let
    /// the direct line through where the subscriber drops the event.
    #[test]
    fn every_field_of_the_event_is_one_enabled_asks_about() {
        #[derive(Clone, Default)]
        struct Names(Arc<Mutex<Vec<&'static str>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Names {
            fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                let mut names = self.0.lock().expect("names");
                names.extend(event.metadata().fields().iter().map(|f| f.name()));
            }
        }
        let id = HeaderValue::from_static("req-1");
        let uri = Uri::from_static("/v1/items/1");
        let line = Line::new(Method::GET, Cow::Borrowed(&uri), &id);
        let names = Names::default();
        let subscriber =
            tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), names.clone());
        tracing::subscriber::with_default(subscriber, || line.trace());
        let names = names.0.lock().expect("names").clone();
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            let directives = format!("info,[{{{name}}}]=off");
            let (written, enabled) =
                traced_under(&directives, &line, LogFormat::Human, std::time::UNIX_EPOCH);
            assert!(
                written.is_empty(),
                "`{directives}` should drop the event: {written:?}"
            );
            assert!(!enabled, "`{directives}`: enabled() says the line is written");
        }
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn written(line: &Line<'_>, format: LogFormat, at: SystemTime) -> String {
        let mut out = Vec::new();
        line.format(&mut out, format, at);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn the_line_written_directly_is_the_one_the_subscriber_writes() {
        let key = CachedKey::from(&KeyRecord::example("acme \"quoted\" ü"));
        let unorged = CachedKey::from(&KeyRecord {
            org_id: None,
            ..KeyRecord::example("acme")
        });
        let uri: Uri = "/v1/orgs/a%22b/items/%E2%9C%93?api_key=secret&x=1"
            .parse()
            .expect("uri");
        let plain_id = HeaderValue::from_static("req-1");
        let opaque_id = HeaderValue::from_bytes(b"r\xffq").expect("obs-text");
        let refused = Line::new(Method::GET, Cow::Borrowed(&uri), &opaque_id);
        let forwarded = Line {
            route: "items \\ all",
            status: 200,
            code: "forwarded",
            key: Some(&key),
            decision: Duration::from_nanos(12_345),
            upstream: Some(Duration::from_micros(250)),
            total: Duration::from_micros(263),
            auth: Some(AuthMethod::ApiKey),
            query_key: Some("api_key"),
            ..Line::new(Method::POST, Cow::Borrowed(&uri), &plain_id)
        };
        let mcp = Line {
            route: "mcp",
            status: 429,
            code: "quota_exceeded",
            key: Some(&unorged),
            auth: Some(AuthMethod::Passed),
            mcp_method: Some("tools/call".into()),
            mcp_tool: Some("say \"hi\"\n\t\u{1b}[31mred\u{7f} ✓".into()),
            total: Duration::MAX,
            ..Line::new(
                Method::from_bytes(b"PURGE").expect("method"),
                Cow::Borrowed(&uri),
                &plain_id,
            )
        };
        let at = std::time::UNIX_EPOCH + Duration::new(1_795_545_352, 123_456_789);
        for format in [LogFormat::Human, LogFormat::Json] {
            for line in [&refused, &forwarded, &mcp] {
                let ours = written(line, format, at);
                assert_eq!(ours, traced(line, format, at), "{format:?}");
                assert!(!ours.contains("secret"), "no query value: {ours}");
            }
        }
        // What the lines say, read back.
        let json = written(&forwarded, LogFormat::Json, at);
        let v: serde_json::Value = serde_json::from_str(&json).expect("a JSON line");
        assert_eq!(v["timestamp"], "2026-11-24T18:35:52.123456Z");
        assert_eq!(v["fields"]["org"], "acme \"quoted\" ü");
        assert_eq!(v["fields"]["query"], "api_key=[redacted]");
        assert_eq!(v["fields"]["decision_us"], 12);
        assert!(json.ends_with("\"target\":\"keygate::access\"}\n"), "{json}");
        let text = written(&refused, LogFormat::Human, at);
        assert!(
            text.starts_with("2026-11-24T18:35:52.123456Z  INFO keygate::access: request method=GET path=\""),
            "{text}"
        );
        assert!(text.contains(" request_id=\"-\" "), "{text}");
    }
}
