//! `POST /v1/secret-scanning/github`: reports of keys found in public places, as
//! GitHub's secret scanning partner programme sends them.
//!
//! The body is a JSON list of `{token, type, url, source}`. GitHub signs it with
//! ECDSA P-256 over SHA-256 (`Github-Public-Key-Signature`, base64 of the DER
//! signature) with the key named in `Github-Public-Key-Identifier`; keygate checks
//! it against the public keys in the file `[hygiene] github_public_keys` (GitHub's
//! `GET /meta/public_keys/secret_scanning` document, saved by the operator: keygate
//! never fetches it). Only a verified report acts: each token that is one of our
//! keys is paused or revoked (`[hygiene] on_leak`) with the URL in the audit log.
//! The answer labels every token `true_positive` or `false_positive` by the
//! SHA-256 of the token, never echoing the token.

use axum::Json;
use axum::extract::{ConnectInfo, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use bytes::Bytes;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

use super::State;
use super::error::ApiError;
use crate::keys::KeyHash;
use crate::store::Actor;

/// Tokens accepted in one report.
const MAX_TOKENS: usize = 1000;

/// GitHub's secret scanning public keys, by identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubKeys(Vec<(String, VerifyingKey)>);

#[derive(Deserialize)]
struct MetaDocument {
    public_keys: Vec<MetaKey>,
}

#[derive(Deserialize)]
struct MetaKey {
    key_identifier: String,
    key: String,
}

impl GithubKeys {
    /// Reads GitHub's `meta/public_keys/secret_scanning` document:
    /// `{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`.
    ///
    /// # Errors
    /// A message saying what is wrong with the document.
    pub fn parse(json: &str) -> Result<Self, String> {
        let doc: MetaDocument = serde_json::from_str(json)
            .map_err(|e| format!("not GitHub's public key document ({{\"public_keys\": [...]}}): {e}"))?;
        let keys = doc
            .public_keys
            .into_iter()
            .map(|k| {
                VerifyingKey::from_public_key_pem(&k.key)
                    .map(|key| (k.key_identifier.clone(), key))
                    .map_err(|_| format!("key `{}` is not a P-256 public key in PEM", k.key_identifier))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err("the document lists no public keys".into());
        }
        Ok(Self(keys))
    }

    /// Whether `signature` (base64 of a DER ECDSA signature) over `body` was made
    /// with the key named `id`.
    fn verify(&self, id: &str, body: &[u8], signature: &str) -> bool {
        let Some((_, key)) = self.0.iter().find(|(name, _)| name == id) else {
            return false;
        };
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
            return false;
        };
        Signature::from_der(&der).is_ok_and(|sig| key.verify(body, &sig).is_ok())
    }
}

#[derive(Deserialize)]
struct Found {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// One token's label in the answer.
#[derive(Serialize)]
pub struct Label {
    token_hash: String,
    token_type: String,
    label: &'static str,
}

/// `POST /v1/secret-scanning/github`.
///
/// # Errors
/// 404 when `[hygiene] github_public_keys` is not set; 401 `invalid_signature`
/// (nothing changes) when the signature headers are missing or do not verify; 400
/// for a body that is not a list of reports; 503 when the store fails.
pub async fn github(
    Extract(state): Extract<State>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<Label>>, ApiError> {
    let Some(keys) = &state.github_keys else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "secret scanning reports are off: set [hygiene] github_public_keys",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = match (
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
    ) {
        (Some(id), Some(signature)) => keys.verify(id, &body, signature),
        _ => false,
    };
    if !verified {
        tracing::warn!(%peer, "secret scanning report refused: missing or invalid GitHub signature");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "the report is not signed by a key in [hygiene] github_public_keys",
        ));
    }
    let found: Vec<Found> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the body must be a JSON list of {{token, type, url, source}}: {e}"
        ))
    })?;
    if found.len() > MAX_TOKENS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_TOKENS} tokens per report"
        )));
    }
    let actor = Actor {
        name: "github-secret-scanning".into(),
        key_id: None,
        client_ip: Some(peer.ip().to_string()),
        auth_method: "secret_scanning",
    };
    let mut labels = Vec::with_capacity(found.len());
    let mut quarantined = 0;
    for f in &found {
        let source = f.url.as_deref().or(f.source.as_deref());
        let (outcome, _) = state
            .keys
            .report_leak(&f.token, state.on_leak, source, &actor)
            .await?;
        if matches!(
            outcome,
            crate::manage::LeakOutcome::Paused | crate::manage::LeakOutcome::Revoked
        ) {
            quarantined += 1;
        }
        labels.push(Label {
            token_hash: KeyHash::of(f.token.trim()).to_hex(),
            token_type: f.token_type.clone(),
            label: outcome.label(),
        });
    }
    state.metrics.quarantined("leak", quarantined);
    Ok(Json(labels))
}
