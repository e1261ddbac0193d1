//! Project resources over HTTP: one set of generic handlers, which the route table points at
//! per resource (`list::<AccessKey>`, `create::<AccessKey>`, ...), over one module per resource
//! that says how it shows ([`Routes`]). Secrets never appear in any response: key and
//! environment views carry empty placeholders.
//!
//! Every resource answers alike: `GET` lists (sorted by `?sort=<column>&order=asc|desc`) and
//! gets, `POST` creates (204, or 201 with the object), `PUT` updates and `DELETE` deletes
//! (204; 400 `inUse` while something uses it), `GET .../refs` says what uses it.

mod environments;
mod host_keys;
mod inventories;
mod keys;
mod repositories;
pub mod schedules;
mod templates;
pub mod views;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::sort_by;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;
use crate::service::resources::{ProjectResource, Refs};

/// How a project resource shows over HTTP.
pub trait Routes: ProjectResource {
    /// Its id's path parameter (`key_id`), and its name in `Invalid <name> ID`.
    const ID: (&'static str, &'static str);
    /// The `?sort=` columns; an unknown or missing one sorts by [`Routes::DEFAULT_COLUMN`].
    const COLUMNS: &'static [&'static str];
    /// The column a list sorts by without a known `?sort=`.
    const DEFAULT_COLUMN: &'static str = "name";
    /// Whether create answers 201 with the object (otherwise 204).
    const CREATED_WITH_BODY: bool = false;
    /// What views need besides the object, read once per request.
    type Extra;

    /// Reads what views need besides the object.
    ///
    /// # Errors
    /// Storage failures only.
    fn extra(req: &Req) -> Result<Self::Extra, ApiError>;

    /// The key of an object in a column, built once per list (it may hold the names of what
    /// the objects refer to).
    ///
    /// # Errors
    /// Storage failures only.
    fn sort_key(req: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError>;

    /// An object as JSON.
    ///
    /// # Errors
    /// Storage failures only.
    fn view<'a>(
        req: &'a Req,
        extra: &'a Self::Extra,
        item: &'a Self,
    ) -> Result<impl Serialize + 'a, ApiError>;
}

/// `GET /api/project/{project_id}/<resources>?sort=<column>&order=asc|desc`.
pub async fn list<R: Routes>(req: Req) -> HandlerResult {
    let items = req.app.services.resources::<R>(req.access()?)?;
    render_list(&req, items)
}

/// Objects as a list, sorted by the request's `?sort=&order=`.
fn render_list<R: Routes>(req: &Req, mut items: Vec<R>) -> HandlerResult {
    sort_by(
        req,
        &mut items,
        R::COLUMNS,
        R::DEFAULT_COLUMN,
        R::sort_key(req)?,
    );
    let extra = R::extra(req)?;
    let views = items
        .iter()
        .map(|item| R::view(req, &extra, item))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(body::json(StatusCode::OK, &views))
}

/// `GET /api/project/{project_id}/<resources>/{id}`.
pub async fn get<R: Routes>(req: Req) -> HandlerResult {
    let item = req
        .app
        .services
        .resource::<R>(req.access()?, id::<R>(&req)?)?;
    render(&req, StatusCode::OK, &item)
}

/// `POST /api/project/{project_id}/<resources>` → 204, or 201 with the object: everything is
/// checked before anything is written; records an event.
pub async fn create<R: Routes>(req: Req) -> HandlerResult {
    let input: R::Input = req.json()?;
    let item = req
        .app
        .services
        .create_resource::<R>(req.access()?, input)
        .await?;
    if R::CREATED_WITH_BODY {
        render(&req, StatusCode::CREATED, &item)
    } else {
        Ok(no_content())
    }
}

/// `PUT /api/project/{project_id}/<resources>/{id}` → 204; records an event.
pub async fn update<R: Routes>(req: Req) -> HandlerResult {
    let id = id::<R>(&req)?;
    let input: R::Input = req.json()?;
    req.app
        .services
        .update_resource::<R>(req.access()?, id, input)
        .await?;
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/<resources>/{id}` → 204, or 400 `inUse`; records an
/// event.
pub async fn delete<R: Routes>(req: Req) -> HandlerResult {
    let id = id::<R>(&req)?;
    req.app
        .services
        .delete_resource::<R>(req.access()?, id)
        .await?;
    Ok(no_content())
}

/// `GET /api/project/{project_id}/<resources>/{id}/refs`: what uses it.
pub async fn refs<R: Routes>(req: Req) -> HandlerResult {
    let id = id::<R>(&req)?;
    let refs = req.app.services.resource_refs::<R>(req.access()?, id)?;
    Ok(body::json(StatusCode::OK, &refs_view(&refs)))
}

fn id<R: Routes>(req: &Req) -> Result<u64, ApiError> {
    let (param, name) = R::ID;
    req.id(param, name)
}

fn render<R: Routes>(req: &Req, status: StatusCode, item: &R) -> HandlerResult {
    let extra = R::extra(req)?;
    Ok(body::json(status, &R::view(req, &extra, item)?))
}

fn no_content() -> hyper::Response<body::Body> {
    body::status(StatusCode::NO_CONTENT)
}

fn refs_view(refs: &Refs) -> serde_json::Value {
    let list = |items: &[(u64, String)]| {
        items
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect::<Vec<_>>()
    };
    json!({
        "templates": list(&refs.templates),
        "inventories": list(&refs.inventories),
        "repositories": list(&refs.repositories),
    })
}
