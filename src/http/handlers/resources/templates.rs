//! Templates: created with 201 and the template, updated with 204; everything is checked
//! before anything is written. A delete takes the template's finished tasks with it, and is
//! refused (409) while another template deploys its builds.

use serde::Serialize;
use serde_json::{Value, json};

use super::Routes;
use crate::http::error::ApiError;
use crate::http::handler::Req;
use crate::http::handlers::tasks::{build_task_view, task_view};
use crate::model::Template;

impl Routes for Template {
    const ID: (&'static str, &'static str) = ("template_id", "template");
    const COLUMNS: &'static [&'static str] =
        &["name", "playbook", "inventory", "environment", "repository"];
    const CREATED_WITH_BODY: bool = true;
    type Extra = ();

    fn extra(_: &Req) -> Result<(), ApiError> {
        Ok(())
    }

    /// `inventory`, `environment` and `repository` sort by the referenced object's name.
    fn sort_key(req: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        let names = req.app.services.template_ref_names(req.access()?)?;
        let lookup = |map: &std::collections::HashMap<u64, String>, id: Option<u64>| {
            id.and_then(|i| map.get(&i).cloned()).unwrap_or_default()
        };
        Ok(move |t: &Self, column: &str| match column {
            "playbook" => t.playbook.clone(),
            "inventory" => lookup(&names.inventories, t.inventory_id),
            "environment" => lookup(&names.environments, t.environment_id),
            "repository" => lookup(&names.repositories, Some(t.repository_id)),
            _ => t.name.clone(),
        })
    }

    /// With the number of its tasks and its newest one.
    fn view<'a>(req: &'a Req, (): &'a (), t: &'a Self) -> Result<impl Serialize + 'a, ApiError> {
        template_view(req, t)
    }
}

fn template_view(req: &Req, t: &Template) -> Result<Value, ApiError> {
    let (tasks, last) = req.app.services.template_task_stats(req.access()?, t.id)?;
    let starter = match last.as_ref().and_then(|task| task.user_id) {
        Some(u) => req.app.services.users_by_id([u])?.remove(&u),
        None => None,
    };
    let last_task = match last {
        Some(task) => {
            let mut v = task_view(&task, "");
            v["user_name"] = json!(starter.as_ref().map(|u| u.name.as_str()));
            v["tpl_playbook"] = json!(t.playbook);
            v["tpl_alias"] = json!(t.name);
            v["tpl_type"] = json!(t.kind);
            v["tpl_app"] = json!(t.app);
            v["build_task"] = build_task_view(req, &task)?;
            Some(v)
        }
        None => None,
    };
    let mut view = json!({
        "id": t.id,
        "project_id": t.project_id,
        "inventory_id": t.inventory_id,
        "repository_id": t.repository_id,
        "environment_id": t.environment_id,
        "view_id": t.view_id,
        "name": t.name,
        "playbook": t.playbook,
        "arguments": t.arguments,
        "allow_override_args_in_task": t.allow_override_args_in_task,
        "allow_ansible_vars_in_task": t.allow_ansible_vars_in_task,
        "description": t.description,
        "type": t.kind,
        "start_version": t.start_version,
        "build_template_id": t.build_template_id,
        "autorun": t.autorun,
        "git_branch": t.git_branch,
        "survey_vars": t.survey_vars.iter().map(|v| json!({
            "name": v.name,
            "title": v.title,
            "description": v.description,
            "type": v.kind,
            "required": v.required,
            "values": v.values.iter().map(|x| json!({"name": x.name, "value": x.value})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "vaults": t.vaults.iter().map(|v| json!({
            "id": v.id,
            "project_id": t.project_id,
            "template_id": t.id,
            "vault_key_id": v.vault_key_id,
            "name": v.name,
        })).collect::<Vec<_>>(),
        "suppress_success_alerts": t.suppress_success_alerts,
        "app": t.app,
        "tasks": tasks,
        "last_task": last_task,
    });
    // Forge's own field shows only once set, so a template stays upstream's exact shape for
    // strict clients that never use it.
    if t.max_duration_secs != 0 {
        view["max_duration_secs"] = json!(t.max_duration_secs);
    }
    if let Some(tag) = &t.runner_tag {
        view["runner_tag"] = json!(tag);
    }
    Ok(view)
}
