//! Message framing on the fast path: how long an upstream answer's body is, and a
//! chunked-coding scanner that finds its end without decoding it (the bytes pass to
//! the client as they came).

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a `HEAD` request, 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
    /// Until the upstream closes the connection (no length, or another final coding).
    UntilClose,
}

/// Where a chunked body stands; feed it bytes, it says where the message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunked {
    state: State,
    /// Data bytes left in the current chunk.
    left: u64,
    /// Hex digits read of the current size line.
    digits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading the chunk size's hex digits.
    #[default]
    Size,
    /// After the size: extensions (skipped), up to CR LF.
    Extension,
    /// CR seen at the end of the size line.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// After the data: CR.
    DataCr,
    /// After the data: LF.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// CR seen at the end of a trailer line.
    TrailerLf,
    /// CR seen on the final empty line.
    EndLf,
    /// The message ended.
    Done,
}

/// A chunked body that does not follow RFC 9112 §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Longest chunk-size line (digits) and trailer section keygate accepts.
const MAX_DIGITS: u8 = 16;

impl Chunked {
    /// Scans `bytes`, the body's next bytes. `Ok(Some(n))`: the message ends after
    /// `n` of them (what follows belongs to no message); `Ok(None)`: all of them are
    /// body and more is to come.
    ///
    /// # Errors
    /// [`Malformed`] at the first byte that breaks the chunked coding.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match hex(b) {
                    Some(d) if self.digits < MAX_DIGITS => {
                        self.left = (self.left << 4) | u64::from(d);
                        self.digits += 1;
                    }
                    Some(_) => return Err(Malformed),
                    None if self.digits == 0 => return Err(Malformed),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' | b' ' | b'\t' => self.state = State::Extension,
                        _ => return Err(Malformed),
                    },
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(Malformed),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.digits = 0;
                    self.state = if self.left == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    // Skip the chunk's data in one step.
                    let avail = (bytes.len() - i) as u64;
                    let take = self.left.min(avail);
                    self.left -= take;
                    i += usize::try_from(take).unwrap_or(usize::MAX);
                    if self.left == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(Malformed);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err(Malformed),
                    _ => self.state = State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(Malformed),
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok((self.state == State::Done).then_some(bytes.len()))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<Option<usize>, Malformed> {
        Chunked::default().scan(body)
    }

    #[test]
    fn finds_the_end_of_a_chunked_body() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok(Some(body.len() - 4)));
        let trailers = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n";
        assert_eq!(whole(trailers), Ok(Some(trailers.len())));
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok(Some(20)));
    }

    #[test]
    fn the_end_is_found_whatever_the_reads_look_like() {
        let body = b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nT: x\r\n\r\n";
        for split in 0..body.len() {
            let mut scanner = Chunked::default();
            let first = scanner.scan(&body[..split]).expect("valid");
            let end = match first {
                Some(n) => n,
                None => split + scanner.scan(&body[split..]).expect("valid").expect("ends"),
            };
            assert_eq!(end, body.len(), "split at {split}");
        }
        // One byte at a time.
        let mut scanner = Chunked::default();
        let ends: Vec<usize> = (0..body.len())
            .filter(|&i| scanner.scan(&body[i..=i]).expect("valid").is_some())
            .collect();
        assert_eq!(ends, vec![body.len() - 1]);
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        assert_eq!(whole(b"5\r\nhel"), Ok(None));
        assert_eq!(whole(b"0\r\n"), Ok(None));
        assert_eq!(whole(b""), Ok(None));
    }

    #[test]
    fn broken_codings_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5\r\nhello\r\r",
            b"0\r\n\n",
            b"0\r\nT: x\n",
            b"11111111111111111\r\n",
            b"5;ext\n",
        ] {
            assert_eq!(whole(bad), Err(Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sixteen_hex_digits_are_the_most() {
        let mut scanner = Chunked::default();
        assert_eq!(scanner.scan(b"ffffffffffffffff\r\n"), Ok(None));
        assert_eq!(scanner.left, u64::MAX);
    }
}
