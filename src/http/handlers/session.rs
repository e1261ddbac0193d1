//! Login and logout.

use hyper::header::{HeaderValue, SET_COOKIE, USER_AGENT};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::http::auth::{SESSION_COOKIE, session_cookie};
use crate::http::body::{self, Body};
use crate::http::error::ApiError;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;
use crate::service::LoginClient;

/// `GET /api/auth/login`: what the login page offers. No side effects.
pub async fn login_options(_req: Req) -> HandlerResult {
    Ok(body::json(
        StatusCode::OK,
        &json!({ "oidc_providers": [], "login_with_password": true }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginBody {
    auth: Option<String>,
    password: Option<String>,
}

/// `POST /api/auth/login` `{"auth", "password"}`: by username or email. Creates a session
/// (durable before the answer) and sets its cookie; counts failures for throttling.
pub async fn login(req: Req) -> HandlerResult {
    let input: LoginBody = req.json()?;
    let client = LoginClient {
        ip: req.client_ip().to_string(),
        user_agent: req
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(256)
            .collect(),
    };
    let login = input.auth.unwrap_or_default();
    let password = input.password.unwrap_or_default();
    if login.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    let session_id = req.app.services.login(&login, password, client).await?;
    let secure = if req.app.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{SESSION_COOKIE}={session_id}; Path=/; HttpOnly; SameSite=Lax{secure}");
    Ok(with_cookie(StatusCode::NO_CONTENT, &cookie))
}

/// `POST /api/auth/logout`: revokes the session server-side (a replayed cookie gets 401) and
/// clears the cookie. Works without a session too.
pub async fn logout(req: Req) -> HandlerResult {
    if let Some(id) = session_cookie(&req.headers) {
        req.app.services.logout(&id).await?;
    }
    let secure = if req.app.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; \
         HttpOnly; SameSite=Lax{secure}"
    );
    Ok(with_cookie(StatusCode::NO_CONTENT, &cookie))
}

fn with_cookie(status: StatusCode, cookie: &str) -> Response<Body> {
    let mut res = body::status(status);
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().insert(SET_COOKIE, v);
    }
    res
}
