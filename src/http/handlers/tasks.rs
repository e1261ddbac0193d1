//! Tasks: launch, read, follow output, stop, delete.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::clock::rfc3339;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;
use crate::http::live::{LiveCaller, Verdict};
use crate::model::{Permissions, Task, Template, User};
use crate::runner::{LiveEvent, Location};
use crate::service::tasks::{LIST_LIMIT, StatsFilter, TaskInput, TaskPage, parse_day};

/// Formats Unix microseconds as RFC 3339 with microseconds.
fn rfc3339_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let base = rfc3339(secs);
    format!("{}.{micros:06}Z", base.trim_end_matches('Z'))
}

/// A task as the API shows it (§7.1); `secret` is never returned. `params` (a terraform or
/// tofu task's options, as upstream) only where the task has them. Serialized straight from
/// the task's fields (no intermediate JSON tree: task lists are a hot read).
#[derive(Serialize)]
pub struct TaskJson<'a> {
    id: u64,
    template_id: u64,
    project_id: u64,
    status: &'static str,
    debug: bool,
    dry_run: bool,
    diff: bool,
    playbook: &'a str,
    environment: &'a str,
    limit: &'a str,
    secret: &'a str,
    arguments: Option<&'a str>,
    git_branch: Option<&'a str>,
    user_id: Option<u64>,
    integration_id: Option<u64>,
    schedule_id: Option<u64>,
    created: String,
    start: Option<String>,
    end: Option<String>,
    message: &'a str,
    commit_hash: Option<&'a str>,
    commit_message: &'a str,
    build_task_id: Option<u64>,
    version: Option<&'a str>,
    inventory_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
    /// The remote runner it was given to (shown only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_id: Option<u64>,
}

impl<'a> TaskJson<'a> {
    /// Task `t` as shown, with `secret` as its `secret` field.
    #[must_use]
    pub fn new(t: &'a Task, secret: &'a str) -> Self {
        // Most tasks have no options: skip the parse.
        let params = if t.params.is_empty() {
            None
        } else {
            serde_json::from_str::<Value>(&t.params)
                .ok()
                .filter(Value::is_object)
        };
        Self {
            id: t.id,
            template_id: t.template_id,
            project_id: t.project_id,
            status: t.status.as_str(),
            debug: t.debug,
            dry_run: t.dry_run,
            diff: t.diff,
            playbook: &t.playbook,
            environment: &t.environment,
            limit: &t.limit,
            secret,
            arguments: t.arguments.as_deref(),
            git_branch: t.git_branch.as_deref(),
            user_id: t.user_id,
            integration_id: t.integration_id,
            schedule_id: t.schedule_id,
            created: rfc3339(t.created),
            start: t.start.map(rfc3339),
            end: t.end.map(rfc3339),
            message: &t.message,
            commit_hash: t.commit_hash.as_deref(),
            commit_message: &t.commit_message,
            build_task_id: t.build_task_id,
            version: t.version.as_deref(),
            inventory_id: t.inventory_id,
            params,
            runner_id: t.runner_id,
        }
    }
}

/// A task as the API shows it, as a JSON value (see [`TaskJson`]).
#[must_use]
pub fn task_view(t: &Task, secret: &str) -> Value {
    serde_json::to_value(TaskJson::new(t, secret)).unwrap_or(Value::Null)
}

/// A list element (§7.2): the task plus its template's fields and the starter's name.
#[derive(Serialize)]
struct ListedTask<'a> {
    #[serde(flatten)]
    task: TaskJson<'a>,
    tpl_playbook: &'a str,
    tpl_alias: &'a str,
    tpl_type: &'a str,
    tpl_app: &'a str,
    user_name: Option<&'a str>,
    build_task: Option<TaskJson<'a>>,
}

fn task_with_tpl<'a>(
    t: &'a Task,
    templates: &'a HashMap<u64, Template>,
    users: &'a HashMap<u64, User>,
    builds: &'a HashMap<u64, Task>,
) -> ListedTask<'a> {
    let tpl = templates.get(&t.template_id);
    ListedTask {
        task: TaskJson::new(t, ""),
        tpl_playbook: tpl.map_or("", |t| t.playbook.as_str()),
        tpl_alias: tpl.map_or("", |t| t.name.as_str()),
        tpl_type: tpl.map_or("", |t| t.kind.as_str()),
        tpl_app: tpl.map_or("", |t| t.app.as_str()),
        user_name: t
            .user_id
            .and_then(|u| users.get(&u))
            .map(|u| u.name.as_str()),
        build_task: t
            .build_task_id
            .and_then(|b| builds.get(&b))
            .map(|b| TaskJson::new(b, "")),
    }
}

/// The build task `id` a deploy task deploys; `None` once it is deleted or pruned.
fn build_task(req: &Req, id: u64) -> Result<Option<Task>, ApiError> {
    match req.app.services.task(req.access()?, id) {
        Ok(build) => Ok(Some(build)),
        Err(e) if e.is_storage() => Err(e.into()),
        Err(_) => Ok(None),
    }
}

/// A list element's `build_task`: the build task of `t` as [`task_view`] shows it, or null.
///
/// # Errors
/// Storage failures.
pub fn build_task_view(req: &Req, t: &Task) -> Result<Value, ApiError> {
    Ok(match t.build_task_id {
        Some(b) => build_task(req, b)?.map_or(Value::Null, |b| task_view(&b, "")),
        None => Value::Null,
    })
}

/// A page of tasks as a list (§7.2), serialized straight from the page.
fn render_list(page: &TaskPage) -> hyper::Response<body::Body> {
    body::json_rendered(list_json(page))
}

/// The JSON [`render_list`] answers with (the bytes `body::json` writes).
fn list_json(page: &TaskPage) -> Bytes {
    let views: Vec<ListedTask<'_>> = page
        .tasks
        .iter()
        .map(|t| task_with_tpl(t, &page.templates, &page.users, &page.builds))
        .collect();
    let mut bytes = serde_json::to_vec(&views).unwrap_or_else(|_| b"null".to_vec());
    bytes.push(b'\n');
    bytes.into()
}

/// The newest `limit` tasks (of template `tpl`, when given) as [`render_list`] renders them,
/// rendered again only when the store has changed since (see `http::rendered`).
fn render_last(req: &Req, tpl: Option<u64>, limit: usize) -> HandlerResult {
    let access = req.access()?;
    let services = &req.app.services;
    // Read before the store (see `store::writer::Generation`).
    let generation = services.store().writer_stats().data.current();
    let key = (access.project.id, tpl, limit);
    let bytes = req.app.rendered.page(key, generation, || {
        Ok(list_json(&services.task_page(access, tpl, limit)?))
    })?;
    Ok(body::json_rendered(bytes))
}

fn last_limit(req: &Req) -> usize {
    req.query_param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| (1..=200).contains(l))
        .unwrap_or(200)
}

/// `POST /api/project/{project_id}/tasks` → 201: stores a durable `waiting` task, then queues
/// it; it starts as soon as the limits allow.
pub async fn create(req: Req) -> HandlerResult {
    let input: TaskInput = req.json()?;
    let (task, queued) = req.app.services.create_task(req.access()?, input).await?;
    req.app.runner.enqueue(&task, queued);
    Ok(body::json(StatusCode::CREATED, &TaskJson::new(&task, "{}")))
}

/// `GET /api/project/{project_id}/tasks`: the 1000 newest, newest first.
pub async fn list(req: Req) -> HandlerResult {
    Ok(render_list(&req.app.services.task_page(
        req.access()?,
        None,
        LIST_LIMIT,
    )?))
}

/// `GET /api/project/{project_id}/tasks/last?limit=N` (1..200, default 200).
pub async fn last(req: Req) -> HandlerResult {
    render_last(&req, None, last_limit(&req))
}

/// `GET /api/project/{project_id}/templates/{template_id}/tasks`.
pub async fn template_tasks(req: Req) -> HandlerResult {
    let tpl = req.id("template_id", "template")?;
    req.app.services.resource::<Template>(req.access()?, tpl)?;
    Ok(render_list(&req.app.services.task_page(
        req.access()?,
        Some(tpl),
        LIST_LIMIT,
    )?))
}

/// `GET /api/project/{project_id}/templates/{template_id}/tasks/last?limit=N`.
pub async fn template_tasks_last(req: Req) -> HandlerResult {
    let tpl = req.id("template_id", "template")?;
    req.app.services.resource::<Template>(req.access()?, tpl)?;
    render_last(&req, Some(tpl), last_limit(&req))
}

/// The route's task; upstream answers 400 (not 404) for a task outside the project.
fn task(req: &Req) -> Result<Task, ApiError> {
    let id = req.id("task_id", "task")?;
    req.app
        .services
        .task(req.access()?, id)
        .map_err(|e| match e {
            // A storage failure (full disk, reopening) is not "not found".
            e if e.is_storage() => ApiError::from(e),
            _ => ApiError::BadRequest(format!("task {id} not found in this project")),
        })
}

/// `GET /api/project/{project_id}/tasks/{task_id}`.
pub async fn get(req: Req) -> HandlerResult {
    Ok(body::json(StatusCode::OK, &TaskJson::new(&task(&req)?, "")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StopBody {
    force: Option<bool>,
}

/// `POST /api/project/{project_id}/tasks/{task_id}/stop` `{"force"}` (empty body = not forced)
/// → 204: a queued task never runs; a running one gets SIGTERM (SIGKILL when forced) on its
/// whole process group and ends `stopped`.
pub async fn stop(req: Req) -> HandlerResult {
    let task = task(&req)?;
    let force = if req.body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        req.json::<StopBody>()?.force.unwrap_or(false)
    };
    req.app.runner.stop(task.id, force).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `DELETE /api/project/{project_id}/tasks/{task_id}` → 204: system admins only (401 otherwise,
/// as upstream); a queued or running task → 400. The output goes in the same transaction.
pub async fn delete(req: Req) -> HandlerResult {
    let id = req.id("task_id", "task")?;
    req.app.services.delete_task(req.access()?, id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `GET /api/project/{project_id}/tasks/{task_id}/output[?offset=&limit=][&follow=true]`:
/// upstream's `[{task_id, task, time, output}]`, oldest first, optionally one page of it. With
/// `follow=true` the answer is `text/plain`, one line per output line, streamed as lines are
/// stored, and it ends when the task has finished.
pub async fn output(req: Req) -> HandlerResult {
    let task = task(&req)?;
    let offset = req
        .query_param("offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    if req.query_param("follow").as_deref() == Some("true") {
        return Ok(follow(&req, task, offset));
    }
    let limit = req
        .query_param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let view = move |(_, l): &(u64, crate::model::OutputLine)| json!({"task_id": task.id, "task": "", "time": rfc3339_us(l.time_us), "output": l.text});
    // The first batch is read here, so a storage failure is still an error status; an answer
    // that fits in it goes out whole, with its length.
    let first = req
        .app
        .services
        .output(&task, offset, limit.min(RAW_BATCH))?;
    if first.len() < RAW_BATCH || limit <= RAW_BATCH {
        let views: Vec<Value> = first.iter().map(view).collect();
        return Ok(body::json(StatusCode::OK, &views));
    }
    // Longer ones are streamed batch by batch: memory stays flat whatever the output's size.
    let services = Arc::clone(&req.app.services);
    let mut batch = Some(first);
    let mut left = limit;
    Ok(body::json_array(move || {
        let lines = batch.take()?;
        left = left.saturating_sub(lines.len());
        let next = lines.last().map_or(u64::MAX, |(n, _)| n + 1);
        if lines.len() == RAW_BATCH && left > 0 {
            match services.output(&task, next, left.min(RAW_BATCH)) {
                Ok(more) if !more.is_empty() => batch = Some(more),
                Ok(_) => {}
                Err(e) => tracing::error!(task = task.id, error = %e, "output cut short"),
            }
        }
        Some(body::json_elements(lines.iter().map(view)))
    }))
}

/// Lines as text, one per line.
fn text_chunk(lines: &[(u64, crate::model::OutputLine)]) -> String {
    let mut chunk = String::new();
    for (_, line) in lines {
        chunk.push_str(&line.text);
        chunk.push('\n');
    }
    chunk
}

/// Streams stored lines from `offset`, then new ones as they are stored, until the task ends.
/// Lines always come from the store, so a slow follower never misses or reorders one.
fn follow(req: &Req, task: Task, offset: u64) -> hyper::Response<body::Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let services = Arc::clone(&req.app.services);
    let mut live = req.app.runner.subscribe();
    let access = req.access.clone();
    let mut caller = LiveCaller::new(req, Some((task.project_id, Permissions::NONE)));
    tokio::spawn(async move {
        let Some(access) = access else { return };
        let mut next = offset;
        loop {
            // Drain what is stored.
            loop {
                let Ok(batch) = services.output(&task, next, 4096) else {
                    return;
                };
                if batch.is_empty() {
                    break;
                }
                next = batch.last().map_or(next, |(n, _)| n + 1);
                // The caller may have lost access since the last batch: then the stream ends.
                if matches!(caller.check(&services), Verdict::Gone)
                    || tx.send(Bytes::from(text_chunk(&batch))).await.is_err()
                {
                    return;
                }
            }
            let finished = services
                .task(&access, task.id)
                .map_or(true, |t| t.status.is_finished());
            if finished {
                // The final status is written after the last line: nothing more will come.
                let Ok(rest) = services.output(&task, next, usize::MAX) else {
                    return;
                };
                if !rest.is_empty() {
                    let _ = tx.send(Bytes::from(text_chunk(&rest))).await;
                }
                return;
            }
            // Wait for anything about this task (or a lag, after which the store is re-read),
            // or for a change that may end the caller's access.
            loop {
                let event = tokio::select! {
                    event = live.recv() => event,
                    () = caller.changed() => {
                        if matches!(caller.recheck(&services), Verdict::Gone) {
                            return;
                        }
                        continue;
                    }
                };
                match event.as_deref() {
                    Ok(LiveEvent::Log { task_id, .. } | LiveEvent::Update { task_id, .. })
                        if *task_id == task.id =>
                    {
                        break;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    });
    let mut res = hyper::Response::new(body::stream(rx));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// `GET /api/tasks` (admin): the unfinished tasks with where they are.
pub async fn active(req: Req) -> HandlerResult {
    let active = req.app.runner.active();
    let store = req.app.services.store();
    let view = store.view()?;
    let mut out = Vec::new();
    for (id, project, location) in active {
        let Some(t) = store.task(id)? else { continue };
        let username = t
            .user_id
            .and_then(|u| view.user(u).ok().flatten())
            .map(|u| u.username);
        let project_name = view.project(project)?.map(|p| p.name);
        out.push(json!({
            "task_id": id,
            "project_id": project,
            "status": t.status.as_str(),
            "location": if location == Location::Queue { "queue" } else { "running" },
            "username": username,
            "project_name": project_name,
        }));
    }
    Ok(body::json(StatusCode::OK, &out))
}

/// `GET /api/project/{project_id}/tasks/{task_id}/raw_output`: the output as `text/plain`,
/// one line per output line, oldest first, as it is stored now. Streamed from the store in
/// batches, so a long output is never held in memory whole.
pub async fn raw_output(req: Req) -> HandlerResult {
    let task = task(&req)?;
    // The first batch is read here, so a storage failure is still an error status.
    let first = req.app.services.output(&task, 0, RAW_BATCH)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let services = Arc::clone(&req.app.services);
    tokio::spawn(async move {
        let mut batch = first;
        loop {
            let Some(next) = batch.last().map(|(n, _)| n + 1) else {
                return;
            };
            let full = batch.len() == RAW_BATCH;
            if tx.send(Bytes::from(text_chunk(&batch))).await.is_err() || !full {
                return;
            }
            batch = match services.output(&task, next, RAW_BATCH) {
                Ok(b) => b,
                Err(e) => {
                    // The status line is sent: the body ends early, and the log says why.
                    tracing::error!(task = task.id, error = %e, "raw output cut short");
                    return;
                }
            };
        }
    });
    let mut res = hyper::Response::new(body::stream(rx));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(res)
}

/// Output lines per read of a raw output stream.
const RAW_BATCH: usize = 1024;

/// `GET /api/tasks/{task_id}` (system admins): the task of any project, as
/// `GET /api/project/{p}/tasks/{t}` shows it (upstream answers its active list here, ignoring
/// the id).
pub async fn admin_get(req: Req) -> HandlerResult {
    let id = req.id("task_id", "task")?;
    let task = req.app.services.any_task(req.user()?, id)?;
    Ok(body::json(StatusCode::OK, &task_view(&task, "")))
}

/// `DELETE /api/tasks/{task_id}` (system admins) → 204: a queued task is taken off the queue,
/// a running one is stopped (SIGTERM to its process group, SIGKILL after the stop grace) and
/// waited for; then the task and its output are deleted in one transaction, with an event.
pub async fn admin_delete(req: Req) -> HandlerResult {
    let id = req.id("task_id", "task")?;
    let user = req.user()?;
    let task = req.app.services.any_task(user, id)?;
    if !task.status.is_finished() {
        req.app.runner.stop_and_wait(id).await?;
    }
    req.app.services.delete_any_task(user, id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `GET /api/project/{project_id}/templates/{template_id}/stats[?start=&end=&user_id=]`:
/// upstream's `[{date, count_by_status, avg_duration}]`, one element per day (UTC) of task
/// creation, newest first; `start`/`end` are days `YYYY-MM-DD` (both included).
pub async fn template_stats(req: Req) -> HandlerResult {
    let tpl = req.id("template_id", "template")?;
    req.app.services.resource::<Template>(req.access()?, tpl)?;
    let day = |name: &str| -> Result<Option<String>, ApiError> {
        match req.query_param(name).filter(|d| !d.is_empty()) {
            Some(d) => Ok(Some(parse_day(&d, name)?)),
            None => Ok(None),
        }
    };
    let user_id = match req.query_param("user_id").filter(|u| !u.is_empty()) {
        Some(u) => Some(
            u.parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Invalid user_id".into()))?,
        ),
        None => None,
    };
    let filter = StatsFilter {
        start: day("start")?,
        end: day("end")?,
        user_id,
    };
    let stats = req
        .app
        .services
        .template_stats(req.access()?, tpl, &filter)?;
    Ok(body::json(StatusCode::OK, &stats))
}
