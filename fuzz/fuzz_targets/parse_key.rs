//! `keys::Format::parse` on any string: never panics, and accepts exactly what
//! `assemble` makes (a key that parses re-assembles to itself).
#![no_main]

use keygate::keys::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let format = Format::new("kg", "live").expect("valid format");
    if let Ok(parsed) = format.parse(token) {
        assert_eq!(parsed.expose(), token);
        assert_eq!(parsed.environment(), "live");
        let random = &token["kg_live_".len()..token.len() - 6];
        assert_eq!(format.assemble("live", random), token, "a parsed key is one keygate made");
    }
});
