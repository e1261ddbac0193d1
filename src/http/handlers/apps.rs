//! `/api/apps`: every signed-in user lists the apps; system administrators read, change,
//! (de)activate and delete one. Changes are stored as options `apps.<id>.<field>`.

use hyper::StatusCode;

use crate::http::body;
use crate::http::handler::{HandlerResult, Req};
use crate::service::apps::{ActiveInput, AppInput};

/// `GET /api/apps` → every app, highest priority first.
pub async fn list(req: Req) -> HandlerResult {
    Ok(body::json(StatusCode::OK, &req.app.services.apps()?))
}

/// `GET /api/apps/{app_id}` → the app; 404 when there is none.
pub async fn get(req: Req) -> HandlerResult {
    let id = req.param("app_id")?;
    Ok(body::json(StatusCode::OK, &req.app.services.app(&id)?))
}

/// `PUT /api/apps/{app_id}` `{title, icon, color, dark_color, path, args, priority, active}`
/// → 204: creates or changes the app (fields left out keep their value), durably.
pub async fn put(req: Req) -> HandlerResult {
    let id = req.param("app_id")?;
    let input: AppInput = req.json()?;
    req.app.services.put_app(&id, input).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `DELETE /api/apps/{app_id}` → 204: a built-in app is back at its defaults, an own app is
/// gone; 404 when there is none.
pub async fn delete(req: Req) -> HandlerResult {
    let id = req.param("app_id")?;
    req.app.services.delete_app(&id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `POST /api/apps/{app_id}/active` `{"active": bool}` → 204; 404 when there is no such app.
pub async fn set_active(req: Req) -> HandlerResult {
    let id = req.param("app_id")?;
    let input: ActiveInput = req.json()?;
    req.app.services.set_app_active(&id, input).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}
