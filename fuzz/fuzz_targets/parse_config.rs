//! `config::parse` on any text: never panics; every diagnostic has a message and,
//! when it has a place, a line that exists in the text.
#![no_main]

use std::collections::HashMap;

use keygate::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(diagnostics) = config::parse(src, &HashMap::new()) {
        assert!(!diagnostics.is_empty());
        let lines = src.split('\n').count();
        for d in diagnostics {
            assert!(!d.message.is_empty());
            if let Some((line, column)) = d.at {
                assert!(line >= 1 && line <= lines && column >= 1, "{d:?} in {lines} lines");
            }
        }
    }
});
