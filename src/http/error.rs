//! Errors an HTTP handler returns, and the one function that renders them.

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::body::{self, Body};
use crate::service;

/// An error answered to the client; every one is rendered as `{"error": "..."}`.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with a message for the client.
    BadRequest(String),
    /// 401: missing, invalid or expired credentials (and upstream's user-route denials).
    Unauthorized,
    /// 401: a session that awaits its second factor, outside the verify routes.
    SecondFactorRequired,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 403: a cookie-authenticated (or anonymous) state-changing request from another origin.
    CrossOrigin,
    /// 404: no such object or route.
    NotFound,
    /// 409: conflicts with the current state.
    Conflict(String),
    /// 400 with `"inUse": true`: still referenced.
    InUse(String),
    /// 405: the path exists with other methods (listed in `Allow`).
    MethodNotAllowed(String),
    /// 408: the body did not arrive in time.
    Timeout,
    /// 413: the body is larger than the limit.
    PayloadTooLarge(usize),
    /// 429: too many failed logins.
    TooManyRequests(u64),
    /// 503: too busy right now; retry after this many seconds.
    Unavailable(u64),
    /// 507: the disk is full; nothing of the request was stored.
    StorageFull,
    /// 503: the store is reopening after a failed write; retry shortly.
    StorageUnavailable,
    /// 500: logged where it is created, never detailed to the client.
    Internal,
}

/// Seconds a client is told to wait before retrying a write the disk refused.
const STORAGE_RETRY_SECS: u64 = 1;

impl ApiError {
    /// A 500 that logs its cause (the only place internal detail goes).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        ApiError::Internal
    }

    /// Renders the error as a response.
    #[must_use]
    pub fn into_response(self) -> Response<Body> {
        let (status, message) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "authentication required".into()),
            ApiError::SecondFactorRequired => {
                return body::json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({
                        "error": "two-factor verification required: POST /api/auth/verify \
                                  {\"passcode\"} (or /api/auth/recovery {\"recovery_code\"})",
                        "verify": "totp",
                    }),
                );
            }
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "permission denied".into()),
            ApiError::CrossOrigin => (
                StatusCode::FORBIDDEN,
                "cross-origin request refused: use an API token (Bearer) or this server's own page"
                    .into(),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not found".into()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
            ApiError::InUse(m) => {
                return body::json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": m, "inUse": true }),
                );
            }
            ApiError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
            }
            ApiError::Timeout => (StatusCode::REQUEST_TIMEOUT, "request body timed out".into()),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes"),
            ),
            ApiError::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins, try again later".into(),
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many logins at once, try again shortly".into(),
            ),
            ApiError::StorageFull => (
                StatusCode::INSUFFICIENT_STORAGE,
                "the server's disk is full: nothing was stored; retry once space is freed".into(),
            ),
            ApiError::StorageUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is temporarily unavailable, try again shortly".into(),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error".into(),
            ),
        };
        let mut res = body::json(status, &serde_json::json!({ "error": message }));
        match self {
            ApiError::TooManyRequests(secs) | ApiError::Unavailable(secs) => {
                res.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::StorageFull | ApiError::StorageUnavailable => {
                res.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(STORAGE_RETRY_SECS));
            }
            ApiError::MethodNotAllowed(allow) => {
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    res.headers_mut().insert(hyper::header::ALLOW, v);
                }
            }
            _ => {}
        }
        res
    }
}

impl From<service::Error> for ApiError {
    fn from(e: service::Error) -> Self {
        match e {
            service::Error::NotFound => ApiError::NotFound,
            service::Error::Invalid(m) => ApiError::BadRequest(m),
            service::Error::Unauthorized => ApiError::Unauthorized,
            service::Error::Forbidden => ApiError::Forbidden,
            service::Error::Conflict(m) => ApiError::Conflict(m),
            service::Error::InUse(m) => ApiError::InUse(m),
            service::Error::Throttled { retry_after } => ApiError::TooManyRequests(retry_after),
            service::Error::Busy { retry_after } => ApiError::Unavailable(retry_after),
            // Logged once by the store when it turns unhealthy, not per request.
            service::Error::StorageFull => ApiError::StorageFull,
            service::Error::StorageUnavailable => ApiError::StorageUnavailable,
            e @ service::Error::Internal(_) => ApiError::internal(&e),
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::from(crate::service::Error::from(e))
    }
}

impl From<body::DecodeError> for ApiError {
    fn from(e: body::DecodeError) -> Self {
        ApiError::BadRequest(e.0)
    }
}
