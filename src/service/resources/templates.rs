//! Templates: what a task runs (app, playbook, repository, inventory, environment).

use serde::Deserialize;

use super::{Names, ProjectResource, Refs, Target, body, invalid, require, require_key, users};
use crate::model::{
    Environment, Inventory, KeyKind, ProjectId, Repository, SurveyValue, SurveyVar, Template,
    TemplateVault, View,
};
use crate::service::projects::Access;
use crate::service::{Error, Result, Services, validate};
use crate::store::{Lists, Tx};

/// Apps Forge runs itself (see [`crate::service::apps::BUILTIN`]).
pub const BUILTIN_APPS: &[&str] = &[
    "ansible",
    "terraform",
    "tofu",
    "bash",
    "powershell",
    "python",
];

/// A survey variable in a template body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SurveyVarInput {
    /// Variable name.
    pub name: Option<String>,
    /// Label.
    pub title: Option<String>,
    /// Help text.
    pub description: Option<String>,
    /// `""`, `int`, `enum`, `secret`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Must be answered.
    pub required: Option<bool>,
    /// Choices.
    #[serde(deserialize_with = "crate::service::input::objects")]
    pub values: Option<Vec<SurveyValueInput>>,
}

/// A choice of an enum survey variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SurveyValueInput {
    /// Label.
    pub name: Option<String>,
    /// Value.
    pub value: Option<String>,
}

/// A vault entry in a template body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VaultInput {
    /// The `login_password` key holding the password.
    pub vault_key_id: Option<u64>,
    /// Vault id name.
    pub name: Option<String>,
}

/// A template body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TemplateInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Inventory.
    pub inventory_id: Option<u64>,
    /// Repository.
    pub repository_id: Option<u64>,
    /// Environment.
    pub environment_id: Option<u64>,
    /// UI grouping.
    pub view_id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Playbook or script path.
    pub playbook: Option<String>,
    /// JSON array of strings, as text.
    pub arguments: Option<String>,
    /// Tasks may add arguments.
    pub allow_override_args_in_task: Option<bool>,
    /// Tasks may set ansible's own variables (`ansible_*`) in their `environment`.
    pub allow_ansible_vars_in_task: Option<bool>,
    /// Free text.
    pub description: Option<String>,
    /// `""`, `build`, `deploy`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// First build version.
    pub start_version: Option<String>,
    /// Build template of a deploy template.
    pub build_template_id: Option<u64>,
    /// Auto-run after builds.
    pub autorun: Option<bool>,
    /// Branch override.
    pub git_branch: Option<String>,
    /// Survey.
    #[serde(deserialize_with = "crate::service::input::objects")]
    pub survey_vars: Option<Vec<SurveyVarInput>>,
    /// Vault passwords.
    #[serde(deserialize_with = "crate::service::input::objects")]
    pub vaults: Option<Vec<VaultInput>>,
    /// No success alerts.
    pub suppress_success_alerts: Option<bool>,
    /// App id.
    pub app: Option<String>,
    /// Longest run in seconds (Forge extension; 0 = the server default).
    pub max_duration_secs: Option<u64>,
    /// Only remote runners with this tag run its tasks (empty or null: any).
    pub runner_tag: Option<String>,
}

impl Services {
    fn template_from(&self, input: TemplateInput, id: u64, p: ProjectId) -> Result<Template> {
        let name = input.name.unwrap_or_default();
        if name.trim().is_empty() {
            return invalid("template name can not be empty");
        }
        validate::name(&name, "template name").map_err(Error::Invalid)?;
        let app = input
            .app
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "ansible".into());
        self.require_active_app(&app)?;
        let playbook = input.playbook.unwrap_or_default().trim().to_owned();
        // Terraform/OpenTofu: the playbook is an optional sub-directory of the repository.
        let terraform = matches!(app.as_str(), "terraform" | "tofu");
        if playbook.is_empty() && !terraform {
            return invalid("template playbook can not be empty");
        }
        if !playbook.is_empty() {
            validate::relative_path(&playbook, "playbook").map_err(Error::Invalid)?;
        }
        let inventory_id = input.inventory_id.filter(|&i| i != 0);
        if app == "ansible" && inventory_id.is_none() {
            return invalid("template inventory can not be empty");
        }
        let repository_id = input
            .repository_id
            .filter(|&r| r != 0)
            .ok_or_else(|| Error::Invalid("template repository can not be empty".into()))?;
        let arguments = input.arguments.filter(|a| !a.trim().is_empty());
        if let Some(args) = &arguments
            && serde_json::from_str::<Vec<String>>(args).is_err()
        {
            return invalid("template arguments must be valid JSON (an array of strings)");
        }
        let kind = input.kind.unwrap_or_default();
        if !["", "build", "deploy"].contains(&kind.as_str()) {
            return invalid(format!(
                "template type must be \"\", build or deploy, not {kind:?}"
            ));
        }
        let (start_version, build_template_id) = build_fields(
            input.start_version.as_deref(),
            input.build_template_id,
            &kind,
        )?;
        let git_branch = input.git_branch.filter(|b| !b.trim().is_empty());
        if let Some(b) = &git_branch {
            validate::git_branch(b.trim()).map_err(Error::Invalid)?;
        }
        let mut survey_vars = Vec::new();
        for v in input.survey_vars.unwrap_or_default() {
            let kind = v.kind.unwrap_or_default();
            if !["", "int", "enum", "secret"].contains(&kind.as_str()) {
                return invalid(format!(
                    "survey variable type must be \"\", int, enum or secret, not {kind:?}"
                ));
            }
            let name = v.name.unwrap_or_default();
            if name.trim().is_empty() {
                return invalid("survey variable name can not be empty");
            }
            survey_vars.push(SurveyVar {
                name,
                title: v.title.unwrap_or_default(),
                description: v.description.unwrap_or_default(),
                kind,
                required: v.required.unwrap_or_default(),
                values: v
                    .values
                    .unwrap_or_default()
                    .into_iter()
                    .map(|x| SurveyValue {
                        name: x.name.unwrap_or_default(),
                        value: x.value.unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        let vaults = input
            .vaults
            .unwrap_or_default()
            .into_iter()
            .zip(1..)
            .map(|(v, i)| TemplateVault {
                id: i,
                vault_key_id: v.vault_key_id.unwrap_or_default(),
                name: v.name.filter(|n| !n.is_empty()),
            })
            .collect();
        Ok(Template {
            id,
            project_id: p,
            inventory_id,
            repository_id,
            environment_id: input.environment_id.filter(|&e| e != 0),
            view_id: input.view_id.filter(|&v| v != 0),
            name: name.trim().to_owned(),
            playbook,
            arguments,
            allow_override_args_in_task: input.allow_override_args_in_task.unwrap_or_default(),
            description: input.description.filter(|d| !d.is_empty()),
            start_version,
            build_template_id,
            autorun: kind == "deploy" && input.autorun.unwrap_or_default(),
            kind,
            git_branch,
            survey_vars,
            vaults,
            suppress_success_alerts: input.suppress_success_alerts.unwrap_or_default(),
            app,
            max_duration_secs: input.max_duration_secs.unwrap_or_default(),
            runner_tag: match input.runner_tag.filter(|t| !t.is_empty()) {
                Some(t) if !crate::service::runners::valid_tag(&t) => {
                    return invalid(format!(
                        "runner_tag: {t:?} is not a tag (1 to {} letters, digits, '-', '_', '.')",
                        crate::service::runners::MAX_TAG_LEN
                    ));
                }
                tag => tag,
            },
            allow_ansible_vars_in_task: input.allow_ansible_vars_in_task.unwrap_or_default(),
        })
    }

    /// How many tasks template `id` has, and its newest.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn template_task_stats(
        &self,
        access: &Access,
        id: u64,
    ) -> Result<(u64, Option<crate::model::Task>)> {
        Ok(self.store.template_task_stats(access.project_id(), id)?)
    }

    /// Names of the objects templates refer to, for sorting lists by them.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn template_ref_names(&self, access: &Access) -> Result<TemplateRefNames> {
        let view = self.store.view()?;
        let p = access.project_id();
        let names = |items: Vec<(u64, String)>| items.into_iter().collect();
        Ok(TemplateRefNames {
            inventories: names(
                view.list::<Inventory>(p)?
                    .into_iter()
                    .map(|i| (i.id, i.name))
                    .collect(),
            ),
            repositories: names(
                view.list::<Repository>(p)?
                    .into_iter()
                    .map(|r| (r.id, r.name))
                    .collect(),
            ),
            environments: names(
                view.list::<Environment>(p)?
                    .into_iter()
                    .map(|e| (e.id, e.name))
                    .collect(),
            ),
        })
    }
}

impl ProjectResource for Template {
    body!(TemplateInput);
    type Fields = Template;
    const NAMES: Names = Names::new("template", "Template").update_messages(
        "template id in URL and in body must be the same",
        "You can not move template to other project",
    );

    fn fields(services: &Services, input: TemplateInput, to: Target) -> Result<Template> {
        services.template_from(input, to.id.unwrap_or_default(), to.project)
    }

    /// Everything is checked before anything is written. A build template stays one while
    /// deploy templates build from it.
    fn record(tx: &Tx<'_>, t: &Template, current: Option<Self>) -> Result<Self> {
        if let Some(current) = current {
            if t.build_template_id == Some(t.id) {
                return invalid("build_template_id: a template cannot build itself");
            }
            if current.kind == "build"
                && t.kind != "build"
                && !Self::refs(tx, t.project_id, t.id)?.templates.is_empty()
            {
                return Err(Error::Conflict(
                    "Template is the build template of one or more deploy templates: it stays \
                     a build template until they use another"
                        .into(),
                ));
            }
        }
        check_refs(tx, t.project_id, t)?;
        Ok(t.clone())
    }

    fn refs(lists: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
        Ok(Refs {
            templates: users(lists, p, |t: &Template| t.build_template_id == Some(id))?,
            inventories: users(lists, p, |i: &Inventory| i.holder_id == Some(id))?,
            ..Refs::default()
        })
    }

    /// Only a template another deploys its builds from is refused (409); the inventories it
    /// holds do not keep it.
    fn in_use(refs: &Refs) -> Option<Error> {
        (!refs.templates.is_empty()).then(|| {
            Error::Conflict("Template is the build template of one or more deploy templates".into())
        })
    }

    /// Its tasks and their output go with it (as upstream), but never a live one.
    fn removing(&self, tx: &Tx<'_>) -> Result<()> {
        let tasks = tx.template_tasks(self.project_id, self.id)?;
        if tasks.iter().any(|task| !task.status.is_finished()) {
            return invalid("the template has queued or running tasks; stop them first");
        }
        for task in &tasks {
            tx.delete_task(task)?;
        }
        tx.forget_builds(self.project_id, self.id)?;
        crate::service::integrations::remove_for_template(tx, self.project_id, self.id)?;
        super::schedules::remove_for_template(tx, self.project_id, self.id)
    }
}

/// A build template's `start_version` (checked: it must count, see [`crate::store::builds`])
/// and a deploy template's `build_template_id` (required); each is cleared on other types.
fn build_fields(
    start_version: Option<&str>,
    build_template_id: Option<u64>,
    kind: &str,
) -> Result<(Option<String>, Option<u64>)> {
    let start_version = start_version
        .map(str::trim)
        .filter(|s| !s.is_empty() && kind == "build");
    if let Some(v) = start_version {
        crate::store::builds::check_start_version(v).map_err(Error::Invalid)?;
    }
    let build_template_id = build_template_id.filter(|&b| b != 0);
    if kind == "deploy" && build_template_id.is_none() {
        return invalid("build_template_id: a deploy template needs a build template");
    }
    Ok((
        start_version.map(str::to_owned),
        build_template_id.filter(|_| kind == "deploy"),
    ))
}

/// Names of a project's inventories, repositories and environments by id.
#[derive(Debug, Default)]
pub struct TemplateRefNames {
    /// Inventory names.
    pub inventories: std::collections::HashMap<u64, String>,
    /// Repository names.
    pub repositories: std::collections::HashMap<u64, String>,
    /// Environment names.
    pub environments: std::collections::HashMap<u64, String>,
}

fn check_refs(tx: &Tx<'_>, p: ProjectId, t: &Template) -> Result<()> {
    require::<Repository>(tx, p, t.repository_id, "repository_id", "repository")?;
    if let Some(i) = t.inventory_id {
        require::<Inventory>(tx, p, i, "inventory_id", "inventory")?;
    }
    if let Some(e) = t.environment_id {
        require::<Environment>(tx, p, e, "environment_id", "environment")?;
    }
    if let Some(v) = t.view_id {
        require::<View>(tx, p, v, "view_id", "view")?;
    }
    if let Some(b) = t.build_template_id {
        let build: Template = require(tx, p, b, "build_template_id", "template")?;
        if build.kind != "build" {
            return invalid("build_template_id: that template is not a build template");
        }
    }
    for v in &t.vaults {
        let key = require_key(tx, p, v.vault_key_id, "vaults.vault_key_id")?;
        if key.kind != KeyKind::LoginPassword {
            return invalid("vaults.vault_key_id: a vault password must be a login_password key");
        }
    }
    Ok(())
}
