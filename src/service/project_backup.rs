//! Project backup and restore in upstream Semaphore's format (API.md §6.9, §12.6).
//!
//! A backup is one JSON document: `meta` (the project's fields), then `keys`, `repositories`,
//! `inventories`, `environments`, `views`, `templates` and `schedules` (naming their
//! template), and upstream's `integrations` (naming their template and secret key, with their
//! matchers, extract values and aliases) and project-wide `integration_aliases`. Objects
//! refer to each other by name, never by id, and no secret leaves the server: keys carry only
//! their name and type, environments the names of their secrets, never a value or a password.
//! Each list is sorted by name (views by position), so a backup depends on what a project
//! holds, not on its ids; names shared within a kind get a ` (2)`, ` (3)`... suffix so every
//! reference stays unambiguous.
//!
//! A restore creates a new project owned by the caller from such a document, in one
//! transaction: every object goes through its resource's own validation (as if created
//! through the API), references are resolved by name, and the first problem answers 400
//! naming the object (`templates[2] "deploy": no repository named "x"`) with nothing written.
//! Restored keys have no secret: they are flagged as needing one until their owner sets it,
//! and a task that would use one fails with that message. Like every new project, a restored
//! one has a `None` key and an `Empty` environment (the document's own, or added).

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::integrations::backup::{self as integration_backup, IntegrationEntry};
use super::projects::{
    Access, EMPTY_ENVIRONMENT, NONE_KEY, ProjectInput, empty_environment, insert_project, none_key,
};
use super::resources::{
    EnvironmentInput, InventoryInput, ProjectResource, RepositoryInput, ScheduleInput, SecretInput,
    SurveyValueInput, SurveyVarInput, Target, TemplateInput, VaultInput, ViewInput, restored_key,
};
use super::{Error, Result, Services, validate};
use crate::model::{
    AccessKey, Environment, Inventory, Project, ProjectId, Repository, Schedule, Template, User,
    View,
};
use crate::store::{NewEvent, Tx};

/// A backup document. Every field of every entry is optional on input (a missing one is
/// refused by the same rule that refuses it through the API); on output absent values are
/// left out, as upstream leaves out its null pointers. Read list by list (see `parse`), so that
/// a type error names its object.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Document {
    /// The project's own fields.
    pub meta: Meta,
    /// Templates.
    pub templates: Vec<TemplateEntry>,
    /// Repositories.
    pub repositories: Vec<RepositoryEntry>,
    /// Access keys (never environment secrets).
    pub keys: Vec<KeyEntry>,
    /// Views.
    pub views: Vec<ViewEntry>,
    /// Inventories.
    pub inventories: Vec<InventoryEntry>,
    /// Environments.
    pub environments: Vec<EnvironmentEntry>,
    /// Integrations (by template and key name).
    pub integrations: Vec<IntegrationEntry>,
    /// Project-wide integration aliases (strings).
    pub integration_aliases: Vec<Value>,
    /// Schedules (by template name).
    pub schedules: Vec<ScheduleEntry>,
}

/// A schedule; `template` names its template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleEntry {
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The template it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Cron expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron_format: Option<String>,
    /// Whether it fires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Repository whose new commits trigger it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `""` or `"run_at"`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// One-off time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Delete a one-off after its run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_after_run: Option<bool>,
    /// Task launch options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_params: Option<Value>,
    /// IANA zone (**Forge**).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Catch up a missed run at start-up (**Forge**).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<bool>,
}

/// `meta`: the project's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// Name (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Alerts on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<bool>,
    /// Chat for alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_chat: Option<String>,
    /// Parallel task limit (0 = none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel_tasks: Option<u32>,
    /// Project type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// An access key: name and type, no secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyEntry {
    /// Name (unique among keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `none`, `ssh`, `login_password` or `string`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RepositoryEntry {
    /// Name (unique among repositories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Clone URL or absolute local path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    /// Branch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_branch: Option<String>,
    /// Name of the key to fetch with (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

/// An inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InventoryEntry {
    /// Name (unique among inventories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Inventory text, or a path for `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    /// `static`, `static-yaml` or `file`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the login key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    /// Name of the become key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub become_key: Option<String>,
    /// Name of the repository of a `file` inventory (Forge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Name of the template holding it (Forge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// An environment: variables, and the names (never the values) of its secrets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvironmentEntry {
    /// Name (unique among environments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Extra variables: a JSON object, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    /// Environment variables: a JSON object of strings, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Its secrets, without values (Forge; restored empty, to be set).
    #[serde(
        deserialize_with = "super::input::objects",
        skip_serializing_if = "Option::is_none"
    )]
    pub secrets: Option<Vec<SecretEntry>>,
}

/// A secret of an environment: its kind and name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretEntry {
    /// `var` or `env`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Variable name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViewEntry {
    /// Title (unique among views; templates refer to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Place among the views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

/// A template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TemplateEntry {
    /// Name (unique among templates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Playbook or script path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// JSON array of strings, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// Tasks may add arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_override_args_in_task: Option<bool>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `""`, `build` or `deploy`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// First build version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_version: Option<String>,
    /// Run after a successful build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autorun: Option<bool>,
    /// Branch override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_branch: Option<String>,
    /// Survey.
    #[serde(
        deserialize_with = "super::input::objects",
        skip_serializing_if = "Option::is_none"
    )]
    pub survey_vars: Option<Vec<SurveyVarEntry>>,
    /// No alert on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppress_success_alerts: Option<bool>,
    /// App id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Name of the inventory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    /// Name of the repository (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Name of the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Name of the build template of a deploy template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_template: Option<String>,
    /// Title of the view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Vault passwords.
    #[serde(
        deserialize_with = "super::input::objects",
        skip_serializing_if = "Option::is_none"
    )]
    pub vaults: Option<Vec<VaultEntry>>,
    /// Longest run in seconds (Forge; absent = the server default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// Upstream's schedule of older backups: refused on restore (use `schedules`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<Value>,
}

/// A survey variable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SurveyVarEntry {
    /// Variable name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Help text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `""`, `int`, `enum` or `secret`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Must be answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Choices of an `enum`.
    #[serde(
        deserialize_with = "super::input::objects",
        skip_serializing_if = "Option::is_none"
    )]
    pub values: Option<Vec<SurveyValueEntry>>,
}

/// A choice of an `enum` survey variable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SurveyValueEntry {
    /// Label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A vault of a template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaultEntry {
    /// Vault id name (absent = `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Upstream's vault type: `password` (the only one Forge has).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the `login_password` key holding the password (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_key: Option<String>,
}

/// The one vault type Forge has.
const VAULT_PASSWORD: &str = "password";

impl Services {
    /// The backup document of a project.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn project_backup(&self, access: &Access) -> Result<Document> {
        let view = self.store.view()?;
        let p = access.project_id();
        let all_keys: Vec<AccessKey> = view.list(p)?;
        let (secrets, keys): (Vec<AccessKey>, Vec<AccessKey>) = all_keys
            .into_iter()
            .partition(|k| k.environment_id.is_some());
        let repositories: Vec<Repository> = view.list(p)?;
        let inventories: Vec<Inventory> = view.list(p)?;
        let environments: Vec<Environment> = view.list(p)?;
        let views: Vec<View> = view.list(p)?;
        let templates: Vec<Template> = view.list(p)?;
        let schedules: Vec<Schedule> = view.list(p)?;

        let key_names = unique_names(keys.iter().map(|k| (k.id, k.name.as_str())));
        let repo_names = unique_names(repositories.iter().map(|r| (r.id, r.name.as_str())));
        let inv_names = unique_names(inventories.iter().map(|i| (i.id, i.name.as_str())));
        let env_names = unique_names(environments.iter().map(|e| (e.id, e.name.as_str())));
        let view_names = unique_names(views.iter().map(|v| (v.id, v.title.as_str())));
        let tpl_names = unique_names(templates.iter().map(|t| (t.id, t.name.as_str())));
        let name = |names: &HashMap<u64, String>, id: Option<u64>| {
            id.and_then(|id| names.get(&id).cloned())
        };

        let project = &access.project;
        let mut doc = Document {
            meta: Meta {
                name: Some(project.name.clone()),
                alert: Some(project.alert),
                alert_chat: project.alert_chat.clone(),
                max_parallel_tasks: Some(project.max_parallel_tasks),
                kind: Some(project.kind.clone()),
            },
            keys: keys
                .iter()
                .map(|k| KeyEntry {
                    name: name(&key_names, Some(k.id)),
                    kind: Some(k.kind.as_str().to_owned()),
                })
                .collect(),
            repositories: repositories
                .iter()
                .map(|r| RepositoryEntry {
                    name: name(&repo_names, Some(r.id)),
                    git_url: Some(r.git_url.clone()),
                    git_branch: Some(r.git_branch.clone()),
                    ssh_key: name(&key_names, Some(r.ssh_key_id)),
                })
                .collect(),
            inventories: inventories
                .iter()
                .map(|i| InventoryEntry {
                    name: name(&inv_names, Some(i.id)),
                    inventory: Some(i.inventory.clone()),
                    kind: Some(i.kind.clone()),
                    ssh_key: name(&key_names, i.ssh_key_id),
                    become_key: name(&key_names, i.become_key_id),
                    repository: name(&repo_names, i.repository_id),
                    holder: name(&tpl_names, i.holder_id),
                })
                .collect(),
            environments: environments
                .iter()
                .map(|e| {
                    let mut mine: Vec<SecretEntry> = secrets
                        .iter()
                        .filter(|k| k.environment_id == Some(e.id))
                        .map(|k| {
                            let (kind, name) = super::resources::secret_kind_name(&k.name);
                            SecretEntry {
                                kind: Some(kind.to_owned()),
                                name: Some(name.to_owned()),
                            }
                        })
                        .collect();
                    mine.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
                    EnvironmentEntry {
                        name: name(&env_names, Some(e.id)),
                        json: Some(e.json.clone()),
                        env: e.env.clone(),
                        secrets: (!mine.is_empty()).then_some(mine),
                    }
                })
                .collect(),
            views: views
                .iter()
                .map(|v| ViewEntry {
                    title: name(&view_names, Some(v.id)),
                    position: Some(v.position),
                })
                .collect(),
            templates: templates
                .iter()
                .map(|t| TemplateEntry {
                    name: name(&tpl_names, Some(t.id)),
                    playbook: Some(t.playbook.clone()),
                    arguments: t.arguments.clone(),
                    allow_override_args_in_task: Some(t.allow_override_args_in_task),
                    description: t.description.clone(),
                    kind: Some(t.kind.clone()),
                    start_version: t.start_version.clone(),
                    autorun: Some(t.autorun),
                    git_branch: t.git_branch.clone(),
                    survey_vars: Some(t.survey_vars.iter().map(survey_var_entry).collect()),
                    suppress_success_alerts: Some(t.suppress_success_alerts),
                    app: Some(t.app.clone()),
                    inventory: name(&inv_names, t.inventory_id),
                    repository: name(&repo_names, Some(t.repository_id)),
                    environment: name(&env_names, t.environment_id),
                    build_template: name(&tpl_names, t.build_template_id),
                    view: name(&view_names, t.view_id),
                    vaults: Some(
                        t.vaults
                            .iter()
                            .map(|v| VaultEntry {
                                name: v.name.clone(),
                                kind: Some(VAULT_PASSWORD.into()),
                                vault_key: name(&key_names, Some(v.vault_key_id)),
                            })
                            .collect(),
                    ),
                    max_duration_secs: Some(t.max_duration_secs).filter(|&d| d != 0),
                    cron: None,
                })
                .collect(),
            // A one-off that has run is history, not a schedule (and its time has passed).
            schedules: schedules
                .iter()
                .filter(|s| s.kind.is_empty() || s.active)
                .map(|s| ScheduleEntry {
                    name: Some(s.name.clone()),
                    template: name(&tpl_names, Some(s.template_id)),
                    cron_format: Some(s.cron_format.clone()),
                    active: Some(s.active),
                    repository: name(&repo_names, s.repository_id),
                    kind: Some(s.kind.clone()),
                    run_at: s.run_at.map(crate::clock::rfc3339),
                    delete_after_run: Some(s.delete_after_run),
                    task_params: serde_json::from_str(&s.task_params).ok(),
                    timezone: Some(s.timezone.clone()),
                    catch_up: Some(s.catch_up),
                })
                .collect(),
            ..Document::default()
        };
        doc.keys.sort_by(|a, b| a.name.cmp(&b.name));
        doc.repositories.sort_by(|a, b| a.name.cmp(&b.name));
        doc.inventories.sort_by(|a, b| a.name.cmp(&b.name));
        doc.environments.sort_by(|a, b| a.name.cmp(&b.name));
        doc.views
            .sort_by(|a, b| (a.position, &a.title).cmp(&(b.position, &b.title)));
        doc.templates.sort_by(|a, b| a.name.cmp(&b.name));
        (doc.integrations, doc.integration_aliases) = integration_backup::export(
            &view,
            p,
            |id| tpl_names.get(&id).cloned(),
            |id| key_names.get(&id).cloned(),
        )?;
        doc.schedules.sort_by(|a, b| {
            (&a.template, &a.name, &a.cron_format).cmp(&(&b.template, &b.name, &b.cron_format))
        });
        Ok(doc)
    }

    /// Creates a new project owned by `caller` from a backup document, in one transaction;
    /// records an event.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when `caller` may not create projects (as for
    /// `POST /api/projects`); [`Error::Invalid`] naming the offending object (a wrong JSON
    /// type, a missing or bad field, an unknown or ambiguous reference); nothing is written
    /// then.
    pub async fn restore_project(self: &Arc<Self>, caller: &User, doc: Value) -> Result<Project> {
        // A restore creates a project: the same rule as `POST /api/projects`.
        if !(caller.admin || self.non_admin_can_create_project) {
            return Err(Error::Unauthorized);
        }
        let plan = Arc::new(Plan::new(parse(doc)?)?);
        let services = Arc::clone(self);
        let caller = caller.clone();
        let project = self
            .transact(move |tx| plan.apply(&services, tx, &caller))
            .await?;
        let restored: Vec<Schedule> = self.store.view()?.list(project.id)?;
        for s in restored {
            self.schedule_changed(project.id, s.id);
        }
        Ok(project)
    }
}

fn survey_var_entry(v: &crate::model::SurveyVar) -> SurveyVarEntry {
    SurveyVarEntry {
        name: Some(v.name.clone()),
        title: Some(v.title.clone()),
        description: Some(v.description.clone()),
        kind: Some(v.kind.clone()),
        required: Some(v.required),
        values: Some(
            v.values
                .iter()
                .map(|x| SurveyValueEntry {
                    name: Some(x.name.clone()),
                    value: Some(x.value.clone()),
                })
                .collect(),
        ),
    }
}

/// A name per id, unique within the kind: the first of several objects sharing a name (in id
/// order) keeps it, the others get ` (2)`, ` (3)`... (skipping names already taken), the name
/// cut short where needed so that it stays within the 255 bytes a name may have.
fn unique_names<'a>(items: impl Iterator<Item = (u64, &'a str)>) -> HashMap<u64, String> {
    let mut items: Vec<(u64, &str)> = items.collect();
    items.sort_by_key(|&(id, _)| id);
    let mut taken: std::collections::HashSet<String> =
        items.iter().map(|(_, n)| (*n).to_owned()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = HashMap::new();
    for (id, name) in items {
        if seen.insert(name) {
            out.insert(id, name.to_owned());
            continue;
        }
        // Of these many candidates at least one is free: each taken name blocks one.
        let unique = (2..=taken.len() + 2)
            .map(|n| with_suffix(name, &format!(" ({n})")))
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or_default();
        taken.insert(unique.clone());
        out.insert(id, unique);
    }
    out
}

/// `name` + `suffix` within [`NAME_MAX`] bytes: `name` is cut at a character boundary.
fn with_suffix(name: &str, suffix: &str) -> String {
    let mut end = name.len().min(NAME_MAX.saturating_sub(suffix.len()));
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &name[..end])
}

/// The most bytes a name may have (as `validate::name` checks).
const NAME_MAX: usize = 255;

/// `templates[2] "deploy"`: where an object is in the document, and its name if it has one.
fn label(kind: &str, index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{kind}[{index}] {name:?}"),
        None => format!("{kind}[{index}]"),
    }
}

/// Prefixes a validation message with the object it is about.
fn at(label: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Invalid(msg) => Error::Invalid(format!("{label}: {msg}")),
        other => other,
    }
}

fn invalid<T>(msg: String) -> Result<T> {
    Err(Error::Invalid(msg))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One object of the document, with the field path of a type error.
fn entry<T: DeserializeOwned>(label: &str, v: Value) -> Result<T> {
    if !v.is_object() {
        return invalid(format!(
            "{label}: must be a JSON object, not {}",
            json_type(&v)
        ));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        Error::Invalid(format!("{label}: `{path}`: {}", e.into_inner()))
    })
}

/// The list `kind` of the document (missing or `null` = empty), each object labelled.
fn list<T: DeserializeOwned>(top: &mut Map<String, Value>, kind: &str) -> Result<Vec<T>> {
    match top.remove(kind) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let name = v
                    .get("name")
                    .or_else(|| v.get("title"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                entry(&label(kind, i, name.as_deref()), v)
            })
            .collect(),
        Some(other) => invalid(format!(
            "{kind}: must be an array, not {}",
            json_type(&other)
        )),
    }
}

/// Reads a document: its shape and JSON types (what it means is checked by [`Plan::new`]).
fn parse(doc: Value) -> Result<Document> {
    let Value::Object(mut top) = doc else {
        return invalid(format!(
            "a project backup must be a JSON object, not {}",
            json_type(&doc)
        ));
    };
    let meta = match top.remove("meta") {
        None | Some(Value::Null) => return invalid("meta: required".into()),
        Some(v) => entry("meta", v)?,
    };
    Ok(Document {
        meta,
        templates: list(&mut top, "templates")?,
        repositories: list(&mut top, "repositories")?,
        keys: list(&mut top, "keys")?,
        views: list(&mut top, "views")?,
        inventories: list(&mut top, "inventories")?,
        environments: list(&mut top, "environments")?,
        integrations: list(&mut top, "integrations")?,
        integration_aliases: raw_list(&mut top, "integration_aliases")?,
        schedules: list(&mut top, "schedules")?,
    })
}

/// A list of anything (upstream's aliases are strings).
fn raw_list(top: &mut Map<String, Value>, kind: &str) -> Result<Vec<Value>> {
    match top.remove(kind) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => invalid(format!(
            "{kind}: must be an array, not {}",
            json_type(&other)
        )),
    }
}

/// The objects of one kind by name: where each is in the document.
struct Index {
    /// `key`, `repository`... as messages name one.
    what: &'static str,
    /// Name → position in the document's list.
    by_name: HashMap<String, usize>,
}

impl Index {
    /// Refuses two objects of the kind with one name (references would be ambiguous).
    fn new<'a>(
        kind: &str,
        what: &'static str,
        names: impl Iterator<Item = Option<&'a str>>,
    ) -> Result<Self> {
        let mut by_name = HashMap::new();
        for (i, name) in names.enumerate() {
            let Some(name) = name else { continue };
            if let Some(first) = by_name.insert(name.to_owned(), i) {
                return invalid(format!(
                    "{}: another {what} has this name ({kind}[{first}]): references by name \
                     would be ambiguous",
                    label(kind, i, Some(name))
                ));
            }
        }
        Ok(Self { what, by_name })
    }

    /// The position of the object a reference names (`None` for no reference).
    fn resolve(&self, field: &str, name: Option<&String>) -> Result<Option<usize>> {
        let Some(name) = name else { return Ok(None) };
        match self.by_name.get(name) {
            Some(&i) => Ok(Some(i)),
            None => invalid(format!("{field}: no {} named {name:?}", self.what)),
        }
    }

    /// A reference that must be there.
    fn require(&self, field: &str, name: Option<&String>) -> Result<usize> {
        self.resolve(field, name)?
            .map_or_else(|| invalid(format!("{field}: required")), Ok)
    }
}

/// A template's references, as positions in the document.
struct TemplateRefs {
    /// Required.
    repository: usize,
    inventory: Option<usize>,
    environment: Option<usize>,
    view: Option<usize>,
    build_template: Option<usize>,
    /// One per vault, in order.
    vault_keys: Vec<usize>,
}

/// A document whose names all resolve: what [`Plan::apply`] writes.
struct Plan {
    /// The document, with the `None` key and `Empty` environment added when it lacks them.
    doc: Document,
    /// The project's name (checked).
    name: String,
    /// Each repository's key.
    repository_keys: Vec<usize>,
    /// Each inventory's login key, become key, repository and holding template.
    inventory_refs: Vec<[Option<usize>; 4]>,
    /// Each template's references.
    template_refs: Vec<TemplateRefs>,
    /// Per schedule: its template and repository (indexes into the document's lists).
    schedule_refs: Vec<(usize, Option<usize>)>,
    /// Per integration: its template and secret key.
    integration_refs: Vec<(usize, Option<usize>)>,
}

impl Plan {
    /// Checks everything that does not need the store: the project's name, what Forge does not
    /// have yet, names unique per kind, and every reference.
    fn new(mut doc: Document) -> Result<Self> {
        let name = doc.meta.name.clone().unwrap_or_default();
        validate::name(&name, "project name").map_err(|e| Error::Invalid(format!("meta: {e}")))?;
        for (i, a) in doc.integration_aliases.iter().enumerate() {
            if !a.is_string() {
                return invalid(format!(
                    "integration_aliases[{i}]: must be a string, not {}",
                    json_type(a)
                ));
            }
        }
        // Like every new project: a `None` key and an `Empty` environment. Added after the
        // document's own objects, so messages keep the document's positions.
        if !doc.keys.iter().any(|k| k.name.as_deref() == Some(NONE_KEY)) {
            let none = none_key(0);
            doc.keys.push(KeyEntry {
                name: Some(none.name),
                kind: Some(none.kind.as_str().into()),
            });
        }
        if !doc
            .environments
            .iter()
            .any(|e| e.name.as_deref() == Some(EMPTY_ENVIRONMENT))
        {
            let empty = empty_environment(0);
            doc.environments.push(EnvironmentEntry {
                name: Some(empty.name),
                json: Some(empty.json),
                ..EnvironmentEntry::default()
            });
        }
        let keys = Index::new("keys", "key", doc.keys.iter().map(|k| k.name.as_deref()))?;
        let repos = Index::new(
            "repositories",
            "repository",
            doc.repositories.iter().map(|r| r.name.as_deref()),
        )?;
        let invs = Index::new(
            "inventories",
            "inventory",
            doc.inventories.iter().map(|i| i.name.as_deref()),
        )?;
        let envs = Index::new(
            "environments",
            "environment",
            doc.environments.iter().map(|e| e.name.as_deref()),
        )?;
        let views = Index::new(
            "views",
            "view",
            doc.views.iter().map(|v| v.title.as_deref()),
        )?;
        let tpls = Index::new(
            "templates",
            "template",
            doc.templates.iter().map(|t| t.name.as_deref()),
        )?;

        let repository_keys = doc
            .repositories
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let l = label("repositories", i, r.name.as_deref());
                keys.require("ssh_key", r.ssh_key.as_ref()).map_err(at(&l))
            })
            .collect::<Result<_>>()?;
        let inventory_refs = doc
            .inventories
            .iter()
            .enumerate()
            .map(|(i, inv)| {
                let l = label("inventories", i, inv.name.as_deref());
                let refs = || -> Result<[Option<usize>; 4]> {
                    Ok([
                        keys.resolve("ssh_key", inv.ssh_key.as_ref())?,
                        keys.resolve("become_key", inv.become_key.as_ref())?,
                        repos.resolve("repository", inv.repository.as_ref())?,
                        tpls.resolve("holder", inv.holder.as_ref())?,
                    ])
                };
                refs().map_err(at(&l))
            })
            .collect::<Result<_>>()?;
        let template_refs = doc
            .templates
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let l = label("templates", i, t.name.as_deref());
                template_refs(t, &[&keys, &repos, &invs, &envs, &views, &tpls]).map_err(at(&l))
            })
            .collect::<Result<_>>()?;
        let schedule_refs = doc
            .schedules
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let l = label("schedules", i, s.name.as_deref());
                let refs = || -> Result<(usize, Option<usize>)> {
                    Ok((
                        tpls.require("template", s.template.as_ref())?,
                        repos.resolve("repository", s.repository.as_ref())?,
                    ))
                };
                refs().map_err(at(&l))
            })
            .collect::<Result<_>>()?;
        let integration_refs = doc
            .integrations
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let l = label("integrations", i, e.name.as_deref());
                let refs = || -> Result<(usize, Option<usize>)> {
                    Ok((
                        tpls.require("template", e.template.as_ref())?,
                        keys.resolve("auth_secret", e.auth_secret.as_ref())?,
                    ))
                };
                refs().map_err(at(&l))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            doc,
            name,
            repository_keys,
            inventory_refs,
            template_refs,
            schedule_refs,
            integration_refs,
        })
    }

    /// Writes the project and everything in it; any refusal aborts the whole transaction.
    fn apply(&self, services: &Services, tx: &Tx<'_>, caller: &User) -> Result<Project> {
        let doc = &self.doc;
        let input = ProjectInput {
            alert: doc.meta.alert,
            alert_chat: doc.meta.alert_chat.clone(),
            max_parallel_tasks: doc.meta.max_parallel_tasks,
            kind: doc.meta.kind.clone(),
            ..ProjectInput::default()
        };
        let project = insert_project(tx, caller.id, &self.name, &input)?;
        let p = project.id;

        let mut key_ids = Vec::new();
        for (i, k) in doc.keys.iter().enumerate() {
            let l = label("keys", i, k.name.as_deref());
            let name = k.name.as_deref().unwrap_or_default();
            let fields =
                restored_key(p, name, k.kind.as_deref().unwrap_or_default()).map_err(at(&l))?;
            let mut key = AccessKey::record(tx, &fields, None).map_err(at(&l))?;
            key_ids.push(tx.insert(&mut key)?);
        }
        let mut view_ids = Vec::new();
        for (i, v) in doc.views.iter().enumerate() {
            let input = ViewInput {
                title: v.title.clone(),
                position: v.position,
                ..ViewInput::default()
            };
            view_ids.push(create::<View>(
                services,
                tx,
                p,
                input,
                &label("views", i, v.title.as_deref()),
            )?);
        }
        let mut env_ids = Vec::new();
        for (i, e) in doc.environments.iter().enumerate() {
            let l = label("environments", i, e.name.as_deref());
            let secrets = e.secrets.iter().flatten().map(|s| SecretInput {
                kind: s.kind.clone(),
                name: s.name.clone(),
                secret: Some(String::new()),
                operation: Some("create".into()),
                ..SecretInput::default()
            });
            let input = EnvironmentInput {
                name: e.name.clone(),
                json: e.json.clone(),
                env: e.env.clone(),
                secrets: Some(secrets.collect()),
                ..EnvironmentInput::default()
            };
            let id = create::<Environment>(services, tx, p, input, &l)?;
            // A backup holds no secret values: the restored secrets have none until set.
            for mut key in tx.list::<AccessKey>(p)? {
                if key.environment_id == Some(id) {
                    key.sealed_secret = Vec::new();
                    tx.put(&key)?;
                }
            }
            env_ids.push(id);
        }
        let mut repo_ids = Vec::new();
        for (i, r) in doc.repositories.iter().enumerate() {
            let input = RepositoryInput {
                name: r.name.clone(),
                git_url: r.git_url.clone(),
                git_branch: r.git_branch.clone(),
                ssh_key_id: Some(key_ids[self.repository_keys[i]]),
                ..RepositoryInput::default()
            };
            let l = label("repositories", i, r.name.as_deref());
            repo_ids.push(create::<Repository>(services, tx, p, input, &l)?);
        }
        let mut inv_ids = Vec::new();
        for (i, inv) in doc.inventories.iter().enumerate() {
            let [ssh, become_key, repo, _holder] = self.inventory_refs[i];
            let input = InventoryInput {
                name: inv.name.clone(),
                inventory: inv.inventory.clone(),
                kind: inv.kind.clone(),
                ssh_key_id: ssh.map(|k| key_ids[k]),
                become_key_id: become_key.map(|k| key_ids[k]),
                repository_id: repo.map(|r| repo_ids[r]),
                ..InventoryInput::default()
            };
            let l = label("inventories", i, inv.name.as_deref());
            inv_ids.push(create::<Inventory>(services, tx, p, input, &l)?);
        }
        // Build templates before the deploy templates that name them.
        let mut order: Vec<usize> = (0..doc.templates.len()).collect();
        order.sort_by_key(|&i| self.template_refs[i].build_template.is_some());
        let mut tpl_ids = vec![0; doc.templates.len()];
        for i in order {
            let t = &doc.templates[i];
            let l = label("templates", i, t.name.as_deref());
            let input = self.template_input(
                i,
                t,
                &[&key_ids, &repo_ids, &inv_ids, &env_ids, &view_ids, &tpl_ids],
            );
            tpl_ids[i] = create::<Template>(services, tx, p, input, &l)?;
        }
        for (i, refs) in self.inventory_refs.iter().enumerate() {
            if let Some(holder) = refs[3] {
                let l = label("inventories", i, doc.inventories[i].name.as_deref());
                let current: Inventory = tx.get(p, inv_ids[i])?.ok_or(Error::NotFound)?;
                let mut held = current.clone();
                held.holder_id = Some(tpl_ids[holder]);
                let held = Inventory::record(tx, &held, Some(current)).map_err(at(&l))?;
                tx.put(&held)?;
            }
        }
        for (i, s) in doc.schedules.iter().enumerate() {
            let (template, repository) = self.schedule_refs[i];
            let input = ScheduleInput {
                template_id: Some(tpl_ids[template]),
                cron_format: s.cron_format.clone(),
                name: s.name.clone(),
                active: s.active,
                repository_id: repository.map(|r| repo_ids[r]),
                kind: s.kind.clone(),
                run_at: s.run_at.clone(),
                delete_after_run: s.delete_after_run,
                task_params: s.task_params.clone(),
                timezone: s.timezone.clone(),
                catch_up: s.catch_up,
                ..ScheduleInput::default()
            };
            let l = label("schedules", i, s.name.as_deref());
            create::<Schedule>(services, tx, p, input, &l)?;
        }
        for (i, e) in doc.integrations.iter().enumerate() {
            let (template, key) = self.integration_refs[i];
            let ids = (tpl_ids[template], key.map(|k| key_ids[k]));
            integration_backup::restore(services, tx, p, e, ids).map_err(at(&label(
                "integrations",
                i,
                e.name.as_deref(),
            )))?;
        }
        for (i, a) in doc.integration_aliases.iter().enumerate() {
            integration_backup::restore_alias(tx, p, None, a.as_str().unwrap_or_default())
                .map_err(at(&format!("integration_aliases[{i}]")))?;
        }
        tx.record(NewEvent {
            user_id: Some(caller.id),
            project_id: Some(p),
            object_id: Some(p),
            object_type: "project",
            description: format!("Project {} restored from a backup", project.name),
        })?;
        Ok(project)
    }

    /// A template's body with its references turned into the new objects' ids (`ids`: keys,
    /// repositories, inventories, environments, views, templates).
    fn template_input(&self, i: usize, t: &TemplateEntry, ids: &[&Vec<u64>; 6]) -> TemplateInput {
        let refs = &self.template_refs[i];
        let [keys, repos, invs, envs, views, tpls] = ids;
        TemplateInput {
            name: t.name.clone(),
            playbook: t.playbook.clone(),
            arguments: t.arguments.clone(),
            allow_override_args_in_task: t.allow_override_args_in_task,
            description: t.description.clone(),
            kind: t.kind.clone(),
            start_version: t.start_version.clone(),
            autorun: t.autorun,
            git_branch: t.git_branch.clone(),
            survey_vars: Some(
                t.survey_vars
                    .iter()
                    .flatten()
                    .map(|v| SurveyVarInput {
                        name: v.name.clone(),
                        title: v.title.clone(),
                        description: v.description.clone(),
                        kind: v.kind.clone(),
                        required: v.required,
                        values: Some(
                            v.values
                                .iter()
                                .flatten()
                                .map(|x| SurveyValueInput {
                                    name: x.name.clone(),
                                    value: x.value.clone(),
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
            suppress_success_alerts: t.suppress_success_alerts,
            app: t.app.clone(),
            max_duration_secs: t.max_duration_secs,
            repository_id: Some(repos[refs.repository]),
            inventory_id: refs.inventory.map(|x| invs[x]),
            environment_id: refs.environment.map(|x| envs[x]),
            view_id: refs.view.map(|x| views[x]),
            build_template_id: refs.build_template.map(|x| tpls[x]),
            vaults: Some(
                t.vaults
                    .iter()
                    .flatten()
                    .zip(&refs.vault_keys)
                    .map(|(v, &k)| VaultInput {
                        vault_key_id: Some(keys[k]),
                        name: v.name.clone(),
                    })
                    .collect(),
            ),
            ..TemplateInput::default()
        }
    }
}

/// Resolves a template's references (`index`: keys, repositories, inventories,
/// environments, views, templates).
fn template_refs(t: &TemplateEntry, index: &[&Index; 6]) -> Result<TemplateRefs> {
    let [keys, repos, invs, envs, views, tpls] = index;
    if t.cron.as_ref().is_some_and(|c| !c.is_null()) {
        return invalid(
            "cron: a template's cron is not restored; give it an entry in \"schedules\"".into(),
        );
    }
    let build_template = tpls.resolve("build_template", t.build_template.as_ref())?;
    let mut vault_keys = Vec::new();
    for (n, v) in t.vaults.iter().flatten().enumerate() {
        let field = format!("vaults[{n}]");
        match v.kind.as_deref() {
            None | Some("" | VAULT_PASSWORD) => {}
            Some(other) => {
                return invalid(format!(
                    "{field}: vault type {other:?} is not supported (only {VAULT_PASSWORD:?})"
                ));
            }
        }
        vault_keys.push(keys.require(&format!("{field}.vault_key"), v.vault_key.as_ref())?);
    }
    Ok(TemplateRefs {
        repository: repos.require("repository", t.repository.as_ref())?,
        inventory: invs.resolve("inventory", t.inventory.as_ref())?,
        environment: envs.resolve("environment", t.environment.as_ref())?,
        view: views.resolve("view", t.view.as_ref())?,
        build_template,
        vault_keys,
    })
}

/// Creates one object through its resource's own rules, as the API would; refusals name it.
fn create<R: ProjectResource>(
    services: &Services,
    tx: &Tx<'_>,
    p: ProjectId,
    input: R::Input,
    label: &str,
) -> Result<u64> {
    let to = Target {
        project: p,
        id: None,
    };
    let fields = R::fields(services, input, to).map_err(at(label))?;
    let mut r = R::record(tx, &fields, None).map_err(at(label))?;
    let id = tx.insert(&mut r)?;
    R::written(tx, p, id, &fields).map_err(at(label))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(doc: Value) -> String {
        match parse(doc).and_then(Plan::new) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shared_names_get_a_suffix_in_id_order() {
        let names =
            unique_names([(3, "a"), (1, "a"), (2, "a (2)"), (4, "b"), (5, "a")].into_iter());
        assert_eq!(names[&1], "a");
        assert_eq!(names[&2], "a (2)");
        assert_eq!(names[&3], "a (3)");
        assert_eq!(names[&4], "b");
        assert_eq!(names[&5], "a (4)");
    }

    /// A long shared name is cut so that name and suffix stay within 255 bytes, at a
    /// character boundary (schemathesis found a 256-byte name in a backup).
    #[test]
    fn a_suffixed_name_stays_within_255_bytes() {
        let long = "0".repeat(255);
        let wide = "é".repeat(127); // 254 bytes
        let names = unique_names([(1, long.as_str()), (2, long.as_str())].into_iter());
        assert_eq!(names[&2], format!("{} (2)", "0".repeat(251)));
        let names = unique_names([(1, wide.as_str()), (2, wide.as_str())].into_iter());
        assert_eq!(names[&2], format!("{} (2)", "é".repeat(125)));
        for n in names.values() {
            assert!(crate::service::validate::name(n, "name").is_ok(), "{n}");
        }
    }

    /// Each class of bad document, refused before anything is written, naming the object.
    #[test]
    fn bad_documents_name_the_offending_object() {
        let meta = json!({"name": "p"});
        let cases = [
            (
                json!([]),
                "a project backup must be a JSON object, not an array",
            ),
            (json!({}), "meta: required"),
            (json!({"meta": {"name": ""}}), "meta: project name"),
            (
                json!({"meta": meta, "keys": {}}),
                "keys: must be an array, not an object",
            ),
            (
                json!({"meta": meta, "keys": [7]}),
                "keys[0]: must be a JSON object, not a number",
            ),
            (
                json!({"meta": meta, "keys": [{"name": "k", "type": 5}]}),
                "keys[0] \"k\": `type`: invalid type: integer `5`, expected a string",
            ),
            (
                json!({"meta": meta, "keys": [{"name": "k", "type": "none"}, {"name": "k", "type": "none"}]}),
                "keys[1] \"k\": another key has this name (keys[0])",
            ),
            (
                json!({"meta": meta, "repositories": [{"name": "r", "git_url": "/x"}]}),
                "repositories[0] \"r\": ssh_key: required",
            ),
            (
                json!({"meta": meta, "templates": [
                    {"name": "a", "playbook": "a.sh", "app": "bash", "repository": "r"},
                    {"name": "deploy", "playbook": "a.sh", "app": "bash", "repository": "x"}],
                    "repositories": [{"name": "r", "git_url": "/x", "ssh_key": "None"}]}),
                "templates[1] \"deploy\": repository: no repository named \"x\"",
            ),
            (
                json!({"meta": meta, "templates": [{"name": "t", "repository": "r",
                    "vaults": [{"vault_key": "nope"}]}],
                    "repositories": [{"name": "r", "git_url": "/x", "ssh_key": "None"}]}),
                "templates[0] \"t\": vaults[0].vault_key: no key named \"nope\"",
            ),
            (
                json!({"meta": meta, "schedules": [{"name": "s", "template": "gone"}]}),
                "schedules[0] \"s\": template: no template named \"gone\"",
            ),
        ];
        for (doc, want) in cases {
            let got = refused(doc.clone());
            assert!(got.starts_with(want), "{doc}: {got}");
        }
    }

    #[test]
    fn a_minimal_document_gets_the_none_key_and_the_empty_environment() {
        let plan = parse(json!({"meta": {"name": "p"}}))
            .and_then(Plan::new)
            .expect("accepted");
        assert_eq!(plan.doc.keys.len(), 1);
        assert_eq!(plan.doc.keys[0].name.as_deref(), Some("None"));
        assert_eq!(plan.doc.keys[0].kind.as_deref(), Some("none"));
        assert_eq!(plan.doc.environments.len(), 1);
        assert_eq!(plan.doc.environments[0].name.as_deref(), Some("Empty"));
    }
}
