//! Remote runners: the runner protocol under `/api/internal/runners` (authenticated by the
//! registration token, then by `X-Runner-Token`), and the administrators' `/api/runners`.

use hyper::StatusCode;
use serde::Serialize;

use crate::agent::protocol::{Register, Registered, Report, TOKEN_HEADER};
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::{HandlerResult, Req};
use crate::model::RemoteRunner;
use crate::service::runners::{RunnerActive, RunnerInput};

/// A runner as the API shows it (never its token).
#[derive(Debug, Serialize)]
struct RunnerView<'a> {
    id: u64,
    /// Upstream's project runners; Forge's runners are global.
    project_id: Option<u64>,
    name: &'a str,
    webhook: &'a str,
    max_parallel_tasks: u32,
    active: bool,
    tags: &'a [String],
    /// Last contact since the server started (RFC 3339), or null.
    touched: Option<String>,
    /// Whether it polled within `--runner-timeout`.
    online: bool,
}

fn view<'a>(req: &Req, r: &'a RemoteRunner) -> RunnerView<'a> {
    let touched = req.app.runner.runners_touched().get(&r.id).copied();
    RunnerView {
        id: r.id,
        project_id: None,
        name: &r.name,
        webhook: &r.webhook,
        max_parallel_tasks: r.max_parallel_tasks,
        active: r.active,
        tags: &r.tags,
        touched: touched.map(crate::clock::rfc3339),
        online: touched.is_some() && req.app.runner.runner_online(r.id),
    }
}

/// The runner the request's `X-Runner-Token` names (active).
fn caller(req: &Req) -> Result<RemoteRunner, ApiError> {
    let token = req
        .headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    Ok(req.app.services.runner_by_token(token.trim())?)
}

/// Tells the dispatcher that runner `id` may no longer run anything (`why`).
fn gone(req: &Req, id: u64, why: &str) -> Result<(), ApiError> {
    let active = req.app.services.active_runners()?;
    req.app.runner.runner_gone(id, why, active);
    Ok(())
}

/// `POST /api/internal/runners` `{registration_token, name, webhook, max_parallel_tasks,
/// tags}` → 201 `{id, token}`: a new active runner; 401 for a wrong registration token or
/// when the server has none.
pub async fn register(req: Req) -> HandlerResult {
    let input: Register = req.json()?;
    let configured = req
        .app
        .config
        .runner_registration_token()
        .map_err(|e| ApiError::from(crate::service::Error::Internal(e)))?;
    let (r, token) = req
        .app
        .services
        .register_runner(configured.as_ref().map(|s| s.0.as_str()), input)
        .await?;
    req.app
        .runner
        .runners_changed(req.app.services.active_runners()?);
    Ok(body::json(
        StatusCode::CREATED,
        &Registered { id: r.id, token },
    ))
}

/// `GET /api/internal/runners[?wait=SECS]` → 200 `{jobs, stop, timeout_secs}`: jobs to
/// start and tasks to kill; with `wait`, answers as soon as there is something (or after
/// `wait` seconds, bounded).
pub async fn poll(req: Req) -> HandlerResult {
    let runner = caller(&req)?;
    let wait = match req.query_param("wait") {
        None => 0,
        Some(w) => w
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest("wait: a whole number of seconds".into()))?,
    };
    let answer = req.app.runner.runner_poll(&runner, wait).await;
    Ok(body::json(StatusCode::OK, &answer))
}

/// `PUT /api/internal/runners` `{jobs: [{task_id, status, log_offset, log, commit}]}` → 200
/// `{stop}`: status, output and commit of the runner's jobs, stored durably before the
/// answer; reported jobs that are not the runner's come back in `stop`.
pub async fn report(req: Req) -> HandlerResult {
    let runner = caller(&req)?;
    let input: Report = req.json()?;
    let answer = req.app.runner.runner_report(&runner, input).await?;
    Ok(body::json(StatusCode::OK, &answer))
}

/// `DELETE /api/internal/runners` → 204: the runner removes itself; its tasks end `error`.
pub async fn unregister(req: Req) -> HandlerResult {
    let runner = caller(&req)?;
    req.app.services.delete_runner(runner.id).await?;
    gone(&req, runner.id, "unregistered")?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `GET /api/runners` → every runner, by id.
pub async fn list(req: Req) -> HandlerResult {
    let runners = req.app.services.runners()?;
    let views: Vec<RunnerView<'_>> = runners.iter().map(|r| view(&req, r)).collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `POST /api/runners` `{name, webhook, max_parallel_tasks, active, tags}` → 201: the
/// runner, with its `token` (shown only here).
pub async fn create(req: Req) -> HandlerResult {
    let input: RunnerInput = req.json()?;
    let (r, token) = req.app.services.create_runner(input).await?;
    req.app
        .runner
        .runners_changed(req.app.services.active_runners()?);
    let mut json = serde_json::to_value(view(&req, &r))
        .map_err(|e| ApiError::from(crate::service::Error::Internal(e.to_string())))?;
    json["token"] = token.into();
    Ok(body::json(StatusCode::CREATED, &json))
}

/// `GET /api/runners/{runner_id}` → the runner; 404 when there is none.
pub async fn get(req: Req) -> HandlerResult {
    let id = req.id("runner_id", "runner")?;
    let r = req.app.services.runner(id)?;
    Ok(body::json(StatusCode::OK, &view(&req, &r)))
}

/// `PUT /api/runners/{runner_id}` (fields as `POST`; left out: unchanged) → 204. A runner
/// made inactive is refused from its next request on, and its tasks end `error`.
pub async fn update(req: Req) -> HandlerResult {
    let id = req.id("runner_id", "runner")?;
    let input: RunnerInput = req.json()?;
    let r = req.app.services.update_runner(id, input).await?;
    changed(&req, &r)?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `POST /api/runners/{runner_id}/active` `{"active": bool}` → 204 (as `PUT` with `active`).
pub async fn set_active(req: Req) -> HandlerResult {
    let id = req.id("runner_id", "runner")?;
    let input: RunnerActive = req.json()?;
    let active = input
        .active
        .ok_or_else(|| ApiError::BadRequest("active: required (true or false)".into()))?;
    let fields = RunnerInput {
        active: Some(active),
        ..RunnerInput::default()
    };
    let r = req.app.services.update_runner(id, fields).await?;
    changed(&req, &r)?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

fn changed(req: &Req, r: &RemoteRunner) -> Result<(), ApiError> {
    if r.active {
        req.app
            .runner
            .runners_changed(req.app.services.active_runners()?);
        Ok(())
    } else {
        gone(req, r.id, "was deactivated")
    }
}

/// `DELETE /api/runners/{runner_id}` → 204: its token stops working at once and its tasks
/// end `error`; 404 when there is none.
pub async fn delete(req: Req) -> HandlerResult {
    let id = req.id("runner_id", "runner")?;
    req.app.services.delete_runner(id).await?;
    gone(&req, id, "was deleted")?;
    Ok(body::status(StatusCode::NO_CONTENT))
}
