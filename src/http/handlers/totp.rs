//! Two-factor login (API.md §12.8): enabling, the QR code, disabling, and the verify step of
//! a login.

use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;
use crate::http::auth::session_cookie;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::{HandlerResult, Req};
use crate::service::auth::secret_hash;

/// What enabling answers (upstream's `UserTotp` with the secret's URL), plus all recovery
/// codes; `recovery_code` is the first, for upstream clients that show one.
#[derive(Serialize)]
struct EnabledView<'a> {
    id: u64,
    user_id: u64,
    created: String,
    url: &'a str,
    recovery_code: &'a str,
    recovery_codes: &'a [String],
}

/// `POST /api/users/{user_id}/2fas/totp`: enables TOTP for the caller (only for themselves)
/// and answers `201` with the `otpauth://` URL and the recovery codes, shown this once.
/// Stores the sealed secret and the codes' hashes; records an event.
pub async fn enable(req: Req) -> HandlerResult {
    let user = req.user()?;
    let target = req.id("user_id", "user")?;
    let done = req.app.services.enable_totp(user, target).await?;
    Ok(body::json(
        StatusCode::CREATED,
        &EnabledView {
            id: done.totp.id,
            user_id: done.totp.user_id,
            created: rfc3339(done.totp.created),
            url: &done.url,
            recovery_code: done.recovery_codes.first().map_or("", String::as_str),
            recovery_codes: &done.recovery_codes,
        },
    ))
}

/// `GET /api/users/{user_id}/2fas/totp/{totp_id}/qr`: the secret's QR code as PNG, for the
/// caller's own enrolment, until a first code has been verified. No side effects.
pub async fn qr(req: Req) -> HandlerResult {
    let user = req.user()?;
    let target = req.id("user_id", "user")?;
    let id = req.id("totp_id", "TOTP")?;
    let png = req.app.services.totp_qr(user, target, id)?;
    let mut res = hyper::Response::new(body::full(png));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
    Ok(res)
}

/// `DELETE /api/users/{user_id}/2fas/totp/{totp_id}`: disables TOTP (the user, or an admin).
/// Deletes the enrolment and its recovery codes; records an event.
pub async fn disable(req: Req) -> HandlerResult {
    let user = req.user()?;
    let target = req.id("user_id", "user")?;
    let id = req.id("totp_id", "TOTP")?;
    req.app.services.disable_totp(user, target, id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VerifyBody {
    passcode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RecoveryBody {
    recovery_code: Option<String>,
}

/// `POST /api/auth/verify` `{"passcode": "123456"}`: the second step of a login. Answers 204
/// and lifts the session's restriction; from a session already verified (or a token) it only
/// checks the code (the enable flow's confirmation). Counts failures for throttling.
pub async fn verify(req: Req) -> HandlerResult {
    let input: VerifyBody = req.json()?;
    let user = req.user()?;
    let passcode = input
        .passcode
        .ok_or_else(|| ApiError::BadRequest("passcode: required".into()))?;
    let session = session_cookie(&req.headers).map(|id| secret_hash(&id));
    let ip = req.client_ip().to_string();
    req.app
        .services
        .verify_totp(user, session, &passcode, &ip)
        .await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `POST /api/auth/recovery` `{"recovery_code": "abcd-efgh-ijkl-mnop"}`: the second step of a
/// login with a recovery code, which then no longer works. Answers 204 as
/// [`verify`] does; records an event.
pub async fn recovery(req: Req) -> HandlerResult {
    let input: RecoveryBody = req.json()?;
    let user = req.user()?;
    let code = input
        .recovery_code
        .ok_or_else(|| ApiError::BadRequest("recovery_code: required".into()))?;
    let session = session_cookie(&req.headers).map(|id| secret_hash(&id));
    let ip = req.client_ip().to_string();
    req.app
        .services
        .recover_totp(user, session, &code, &ip)
        .await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}
