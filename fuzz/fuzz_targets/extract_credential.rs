//! `auth::credential::extract` over arbitrary `Authorization` and key-header values
//! (any bytes a client can send, repeated): never panics; a success returns a key
//! that parses, taken from exactly one header.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, header::AUTHORIZATION};
use keygate::auth::credential::{self, Settings};
use keygate::keys::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let format = Format::new("kg", "live").expect("valid format");
    let settings = Settings {
        format: format.clone(),
        key_header: Some(HeaderName::from_static("x-api-key")),
    };
    let mut headers = HeaderMap::new();
    // Each 0xff-separated chunk is one header value; the first byte picks its name.
    for chunk in data.split(|&b| b == 0xff) {
        let Some((&which, value)) = chunk.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = if which % 2 == 0 { AUTHORIZATION } else { HeaderName::from_static("x-api-key") };
        headers.append(name, value);
    }
    if let Ok(parsed) = credential::extract(&headers, &settings) {
        assert!(format.parse(parsed.expose()).is_ok());
        assert_eq!(headers.len(), 1, "a key is only taken when it is the one credential");
    }
});
