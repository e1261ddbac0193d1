//! Alerts: `POST /api/project/{project_id}/notifications/test` checks every configured
//! channel with a test message.

use hyper::StatusCode;
use serde_json::{Map, Value, json};

use crate::http::body;
use crate::http::handler::{HandlerResult, Req};

/// `POST /api/project/{project_id}/notifications/test` → 200 `{"<channel>": {"ok": true} |
/// {"ok": false, "error": "..."}}`, one member per configured channel (`{}` when none is):
/// sends a test message on each at once, each bounded by the delivery timeout; not through
/// the outbox (nothing is retried or stored). Email goes to the project's members with
/// `alert` on. The body, if any, must be a JSON object (ignored).
pub async fn test(req: Req) -> HandlerResult {
    if !req.body.iter().all(u8::is_ascii_whitespace) {
        req.json::<Map<String, Value>>()?;
    }
    let access = req.access()?;
    let recipients = req
        .app
        .services
        .members(access)?
        .into_iter()
        .filter(|m| m.user.alert && !m.user.email.is_empty())
        .map(|m| m.user.email)
        .collect();
    let sent_by = format!("user {}", access.user.username);
    let results = req
        .app
        .notifier
        .test(&access.project, &sent_by, recipients)
        .await;
    let answer: Map<String, Value> = results
        .into_iter()
        .map(|(kind, result)| {
            let value = match result {
                Ok(()) => json!({ "ok": true }),
                Err(error) => json!({ "ok": false, "error": error }),
            };
            (kind.name().to_owned(), value)
        })
        .collect();
    Ok(body::json(StatusCode::OK, &answer))
}
