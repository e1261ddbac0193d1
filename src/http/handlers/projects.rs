//! Projects, membership, roles and events.

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

/// `GET /api/events`: newest first, what the caller may see.
pub async fn events(req: Req) -> HandlerResult {
    let events = req.app.services.events(req.user()?, usize::MAX)?;
    let names = req.app.services.event_names(&events)?;
    Ok(body::json(StatusCode::OK, &render_events(&events, &names)))
}

/// `GET /api/events/last`: the newest 200 of those.
pub async fn events_last(req: Req) -> HandlerResult {
    let events = req.app.services.events(req.user()?, LAST_EVENTS)?;
    let names = req.app.services.event_names(&events)?;
    Ok(body::json(StatusCode::OK, &render_events(&events, &names)))
}

/// `GET /api/project/{project_id}/events`: the project's events, newest first.
pub async fn project_events(req: Req) -> HandlerResult {
    let events = req.app.services.project_events(req.access()?, usize::MAX)?;
    let names = req.app.services.event_names(&events)?;
    Ok(body::json(StatusCode::OK, &render_events(&events, &names)))
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
