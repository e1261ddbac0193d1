//! Project backup and restore in upstream's format (`service::project_backup`).

use hyper::StatusCode;

use super::projects::ProjectView;
use crate::http::body;
use crate::http::handler::{HandlerResult, Req};

/// `GET /api/project/{project_id}/backup`: the project as one JSON document, references by
/// name, no ids, no secrets. Any member may read it (as every other project read).
pub async fn backup(req: Req) -> HandlerResult {
    let doc = req.app.services.project_backup(req.access()?)?;
    Ok(body::json(StatusCode::OK, &doc))
}

/// `POST /api/projects/restore`: a new project owned by the caller, with every object of the
/// backup document in the body, in one transaction (400 naming the offending object, and
/// nothing written, otherwise); records an event. Answers the new project.
pub async fn restore(req: Req) -> HandlerResult {
    let doc: serde_json::Value = req.json()?;
    let project = req.app.services.restore_project(req.user()?, doc).await?;
    Ok(body::json(StatusCode::OK, &ProjectView::new(&project)))
}
