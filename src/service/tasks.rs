//! Launching, listing and deleting tasks. Running them is the runner's job; a launch stores a
//! durable `waiting` row (with its first output line and its event) before it is answered.

use serde::Deserialize;

use super::projects::Access;
use super::{Error, Result, Services, validate};
use crate::model::{Inventory, OutputLine, Task, TaskStatus, Template, User};
use crate::runner::process::now_us;

/// Most tasks a list returns.
pub const LIST_LIMIT: usize = 1000;

/// The newer web UI's `params` object; its flags alias the top-level ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TaskParams {
    /// Alias of `debug`.
    pub debug: Option<bool>,
    /// Alias of `dry_run`.
    pub dry_run: Option<bool>,
    /// Alias of `diff`.
    pub diff: Option<bool>,
}

/// A task launch body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TaskInput {
    /// The template to run (required).
    pub template_id: Option<u64>,
    /// ansible `-vvvv`.
    pub debug: Option<bool>,
    /// ansible `--check`.
    pub dry_run: Option<bool>,
    /// ansible `--diff`.
    pub diff: Option<bool>,
    /// Playbook override (ansible).
    pub playbook: Option<String>,
    /// Extra variables: a JSON object as text.
    pub environment: Option<String>,
    /// Secret extra variables: a JSON object as text (stored encrypted, never returned).
    pub secret: Option<String>,
    /// ansible `--limit`.
    pub limit: Option<String>,
    /// Free text.
    pub message: Option<String>,
    /// Branch override.
    pub git_branch: Option<String>,
    /// Extra arguments: a JSON array of strings as text.
    pub arguments: Option<String>,
    /// Inventory override.
    pub inventory_id: Option<u64>,
    /// Build task to deploy.
    pub build_task_id: Option<u64>,
    /// Commit to check out.
    pub commit_hash: Option<String>,
    /// UI flags.
    #[serde(deserialize_with = "super::input::object")]
    pub params: Option<TaskParams>,
}

fn object_text(text: Option<String>, what: &str) -> Result<String> {
    let text = text
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| "{}".into());
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        _ => Err(Error::Invalid(format!("{what} must be a JSON object"))),
    }
}

impl Services {
    /// Stores a new `waiting` task of template `input.template_id` with its first output line
    /// and its event, durably, in one transaction. The caller hands it to the runner.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unknown template or inventory, or malformed fields.
    pub async fn create_task(
        &self,
        access: &Access,
        input: TaskInput,
    ) -> Result<(Task, OutputLine)> {
        let template_id = input
            .template_id
            .filter(|&t| t != 0)
            .ok_or_else(|| Error::Invalid("template_id is required".into()))?;
        let environment = object_text(input.environment, "environment")?;
        let secret = object_text(input.secret, "secret")?;
        let sealed_secret = if secret == "{}" {
            Vec::new()
        } else {
            self.seal(secret.as_bytes())
        };
        let arguments = input.arguments.filter(|a| !a.trim().is_empty());
        if let Some(a) = &arguments
            && serde_json::from_str::<Vec<String>>(a).is_err()
        {
            return Err(Error::Invalid(
                "arguments must be a JSON array of strings".into(),
            ));
        }
        let git_branch = input.git_branch.filter(|b| !b.trim().is_empty());
        if let Some(b) = &git_branch {
            validate::git_branch(b).map_err(Error::Invalid)?;
        }
        let commit_hash = input.commit_hash.filter(|c| !c.trim().is_empty());
        if let Some(c) = &commit_hash {
            let ok = (4..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(Error::Invalid(
                    "commit_hash must be a hexadecimal commit id".into(),
                ));
            }
        }
        let playbook = input.playbook.unwrap_or_default();
        if !playbook.is_empty() {
            validate::relative_path(&playbook, "playbook").map_err(Error::Invalid)?;
        }
        let params = input.params.unwrap_or_default();
        let access = access.clone();
        let message = input.message.unwrap_or_default();
        let limit = input.limit.unwrap_or_default();
        if limit.chars().any(char::is_control) || limit.starts_with('-') {
            return Err(Error::Invalid("limit is not a valid host pattern".into()));
        }
        let (debug, dry_run, diff) = (
            input.debug.or(params.debug).unwrap_or_default(),
            input.dry_run.or(params.dry_run).unwrap_or_default(),
            input.diff.or(params.diff).unwrap_or_default(),
        );
        let inventory_id = input.inventory_id.filter(|&i| i != 0);
        let build_task_id = input.build_task_id.filter(|&b| b != 0);
        self.transact(move |tx| {
            let p = access.project_id();
            let template: Template = tx.get(p, template_id)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "template_id: no template with id {template_id} in this project"
                ))
            })?;
            if let Some(i) = inventory_id {
                tx.get::<Inventory>(p, i)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "inventory_id: no inventory with id {i} in this project"
                    ))
                })?;
            }
            let mut task = Task {
                id: 0,
                project_id: p,
                template_id: template.id,
                status: TaskStatus::Waiting,
                debug,
                dry_run,
                diff,
                playbook: playbook.clone(),
                environment: environment.clone(),
                limit: limit.clone(),
                arguments: arguments.clone(),
                git_branch: git_branch.clone(),
                user_id: Some(access.user.id),
                integration_id: None,
                schedule_id: None,
                created: tx.now(),
                start: None,
                end: None,
                message: message.clone(),
                commit_hash: commit_hash.clone(),
                commit_message: String::new(),
                build_task_id,
                version: None,
                inventory_id,
                process_group: None,
                sealed_secret: sealed_secret.clone(),
            };
            let id = tx.insert_task(&mut task)?;
            let line = OutputLine {
                time_us: now_us(),
                text: format!("Task {id} added to queue"),
            };
            tx.append_output(id, 0, std::slice::from_ref(&line))?;
            tx.record(access.event("task", id, format!("Task ID {id} queued for running")))?;
            Ok((task, line))
        })
        .await
    }

    /// Task `id` of the project.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn task(&self, access: &Access, id: u64) -> Result<Task> {
        self.store
            .view()?
            .get(access.project_id(), id)?
            .ok_or(Error::NotFound)
    }

    /// The newest tasks of the project (of one template if given), newest first.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn tasks(&self, access: &Access, template: Option<u64>, limit: usize) -> Result<Vec<Task>> {
        Ok(self
            .store
            .recent_tasks(access.project_id(), template, limit)?)
    }

    /// Deletes a finished task and its output (system admins only, as upstream).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for non-admins; [`Error::NotFound`]; [`Error::Invalid`] for an
    /// unfinished task.
    pub async fn delete_task(&self, access: &Access, id: u64) -> Result<()> {
        if !access.user.admin {
            return Err(Error::Unauthorized);
        }
        let access = access.clone();
        self.transact(move |tx| {
            let task: Task = tx.get(access.project_id(), id)?.ok_or(Error::NotFound)?;
            if !task.status.is_finished() {
                return Err(Error::Invalid(
                    "a queued or running task cannot be deleted; stop it first".into(),
                ));
            }
            tx.delete_task(&task)?;
            tx.record(access.event("task", id, format!("Task ID {id} deleted")))?;
            Ok(())
        })
        .await
    }

    /// Output lines `offset..offset+limit` of a task.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn output(&self, task: &Task, offset: u64, limit: usize) -> Result<Vec<(u64, OutputLine)>> {
        Ok(self.store.output(task.id, offset, limit)?)
    }

    /// Users by id for task lists (`user_name`).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn users_by_id(
        &self,
        ids: impl IntoIterator<Item = u64>,
    ) -> Result<std::collections::HashMap<u64, User>> {
        let view = self.store.view()?;
        let mut out = std::collections::HashMap::new();
        for id in ids {
            if let std::collections::hash_map::Entry::Vacant(v) = out.entry(id)
                && let Some(u) = view.user(id)?
            {
                v.insert(u);
            }
        }
        Ok(out)
    }
}
