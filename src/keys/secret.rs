//! The plaintext key (`ApiKey`) and its SHA-256 lookup id (`KeyHash`).
//!
//! An `ApiKey` exists only between generation and the moment it is printed once; it
//! has a redacted `Debug`, no `Display`, no `Serialize`, and is zeroized on drop.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::format::{self, Format};

/// A freshly generated plaintext key.
pub struct ApiKey(Zeroizing<String>);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Generating a key failed because the OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

impl ApiKey {
    /// Generates a key for `environment` with ≈190 bits from the OS CSPRNG.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn generate(format: &Format, environment: &str) -> Result<Self, RandomError> {
        // 96 bytes leave ample room for rejection sampling (each byte is kept with p = 248/256).
        let mut bytes = Zeroizing::new([0u8; 96]);
        getrandom::fill(bytes.as_mut()).map_err(|e| RandomError(e.to_string()))?;
        let body = Zeroizing::new(
            format::random_body(bytes.as_ref())
                .ok_or_else(|| RandomError("not enough random bytes".into()))?,
        );
        Ok(Self(Zeroizing::new(format.assemble(environment, &body))))
    }

    /// The plaintext, for printing it once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The lookup id.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

/// SHA-256 of a key: the only form in which a key is stored or looked up. The
/// default (all zeros) is a placeholder that matches no key.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

/// A table hashes the digest's first eight bytes (equality still compares all 32):
/// SHA-256's output is already uniform, and the table's keyed hasher over 8 bytes
/// instead of 32 and a length is a third of the work on every lookup. Crowding a
/// table's bucket would take many presented keys whose digests share those eight
/// bytes, about 2^64 SHA-256 computations for each one past a first pair.
impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

impl KeyHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the lowercase hex form used in the store.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let format = Format::new("kg", "live").expect("valid");
        let a = ApiKey::generate(&format, "live").expect("random");
        let b = ApiKey::generate(&format, "live").expect("random");
        assert_ne!(a.expose(), b.expose());
        assert!(format.parse(a.expose()).is_ok());
        assert_eq!(format!("{a:?}"), "ApiKey(<redacted>)");
    }

    #[test]
    fn digests_hash_apart_in_a_table() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let hashes: std::collections::HashSet<u64> = (0..1000)
            .map(|i| state.hash_one(KeyHash::of(&format!("kg_live_{i}"))))
            .collect();
        assert_eq!(hashes.len(), 1000, "each digest its own table hash");
        let same = KeyHash::of("kg_live_x");
        assert_eq!(state.hash_one(same), state.hash_one(KeyHash::of("kg_live_x")));
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let hash = KeyHash::of("kg_live_x");
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }
}
