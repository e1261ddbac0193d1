//! Integrations (API.md §12.4): the integration itself over the generic resource handlers
//! ([`Routes`]), its matchers and extract values over one generic set (`list_parts::<P>`, ...),
//! aliases per integration and per project, the deliveries log, and the receiver
//! `POST|GET /api/integrations/{integration_alias}`.

use hyper::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::resources::Routes;
use crate::clock::rfc3339;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::{HandlerResult, Req};
use crate::model::{
    Delivery, DeliveryOutcome, Integration, IntegrationAlias, IntegrationMatcher, IntegrationValue,
};
use crate::service::integrations::{Answer, Incoming, Part};

impl Routes for Integration {
    type Extra = ();
    const ID: (&'static str, &'static str) = ("integration_id", "integration");
    const CREATED_WITH_BODY: bool = true;
    const COLUMNS: &'static [&'static str] = &["name"];

    fn view<'a>(_: &'a Req, (): &'a (), i: &'a Self) -> Result<impl Serialize + 'a, ApiError> {
        let task_params: Value = serde_json::from_str(&i.task_params).unwrap_or(Value::Null);
        Ok(json!({
            "id": i.id,
            "project_id": i.project_id,
            "name": i.name,
            "template_id": i.template_id,
            "auth_method": i.auth_method,
            "auth_secret_id": i.auth_secret_id,
            "auth_header": i.auth_header,
            "searchable": i.searchable,
            "task_params": task_params,
        }))
    }

    fn sort_key(_: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        Ok(|i: &Self, _: &str| i.name.clone())
    }

    fn extra(_: &Req) -> Result<(), ApiError> {
        Ok(())
    }
}

/// How a part of an integration shows over HTTP.
pub trait PartRoutes: Part {
    /// Its id's path parameter and its name in `Invalid <name> ID`.
    const ID: (&'static str, &'static str);

    /// It as JSON.
    fn view(&self) -> Value;
}

impl PartRoutes for IntegrationMatcher {
    const ID: (&'static str, &'static str) = ("matcher_id", "matcher");

    fn view(&self) -> Value {
        json!({
            "id": self.id,
            "integration_id": self.integration_id,
            "name": self.name,
            "match_type": self.match_type,
            "method": self.method,
            "body_data_type": self.body_data_type,
            "key": self.key,
            "value": self.value,
        })
    }
}

impl PartRoutes for IntegrationValue {
    const ID: (&'static str, &'static str) = ("value_id", "value");

    fn view(&self) -> Value {
        json!({
            "id": self.id,
            "integration_id": self.integration_id,
            "name": self.name,
            "value_source": self.value_source,
            "body_data_type": self.body_data_type,
            "key": self.key,
            "variable": self.variable,
            "variable_type": self.variable_type,
        })
    }
}

fn integration_id(req: &Req) -> Result<u64, ApiError> {
    req.id("integration_id", "integration")
}

fn part_id<P: PartRoutes>(req: &Req) -> Result<u64, ApiError> {
    let (param, name) = P::ID;
    req.id(param, name)
}

fn no_content() -> hyper::Response<body::Body> {
    body::status(StatusCode::NO_CONTENT)
}

/// `GET /api/project/{project_id}/integrations/{integration_id}/<parts>`: by id.
pub async fn list_parts<P: PartRoutes>(req: Req) -> HandlerResult {
    let items: Vec<P> = req
        .app
        .services
        .integration_parts(req.access()?, integration_id(&req)?)?;
    let views: Vec<Value> = items.iter().map(PartRoutes::view).collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `GET /api/project/{project_id}/integrations/{integration_id}/<parts>/{id}`.
pub async fn get_part<P: PartRoutes>(req: Req) -> HandlerResult {
    let item: P = req.app.services.integration_part(
        req.access()?,
        integration_id(&req)?,
        part_id::<P>(&req)?,
    )?;
    Ok(body::json(StatusCode::OK, &item.view()))
}

/// `POST /api/project/{project_id}/integrations/{integration_id}/<parts>` → 201 with the
/// part; records an event.
pub async fn create_part<P: PartRoutes>(req: Req) -> HandlerResult {
    let input: P::Input = req.json()?;
    let item: P = req
        .app
        .services
        .create_integration_part(req.access()?, integration_id(&req)?, input)
        .await?;
    Ok(body::json(StatusCode::CREATED, &item.view()))
}

/// `PUT /api/project/{project_id}/integrations/{integration_id}/<parts>/{id}` → 204; records
/// an event.
pub async fn update_part<P: PartRoutes>(req: Req) -> HandlerResult {
    let (integration, id) = (integration_id(&req)?, part_id::<P>(&req)?);
    let input: P::Input = req.json()?;
    req.app
        .services
        .update_integration_part::<P>(req.access()?, integration, id, input)
        .await?;
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/integrations/{integration_id}/<parts>/{id}` → 204;
/// records an event.
pub async fn delete_part<P: PartRoutes>(req: Req) -> HandlerResult {
    let (integration, id) = (integration_id(&req)?, part_id::<P>(&req)?);
    req.app
        .services
        .delete_integration_part::<P>(req.access()?, integration, id)
        .await?;
    Ok(no_content())
}

/// `GET .../<parts>/{id}/refs`: nothing refers to a part (upstream's empty lists).
pub async fn part_refs<P: PartRoutes>(req: Req) -> HandlerResult {
    let _: P = req.app.services.integration_part(
        req.access()?,
        integration_id(&req)?,
        part_id::<P>(&req)?,
    )?;
    Ok(body::json(
        StatusCode::OK,
        &json!({"templates": [], "inventories": [], "repositories": []}),
    ))
}

fn alias_view(req: &Req, a: &IntegrationAlias) -> Value {
    let host = req.app.config.web_host.trim_end_matches('/');
    json!({
        "id": a.id,
        "project_id": a.project_id,
        "integration_id": a.integration_id,
        "alias": a.alias,
        "url": format!("{host}/api/integrations/{}", a.alias),
    })
}

/// The integration of an alias route: `None` on the project-wide routes.
fn alias_owner(req: &Req) -> Result<Option<u64>, ApiError> {
    if req.params.iter().any(|(k, _)| k == "integration_id") {
        integration_id(req).map(Some)
    } else {
        Ok(None)
    }
}

/// `GET /api/project/{project_id}/integrations/aliases` (project-wide) and
/// `GET .../integrations/{integration_id}/aliases`: by id.
pub async fn list_aliases(req: Req) -> HandlerResult {
    let items = req
        .app
        .services
        .integration_aliases(req.access()?, alias_owner(&req)?)?;
    let views: Vec<Value> = items.iter().map(|a| alias_view(&req, a)).collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `POST .../integrations/aliases` and `POST .../integrations/{integration_id}/aliases` → 201
/// with a new random alias; the body, if any, must be a JSON object (its fields are ignored);
/// records an event.
pub async fn create_alias(req: Req) -> HandlerResult {
    if !req.body.iter().all(u8::is_ascii_whitespace) {
        let _: serde_json::Map<String, Value> = req.json()?;
    }
    let a = req
        .app
        .services
        .create_integration_alias(req.access()?, alias_owner(&req)?)
        .await?;
    Ok(body::json(StatusCode::CREATED, &alias_view(&req, &a)))
}

/// `DELETE .../integrations/aliases/{alias_id}` and
/// `DELETE .../integrations/{integration_id}/aliases/{alias_id}` → 204; records an event.
pub async fn delete_alias(req: Req) -> HandlerResult {
    let id = req.id("alias_id", "alias")?;
    req.app
        .services
        .delete_integration_alias(req.access()?, alias_owner(&req)?, id)
        .await?;
    Ok(no_content())
}

fn delivery_view(d: &Delivery) -> Value {
    let (outcome, task_id, matcher, error) = match &d.outcome {
        DeliveryOutcome::Launched(t) => ("launched", Some(*t), None, None),
        DeliveryOutcome::Filtered(m) => ("filtered", None, Some(m.as_str()), None),
        DeliveryOutcome::BadSignature => ("bad_signature", None, None, None),
        DeliveryOutcome::Error(e) => ("error", None, None, Some(e.as_str())),
    };
    json!({
        "id": d.id,
        "integration_id": d.integration_id,
        "time": rfc3339(d.time),
        "source": d.source,
        "outcome": outcome,
        "task_id": task_id,
        "matcher": matcher,
        "error": error,
    })
}

/// `GET /api/project/{project_id}/integrations/{integration_id}/deliveries` (Forge): the
/// last deliveries, newest first.
pub async fn deliveries(req: Req) -> HandlerResult {
    let items = req
        .app
        .services
        .integration_deliveries(req.access()?, integration_id(&req)?)?;
    let views: Vec<Value> = items.iter().map(delivery_view).collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `POST|GET /api/integrations/{integration_alias}` (no session): 204 when taken (launched
/// or filtered out), 401 when no integration of the alias authenticated it (nothing done),
/// 404 for an unknown alias, 429 for an address that failed too often. Launched tasks go to
/// the runner once stored.
pub async fn receive(req: Req) -> HandlerResult {
    let alias = req.param("integration_alias")?;
    let headers = req
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let incoming = Incoming {
        headers,
        body: req.body.clone(),
        source: req.client_ip().to_string(),
    };
    let (answer, launched) = req.app.services.receive(&alias, incoming).await?;
    for (task, line) in launched {
        req.app.runner.enqueue(&task, line);
    }
    match answer {
        Answer::Accepted => Ok(no_content()),
        Answer::Unauthenticated => Err(ApiError::Unauthorized),
    }
}
