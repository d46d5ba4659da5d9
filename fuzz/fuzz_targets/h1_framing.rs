//! The fast path's framing over arbitrary bytes: `scan_request`, `scan_response`,
//! `write_answer_head` and the chunked scanner never panic; a request's fields and
//! body lie inside the bytes; a response head keygate writes parses again, whole,
//! with none of the fields it must drop; the chunked scanner finds the same end
//! whether the bytes come at once or in two reads.
#![no_main]

use keygate::proxy::h1::body::Chunked;
use keygate::proxy::h1::message::{
    MAX_BODY, MAX_FIELDS, Scan, dropped_from_response, scan_request, scan_response, write_answer_head,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fields = Vec::new();
    if let Scan::Request(r) = scan_request(data, &mut fields, &mut Vec::new()) {
        assert!(r.len <= data.len() && r.body <= MAX_BODY && r.host < fields.len());
        for f in &fields {
            let _ = (f.name(data), f.value(data));
        }
    }
    if let Ok(answer) = scan_response(data, false, &mut fields)
        && !answer.interim
    {
        let mut out = Vec::new();
        write_answer_head(&mut out, data, answer.status, &fields, true);
        out.extend_from_slice(b"\r\n");
        let mut headers = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut again = httparse::Response::new(&mut headers);
        assert_eq!(again.parse(&out), Ok(httparse::Status::Complete(out.len())));
        assert_eq!(again.code, Some(answer.status));
        for h in again.headers.iter() {
            assert!(!dropped_from_response(h.name.as_bytes(), true), "{}", h.name);
        }
    }
    let whole = Chunked::default().scan(data);
    let mid = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut parts = Chunked::default();
    let split = match parts.scan(&data[..mid]) {
        Ok(None) => parts.scan(&data[mid..]).map(|end| end.map(|n| n + mid)),
        other => other,
    };
    assert_eq!(whole, split);
});
