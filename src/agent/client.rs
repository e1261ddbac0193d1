//! The agent's HTTP client: hyper 1's pooled client over rustls (http and https URLs), one
//! timeout per request, the runner token on every call.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::protocol::TOKEN_HEADER;

/// Most bytes of an answer read (a poll with many jobs fits).
const ANSWER_LIMIT: usize = 64 * 1024 * 1024;

/// A client of one server.
#[derive(Clone)]
pub struct Api {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    token: String,
}

impl Api {
    /// A client of the server at `base` (`http[s]://host:port`), sending `token`.
    ///
    /// # Errors
    /// When no TLS root loads.
    pub fn new(base: &str, token: &str) -> Result<Self, String> {
        let tls = crate::notify::client::tls_config(&[])?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Self {
            inner,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// `method path` with `body` (JSON) within `timeout`: the status and the answer.
    ///
    /// # Errors
    /// A text saying what failed (URL, connection, timeout, reading the answer).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| format!("invalid URL: {e}"))?;
        let mut req = Request::builder().method(method).uri(uri).header(
            USER_AGENT,
            concat!("forge-runner/", env!("CARGO_PKG_VERSION")),
        );
        if !self.token.is_empty() {
            req = req.header(TOKEN_HEADER, &self.token);
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("invalid request: {e}"))?;
        let exchange = async {
            let resp = self.inner.request(req).await.map_err(|e| describe(&e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), ANSWER_LIMIT)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs())))
    }
}

/// The error and its causes on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `error` of a JSON error answer, or the start of the body.
#[must_use]
pub fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}
