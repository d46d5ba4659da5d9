//! Keys: their format, generation and hashing, and the stored record.
//!
//! Pure: no I/O beyond the OS random source. Storage lives in `store`.

pub mod cached;
pub mod format;
pub mod record;
pub mod secret;

pub use cached::CachedKey;
pub use format::Format;
pub use record::{KeyRecord, McpPolicy, Owner, Rate, Restrictions, Status};
pub use secret::{ApiKey, KeyHash};

/// Whether `s` is a valid scope name: 1-64 characters of `a-z`, `0-9`, `_`, `-`, `.`, `:`.
pub fn is_valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b':'))
}
