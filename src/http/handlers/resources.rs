//! Project resources: access keys, repositories, inventories, environments, templates.
//! Secrets never appear in any response: key and environment views carry empty placeholders.

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::sort_list;
use crate::http::Req;
use crate::http::body;
use crate::http::router::HandlerResult;
use crate::model::{AccessKey, Environment, Inventory, Repository, Template};
use crate::service::resources::{
    EnvironmentInput, InventoryInput, KeyInput, Refs, RepositoryInput, SecretInfo, TemplateInput,
};

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

// --- keys ---------------------------------------------------------------------------------

/// Upstream's default backend sends exactly these fields (no `empty`): strict clients build
/// their `Key` from them and fail on any other.
fn key_view(k: &AccessKey) -> serde_json::Value {
    json!({
        "id": k.id,
        "name": k.name,
        "type": k.kind.as_str(),
        "project_id": k.project_id,
        "string": "",
        "login_password": {"login": "", "password": ""},
        "ssh": {"login": "", "passphrase": "", "private_key": ""},
        "override_secret": false,
    })
}

/// `GET /api/project/{project_id}/keys?sort=name|type&order=`: secrets never included.
pub async fn keys(req: Req) -> HandlerResult {
    let mut keys = req.app.services.resources::<AccessKey>(req.access()?)?;
    sort_list(
        &req,
        &mut keys,
        &[
            ("name", &|k| k.name.clone()),
            ("type", &|k| k.kind.as_str().to_owned()),
        ],
        "name",
    );
    Ok(body::json(
        StatusCode::OK,
        &keys.iter().map(key_view).collect::<Vec<_>>(),
    ))
}

/// `GET /api/project/{project_id}/keys/{key_id}`.
pub async fn key(req: Req) -> HandlerResult {
    let key = req
        .app
        .services
        .resource::<AccessKey>(req.access()?, req.id("key_id", "key")?)?;
    Ok(body::json(StatusCode::OK, &key_view(&key)))
}

/// `POST /api/project/{project_id}/keys` → 204: the secret is sealed before it is stored.
pub async fn create_key(req: Req) -> HandlerResult {
    let input: KeyInput = req.json()?;
    req.app
        .services
        .create_resource::<AccessKey>(req.access()?, input)
        .await?;
    Ok(no_content())
}

/// `PUT /api/project/{project_id}/keys/{key_id}` → 204: name only, or with
/// `override_secret` also type and secret.
pub async fn update_key(req: Req) -> HandlerResult {
    let id = req.id("key_id", "key")?;
    let input: KeyInput = req.json()?;
    req.app
        .services
        .update_resource::<AccessKey>(req.access()?, id, input)
        .await?;
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/keys/{key_id}` → 204, or 400 `inUse`.
pub async fn delete_key(req: Req) -> HandlerResult {
    req.app
        .services
        .delete_resource::<AccessKey>(req.access()?, req.id("key_id", "key")?)
        .await?;
    Ok(no_content())
}

/// `GET /api/project/{project_id}/keys/{key_id}/refs`.
pub async fn key_refs(req: Req) -> HandlerResult {
    let refs = req
        .app
        .services
        .resource_refs::<AccessKey>(req.access()?, req.id("key_id", "key")?)?;
    Ok(body::json(StatusCode::OK, &refs_view(&refs)))
}

// --- repositories -------------------------------------------------------------------------

#[derive(Serialize)]
struct RepositoryView<'a> {
    id: u64,
    name: &'a str,
    project_id: u64,
    git_url: &'a str,
    git_branch: &'a str,
    ssh_key_id: u64,
}

fn repository_view(r: &Repository) -> RepositoryView<'_> {
    RepositoryView {
        id: r.id,
        name: &r.name,
        project_id: r.project_id,
        git_url: &r.git_url,
        git_branch: &r.git_branch,
        ssh_key_id: r.ssh_key_id,
    }
}

/// `GET /api/project/{project_id}/repositories?sort=name|git_url|ssh_key&order=`.
pub async fn repositories(req: Req) -> HandlerResult {
    let access = req.access()?;
    let mut repos = req.app.services.resources::<Repository>(access)?;
    let keys = req.app.services.resources::<AccessKey>(access)?;
    let key_name = |id: u64| {
        keys.iter()
            .find(|k| k.id == id)
            .map(|k| k.name.clone())
            .unwrap_or_default()
    };
    sort_list(
        &req,
        &mut repos,
        &[
            ("name", &|r| r.name.clone()),
            ("git_url", &|r| r.git_url.clone()),
            ("ssh_key", &|r| key_name(r.ssh_key_id)),
        ],
        "name",
    );
    Ok(body::json(
        StatusCode::OK,
        &repos.iter().map(repository_view).collect::<Vec<_>>(),
    ))
}

/// `GET /api/project/{project_id}/repositories/{repository_id}`.
pub async fn repository(req: Req) -> HandlerResult {
    let r = req
        .app
        .services
        .resource::<Repository>(req.access()?, req.id("repository_id", "repository")?)?;
    Ok(body::json(StatusCode::OK, &repository_view(&r)))
}

/// `POST /api/project/{project_id}/repositories` → 204: URL and branch validated; the key must
/// be this project's.
pub async fn create_repository(req: Req) -> HandlerResult {
    let input: RepositoryInput = req.json()?;
    req.app
        .services
        .create_resource::<Repository>(req.access()?, input)
        .await?;
    Ok(no_content())
}

/// `PUT /api/project/{project_id}/repositories/{repository_id}` → 204.
pub async fn update_repository(req: Req) -> HandlerResult {
    let id = req.id("repository_id", "repository")?;
    let input: RepositoryInput = req.json()?;
    req.app
        .services
        .update_resource::<Repository>(req.access()?, id, input)
        .await?;
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/repositories/{repository_id}` → 204, or 400 `inUse`.
pub async fn delete_repository(req: Req) -> HandlerResult {
    let id = req.id("repository_id", "repository")?;
    req.app
        .services
        .delete_resource::<Repository>(req.access()?, id)
        .await?;
    Ok(no_content())
}

/// `GET /api/project/{project_id}/repositories/{repository_id}/refs`.
pub async fn repository_refs(req: Req) -> HandlerResult {
    let id = req.id("repository_id", "repository")?;
    let refs = req
        .app
        .services
        .resource_refs::<Repository>(req.access()?, id)?;
    Ok(body::json(StatusCode::OK, &refs_view(&refs)))
}

// --- inventories --------------------------------------------------------------------------

#[derive(Serialize)]
struct InventoryView<'a> {
    id: u64,
    name: &'a str,
    project_id: u64,
    inventory: &'a str,
    ssh_key_id: Option<u64>,
    become_key_id: Option<u64>,
    #[serde(rename = "type")]
    kind: &'a str,
    holder_id: Option<u64>,
    repository_id: Option<u64>,
}

fn inventory_view(i: &Inventory) -> InventoryView<'_> {
    InventoryView {
        id: i.id,
        name: &i.name,
        project_id: i.project_id,
        inventory: &i.inventory,
        ssh_key_id: i.ssh_key_id,
        become_key_id: i.become_key_id,
        kind: &i.kind,
        holder_id: i.holder_id,
        repository_id: i.repository_id,
    }
}

/// `GET /api/project/{project_id}/inventory?sort=name&order=`.
pub async fn inventories(req: Req) -> HandlerResult {
    let mut items = req.app.services.resources::<Inventory>(req.access()?)?;
    sort_list(&req, &mut items, &[("name", &|i| i.name.clone())], "name");
    Ok(body::json(
        StatusCode::OK,
        &items.iter().map(inventory_view).collect::<Vec<_>>(),
    ))
}

/// `GET /api/project/{project_id}/inventory/{inventory_id}`.
pub async fn inventory(req: Req) -> HandlerResult {
    let i = req
        .app
        .services
        .resource::<Inventory>(req.access()?, req.id("inventory_id", "inventory")?)?;
    Ok(body::json(StatusCode::OK, &inventory_view(&i)))
}

/// `POST /api/project/{project_id}/inventory` → 201 with the inventory; `file` paths must stay
/// inside the checkout.
pub async fn create_inventory(req: Req) -> HandlerResult {
    let input: InventoryInput = req.json()?;
    let i = req
        .app
        .services
        .create_resource::<Inventory>(req.access()?, input)
        .await?;
    Ok(body::json(StatusCode::CREATED, &inventory_view(&i)))
}

/// `PUT /api/project/{project_id}/inventory/{inventory_id}` → 204.
pub async fn update_inventory(req: Req) -> HandlerResult {
    let id = req.id("inventory_id", "inventory")?;
    let input: InventoryInput = req.json()?;
    req.app
        .services
        .update_resource::<Inventory>(req.access()?, id, input)
        .await?;
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/inventory/{inventory_id}` → 204, or 400 `inUse`.
pub async fn delete_inventory(req: Req) -> HandlerResult {
    let id = req.id("inventory_id", "inventory")?;
    req.app
        .services
        .delete_resource::<Inventory>(req.access()?, id)
        .await?;
    Ok(no_content())
}

/// `GET /api/project/{project_id}/inventory/{inventory_id}/refs`.
pub async fn inventory_refs(req: Req) -> HandlerResult {
    let id = req.id("inventory_id", "inventory")?;
    let refs = req
        .app
        .services
        .resource_refs::<Inventory>(req.access()?, id)?;
    Ok(body::json(StatusCode::OK, &refs_view(&refs)))
}

// --- environments -------------------------------------------------------------------------

fn environment_view(e: &Environment, secrets: &[SecretInfo]) -> serde_json::Value {
    json!({
        "id": e.id,
        "name": e.name,
        "project_id": e.project_id,
        "password": null,
        "json": e.json,
        "env": e.env,
        "secrets": secrets
            .iter()
            .map(|s| json!({"id": s.id, "type": s.kind, "name": s.name, "secret": "", "operation": ""}))
            .collect::<Vec<_>>(),
    })
}

/// `GET /api/project/{project_id}/environment?sort=name&order=`: secret names, never values.
pub async fn environments(req: Req) -> HandlerResult {
    let mut items = req.app.services.resources::<Environment>(req.access()?)?;
    let secrets = req.app.services.environment_secrets(req.access()?)?;
    sort_list(&req, &mut items, &[("name", &|e| e.name.clone())], "name");
    let views: Vec<_> = items
        .iter()
        .map(|e| environment_view(e, secrets.get(&e.id).map_or(&[], Vec::as_slice)))
        .collect();
    Ok(body::json(StatusCode::OK, &views))
}

/// `GET /api/project/{project_id}/environment/{environment_id}`.
pub async fn environment(req: Req) -> HandlerResult {
    let id = req.id("environment_id", "environment")?;
    let e = req
        .app
        .services
        .resource::<Environment>(req.access()?, id)?;
    let secrets = req.app.services.environment_secrets(req.access()?)?;
    let secrets = secrets.get(&id).map_or(&[][..], Vec::as_slice);
    Ok(body::json(StatusCode::OK, &environment_view(&e, secrets)))
}

/// `POST /api/project/{project_id}/environment` → 204: `json`/`env` validated, secrets sealed.
pub async fn create_environment(req: Req) -> HandlerResult {
    let input: EnvironmentInput = req.json()?;
    req.app
        .services
        .create_resource::<Environment>(req.access()?, input)
        .await?;
    Ok(no_content())
}

/// `PUT /api/project/{project_id}/environment/{environment_id}` → 204, applying the body's
/// secret operations (only on this environment's own secrets).
pub async fn update_environment(req: Req) -> HandlerResult {
    let id = req.id("environment_id", "environment")?;
    let input: EnvironmentInput = req.json()?;
    req.app
        .services
        .update_resource::<Environment>(req.access()?, id, input)
        .await?;
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/environment/{environment_id}` → 204 (with its secrets),
/// or 400 `inUse`.
pub async fn delete_environment(req: Req) -> HandlerResult {
    let id = req.id("environment_id", "environment")?;
    req.app
        .services
        .delete_resource::<Environment>(req.access()?, id)
        .await?;
    Ok(no_content())
}

/// `GET /api/project/{project_id}/environment/{environment_id}/refs`.
pub async fn environment_refs(req: Req) -> HandlerResult {
    let id = req.id("environment_id", "environment")?;
    let refs = req
        .app
        .services
        .resource_refs::<Environment>(req.access()?, id)?;
    Ok(body::json(StatusCode::OK, &refs_view(&refs)))
}

// --- templates ----------------------------------------------------------------------------

fn template_view(
    req: &Req,
    t: &Template,
) -> Result<serde_json::Value, crate::http::error::ApiError> {
    let (tasks, last) = req.app.services.template_task_stats(req.access()?, t.id)?;
    let last_task = last.map(|task| {
        let mut v = super::tasks::task_view(&task, "");
        v["tpl_playbook"] = json!(t.playbook);
        v["tpl_alias"] = json!(t.name);
        v["tpl_type"] = json!(t.kind);
        v["tpl_app"] = json!(t.app);
        v
    });
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
    Ok(view)
}

/// `GET /api/project/{project_id}/templates?sort=name|playbook|inventory|environment|repository`.
pub async fn templates(req: Req) -> HandlerResult {
    let access = req.access()?;
    let mut items = req.app.services.resources::<Template>(access)?;
    let names = req.app.services.template_ref_names(access)?;
    let lookup = |map: &std::collections::HashMap<u64, String>, id: Option<u64>| {
        id.and_then(|i| map.get(&i).cloned()).unwrap_or_default()
    };
    sort_list(
        &req,
        &mut items,
        &[
            ("name", &|t| t.name.clone()),
            ("playbook", &|t| t.playbook.clone()),
            ("inventory", &|t| lookup(&names.inventories, t.inventory_id)),
            ("environment", &|t| {
                lookup(&names.environments, t.environment_id)
            }),
            ("repository", &|t| {
                lookup(&names.repositories, Some(t.repository_id))
            }),
        ],
        "name",
    );
    let views = items
        .iter()
        .map(|t| template_view(&req, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(body::json(StatusCode::OK, &views))
}

/// `GET /api/project/{project_id}/templates/{template_id}`.
pub async fn template(req: Req) -> HandlerResult {
    let t = req
        .app
        .services
        .resource::<Template>(req.access()?, req.id("template_id", "template")?)?;
    Ok(body::json(StatusCode::OK, &template_view(&req, &t)?))
}

/// `POST /api/project/{project_id}/templates` → 201 with the template; everything is checked
/// before anything is written.
pub async fn create_template(req: Req) -> HandlerResult {
    let input: TemplateInput = req.json()?;
    let t = req
        .app
        .services
        .create_resource::<Template>(req.access()?, input)
        .await?;
    Ok(body::json(StatusCode::CREATED, &template_view(&req, &t)?))
}

/// `PUT /api/project/{project_id}/templates/{template_id}` → 204.
pub async fn update_template(req: Req) -> HandlerResult {
    let id = req.id("template_id", "template")?;
    let input: TemplateInput = req.json()?;
    req.app
        .services
        .update_resource::<Template>(req.access()?, id, input)
        .await?;
    Ok(no_content())
}

/// `DELETE /api/project/{project_id}/templates/{template_id}` → 204, or 409 when another
/// template deploys its builds.
pub async fn delete_template(req: Req) -> HandlerResult {
    let id = req.id("template_id", "template")?;
    req.app
        .services
        .delete_resource::<Template>(req.access()?, id)
        .await?;
    Ok(no_content())
}

/// `GET /api/project/{project_id}/templates/{template_id}/refs`.
pub async fn template_refs(req: Req) -> HandlerResult {
    let id = req.id("template_id", "template")?;
    let refs = req
        .app
        .services
        .resource_refs::<Template>(req.access()?, id)?;
    Ok(body::json(StatusCode::OK, &refs_view(&refs)))
}
