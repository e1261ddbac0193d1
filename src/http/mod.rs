//! The HTTP layer: the request pipeline, route table, auth middleware, bodies and error
//! mapping. hyper types stay in here.

pub mod auth;
pub mod body;
pub mod error;
mod handlers;
pub mod router;

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
use crate::model::User;
use crate::service::projects::Access;
use auth::Credentials;
use body::Body;
use error::ApiError;
use router::{HandlerResult, Lookup};

/// A request as a handler sees it: authenticated, routed, body read.
#[derive(Debug)]
pub struct Req {
    /// The server's state.
    pub app: Arc<App>,
    /// The authenticated caller (always set on routes that need a user).
    pub caller: Option<User>,
    /// Path parameters, raw (see [`Req::param`]).
    pub params: Vec<(String, String)>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The whole request body (bounded by the body limit).
    pub body: Bytes,
    /// The client's address.
    pub peer: SocketAddr,
    /// The query string, if any.
    pub query: Option<String>,
    /// What the caller may do in the route's project (project routes only).
    pub access: Option<Access>,
    /// The connection's upgrade, for `/api/ws`.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Req {
    /// The caller's access to the route's project.
    ///
    /// # Errors
    /// 404 when the route is not a project route (a programming error caught by tests).
    pub fn access(&self) -> Result<&Access, ApiError> {
        self.access.as_ref().ok_or(ApiError::NotFound)
    }

    /// Query parameter `name`, percent-decoded (`+` is a space).
    #[must_use]
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == name {
                percent_decode(&v.replace('+', " "))
            } else {
                None
            }
        })
    }

    /// The authenticated caller.
    ///
    /// # Errors
    /// 401 when the route let an anonymous caller through.
    pub fn user(&self) -> Result<&User, ApiError> {
        self.caller.as_ref().ok_or(ApiError::Unauthorized)
    }

    /// Path parameter `name`, percent-decoded.
    ///
    /// # Errors
    /// 400 when it is missing or does not decode to UTF-8.
    pub fn param(&self, name: &str) -> Result<String, ApiError> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| percent_decode(v))
            .ok_or_else(|| ApiError::BadRequest(format!("invalid path parameter {name}")))
    }

    /// Path parameter `name` as an object id.
    ///
    /// # Errors
    /// 400 `Invalid <what> ID` when it is not a positive integer.
    pub fn id(&self, name: &str, what: &str) -> Result<u64, ApiError> {
        self.param(name)?
            .parse::<u64>()
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| ApiError::BadRequest(format!("Invalid {what} ID")))
    }

    /// The body decoded as JSON (see [`body::decode`]).
    ///
    /// # Errors
    /// 400 naming the offending field.
    pub fn json<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        Ok(body::decode(&self.body)?)
    }
}

/// The request pipeline, in order: normalise the path, route, authenticate, read the body
/// (bounded in size and time), run the handler (isolated, so a panic becomes a 500), render
/// errors, and finish the response (HEAD, headers). Each step may answer early.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = normalize(req.uri().path()).to_owned();
    let mut res = match dispatch(app, req, &path, peer).await {
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
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    tracing::debug!(%method, %path, status = res.status().as_u16(), elapsed = ?started.elapsed(), "request");
    res
}

async fn dispatch(
    app: Arc<App>,
    req: Request<Incoming>,
    path: &str,
    peer: SocketAddr,
) -> HandlerResult {
    let (need, handler, params) = match app.router.lookup(req.method(), path) {
        Lookup::Found(route, params) => (route.need, route.handler, params),
        Lookup::MethodNotAllowed(allow) => return Err(ApiError::MethodNotAllowed(allow)),
        Lookup::NotFound => return Err(ApiError::NotFound),
    };
    let (mut parts, incoming) = req.into_parts();
    let caller = match need {
        auth::Need::Anonymous => None,
        need => need.admit(
            Credentials::from_headers(&parts.headers)
                .resolve(&app.services)
                .await?,
        )?,
    };
    let access = match (need, &caller) {
        (auth::Need::Project(permission), Some(user)) => {
            let project = params
                .iter()
                .find(|(k, _)| k == "project_id")
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .filter(|&id| id > 0)
                .ok_or_else(|| ApiError::BadRequest("Invalid project ID".into()))?;
            Some(app.services.access(user, project, permission)?)
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

/// Decodes `%XX` escapes; `None` for a broken escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trailing_slashes() {
        assert_eq!(normalize("/api/user/"), "/api/user");
        assert_eq!(normalize("/api/user//"), "/api/user");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize(""), "/");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc%3D").as_deref(), Some("abc="));
        assert_eq!(percent_decode("%e2%9c%93").as_deref(), Some("✓"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    proptest! {
        #[test]
        fn percent_round_trip(s in "\\PC{0,40}") {
            let encoded: String = crate::service::auth::hex(s.as_bytes())
                .as_bytes()
                .chunks(2)
                .flat_map(|pair| [b'%', pair[0], pair[1]])
                .map(char::from)
                .collect();
            prop_assert_eq!(percent_decode(&encoded), Some(s));
        }
    }
}
