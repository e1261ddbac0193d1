//! The HTTP layer: the request pipeline, route table, auth middleware, bodies, error mapping,
//! and what a handler is (`handler`), which the route table and the handlers both depend on.
//! hyper types stay in here.

pub mod auth;
pub mod body;
pub mod client;
pub mod error;
pub mod forwarded;
pub mod handler;
mod handlers;
pub mod live;
pub mod rendered;
pub mod router;

pub use handler::Req;
pub use handlers::tasks::task_view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response};

use crate::app::App;
use auth::Credentials;
use body::Body;
use error::ApiError;
use handler::HandlerResult;
use router::Lookup;

/// The request pipeline, in order: normalise the path, route, authenticate, read the body
/// (bounded in size and time), run the handler (isolated, so a panic becomes a 500), render
/// errors, and finish the response (HEAD, headers, request id). Each step may answer early.
/// Every request is then counted (by route template) and logged once.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = normalize(req.uri().path()).to_owned();
    let request_id = request_id(req.headers());
    let mut seen = Seen {
        slot: app.metrics.unmatched_slot(),
        user: None,
    };
    let mut res = match dispatch(Arc::clone(&app), req, &path, peer, &mut seen).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    };
    if method == Method::HEAD {
        let len = res.body().size_hint().exact();
        *res.body_mut() = body::empty();
        if let Some(len) = len {
            res.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let headers = res.headers_mut();
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(REQUEST_ID, request_id.clone());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    app.metrics.record(seen.slot, status, elapsed);
    access_log(
        &method,
        app.metrics.route(seen.slot),
        status,
        elapsed,
        seen.user,
        &request_id,
    );
    res
}

/// What the pipeline learnt of a request, for its metrics and log line.
struct Seen {
    /// The route's slot in the request counters.
    slot: usize,
    /// The authenticated caller's id.
    user: Option<u64>,
}

/// The request id header, taken from the client when sane, else generated.
const REQUEST_ID: &str = "x-request-id";
/// Longest client request id honoured.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` when it is 1 to [`MAX_REQUEST_ID`] characters of
/// `[A-Za-z0-9._:/+=@-]` (safe in any log format); otherwise 128 random bits in hex.
#[must_use]
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let sane = |v: &&HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_REQUEST_ID
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:/+=@-".contains(c))
    };
    if let Some(id) = headers.get(REQUEST_ID).filter(sane) {
        return id.clone();
    }
    let random: [u8; 16] = rand::random();
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Logs a finished request once (target `forge::access`, level info): method, route
/// template (never the raw path, which may carry ids and query strings), status, duration,
/// user id (when authenticated) and request id. No header, cookie or body is logged.
fn access_log(
    method: &Method,
    route: &str,
    status: u16,
    elapsed: Duration,
    user: Option<u64>,
    request_id: &HeaderValue,
) {
    #[allow(clippy::cast_precision_loss)] // microseconds far below 2^52
    let duration_ms = crate::metrics::micros(elapsed) as f64 / 1e3;
    let request_id = request_id.to_str().unwrap_or("-");
    if let Some(user) = user {
        tracing::info!(target: "forge::access", method = method.as_str(), route, status,
            duration_ms, user, request_id, "request");
    } else {
        tracing::info!(target: "forge::access", method = method.as_str(), route, status,
            duration_ms, request_id, "request");
    }
}

async fn dispatch(
    app: Arc<App>,
    req: Request<Incoming>,
    path: &str,
    peer: SocketAddr,
    seen: &mut Seen,
) -> HandlerResult {
    let (need, handler, params) = match app.router.lookup(req.method(), path) {
        Lookup::Found(route, params) => {
            seen.slot = route.slot;
            (route.need, route.handler, params)
        }
        Lookup::MethodNotAllowed(allow) => return Err(ApiError::MethodNotAllowed(allow)),
        Lookup::NotFound if serves_page(req.method(), path) => {
            seen.slot = app.metrics.page_slot();
            return Ok(handlers::site::page(req.uri().path(), req.headers()));
        }
        Lookup::NotFound => return Err(ApiError::NotFound),
    };
    if !req.method().is_safe() && refuse_cross_origin(req.headers(), &app.config.trusted_origins) {
        return Err(ApiError::CrossOrigin);
    }
    let (mut parts, incoming) = req.into_parts();
    let caller = match need {
        auth::Need::Anonymous => None,
        auth::Need::Metrics if scraper(&parts.headers, app.metrics_token.as_ref()) => None,
        need => need.admit(
            Credentials::from_headers(&parts.headers)
                .resolve(&app.services)
                .await?,
        )?,
    };
    seen.user = caller.as_ref().map(|c| c.user().id);
    let access = match (need, &caller) {
        (auth::Need::Project(permission), Some(user)) => {
            let project = params
                .iter()
                .find(|(k, _)| k == "project_id")
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .filter(|&id| id > 0)
                .ok_or_else(|| ApiError::BadRequest("Invalid project ID".into()))?;
            Some(app.services.access(user.user(), project, permission)?)
        }
        _ => None,
    };
    let body = read_body(
        &parts.headers,
        incoming,
        app.config.max_body_bytes,
        Duration::from_secs(app.config.body_timeout_secs),
    )
    .await?;
    let req = Req {
        app,
        caller,
        params,
        headers: parts.headers,
        body,
        peer,
        query: parts.uri.query().map(str::to_owned),
        access,
        upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
    };
    match tokio::spawn(handler(req)).await {
        Ok(result) => result,
        Err(panic) => Err(ApiError::internal(&panic)),
    }
}

/// Whether the request carries the scraper's metrics token as its Bearer token.
fn scraper(headers: &HeaderMap, token: Option<&crate::metrics::scrape::ScrapeToken>) -> bool {
    let Some(token) = token else {
        return false;
    };
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| auth::parse_authorization(v.as_bytes()))
        .and_then(Result::ok)
        .is_some_and(|presented| token.matches(presented))
}

/// Whether a request the route table does not know gets the web page (or Swagger UI): any
/// `GET`/`HEAD` outside `/api`, as upstream serves its app for every non-API path.
fn serves_page(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && path != "/api"
        && !path.starts_with("/api/")
}

/// CSRF guard for state-changing requests: refuses one a browser sent from another site's
/// page. Bearer requests pass (a page on another origin cannot add `Authorization` without a
/// CORS preflight, which Forge never grants), as do clients that are not browsers (curl sends
/// neither header). A browser's `Sec-Fetch-Site` decides when present; otherwise its `Origin`
/// must name this host (`Host`) or one of `trusted` (`--trusted-origins`).
fn refuse_cross_origin(headers: &HeaderMap, trusted: &[String]) -> bool {
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| auth::parse_authorization(v.as_bytes()))
        .is_some_and(|t| t.is_ok());
    if bearer {
        return false;
    }
    let origin = headers
        .get(hyper::header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("null"));
    if origin.is_some_and(|o| {
        trusted
            .iter()
            .any(|t| t.trim_end_matches('/').eq_ignore_ascii_case(o))
    }) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = origin else {
        return false;
    };
    let authority = origin.split_once("://").map(|(_, a)| a);
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    !matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Reads the whole body, refusing more than `limit` bytes (413) or a body slower than
/// `timeout` (408).
async fn read_body(
    headers: &HeaderMap,
    incoming: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    match tokio::time::timeout(timeout, Limited::new(incoming, limit).collect()).await {
        Err(_) => Err(ApiError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Ok(Err(e)) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Strips trailing slashes (`/api/user/` is `/api/user`), keeping the root.
fn normalize(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_slashes() {
        assert_eq!(normalize("/api/user/"), "/api/user");
        assert_eq!(normalize("/api/user//"), "/api/user");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize(""), "/");
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    hyper::header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn cross_origin_guard() {
        let trusted = vec!["https://forge.example.com".to_owned()];
        let refused =
            |pairs: &[(&'static str, &'static str)]| refuse_cross_origin(&headers(pairs), &trusted);
        // curl and other non-browser clients send neither header.
        assert!(!refused(&[("host", "h:3000")]));
        assert!(!refused(&[("host", "h:3000"), ("origin", "http://h:3000")]));
        assert!(!refused(&[("host", "H:3000"), ("origin", "http://h:3000")]));
        assert!(refused(&[
            ("host", "h:3000"),
            ("origin", "http://evil.test")
        ]));
        assert!(refused(&[("host", "h:3000"), ("origin", "null")]));
        assert!(refused(&[("origin", "http://h:3000")]));
        // Sec-Fetch-Site decides when a browser sends it (proxies may rewrite Host).
        assert!(!refused(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "https://forge.lan"),
            ("sec-fetch-site", "same-origin"),
        ]));
        assert!(refused(&[
            ("host", "h:3000"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(refused(&[
            ("host", "h:3000"),
            ("sec-fetch-site", "same-site")
        ]));
        assert!(!refused(&[("sec-fetch-site", "none")]));
        // A trusted origin passes; Bearer requests are never cookie-authenticated.
        assert!(!refused(&[
            ("host", "10.0.0.1:3000"),
            ("origin", "https://forge.example.com"),
            ("sec-fetch-site", "cross-site"),
        ]));
        assert!(!refused(&[
            ("origin", "http://evil.test"),
            ("authorization", "Bearer abc"),
        ]));
        assert!(refused(&[
            ("origin", "http://evil.test"),
            ("authorization", "Basic abc"),
        ]));
    }

    #[test]
    fn pages_outside_the_api() {
        assert!(serves_page(&Method::GET, "/"));
        assert!(serves_page(&Method::HEAD, "/projects/1"));
        assert!(serves_page(&Method::GET, "/apis"));
        assert!(!serves_page(&Method::GET, "/api"));
        assert!(!serves_page(&Method::GET, "/api/nope"));
        assert!(!serves_page(&Method::POST, "/"));
    }
}
