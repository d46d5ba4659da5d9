//! A small client for a running admin API, used by `keygate keys --admin-url`.
//! Plain HTTP/1.1: reach a remote admin listener through a tunnel (e.g. `kubectl
//! port-forward`) or a TLS-terminating proxy, never over an open network.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// An admin API at a base URL, authenticated with an admin key.
pub struct Client {
    authority: String,
    key: String,
}

impl Client {
    /// A client for `base` (`http://host:port`) using `key`.
    ///
    /// # Errors
    /// When the URL is not `http://host:port`.
    pub fn new(base: &str, key: String) -> anyhow::Result<Self> {
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--admin-url `{base}` is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.path() != "/" {
            bail!("--admin-url must be http://host:port (reach TLS endpoints through a tunnel or proxy)");
        }
        let authority = uri.authority().context("--admin-url has no host")?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{}:{port}", authority.host()),
            key,
        })
    }

    /// Sends one request and returns the JSON answer.
    ///
    /// # Errors
    /// Connection failures, and any non-2xx answer as its error code and message.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot connect to the admin API at {}", self.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(payload)))?)
            .await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let code = value["error"]["code"].as_str().unwrap_or("error");
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
        if status == StatusCode::UNAUTHORIZED {
            bail!("the admin API refused KEYGATE_ADMIN_KEY ({code}): {message}");
        }
        bail!("{code}: {message}");
    }
}
