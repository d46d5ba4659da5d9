//! Server-sent events, one event at a time: [`Splitter`] cuts a byte stream at
//! event boundaries (a blank line) without holding more than the event being read,
//! and [`rewrite`] replaces the JSON in one event's `data:` lines.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Cuts a stream of chunks into whole events. Each byte is scanned once, however
/// the chunks fall.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: BytesMut,
    /// Bytes of `buf` already scanned without finding the end of the event.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
}

/// The largest event held while looking for its end; a stream with a longer one
/// is not filtered but cut off ([`Splitter::is_over`]).
pub const MAX_EVENT: usize = 16 << 20;

impl Splitter {
    /// Adds a chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole event, with its terminating blank line.
    pub fn next_event(&mut self) -> Option<Bytes> {
        match scan(&self.buf, self.scanned, self.line_start) {
            Ok(end) => {
                self.scanned = 0;
                self.line_start = 0;
                Some(self.buf.split_to(end).freeze())
            }
            Err((scanned, line_start)) => {
                self.scanned = scanned;
                self.line_start = line_start;
                None
            }
        }
    }

    /// What is left at the end of the stream (an unterminated event).
    pub fn rest(&mut self) -> Bytes {
        self.scanned = 0;
        self.line_start = 0;
        self.buf.split().freeze()
    }

    /// Whether more than [`MAX_EVENT`] bytes are held without an event's end.
    pub fn is_over(&self) -> bool {
        self.buf.len() > MAX_EVENT
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Scans `buf` from `from` (inside the line starting at `line_start`) for the end
/// of the first event, after its blank line; lines end with `\n`, `\r\n` or `\r`.
/// `Err` holds where to resume.
fn scan(buf: &[u8], from: usize, mut line_start: usize) -> Result<usize, (usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        let eol = match buf[i] {
            b'\n' => 1,
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            b'\r' if i + 1 < buf.len() => 1,
            // A `\r` at the end may be the first half of `\r\n`: wait for more.
            b'\r' => return Err((i, line_start)),
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Ok(i + eol);
        }
        i += eol;
        line_start = i;
    }
    Err((i, line_start))
}

/// The non-empty lines of one event (an event holds no blank line but its last;
/// lines end with `\n`, `\r\n` or `\r`).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\r', '\n']).filter(|l| !l.is_empty())
}

/// The JSON of an event's `data:` lines, if it has any and they parse.
pub fn data(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data = String::new();
    let mut any = false;
    for line in lines(text) {
        if let Some(value) = line.strip_prefix("data") {
            if !value.is_empty() && !value.starts_with(':') {
                continue; // a field named e.g. `database`
            }
            let value = value.strip_prefix(':').unwrap_or(value);
            if any {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
            any = true;
        }
    }
    if !any {
        return None;
    }
    serde_json::from_str(&data).ok()
}

/// `event` with its `data:` lines replaced by one holding `value`; other fields
/// (`event:`, `id:`, `retry:`, comments) are kept in place.
pub fn rewrite(event: &[u8], value: &Value) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let mut out = String::with_capacity(event.len());
    let mut written = false;
    for bare in lines(&text) {
        let is_data = bare
            .strip_prefix("data")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'));
        if is_data {
            if !written {
                out.push_str("data: ");
                out.push_str(&value.to_string());
                out.push('\n');
                written = true;
            }
        } else {
            out.push_str(bare);
            out.push('\n');
        }
    }
    out.push('\n');
    Bytes::from(out)
}

/// One event carrying `value`, as an MCP server sends a message.
pub fn message_event(value: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {value}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_cut_at_blank_lines_whatever_the_chunks_and_line_ends() {
        let stream = b"event: message\ndata: {\"a\":1}\n\n: comment\r\n\r\ndata: {\"b\":\rdata: 2}\r\n\r\n";
        for chunk in 1..stream.len() {
            let mut s = Splitter::default();
            let mut events = Vec::new();
            for part in stream.chunks(chunk) {
                s.push(part);
                while let Some(e) = s.next_event() {
                    events.push(e);
                }
            }
            assert_eq!(events.len(), 3, "chunks of {chunk}");
            assert_eq!(data(&events[0]), Some(json!({"a": 1})));
            assert_eq!(data(&events[1]), None);
            assert_eq!(data(&events[2]), Some(json!({"b": 2})));
            assert!(s.is_empty());
            assert!(!s.is_over());
        }
    }

    #[test]
    fn a_rewrite_keeps_the_other_fields() {
        let event = b"event: message\nid: 7\ndata: {\"x\":\ndata: 1}\n\n";
        let out = rewrite(event, &json!({"y": 2}));
        assert_eq!(&out[..], b"event: message\nid: 7\ndata: {\"y\":2}\n\n");
        assert_eq!(data(&out), Some(json!({"y": 2})));
        assert_eq!(data(b"database: 1\n\n"), None);
    }
}
