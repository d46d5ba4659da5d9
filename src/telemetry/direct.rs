//! Log lines written without the subscriber, byte for byte as `tracing-subscriber`'s
//! formatter writes them with colours off: its full text format and its JSON format,
//! as [`super::logs::init`] sets them up. For the one line keygate writes per request
//! (the access line), where the subscriber's way (the event's dispatch, a visitor
//! per field, each piece through `fmt`, the date worked out per line) cost about a
//! sixth of the proxy's CPU per request (`docs/performance.md`).
//!
//! Values are written as the subscriber writes them: in text, a string field
//! `Debug`-quoted (`name="..."`, escapes included), a displayed one and a number
//! bare; in JSON, strings through `serde_json` and numbers as numbers. The access
//! log's tests hold the two ways to the same bytes.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::LogFormat;

/// One line at INFO, its fields written in the order they are given.
pub struct Line<'o> {
    out: &'o mut Vec<u8>,
    format: LogFormat,
    /// Written last in JSON.
    target: &'o str,
}

impl<'o> Line<'o> {
    /// Starts an INFO line at `at` for `target`, with `message` (plain text, as
    /// the subscriber writes a message unescaped in text).
    pub fn info(
        out: &'o mut Vec<u8>,
        format: LogFormat,
        at: SystemTime,
        target: &'o str,
        message: &str,
    ) -> Self {
        match format {
            LogFormat::Human => {
                timestamp(out, at);
                out.extend_from_slice(b"  INFO ");
                out.extend_from_slice(target.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(message.as_bytes());
            }
            LogFormat::Json => {
                out.extend_from_slice(br#"{"timestamp":""#);
                timestamp(out, at);
                out.extend_from_slice(br#"","level":"INFO","fields":{"message":"#);
                json_string(out, message);
            }
        }
        Self { out, format, target }
    }

    fn name(&mut self, name: &str) {
        match self.format {
            LogFormat::Human => {
                self.out.push(b' ');
                self.out.extend_from_slice(name.as_bytes());
                self.out.push(b'=');
            }
            LogFormat::Json => {
                self.out.extend_from_slice(b",\"");
                self.out.extend_from_slice(name.as_bytes());
                self.out.extend_from_slice(b"\":");
            }
        }
    }

    /// A string field.
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        self.name(name);
        match self.format {
            LogFormat::Human => {
                let _ = write!(self.out, "{value:?}");
            }
            LogFormat::Json => json_string(self.out, value),
        }
        self
    }

    /// A field written with `Display` (tracing's `%value`).
    pub fn display(&mut self, name: &str, value: impl Display) -> &mut Self {
        self.name(name);
        match self.format {
            LogFormat::Human => {
                let _ = write!(self.out, "{value}");
            }
            LogFormat::Json => {
                let _ = serde_json::to_writer(&mut *self.out, &format_args!("{value}"));
            }
        }
        self
    }

    /// A number field.
    pub fn number(&mut self, name: &str, value: u64) -> &mut Self {
        self.name(name);
        let _ = write!(self.out, "{value}");
        self
    }

    /// Ends the line.
    pub fn end(&mut self) {
        if self.format == LogFormat::Json {
            self.out.extend_from_slice(br#"},"target":"#);
            json_string(self.out, self.target);
            self.out.push(b'}');
        }
        self.out.push(b'\n');
    }
}

fn json_string(out: &mut Vec<u8>, value: &str) {
    // Writing to a `Vec` fails only when serde_json's escaping would, which it does not.
    let _ = serde_json::to_writer(out, value);
}

/// `at` as the subscriber's clock writes it, `2026-11-24T18:35:52.123456Z`: UTC to
/// the microsecond. The part to the second is formatted once a second per thread.
pub fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    // Before 1970 the subscriber counts back from the second after.
    let (second, nanos) = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let back = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-back, 0),
                n => (-back - 1, 1_000_000_000 - n),
            }
        }
    };
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != second {
            text.clear();
            match chrono::DateTime::from_timestamp(second, 0) {
                // `%Y` as the subscriber writes a year: four digits, a sign past 9999.
                Some(t) => {
                    let _ =
                        std::fmt::Write::write_fmt(text, format_args!("{}", t.format("%Y-%m-%dT%H:%M:%S")));
                }
                None => text.push_str("<unknown time>"),
            }
            *at = second;
        }
        out.extend_from_slice(text.as_bytes());
    });
    let _ = write!(out, ".{:06}Z", nanos / 1_000);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stamp(at: SystemTime) -> String {
        let mut out = Vec::new();
        timestamp(&mut out, at);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn timestamps_are_utc_to_the_microsecond() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(stamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(stamp(at(951_868_799, 999_999_999)), "2000-02-29T23:59:59.999999Z");
        // The same second again (the kept text), then the next one.
        assert_eq!(stamp(at(951_868_799, 1_000)), "2000-02-29T23:59:59.000001Z");
        assert_eq!(stamp(at(951_868_800, 0)), "2000-03-01T00:00:00.000000Z");
        assert_eq!(
            stamp(at(1_795_545_352, 123_456_789)),
            "2026-11-24T18:35:52.123456Z"
        );
        assert_eq!(
            stamp(UNIX_EPOCH - Duration::new(0, 1_500)),
            "1969-12-31T23:59:59.999998Z"
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods, reason = "the subscriber's clock is the system's")]
    fn timestamps_read_as_the_subscribers_clock_writes_them() {
        use tracing_subscriber::fmt::format::Writer;
        use tracing_subscriber::fmt::time::FormatTime as _;
        let before = stamp(SystemTime::now());
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .expect("format");
        let after = stamp(SystemTime::now());
        assert_eq!(theirs.len(), before.len(), "{theirs} against {before}");
        assert!(
            before <= theirs && theirs <= after,
            "{before} <= {theirs} <= {after}"
        );
    }
}
