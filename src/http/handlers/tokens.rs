//! The caller's API tokens.

use hyper::StatusCode;
use serde::Serialize;

use crate::clock::rfc3339;
use crate::http::body;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;
use crate::model::ApiToken;

/// A token as the API shows it; `id` is the token itself only in the answer to its creation.
#[derive(Serialize)]
struct TokenView {
    id: String,
    created: String,
    expired: bool,
    user_id: u64,
}

impl TokenView {
    fn new(id: String, t: &ApiToken) -> Self {
        Self {
            id,
            created: rfc3339(t.created),
            expired: t.expired,
            user_id: t.user_id,
        }
    }
}

/// `GET /api/user/tokens`: every token of the caller, expired ones too, `id` = handle.
pub async fn list(req: Req) -> HandlerResult {
    let tokens = req.app.services.tokens(req.user()?)?;
    let views: Vec<TokenView> = tokens
        .iter()
        .map(|t| TokenView::new(t.handle.clone(), t))
        .collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `POST /api/user/tokens` (body ignored) → 201 with the new token as `id`, shown only here.
/// Stores only its hash, durably.
pub async fn create(req: Req) -> HandlerResult {
    let (token, record) = req.app.services.create_token(req.user()?).await?;
    Ok(body::json(
        StatusCode::CREATED,
        &TokenView::new(token, &record),
    ))
}

/// `DELETE /api/user/tokens/{token_id}` → 204: expires the caller's token named by its handle
/// or by the token itself; it stays listed with `expired: true`.
pub async fn expire(req: Req) -> HandlerResult {
    let id = req.param("token_id")?;
    req.app.services.expire_token(req.user()?, &id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}
