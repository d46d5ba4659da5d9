//! The key format: `<prefix>_<environment>_<random><checksum>`. Pure functions only.
//!
//! `random` is 32 base62 characters (≈190 bits from the OS CSPRNG) and `checksum` is
//! the CRC32 of everything before it, as 6 base62 characters, so a typo is caught
//! offline and secret scanners can match the whole pattern. This module does not
//! know about storage or hashing.

use std::fmt;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of randomness in a key.
pub const RANDOM_LEN: usize = 32;
/// Characters of checksum at the end of a key.
pub const CHECKSUM_LEN: usize = 6;
/// Characters of the random part shown in a display prefix (the rest stays secret).
pub const DISPLAY_LEN: usize = 8;
const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;

/// What keys of this deployment look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    prefix: String,
    environment: String,
}

/// Why a token is not a well-formed key of this deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The token does not start with this deployment's prefix.
    #[error("not a key of this deployment (keys start with `{expected}`)")]
    ForeignPrefix {
        /// The prefix keys of this deployment start with.
        expected: String,
    },
    /// The token has the prefix but not the shape of a key.
    #[error("the key is truncated or has unexpected characters")]
    Shape,
    /// The token has the shape of a key but its checksum does not match (a typo).
    #[error("the key's checksum does not match; it was probably mistyped or truncated")]
    Checksum,
    /// A well-formed key of another environment.
    #[error("this key belongs to the `{found}` environment; this deployment accepts `{expected}` keys")]
    WrongEnvironment {
        /// The environment named in the key.
        found: String,
        /// The environment this deployment accepts.
        expected: String,
    },
}

/// A key that passed the offline checks, borrowed from the request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    token: &'a str,
    environment: &'a str,
}

impl fmt::Debug for Parsed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parsed")
            .field("environment", &self.environment)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl<'a> Parsed<'a> {
    /// The whole key, as presented. Only for hashing.
    pub fn expose(&self) -> &'a str {
        self.token
    }

    /// The environment named in the key.
    pub fn environment(&self) -> &'a str {
        self.environment
    }
}

/// Whether `s` is a usable prefix or environment name: `[a-z0-9]`, with `_` inside a prefix.
pub fn is_valid_name(s: &str, allow_underscore: bool) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('_')
        && !s.ends_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || (allow_underscore && b == b'_'))
}

impl Format {
    /// A format with `prefix` (e.g. `kg`, `sk_acme`) and `environment` (e.g. `live`).
    ///
    /// # Errors
    /// When either is not a valid name (see [`is_valid_name`]).
    pub fn new(prefix: &str, environment: &str) -> Result<Self, String> {
        if !is_valid_name(prefix, true) {
            return Err(format!(
                "key prefix `{prefix}` must be 1-32 characters of a-z, 0-9 and inner `_`"
            ));
        }
        if !is_valid_name(environment, false) {
            return Err(format!(
                "environment `{environment}` must be 1-32 characters of a-z and 0-9"
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            environment: environment.to_owned(),
        })
    }

    /// The deployment's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The environment whose keys this deployment accepts.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// Whether `token` claims to be one of our keys (starts with `<prefix>_`), well formed or not.
    pub fn is_ours(&self, token: &str) -> bool {
        token.len() > self.prefix.len()
            && token.as_bytes()[self.prefix.len()] == b'_'
            && token.starts_with(&self.prefix)
    }

    /// Checks shape, checksum and environment of `token`, without touching any store.
    ///
    /// # Errors
    /// [`Error`] says which check failed; the checksum is checked before the environment,
    /// so a mistyped key of another environment is reported as mistyped.
    pub fn parse<'a>(&self, token: &'a str) -> Result<Parsed<'a>, Error> {
        if !self.is_ours(token) {
            return Err(Error::ForeignPrefix {
                expected: format!("{}_", self.prefix),
            });
        }
        let rest = &token[self.prefix.len() + 1..];
        // The body has a fixed length, so the `_` before it has a fixed place (this
        // runs on every request: a search for the last `_` cost more than the rest).
        let (environment, body) = rest
            .len()
            .checked_sub(BODY_LEN + 1)
            .filter(|&at| rest.as_bytes()[at] == b'_')
            .and_then(|at| Some((rest.get(..at)?, rest.get(at + 1..)?)))
            .ok_or(Error::Shape)?;
        // Every byte checked, no early exit: the loop vectorises.
        let alphanumeric = body.bytes().fold(true, |all, b| all & b.is_ascii_alphanumeric());
        if !alphanumeric || !is_valid_name(environment, false) {
            return Err(Error::Shape);
        }
        self.checked(token, environment)
    }

    /// The checks after the shape: the checksum, then the environment.
    fn checked<'a>(&self, token: &'a str, environment: &'a str) -> Result<Parsed<'a>, Error> {
        let (signed, checksum) = token.split_at(token.len() - CHECKSUM_LEN);
        if checksum.as_bytes() != encode_checksum(signed) {
            return Err(Error::Checksum);
        }
        if environment != self.environment {
            return Err(Error::WrongEnvironment {
                found: environment.to_owned(),
                expected: self.environment.clone(),
            });
        }
        Ok(Parsed { token, environment })
    }

    /// Builds a key for `environment` from `random` (exactly [`RANDOM_LEN`] base62 characters).
    ///
    /// # Panics
    /// When `random` has the wrong length or alphabet (a programming error: it comes
    /// from [`random_body`]).
    pub fn assemble(&self, environment: &str, random: &str) -> String {
        assert!(
            random.len() == RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric()),
            "random part must be {RANDOM_LEN} base62 characters"
        );
        let mut key = format!("{}_{}_{}", self.prefix, environment, random);
        let checksum = encode_checksum(&key);
        key.extend(checksum.iter().map(|&b| char::from(b)));
        key
    }

    /// The part of a key that may be shown and stored: prefix, environment and the
    /// first [`DISPLAY_LEN`] random characters (e.g. `kg_live_8f760b49`).
    pub fn display_prefix(&self, key: &str) -> String {
        let start = key.len().saturating_sub(BODY_LEN);
        key.get(..start + DISPLAY_LEN).unwrap_or_default().to_owned()
    }
}

/// Maps uniformly random bytes to [`RANDOM_LEN`] base62 characters by rejection
/// sampling (bytes ≥ 248 are skipped so each character is uniform).
///
/// Returns `None` when `bytes` ran out before the key was complete.
pub fn random_body(bytes: &[u8]) -> Option<String> {
    let body: String = bytes
        .iter()
        .filter(|&&b| b < 248)
        .take(RANDOM_LEN)
        .map(|&b| char::from(ALPHABET[usize::from(b % 62)]))
        .collect();
    (body.len() == RANDOM_LEN).then_some(body)
}

fn encode_checksum(signed: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(signed.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Format {
        Format::new("kg", "live").expect("valid format")
    }

    fn sample(format: &Format, env: &str) -> String {
        format.assemble(env, &"a1B2".repeat(8))
    }

    #[test]
    fn assembled_key_parses_back() {
        let key = sample(&live(), "live");
        assert_eq!(key.len(), "kg_live_".len() + BODY_LEN);
        let parsed = live().parse(&key).expect("parses");
        assert_eq!(parsed.environment(), "live");
        assert_eq!(parsed.expose(), key);
    }

    #[test]
    fn prefix_with_underscores_works() {
        let format = Format::new("sk_openbin", "test").expect("valid");
        let key = sample(&format, "test");
        assert!(key.starts_with("sk_openbin_test_"));
        assert!(format.parse(&key).is_ok());
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let key = sample(&live(), "live");
        let start = key.len() - BODY_LEN;
        for i in start..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
            let typo = String::from_utf8(bytes).expect("ascii");
            assert_eq!(live().parse(&typo), Err(Error::Checksum), "position {i}");
        }
    }

    #[test]
    fn other_environment_is_named() {
        let key = sample(&live(), "test");
        assert_eq!(
            live().parse(&key),
            Err(Error::WrongEnvironment {
                found: "test".into(),
                expected: "live".into()
            })
        );
    }

    #[test]
    fn wrong_shapes_are_rejected_before_the_checksum() {
        let format = live();
        for token in ["kg_live_", "kg_live_short", "kg_", "kg_live_!!", "kglive_abc"] {
            assert!(format.parse(token).is_err(), "{token}");
        }
        assert!(matches!(
            format.parse("ghp_abcdef"),
            Err(Error::ForeignPrefix { .. })
        ));
        let key = sample(&format, "live");
        assert_eq!(format.parse(&key[..key.len() - 1]), Err(Error::Shape));
        assert_eq!(format.parse(&format!("{key}a")), Err(Error::Shape));
    }

    /// The split by the last `_`, as `parse` did it before it looked at the fixed
    /// place (the checks after the shape are `parse`'s own): both must give the same
    /// answer for every token.
    fn parse_by_search<'a>(format: &Format, token: &'a str) -> Result<Parsed<'a>, Error> {
        if !format.is_ours(token) {
            return format.parse(token);
        }
        let rest = &token[format.prefix.len() + 1..];
        let (environment, body) = rest.rsplit_once('_').ok_or(Error::Shape)?;
        if body.len() != BODY_LEN
            || !body.bytes().all(|b| b.is_ascii_alphanumeric())
            || !is_valid_name(environment, false)
        {
            return Err(Error::Shape);
        }
        format.checked(token, environment)
    }

    #[test]
    fn the_fixed_place_split_answers_as_a_search_for_the_last_underscore_does() {
        let format = live();
        let key = sample(&format, "live");
        let mut tokens = vec![key.clone(), sample(&format, "test"), "kg_live__".into()];
        for at in 0..key.len() {
            for replacement in ["_", "-", "é", "", "a_"] {
                tokens.push(format!("{}{replacement}{}", &key[..at], &key[at + 1..]));
            }
            tokens.push(key[..at].to_owned());
            tokens.push(format!("{}_{}", &key[..at], &key[at..]));
        }
        for token in &tokens {
            assert_eq!(format.parse(token), parse_by_search(&format, token), "{token}");
        }
    }

    #[test]
    fn display_prefix_keeps_only_eight_random_characters() {
        let key = sample(&live(), "live");
        assert_eq!(live().display_prefix(&key), "kg_live_a1B2a1B2");
    }

    #[test]
    fn random_body_skips_biased_bytes() {
        let mut bytes = vec![255u8; 10];
        bytes.extend(0u8..40);
        let body = random_body(&bytes).expect("enough bytes");
        assert!(body.starts_with("0123456789ABC"));
        assert_eq!(random_body(&[1, 2, 3]), None);
    }

    #[test]
    fn invalid_names_are_refused() {
        assert!(Format::new("KG", "live").is_err());
        assert!(Format::new("kg", "li_ve").is_err());
        assert!(Format::new("_kg", "live").is_err());
        assert!(Format::new("", "live").is_err());
    }
}
