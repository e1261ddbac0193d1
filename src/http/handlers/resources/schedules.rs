//! Schedules: created with 201 and the schedule, listed with their template's name
//! (`tpl_name`). Every change wakes the scheduler, which re-reads the schedules and plans
//! their next fire times; `POST .../schedules/validate` answers the next five fire times.

use std::collections::HashMap;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Routes, id, no_content, render, render_list};
use crate::clock::rfc3339;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::{HandlerResult, Req};
use crate::model::{Schedule, Template};
use crate::service::resources::{CronInput, ScheduleInput};

impl Routes for Schedule {
    const ID: (&'static str, &'static str) = ("schedule_id", "schedule");
    const COLUMNS: &'static [&'static str] = &["name", "cron_format"];
    const CREATED_WITH_BODY: bool = true;
    /// Template names by id.
    type Extra = HashMap<u64, String>;

    fn extra(req: &Req) -> Result<Self::Extra, ApiError> {
        let templates: Vec<Template> = req.app.services.resources(req.access()?)?;
        Ok(templates.into_iter().map(|t| (t.id, t.name)).collect())
    }

    fn sort_key(_: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        Ok(|s: &Self, column: &str| match column {
            "cron_format" => s.cron_format.clone(),
            _ => s.name.to_lowercase(),
        })
    }

    fn view<'a>(
        _: &'a Req,
        names: &'a Self::Extra,
        s: &'a Self,
    ) -> Result<impl Serialize + 'a, ApiError> {
        let params: Value = serde_json::from_str(&s.task_params).unwrap_or(Value::Null);
        Ok(json!({
            "id": s.id,
            "project_id": s.project_id,
            "template_id": s.template_id,
            "tpl_name": names.get(&s.template_id).map_or("", String::as_str),
            "cron_format": s.cron_format,
            "name": s.name,
            "active": s.active,
            "repository_id": s.repository_id,
            "type": s.kind,
            "run_at": s.run_at.map(rfc3339),
            "delete_after_run": s.delete_after_run,
            "task_params": params,
            "timezone": s.timezone,
            "catch_up": s.catch_up,
        }))
    }
}

/// `POST /api/project/{project_id}/schedules` → 201 with the schedule; 400 `Cron: <detail>`
/// for a bad expression, or for a `run_at` in the past. Records an event; wakes the
/// scheduler.
pub async fn create(req: Req) -> HandlerResult {
    let input: ScheduleInput = req.json()?;
    let services = &req.app.services;
    let s = services
        .create_resource::<Schedule>(req.access()?, input)
        .await?;
    services.schedule_changed(s.project_id, s.id);
    render(&req, StatusCode::CREATED, &s)
}

/// `PUT /api/project/{project_id}/schedules/{schedule_id}` → 204. A change of its timing (or
/// turning it on) starts it afresh: earlier occurrences are not "missed". Wakes the scheduler.
pub async fn update(req: Req) -> HandlerResult {
    let id = id::<Schedule>(&req)?;
    let input: ScheduleInput = req.json()?;
    let services = &req.app.services;
    let access = req.access()?;
    services
        .update_resource::<Schedule>(access, id, input)
        .await?;
    services.schedule_changed(access.project_id(), id);
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/schedules/{schedule_id}` → 204; its tasks stay.
pub async fn delete(req: Req) -> HandlerResult {
    let id = id::<Schedule>(&req)?;
    let services = &req.app.services;
    let access = req.access()?;
    services.delete_resource::<Schedule>(access, id).await?;
    services.schedule_changed(access.project_id(), id);
    Ok(no_content())
}

/// `PUT /api/project/{project_id}/schedules/{schedule_id}/active` body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ActiveInput {
    active: Option<bool>,
}

/// `PUT /api/project/{project_id}/schedules/{schedule_id}/active` `{"active": bool}` → 204.
pub async fn set_active(req: Req) -> HandlerResult {
    let id = id::<Schedule>(&req)?;
    let input: ActiveInput = req.json()?;
    let active = input
        .active
        .ok_or_else(|| ApiError::BadRequest("active is required".into()))?;
    req.app
        .services
        .set_schedule_active(req.access()?, id, active)
        .await?;
    Ok(no_content())
}

/// `POST /api/project/{project_id}/schedules/validate` `{"cron_format", "timezone"?}` → 200
/// `{"next": [five RFC 3339 times]}`, or 400 `{"error": "Cron: <detail>"}`.
pub async fn validate(req: Req) -> HandlerResult {
    req.access()?;
    let input: CronInput = req.json()?;
    let next = req.app.services.validate_cron(&input)?;
    Ok(body::json(StatusCode::OK, &json!({ "next": next })))
}

/// `GET /api/project/{project_id}/templates/{template_id}/schedules`: the template's
/// schedules, shaped as the list.
pub async fn of_template(req: Req) -> HandlerResult {
    let tpl = req.id("template_id", "template")?;
    let items = req.app.services.template_schedules(req.access()?, tpl)?;
    render_list::<Schedule>(&req, items)
}
