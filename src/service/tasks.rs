//! Launching, listing and deleting tasks. Running them is the runner's job; a launch stores a
//! durable `waiting` row (with its first output line and its event) before it is answered.

use serde::Deserialize;

use super::projects::Access;
use super::{Error, Result, Services, validate};
use crate::clock::now_us;
use crate::model::{Inventory, OutputLine, Task, Template, User};

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
    /// Terraform/OpenTofu: only plan.
    pub plan: Option<bool>,
    /// Terraform/OpenTofu: plan a destroy.
    pub destroy: Option<bool>,
    /// Terraform/OpenTofu: apply without waiting for a confirmation.
    pub auto_approve: Option<bool>,
    /// Terraform/OpenTofu: `init -upgrade`.
    pub upgrade: Option<bool>,
    /// Terraform/OpenTofu: `init -reconfigure`.
    pub reconfigure: Option<bool>,
}

impl TaskParams {
    /// The terraform/tofu options to store on a task of app `app` (JSON object text; empty
    /// for other apps, whose params are the aliases above).
    fn stored(&self, app: &str) -> String {
        if !matches!(app, "terraform" | "tofu") {
            return String::new();
        }
        serde_json::json!({
            "plan": self.plan.unwrap_or_default(),
            "destroy": self.destroy.unwrap_or_default(),
            "auto_approve": self.auto_approve.unwrap_or_default(),
            "upgrade": self.upgrade.unwrap_or_default(),
            "reconfigure": self.reconfigure.unwrap_or_default(),
        })
        .to_string()
    }
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
        let active_apps = self.active_apps()?;
        self.transact(move |tx| {
            let p = access.project_id();
            let template: Template = tx.get(p, template_id)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "template_id: no template with id {template_id} in this project"
                ))
            })?;
            // The app may have been deactivated since the template was saved.
            if !active_apps.contains(&template.app) {
                return Err(super::apps::inactive(&template.app));
            }
            crate::sandbox::check_task_vars(&template, &environment).map_err(Error::Invalid)?;
            if let Some(i) = inventory_id {
                tx.get::<Inventory>(p, i)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "inventory_id: no inventory with id {i} in this project"
                    ))
                })?;
            }
            let (build_task_id, version) =
                super::builds::launch_fields(tx, &template, build_task_id)?;
            let mut task = Task {
                debug,
                dry_run,
                diff,
                playbook: playbook.clone(),
                environment: environment.clone(),
                limit: limit.clone(),
                arguments: arguments.clone(),
                git_branch: git_branch.clone(),
                user_id: Some(access.user.id),
                message: message.clone(),
                commit_hash: commit_hash.clone(),
                build_task_id,
                version,
                inventory_id,
                sealed_secret: sealed_secret.clone(),
                params: params.stored(&template.app),
                ..Task::waiting(p, template.id, tx.now())
            };
            let line = tx.queue_task(&mut task, now_us(), "")?;
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

/// A page of a project's task list with what each element shows besides the task, all read
/// in one view: the tasks' templates, starters and build tasks, by id.
#[derive(Debug, Default)]
pub struct TaskPage {
    /// Newest first.
    pub tasks: Vec<Task>,
    /// The templates of those tasks.
    pub templates: std::collections::HashMap<u64, Template>,
    /// The users who started them.
    pub users: std::collections::HashMap<u64, User>,
    /// The build tasks deploy tasks among them deploy (gone ones are absent).
    pub builds: std::collections::HashMap<u64, Task>,
}

impl Services {
    /// The newest tasks of the project (optionally of one template), at most `limit`, with
    /// their templates, starters and build tasks (see [`TaskPage`]).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn task_page(
        &self,
        access: &Access,
        template: Option<u64>,
        limit: usize,
    ) -> Result<TaskPage> {
        use std::collections::hash_map::Entry;
        let project = access.project_id();
        let view = self.store.view()?;
        let mut page = TaskPage {
            tasks: view.recent_tasks(project, template, limit)?,
            ..TaskPage::default()
        };
        for t in &page.tasks {
            if let Entry::Vacant(v) = page.templates.entry(t.template_id)
                && let Some(tpl) = view.get::<Template>(project, t.template_id)?
            {
                v.insert(tpl);
            }
            if let Some(u) = t.user_id
                && let Entry::Vacant(v) = page.users.entry(u)
                && let Some(user) = view.user(u)?
            {
                v.insert(user);
            }
            if let Some(b) = t.build_task_id
                && let Entry::Vacant(v) = page.builds.entry(b)
                && let Some(build) = view.get::<Task>(project, b)?
            {
                v.insert(build);
            }
        }
        Ok(page)
    }
}

/// Which tasks [`Services::template_stats`] counts: days (`YYYY-MM-DD`, UTC, both ends
/// included) of their creation, and who started them.
#[derive(Debug, Clone, Default)]
pub struct StatsFilter {
    /// First day counted.
    pub start: Option<String>,
    /// Last day counted.
    pub end: Option<String>,
    /// Only tasks this user started.
    pub user_id: Option<u64>,
}

/// One day of [`Services::template_stats`]: upstream's `TaskStat`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DayStats {
    /// `YYYY-MM-DD` (UTC) of the tasks' creation.
    pub date: String,
    /// Status → how many tasks of that day have it.
    pub count_by_status: std::collections::BTreeMap<&'static str, u64>,
    /// Mean run time in whole seconds of that day's tasks that ran to an end (0 if none).
    pub avg_duration: i64,
}

impl Services {
    /// Task `id` of any project (system admins only).
    ///
    /// # Errors
    /// [`Error::Forbidden`] for non-admins; [`Error::NotFound`].
    pub fn any_task(&self, caller: &User, id: u64) -> Result<Task> {
        if !caller.admin {
            return Err(Error::Forbidden);
        }
        self.store.task(id)?.ok_or(Error::NotFound)
    }

    /// Deletes finished task `id` of any project with its output (system admins only). The
    /// caller stops it and waits for its end first.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for non-admins; [`Error::NotFound`]; [`Error::Invalid`] when it
    /// is (again) unfinished.
    pub async fn delete_any_task(&self, caller: &User, id: u64) -> Result<()> {
        if !caller.admin {
            return Err(Error::Forbidden);
        }
        let user = caller.id;
        self.transact(move |tx| {
            let task = tx.task(id)?.ok_or(Error::NotFound)?;
            if !task.status.is_finished() {
                return Err(Error::Invalid(
                    "the task is still running; try again".into(),
                ));
            }
            tx.delete_task(&task)?;
            tx.record(crate::store::NewEvent {
                user_id: Some(user),
                project_id: Some(task.project_id),
                object_id: Some(id),
                object_type: "task",
                description: format!("Task ID {id} deleted"),
            })?;
            Ok(())
        })
        .await
    }

    /// Counts of template `template`'s tasks per status per day of creation, newest day
    /// first (upstream's `GET /templates/{t}/stats`).
    ///
    /// # Errors
    /// Storage failures only (the caller checked the template).
    pub fn template_stats(
        &self,
        access: &Access,
        template: u64,
        filter: &StatsFilter,
    ) -> Result<Vec<DayStats>> {
        let mut days = Days::default();
        self.store
            .each_template_task(access.project_id(), template, |t| days.add(t, filter))?;
        Ok(days.finish())
    }
}

/// Tasks grouped by day of creation as they come (see [`Services::template_stats`]): only
/// the per-day counts are kept, never the tasks.
#[derive(Debug, Default)]
struct Days(std::collections::BTreeMap<String, (DayStats, i64, i64)>);

impl Days {
    /// Counts `t` if `filter` lets it through.
    fn add(&mut self, t: &Task, filter: &StatsFilter) {
        let date = crate::clock::rfc3339(t.created)[..10].to_owned();
        if filter.start.as_ref().is_some_and(|s| date < *s)
            || filter.end.as_ref().is_some_and(|e| date > *e)
            || filter.user_id.is_some_and(|u| t.user_id != Some(u))
        {
            return;
        }
        // Day → (stats, sum of durations, how many durations).
        let (day, sum, n) = self.0.entry(date.clone()).or_insert_with(|| {
            let stats = DayStats {
                date,
                count_by_status: std::collections::BTreeMap::new(),
                avg_duration: 0,
            };
            (stats, 0, 0)
        });
        *day.count_by_status.entry(t.status.as_str()).or_default() += 1;
        if let (Some(start), Some(end)) = (t.start, t.end) {
            *sum += (end - start).max(0);
            *n += 1;
        }
    }

    /// The days, newest first, with their mean durations.
    fn finish(self) -> Vec<DayStats> {
        self.0
            .into_values()
            .rev()
            .map(|(mut day, sum, n)| {
                if n > 0 {
                    day.avg_duration = sum / n;
                }
                day
            })
            .collect()
    }
}

#[cfg(test)]
fn day_stats(tasks: &[Task], filter: &StatsFilter) -> Vec<DayStats> {
    let mut days = Days::default();
    for t in tasks {
        days.add(t, filter);
    }
    days.finish()
}

/// A `YYYY-MM-DD` day, checked (`what` names the parameter in the error).
///
/// # Errors
/// [`Error::Invalid`] for anything else.
pub fn parse_day(text: &str, what: &str) -> Result<String> {
    let bad = || Error::Invalid(format!("Invalid {what} date: expected YYYY-MM-DD"));
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(y, 4) && digits(m, 2) && digits(d, 2)) {
        return Err(bad());
    }
    let (m, d): (u32, u32) = (m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskStatus;

    fn task(id: u64, created: i64, status: TaskStatus, ran: Option<(i64, i64)>) -> Task {
        Task {
            id,
            status,
            user_id: Some(if id.is_multiple_of(2) { 2 } else { 1 }),
            start: ran.map(|r| r.0),
            end: ran.map(|r| r.1),
            ..Task::waiting(1, 1, created)
        }
    }

    #[test]
    fn days_count_statuses_newest_first_with_mean_durations() {
        const DAY: i64 = 86_400;
        // 2026-12-01T00:00:00Z
        let d1 = 1_796_083_200;
        let tasks = [
            task(1, d1 + 10, TaskStatus::Success, Some((d1 + 11, d1 + 15))),
            task(2, d1 + DAY - 1, TaskStatus::Error, Some((d1 + 20, d1 + 22))),
            task(3, d1 + DAY, TaskStatus::Success, None),
            task(4, d1 + DAY + 5, TaskStatus::Waiting, None),
        ];
        let all = day_stats(&tasks, &StatsFilter::default());
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].date, "2026-12-02");
        assert_eq!(all[0].count_by_status.get("success"), Some(&1));
        assert_eq!(all[0].count_by_status.get("waiting"), Some(&1));
        assert_eq!(all[0].avg_duration, 0);
        assert_eq!(all[1].date, "2026-12-01");
        assert_eq!(all[1].count_by_status.get("success"), Some(&1));
        assert_eq!(all[1].count_by_status.get("error"), Some(&1));
        assert_eq!(all[1].avg_duration, 3);

        let second = StatsFilter {
            start: Some("2026-12-02".into()),
            ..StatsFilter::default()
        };
        assert_eq!(day_stats(&tasks, &second).len(), 1);
        let first = StatsFilter {
            end: Some("2026-12-01".into()),
            user_id: Some(2),
            ..StatsFilter::default()
        };
        let only = day_stats(&tasks, &first);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].count_by_status.len(), 1);
        assert_eq!(only[0].count_by_status.get("error"), Some(&1));
    }

    #[test]
    fn days_are_checked() {
        assert!(parse_day("2026-12-01", "start").is_ok());
        for bad in [
            "",
            "2026-1-01",
            "2026-13-01",
            "2026-12-32",
            "20261201",
            "x026-12-01",
        ] {
            assert!(parse_day(bad, "start").is_err(), "{bad}");
        }
    }
}
