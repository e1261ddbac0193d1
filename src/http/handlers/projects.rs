//! Projects, membership, roles and events.

use std::sync::Arc;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::sort_list;
use super::users::UserView;
use crate::clock::rfc3339;
use crate::http::body;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;
use crate::model::{Event, Project};
use crate::service::projects::{EventNames, LAST_EVENTS, ProjectInput};

/// A project as the API shows it.
#[derive(Serialize)]
pub struct ProjectView<'a> {
    id: u64,
    name: &'a str,
    created: String,
    alert: bool,
    alert_chat: Option<&'a str>,
    max_parallel_tasks: u32,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl<'a> ProjectView<'a> {
    pub(crate) fn new(p: &'a Project) -> Self {
        Self {
            id: p.id,
            name: &p.name,
            created: rfc3339(p.created),
            alert: p.alert,
            alert_chat: p.alert_chat.as_deref(),
            max_parallel_tasks: p.max_parallel_tasks,
            kind: &p.kind,
        }
    }
}

/// `GET /api/projects`: the caller's projects (all for admins), by name.
pub async fn list(req: Req) -> HandlerResult {
    let projects = req.app.services.projects(req.user()?)?;
    let views: Vec<ProjectView> = projects.iter().map(ProjectView::new).collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `POST /api/projects` → 201: creates the project, makes the caller its owner, adds the
/// `None` key and the `Empty` environment, records an event — one transaction.
pub async fn create(req: Req) -> HandlerResult {
    let input: ProjectInput = req.json()?;
    let project = req.app.services.create_project(req.user()?, input).await?;
    Ok(body::json(StatusCode::CREATED, &ProjectView::new(&project)))
}

/// `GET /api/project/{project_id}`.
pub async fn get(req: Req) -> HandlerResult {
    Ok(body::json(
        StatusCode::OK,
        &ProjectView::new(&req.access()?.project),
    ))
}

/// `PUT /api/project/{project_id}` → 204: full replacement; body `id` must match.
pub async fn update(req: Req) -> HandlerResult {
    let input: ProjectInput = req.json()?;
    req.app
        .services
        .update_project(req.access()?, input)
        .await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `DELETE /api/project/{project_id}` → 204: first stops the project's running tasks and waits
/// for them (so nothing of them is written afterwards), then deletes the project and
/// everything in it, atomically.
pub async fn delete(req: Req) -> HandlerResult {
    let access = req.access()?;
    let _closing = req.app.runner.close_project(access.project_id()).await?;
    req.app.services.delete_project(access).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `GET /api/project/{project_id}/role`: `{"role", "permissions"}` (`""` for a non-member admin).
pub async fn role(req: Req) -> HandlerResult {
    let access = req.access()?;
    let role = access.role.map_or("", |r| r.as_str());
    let permissions = access.role.map_or(0, |r| r.permissions().0);
    let permissions = if access.user.admin && access.role.is_none() {
        0
    } else {
        permissions
    };
    Ok(body::json(
        StatusCode::OK,
        &serde_json::json!({ "role": role, "permissions": permissions }),
    ))
}

/// `DELETE /api/project/{project_id}/me` → 204: the caller leaves (owners cannot).
pub async fn leave(req: Req) -> HandlerResult {
    req.app.services.leave_project(req.access()?).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

#[derive(Serialize)]
struct MemberView<'a> {
    id: u64,
    username: &'a str,
    name: &'a str,
    role: &'static str,
}

/// `GET /api/project/{project_id}/users?sort=name|username|email|role&order=`.
pub async fn members(req: Req) -> HandlerResult {
    let mut members = req.app.services.members(req.access()?)?;
    sort_list(
        &req,
        &mut members,
        &[
            ("name", &|m| m.user.name.clone()),
            ("username", &|m| m.user.username.clone()),
            ("email", &|m| m.user.email.clone()),
            ("role", &|m| m.role.as_str().to_owned()),
        ],
        "name",
    );
    let views: Vec<MemberView> = members
        .iter()
        .map(|m| MemberView {
            id: m.user.id,
            username: &m.user.username,
            name: &m.user.name,
            role: m.role.as_str(),
        })
        .collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `GET /api/project/{project_id}/users/{user_id}`: the member's user object.
pub async fn member(req: Req) -> HandlerResult {
    let id = req.id("user_id", "user")?;
    let user = req.app.services.member(req.access()?, id)?;
    Ok(body::json(StatusCode::OK, &UserView::new(&user)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MemberBody {
    user_id: Option<u64>,
    role: Option<String>,
}

/// `POST /api/project/{project_id}/users` `{"user_id", "role"}` → 204.
pub async fn add_member(req: Req) -> HandlerResult {
    let b: MemberBody = req.json()?;
    let user = b.user_id.unwrap_or_default();
    req.app
        .services
        .add_member(req.access()?, user, &b.role.unwrap_or_default())
        .await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `PUT /api/project/{project_id}/users/{user_id}` `{"role"}` → 204.
pub async fn set_role(req: Req) -> HandlerResult {
    let id = req.id("user_id", "user")?;
    let b: MemberBody = req.json()?;
    req.app
        .services
        .set_member_role(req.access()?, id, &b.role.unwrap_or_default())
        .await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `DELETE /api/project/{project_id}/users/{user_id}` → 204.
pub async fn remove_member(req: Req) -> HandlerResult {
    let id = req.id("user_id", "user")?;
    req.app.services.remove_member(req.access()?, id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

#[derive(Serialize)]
struct EventView<'a> {
    user_id: Option<u64>,
    project_id: Option<u64>,
    integration_id: Option<u64>,
    object_id: Option<u64>,
    object_type: &'a str,
    description: &'a str,
    created: String,
    object_name: &'a str,
    project_name: Option<&'a str>,
    username: Option<&'a str>,
}

fn render_events(events: &[Event], names: &EventNames) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| {
            let view = EventView {
                user_id: e.user_id,
                project_id: e.project_id,
                integration_id: None,
                object_id: e.object_id,
                object_type: &e.object_type,
                description: &e.description,
                created: rfc3339(e.created),
                object_name: match (e.object_type.as_str(), e.object_id) {
                    ("task", Some(t)) => names.tasks.get(&t).map_or("", String::as_str),
                    _ => "",
                },
                project_name: e
                    .project_id
                    .and_then(|p| names.projects.get(&p))
                    .map(String::as_str),
                username: e
                    .user_id
                    .and_then(|u| names.users.get(&u))
                    .map(String::as_str),
            };
            serde_json::to_value(view).unwrap_or_default()
        })
        .collect()
}

/// `GET /api/events`: newest first, what the caller may see (upstream: no limit). Streamed
/// page by page as it is read, so memory stays flat however long the log.
pub async fn events(req: Req) -> HandlerResult {
    let user = req.user()?.clone();
    let services = Arc::clone(&req.app.services);
    stream_events(&req, move |before| {
        services.events_before(&user, before, EVENT_BATCH)
    })
}

/// `GET /api/events/last`: the newest 200 of those.
pub async fn events_last(req: Req) -> HandlerResult {
    let events = req.app.services.events(req.user()?, LAST_EVENTS)?;
    let names = req.app.services.event_names(&events)?;
    Ok(body::json(StatusCode::OK, &render_events(&events, &names)))
}

/// `GET /api/project/{project_id}/events`: the project's events, newest first (upstream: no
/// limit), streamed page by page.
pub async fn project_events(req: Req) -> HandlerResult {
    let access = req.access()?.clone();
    let services = Arc::clone(&req.app.services);
    stream_events(&req, move |before| {
        services.project_events_before(&access, before, EVENT_BATCH)
    })
}

/// Events per read of a streamed event list.
const EVENT_BATCH: usize = 1000;

/// An event list read page by page through `page` (the events below an id): the first page
/// is read here (a storage failure is still an error status); a list that fits in it goes out
/// whole, a longer one is streamed with the same bytes.
fn stream_events(
    req: &Req,
    mut page: impl FnMut(u64) -> crate::service::Result<Vec<(u64, Event)>> + Send + 'static,
) -> HandlerResult {
    let services = Arc::clone(&req.app.services);
    let render = move |batch: &[(u64, Event)]| {
        let events: Vec<Event> = batch.iter().map(|(_, e)| e.clone()).collect();
        let names = services.event_names(&events)?;
        Ok::<_, crate::service::Error>(render_events(&events, &names))
    };
    let first = page(u64::MAX)?;
    if first.len() < EVENT_BATCH {
        return Ok(body::json(StatusCode::OK, &render(&first)?));
    }
    let mut batch = Some(first);
    Ok(body::json_array(move || {
        let events = batch.take()?;
        let rendered = match render(&events) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "event list cut short");
                return None;
            }
        };
        if let Some(&(last, _)) = events.last().filter(|_| events.len() == EVENT_BATCH) {
            match page(last) {
                Ok(more) if !more.is_empty() => batch = Some(more),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "event list cut short"),
            }
        }
        Some(body::json_elements(rendered))
    }))
}

/// `GET /api/project/{project_id}/events/last`: the newest 200 of them.
pub async fn project_events_last(req: Req) -> HandlerResult {
    let events = req
        .app
        .services
        .project_events(req.access()?, LAST_EVENTS)?;
    let names = req.app.services.event_names(&events)?;
    Ok(body::json(StatusCode::OK, &render_events(&events, &names)))
}
