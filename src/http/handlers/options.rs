//! `/api/options` (system administrators): every option as one object; `POST` sets one and
//! echoes it back (200), as upstream.

use hyper::StatusCode;
use serde_json::json;

use crate::http::body;
use crate::http::handler::{HandlerResult, Req};
use crate::service::options::OptionInput;

/// `GET /api/options` → `{"<key>": "<value>", ...}`.
pub async fn list(req: Req) -> HandlerResult {
    Ok(body::json(StatusCode::OK, &req.app.services.options()?))
}

/// `POST /api/options` `{"key", "value"}` → 200 with the stored option; 400 for a key that is
/// not `^[\w.]+$`.
pub async fn set(req: Req) -> HandlerResult {
    let input: OptionInput = req.json()?;
    let (key, value) = req.app.services.set_option(input).await?;
    Ok(body::json(
        StatusCode::OK,
        &json!({"key": key, "value": value}),
    ))
}
