//! Terraform/OpenTofu plan approval: `POST .../tasks/{task_id}/confirm` applies the plan a
//! task waits with (`waiting_confirmation`), `POST .../reject` ends the task without applying.

use hyper::StatusCode;

use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::{HandlerResult, Req};
use crate::model::Task;

/// The task named by the path (404 when the project has none), after checking that the
/// body, if any, is a JSON object (upstream's clients send `{}`).
fn task(req: &Req) -> Result<Task, ApiError> {
    if !req.body.iter().all(u8::is_ascii_whitespace) {
        req.json::<serde_json::Map<String, serde_json::Value>>()?;
    }
    let id = req.id("task_id", "task")?;
    Ok(req.app.services.task(req.access()?, id)?)
}

/// `POST /api/project/{project_id}/tasks/{task_id}/confirm` → 204: the task goes
/// `confirmed`, then `running` while its saved plan is applied; 400 when it is not waiting
/// for confirmation.
pub async fn confirm(req: Req) -> HandlerResult {
    let task = task(&req)?;
    req.app.runner.confirm(task.id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `POST /api/project/{project_id}/tasks/{task_id}/reject` → 204: the task ends `stopped`
/// without applying its plan, and its workspace (with the plan file) is removed; 400 when it
/// is not waiting for confirmation.
pub async fn reject(req: Req) -> HandlerResult {
    let task = task(&req)?;
    req.app.runner.reject(task.id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}
