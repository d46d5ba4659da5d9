//! Prints N random, well-formed keys that no store knows (right prefix, environment
//! and checksum), one per line, for `benches/flood.sh`.
//!
//! `cargo run --release --example unknown_keys -- 100000 > unknown.txt`

use keygate::keys::Format;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let format = Format::new("kg", "live").expect("the default format is valid");
    for _ in 0..n {
        let random = uuid::Uuid::new_v4().simple().to_string();
        println!("{}", format.assemble("live", &random));
    }
}
