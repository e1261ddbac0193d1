//! The HTTP client side of `forge backup --url`: one plain HTTP/1.1 request with hyper's
//! client connection (no TLS: for HTTPS use curl, see the README).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// Longest wait to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the response head (the server takes the snapshot first) or for the next
/// chunk of the body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Most bytes of an error body read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL is not one this client can use.
    #[error("{0}")]
    BadUrl(String),
    /// No connection, or it broke.
    #[error("cannot reach {url}: {reason}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the server refused the backup: {status} {message}{hint}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's `error` message (or the body's start).
        message: String,
        /// What to check.
        hint: &'static str,
    },
    /// The body did not arrive whole, or could not be written.
    #[error("the download failed: {0}")]
    Transfer(String),
}

/// Downloads `GET <base>/api/backup` with the Bearer `token` into `out`; returns the bytes
/// written. The body must be as long as the server's `Content-Length` said.
///
/// # Errors
/// [`DownloadError`].
pub async fn download_backup(
    base: &str,
    token: &str,
    out: &mut impl Write,
) -> Result<u64, DownloadError> {
    let uri: Uri = base
        .parse()
        .map_err(|e| DownloadError::BadUrl(format!("invalid --url {base:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(DownloadError::BadUrl(
                "https URLs are not supported by forge backup: use curl (see the README) or reach \
                 the server over http on the host or through an SSH tunnel"
                    .into(),
            ));
        }
        _ => {
            return Err(DownloadError::BadUrl(format!(
                "--url must start with http:// (got {base:?})"
            )));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| DownloadError::BadUrl(format!("no host in --url {base:?}")))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let target = format!("{}/api/backup", uri.path().trim_end_matches('/'));
    let connect_err = |reason: String| DownloadError::Connect {
        url: base.to_owned(),
        reason,
    };

    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| connect_err("timed out".into()))?
    .map_err(|e| connect_err(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(target)
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(
            USER_AGENT,
            concat!("forge-backup/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| DownloadError::BadUrl(e.to_string()))?;
    let res = tokio::time::timeout(IDLE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| connect_err("no answer in time".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    let status = res.status();
    let expected = res
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = res.into_body();
    if status != StatusCode::OK {
        let mut text = Vec::new();
        while text.len() < ERROR_BODY_LIMIT {
            match tokio::time::timeout(Duration::from_secs(30), body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        text.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        conn.abort();
        return Err(refused(status, &text));
    }
    let mut written: u64 = 0;
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| DownloadError::Transfer("the server stopped sending".into()))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| DownloadError::Transfer(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data)
                .map_err(|e| DownloadError::Transfer(format!("cannot write the file: {e}")))?;
            written += data.len() as u64;
        }
    }
    conn.abort();
    if let Some(expected) = expected
        && expected != written
    {
        return Err(DownloadError::Transfer(format!(
            "got {written} of {expected} bytes"
        )));
    }
    Ok(written)
}

fn refused(status: StatusCode, body: &[u8]) -> DownloadError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let hint = match status {
        StatusCode::UNAUTHORIZED => " (is the API token right, and not expired?)",
        StatusCode::FORBIDDEN => " (the token's user must be a system administrator)",
        StatusCode::NOT_FOUND => " (is --url the Forge server's base URL?)",
        _ => "",
    };
    DownloadError::Refused {
        status: status.as_u16(),
        message,
        hint,
    }
}
