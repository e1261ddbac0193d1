//! Schedules: a template run at the times a cron expression names (`cron::Spec`), or once at
//! `run_at`. A schedule belongs to its template: deleting the template deletes its schedules
//! in the same transaction (no orphan timers), editing the template leaves them alone.
//!
//! Exactly once: `done_until` is the instant up to which every occurrence was handled, and
//! [`Services::fire_schedule`] moves it in the very transaction that stores the task it
//! creates, after checking that the occurrence is past it. A restart, a clock step or two
//! firings racing therefore find the occurrence already handled and create nothing.

use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::{Names, ProjectResource, Refs, Target, invalid, require};
use crate::clock::now_us;
use crate::cron::{self, Spec};
use crate::model::{
    AccessKey, KeyKind, KeySecret, OutputLine, ProjectId, Repository, Schedule, Task, Template,
};
use crate::service::projects::Access;
use crate::service::tasks::TaskInput;
use crate::service::{Error, Result, Services};
use crate::store::{Lists, NewEvent, Tx};

/// `type` of a one-off schedule.
pub const RUN_AT: &str = "run_at";
/// Longest schedule name.
const NAME_MAX: usize = 255;

/// What the schedules share server-wide: the default zone, and the schedules changed since
/// the scheduler last looked (with its wake-up).
#[derive(Debug)]
pub struct Hub {
    zone_name: String,
    zone: TimeZone,
    changed: Notify,
    pending: Mutex<Vec<(ProjectId, u64)>>,
}

impl Hub {
    /// A hub whose default zone is `zone_name` (UTC when unknown; config checks it first).
    #[must_use]
    pub fn new(zone_name: &str) -> Self {
        Self {
            zone_name: zone_name.to_owned(),
            zone: cron::zone(zone_name).unwrap_or(TimeZone::UTC),
            changed: Notify::new(),
            pending: Mutex::new(Vec::new()),
        }
    }
}

/// A schedule body (create and update).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ScheduleInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// The template to run (required).
    pub template_id: Option<u64>,
    /// Cron expression (required unless `type` is `run_at`).
    pub cron_format: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Whether it fires (default true on create; kept on update when absent).
    pub active: Option<bool>,
    /// Fire only when this repository has new commits.
    pub repository_id: Option<u64>,
    /// `""` or `"run_at"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// One-off time (RFC 3339).
    pub run_at: Option<String>,
    /// Delete a one-off after its run (else it is made inactive).
    pub delete_after_run: Option<bool>,
    /// Task launch options (an object; see the task launch body).
    pub task_params: Option<Value>,
    /// IANA zone name; empty = server default.
    pub timezone: Option<String>,
    /// Run the latest missed occurrence at start-up.
    pub catch_up: Option<bool>,
}

/// A validated schedule body.
pub struct ScheduleFields {
    project: ProjectId,
    template_id: u64,
    cron_format: String,
    name: String,
    active: Option<bool>,
    repository_id: Option<u64>,
    kind: String,
    run_at: Option<i64>,
    delete_after_run: bool,
    task_params: String,
    timezone: String,
    catch_up: bool,
}

/// `POST /schedules/validate` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CronInput {
    /// The expression.
    pub cron_format: Option<String>,
    /// IANA zone name; empty = server default.
    pub timezone: Option<String>,
}

/// What decides when a schedule fires; a firing planned from an older version of these is
/// dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    cron_format: String,
    timezone: String,
    kind: String,
    run_at: Option<i64>,
}

impl Timing {
    /// The timing of `s`.
    #[must_use]
    pub fn of(s: &Schedule) -> Self {
        Self {
            cron_format: s.cron_format.clone(),
            timezone: s.timezone.clone(),
            kind: s.kind.clone(),
            run_at: s.run_at,
        }
    }
}

impl ProjectResource for Schedule {
    type Input = ScheduleInput;
    type Fields = ScheduleFields;
    const NAMES: Names = Names::new("schedule", "Schedule");

    fn name(&self) -> &str {
        &self.name
    }

    fn body_ids(input: &ScheduleInput) -> (Option<u64>, Option<u64>) {
        (input.id, input.project_id)
    }

    fn fields(services: &Services, input: ScheduleInput, to: Target) -> Result<ScheduleFields> {
        let template_id = input
            .template_id
            .filter(|&t| t != 0)
            .ok_or_else(|| Error::Invalid("template_id is required".into()))?;
        let name = input.name.unwrap_or_default().trim().to_owned();
        if name.chars().count() > NAME_MAX || name.chars().any(char::is_control) {
            return invalid(format!(
                "name must be at most {NAME_MAX} characters, without control characters"
            ));
        }
        let timezone = input.timezone.unwrap_or_default().trim().to_owned();
        let kind = input.kind.unwrap_or_default();
        let cron_format = input.cron_format.unwrap_or_default().trim().to_owned();
        // Checked whenever given, though only one-offs use it.
        let given_run_at = match input.run_at.as_deref() {
            None => None,
            Some(text) => Some(cron::parse_instant(text).map_err(Error::Invalid)?),
        };
        let run_at = match kind.as_str() {
            "" => {
                services.schedule_spec(&cron_format, &timezone)?;
                None
            }
            RUN_AT => {
                cron::zone(&timezone).map_err(Error::Invalid)?;
                let at = given_run_at.ok_or_else(|| {
                    Error::Invalid("run_at is required for a run_at schedule".into())
                })?;
                if at <= services.now() {
                    return invalid("run_at is in the past");
                }
                Some(at)
            }
            other => return invalid(format!("type must be \"\" or \"run_at\", not {other:?}")),
        };
        Ok(ScheduleFields {
            project: to.project,
            template_id,
            cron_format,
            name,
            active: input.active,
            repository_id: input.repository_id.filter(|&r| r != 0),
            kind,
            run_at,
            delete_after_run: input.delete_after_run.unwrap_or_default(),
            task_params: task_params(input.task_params)?,
            timezone,
            catch_up: input.catch_up.unwrap_or_default(),
        })
    }

    fn record(tx: &Tx<'_>, f: &ScheduleFields, current: Option<Self>) -> Result<Self> {
        require::<Template>(tx, f.project, f.template_id, "template_id", "template")?;
        if let Some(r) = f.repository_id {
            require::<Repository>(tx, f.project, r, "repository_id", "repository")?;
        }
        let mut s = Schedule {
            id: current.as_ref().map_or(0, |c| c.id),
            project_id: f.project,
            template_id: f.template_id,
            cron_format: f.cron_format.clone(),
            name: f.name.clone(),
            active: f
                .active
                .unwrap_or_else(|| current.as_ref().is_none_or(|c| c.active)),
            repository_id: f.repository_id,
            kind: f.kind.clone(),
            run_at: f.run_at,
            delete_after_run: f.delete_after_run,
            task_params: f.task_params.clone(),
            timezone: f.timezone.clone(),
            catch_up: f.catch_up,
            done_until: tx.now(),
            last_commit: current
                .as_ref()
                .filter(|c| c.repository_id == f.repository_id)
                .map(|c| c.last_commit.clone())
                .unwrap_or_default(),
        };
        // Occurrences before a (re)start of its timing are not "missed".
        if let Some(c) = current
            && Timing::of(&c) == Timing::of(&s)
            && (c.active || !s.active)
        {
            s.done_until = c.done_until;
        }
        Ok(s)
    }

    /// Nothing refers to a schedule.
    fn refs(_: &impl Lists, _: ProjectId, _: u64) -> Result<Refs> {
        Ok(Refs::default())
    }
}

/// `task_params` as stored: a JSON object as text, checked as a task launch body.
fn task_params(value: Option<Value>) -> Result<String> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::Object(map)) if map.is_empty() => Ok(String::new()),
        Some(v @ Value::Object(_)) => {
            let text = v.to_string();
            let input: TaskInput = serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("task_params: {e}")))?;
            if input.secret.is_some() || input.template_id.is_some() {
                return invalid("task_params: secret and template_id cannot be set here");
            }
            Ok(text)
        }
        Some(_) => invalid("task_params must be a JSON object"),
    }
}

/// Deletes the schedules of template `template` (inside its delete's transaction).
///
/// # Errors
/// Storage failures only.
pub fn remove_for_template(tx: &Tx<'_>, project: ProjectId, template: u64) -> Result<()> {
    let all: Vec<Schedule> = tx.list(project)?;
    for s in all.into_iter().filter(|s| s.template_id == template) {
        tx.remove::<Schedule>(project, s.id)?;
    }
    Ok(())
}

/// What a firing did.
#[derive(Debug)]
pub enum Fired {
    /// A task was created (hand it to the runner).
    Task(Box<Task>, OutputLine),
    /// Nothing to do: the occurrence was handled already, or the schedule changed or went.
    Nothing,
}

impl Services {
    /// Tells the scheduler that schedule (`project`, `id`) changed or went (after the commit).
    pub fn schedule_changed(&self, project: ProjectId, id: u64) {
        self.schedule_hub
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((project, id));
        self.schedule_hub.changed.notify_one();
    }

    /// The scheduler's wake-up: notified after schedule changes.
    #[must_use]
    pub fn schedules_changed(&self) -> &Notify {
        &self.schedule_hub.changed
    }

    /// The schedules changed since the last call.
    pub fn take_changed_schedules(&self) -> Vec<(ProjectId, u64)> {
        std::mem::take(
            &mut *self
                .schedule_hub
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Schedule (`project`, `id`), if it exists.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn stored_schedule(&self, project: ProjectId, id: u64) -> Result<Option<Schedule>> {
        Ok(self.store().view()?.get(project, id)?)
    }

    /// The default schedule zone's name (`/api/info`'s `schedule_timezone`).
    #[must_use]
    pub fn schedule_timezone(&self) -> &str {
        &self.schedule_hub.zone_name
    }

    /// The parsed timing of a cron expression in `timezone` (empty = server default).
    ///
    /// # Errors
    /// [`Error::Invalid`] `Cron: <detail>`, or naming an unknown zone.
    pub fn schedule_spec(&self, cron_format: &str, timezone: &str) -> Result<Spec> {
        let zone = if timezone.trim().is_empty() {
            self.schedule_hub.zone.clone()
        } else {
            cron::zone(timezone).map_err(|e| Error::Invalid(format!("timezone: {e}")))?
        };
        cron::parse(cron_format, &zone).map_err(|e| Error::Invalid(format!("Cron: {e}")))
    }

    /// When schedule `s` fires; `None` for an inactive one or one that cannot fire.
    #[must_use]
    pub fn timing_of(&self, s: &Schedule) -> Option<Spec> {
        if !s.active {
            return None;
        }
        match (s.kind.as_str(), s.run_at) {
            (RUN_AT, Some(at)) => Some(cron::once(at)),
            (RUN_AT, None) => None,
            _ => self.schedule_spec(&s.cron_format, &s.timezone).ok(),
        }
    }

    /// The next five fire times of a cron expression, in its zone.
    ///
    /// # Errors
    /// [`Error::Invalid`] `Cron: <detail>`.
    pub fn validate_cron(&self, input: &CronInput) -> Result<Vec<String>> {
        let spec = self.schedule_spec(
            input.cron_format.as_deref().unwrap_or_default(),
            input.timezone.as_deref().unwrap_or_default(),
        )?;
        Ok(spec.upcoming(self.now(), 5))
    }

    /// Turns schedule `id` on or off; records an event.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn set_schedule_active(&self, access: &Access, id: u64, active: bool) -> Result<()> {
        let project = access.project_id();
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            let mut s: Schedule = tx.get(p, id)?.ok_or(Error::NotFound)?;
            if s.active != active {
                if active {
                    s.done_until = tx.now();
                }
                s.active = active;
                tx.put(&s)?;
                let what = if active { "activated" } else { "deactivated" };
                tx.record(access.event("schedule", id, format!("Schedule {} {what}", s.name)))?;
            }
            Ok(())
        })
        .await?;
        self.schedule_changed(project, id);
        Ok(())
    }

    /// The schedules of template `template`, by id.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the project has no such template.
    pub fn template_schedules(&self, access: &Access, template: u64) -> Result<Vec<Schedule>> {
        self.resource::<Template>(access, template)?;
        let all: Vec<Schedule> = self.resources(access)?;
        Ok(all
            .into_iter()
            .filter(|s| s.template_id == template)
            .collect())
    }

    /// Every schedule of every project (the scheduler's view at start and after changes).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn all_schedules(&self) -> Result<Vec<Schedule>> {
        let view = self.store().view()?;
        let mut out = Vec::new();
        for p in view.projects()? {
            out.extend(view.list::<Schedule>(p.id)?);
        }
        Ok(out)
    }

    /// Fires occurrence `due` of schedule (`project`, `id`) planned with `timing`, unless it
    /// was handled already or the schedule changed: stores the task, its first output line,
    /// its event and the schedule's new `done_until` in one transaction. Occurrences between
    /// the last handled one and `due` are recorded as missed (one event). A one-off is then
    /// deleted or made inactive.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn fire_schedule(
        &self,
        project: ProjectId,
        id: u64,
        due: i64,
        timing: (Timing, Spec),
        head: Option<std::result::Result<String, String>>,
    ) -> Result<Fired> {
        self.transact(move |tx| {
            let Some(mut s) = tx.get::<Schedule>(project, id)? else {
                return Ok(Fired::Nothing);
            };
            if !s.active || s.done_until >= due || Timing::of(&s) != timing.0 {
                return Ok(Fired::Nothing);
            }
            let Some(template) = tx.get::<Template>(project, s.template_id)? else {
                return Ok(Fired::Nothing);
            };
            if let Some((_, n)) = timing.1.between(s.done_until, due - 1) {
                record_missed(tx, &s, n, &timing.1)?;
            }
            // Repository-triggered: only a new branch head makes a task.
            let commit = match head.clone().filter(|_| s.repository_id.is_some()) {
                Some(Ok(h)) if h == s.last_commit => None,
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    let text = format!("Schedule {} could not read its repository: {e}", s.name);
                    tx.record(schedule_event(&s, s.id, "schedule", text))?;
                    None
                }
                None => Some(String::new()),
            };
            let Some(commit) = commit else {
                s.done_until = due;
                tx.put(&s)?;
                return Ok(Fired::Nothing);
            };
            let commit = Some(commit).filter(|c| !c.is_empty());
            let (task, line) = scheduled_task(tx, &s, &template, (due, commit.clone()), &timing.1)?;
            if let Some(c) = commit {
                s.last_commit = c;
            }
            s.done_until = due;
            if s.kind == RUN_AT {
                s.active = false;
            }
            if s.kind == RUN_AT && s.delete_after_run {
                tx.remove::<Schedule>(project, id)?;
            } else {
                tx.put(&s)?;
            }
            Ok(Fired::Task(Box::new(task), line))
        })
        .await
    }

    /// At start-up: accounts for the occurrences of schedule (`project`, `id`) that fell due
    /// while the server was down (up to `now`): one "missed" event, and with `catch_up` the
    /// latest of them runs once. Nothing happens when none was missed or it changed.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn missed_schedule(
        &self,
        project: ProjectId,
        id: u64,
        now: i64,
        timing: (Timing, Spec),
    ) -> Result<Fired> {
        self.transact(move |tx| {
            let Some(mut s) = tx.get::<Schedule>(project, id)? else {
                return Ok(Fired::Nothing);
            };
            if !s.active || Timing::of(&s) != timing.0 {
                return Ok(Fired::Nothing);
            }
            let Some((latest, n)) = timing.1.between(s.done_until, now) else {
                return Ok(Fired::Nothing);
            };
            let template = tx.get::<Template>(project, s.template_id)?;
            let fired = if let Some(template) = template.filter(|_| s.catch_up) {
                if n > 1 {
                    record_missed(tx, &s, n - 1, &timing.1)?;
                }
                let (task, line) = scheduled_task(tx, &s, &template, (latest, None), &timing.1)?;
                Fired::Task(Box::new(task), line)
            } else {
                record_missed(tx, &s, n, &timing.1)?;
                Fired::Nothing
            };
            s.done_until = latest;
            if s.kind == RUN_AT {
                s.active = false;
            }
            if s.kind == RUN_AT && s.delete_after_run && matches!(fired, Fired::Task(..)) {
                tx.remove::<Schedule>(project, id)?;
            } else {
                tx.put(&s)?;
            }
            Ok(fired)
        })
        .await
    }
}

/// Where a repository-triggered schedule polls: URL, branch (empty: the remote's `HEAD`) and
/// the opened key.
pub type Remote = (String, String, Option<(KeyKind, KeySecret)>);

impl Services {
    /// Where a repository-triggered schedule `s` polls: its repository's URL, the branch its
    /// template runs (template, else repository) and the opened key.
    ///
    /// # Errors
    /// Why it cannot poll (a reference gone, a secret that does not open).
    pub fn schedule_remote(&self, s: &Schedule) -> std::result::Result<Remote, String> {
        let view = self.store().view().map_err(|e| e.to_string())?;
        let p = s.project_id;
        let repo_id = s.repository_id.ok_or("the schedule has no repository")?;
        let repo: Repository = view
            .get(p, repo_id)
            .map_err(|e| e.to_string())?
            .ok_or("its repository no longer exists")?;
        let template: Option<Template> = view.get(p, s.template_id).map_err(|e| e.to_string())?;
        let branch = template
            .and_then(|t| t.git_branch)
            .unwrap_or_else(|| repo.git_branch.clone());
        let key: Option<AccessKey> = view.get(p, repo.ssh_key_id).map_err(|e| e.to_string())?;
        let secret = match key {
            Some(k) if k.kind != KeyKind::None => {
                Some((k.kind, self.open_secret(&k).map_err(|e| e.to_string())?))
            }
            _ => None,
        };
        Ok((repo.git_url, branch, secret))
    }
}

/// One event for `n` skipped occurrences after `s.done_until`.
fn record_missed(tx: &Tx<'_>, s: &Schedule, n: u64, spec: &Spec) -> Result<()> {
    let first = spec.next_after(s.done_until).unwrap_or(s.done_until);
    let more = if n >= cron::COUNT_LIMIT {
        "at least "
    } else {
        ""
    };
    Ok(tx.record(schedule_event(
        s,
        s.id,
        "schedule",
        format!(
            "Schedule {} missed {more}{n} runs since {}",
            s.name,
            spec.format(first)
        ),
    ))?)
}

fn schedule_event(s: &Schedule, object: u64, kind: &'static str, text: String) -> NewEvent {
    NewEvent {
        user_id: None,
        project_id: Some(s.project_id),
        object_id: Some(object),
        object_type: kind,
        description: text,
    }
}

/// Stores the `waiting` task of occurrence `due` of `s` (checking out `commit_hash` when
/// given), with the schedule's `task_params` applied, its first output line and its event.
fn scheduled_task(
    tx: &Tx<'_>,
    s: &Schedule,
    template: &Template,
    (due, commit_hash): (i64, Option<String>),
    spec: &Spec,
) -> Result<(Task, OutputLine)> {
    let params: TaskInput = if s.task_params.is_empty() {
        TaskInput::default()
    } else {
        serde_json::from_str(&s.task_params).unwrap_or_default()
    };
    let flags = params.params.clone().unwrap_or_default();
    let inventory_id = params.inventory_id.filter(|&i| {
        i != 0
            && tx
                .get::<crate::model::Inventory>(s.project_id, i)
                .ok()
                .flatten()
                .is_some()
    });
    let mut task = Task {
        schedule_id: Some(s.id),
        debug: params.debug.or(flags.debug).unwrap_or_default(),
        dry_run: params.dry_run.or(flags.dry_run).unwrap_or_default(),
        diff: params.diff.or(flags.diff).unwrap_or_default(),
        playbook: params.playbook.unwrap_or_default(),
        environment: params
            .environment
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| "{}".into()),
        limit: params.limit.unwrap_or_default(),
        arguments: params.arguments.filter(|a| !a.trim().is_empty()),
        git_branch: params.git_branch.filter(|b| !b.trim().is_empty()),
        message: params.message.unwrap_or_default(),
        inventory_id,
        commit_hash,
        params: s.task_params.clone(),
        ..Task::waiting(s.project_id, template.id, tx.now())
    };
    let id = tx.insert_task(&mut task)?;
    let line = OutputLine {
        time_us: now_us(),
        text: format!("Task {id} added to queue"),
    };
    tx.append_output(id, 0, std::slice::from_ref(&line))?;
    tx.record(schedule_event(
        s,
        id,
        "task",
        format!(
            "Task {id} created by schedule {} for its run due {}",
            s.id,
            spec.format(due)
        ),
    ))?;
    Ok((task, line))
}
