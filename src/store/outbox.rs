//! The alert outbox: one row per (finished task, alert channel) that must hear of it,
//! written in the transaction that finishes the task (see [`enqueue`], called by the task
//! writer) and removed by the sender (`notify::sender`) in a durable write once the
//! channel's endpoint accepted it, or when it gives up. A row is a snapshot of everything
//! the message says, so it is sent the same even if the task or project is gone meanwhile.
//!
//! Which channels the server has is a `SETTINGS` row ([`ALERT_CHANNELS`]) the server writes
//! on start: the task writer needs no configuration, and a finished task costs one read
//! more when no channel is configured.

use redb::{Durability, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::projects::{NewEvent, record};
use super::tables::{
    CHANNEL_ALERT, PROJECT_TEMPLATE, PROJECTID_PROJECT, PROJECTUSER_ROLE, SETTINGS, USERID_USER,
};
use super::{Result, Store, codec, next_id};
use crate::model::{Project, ProjectId, Task, TaskId, TaskStatus, Template, User};

/// The `SETTINGS` row listing the configured channels, one byte (a channel code) each.
pub const ALERT_CHANNELS: &str = "alert_channels";
/// The `META` counter of outbox row ids.
pub const ALERT_COUNTER: &str = "next_alert_id";
/// The channel code of email: its rows carry recipients, and need at least one.
pub const EMAIL: u8 = 5;

/// What an alert says: a snapshot taken when the task finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The task.
    pub task_id: TaskId,
    /// Its project.
    pub project_id: ProjectId,
    /// The project's name.
    pub project_name: String,
    /// The task's template.
    pub template_id: u64,
    /// The template's name.
    pub template_name: String,
    /// `success` or `error`.
    pub status: String,
    /// Who or what started the task: `user <login>`, `schedule <id>`, `integration <id>`.
    pub started_by: String,
    /// Seconds from start to end, when it started at all.
    pub duration_secs: Option<i64>,
    /// When the task ended (Unix seconds); the give-up bound counts from here.
    pub finished: i64,
    /// The project's Telegram chat (`alert_chat`), overriding the server's.
    pub chat: Option<String>,
    /// Email recipients: the members with `alert` on (email rows only).
    pub recipients: Vec<String>,
}

/// Adds the outbox rows for `task`, which has just finished (its status moved to a finished
/// one in this transaction). Nothing when the project has alerts off, when a success of a
/// template with `suppress_success_alerts`, or when the task was stopped.
pub(super) fn enqueue(tx: &WriteTransaction, task: &Task) -> Result<()> {
    if !matches!(task.status, TaskStatus::Success | TaskStatus::Error) {
        return Ok(());
    }
    let channels = match tx.open_table(SETTINGS)?.get(ALERT_CHANNELS)? {
        Some(v) => v.value().to_vec(),
        None => return Ok(()),
    };
    if channels.is_empty() {
        return Ok(());
    }
    let project: Project = match tx.open_table(PROJECTID_PROJECT)?.get(task.project_id)? {
        Some(v) => codec::decode(v.value())?,
        None => return Ok(()),
    };
    if !project.alert {
        return Ok(());
    }
    let template: Option<Template> = match tx
        .open_table(PROJECT_TEMPLATE)?
        .get((task.project_id, task.template_id))?
    {
        Some(v) => Some(codec::decode(v.value())?),
        None => None,
    };
    if task.status == TaskStatus::Success
        && template.as_ref().is_some_and(|t| t.suppress_success_alerts)
    {
        return Ok(());
    }
    let users = tx.open_table(USERID_USER)?;
    let user = |id| -> Result<Option<User>> {
        match users.get(id)? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        }
    };
    let started_by = if let Some(i) = task.integration_id {
        format!("integration {i}")
    } else if let Some(s) = task.schedule_id {
        format!("schedule {s}")
    } else if let Some(u) = task.user_id {
        user(u)?.map_or_else(|| format!("user {u}"), |u| format!("user {}", u.username))
    } else {
        "unknown".to_owned()
    };
    let mut recipients = Vec::new();
    if channels.contains(&EMAIL) {
        let members = tx.open_table(PROJECTUSER_ROLE)?;
        for row in members.range((task.project_id, 0)..=(task.project_id, u64::MAX))? {
            let member = row?.0.value().1;
            if let Some(u) = user(member)?
                && u.alert
                && !u.email.is_empty()
            {
                recipients.push(u.email);
            }
        }
    }
    drop(users);
    let finished = task.end.unwrap_or(task.created);
    let alert = Alert {
        task_id: task.id,
        project_id: task.project_id,
        project_name: project.name,
        template_id: task.template_id,
        template_name: template
            .map_or_else(|| format!("template {}", task.template_id), |t| t.name),
        status: task.status.as_str().to_owned(),
        started_by,
        duration_secs: task.start.map(|s| finished.saturating_sub(s).max(0)),
        finished,
        chat: project.alert_chat.filter(|c| !c.trim().is_empty()),
        recipients: Vec::new(),
    };
    for channel in channels {
        let mut row = alert.clone();
        if channel == EMAIL {
            if recipients.is_empty() {
                continue;
            }
            row.recipients.clone_from(&recipients);
        }
        let id = next_id(tx, ALERT_COUNTER)?;
        tx.open_table(CHANNEL_ALERT)?
            .insert((channel, id), codec::encode(&row).as_slice())?;
    }
    Ok(())
}

impl Store {
    /// Records which channels this server has (codes), for the task writer; durably.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn set_alert_channels(&self, codes: &[u8]) -> Result<()> {
        self.set_setting(ALERT_CHANNELS, codes)
    }

    /// The oldest `limit` outbox rows of `channel`, with their ids.
    ///
    /// # Errors
    /// Storage failures and undecodable rows.
    pub fn pending_alerts(&self, channel: u8, limit: usize) -> Result<Vec<(u64, Alert)>> {
        let tx = self.read()?;
        let table = tx.open_table(CHANNEL_ALERT)?;
        table
            .range((channel, 0)..=(channel, u64::MAX))?
            .take(limit)
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().1, codec::decode(v.value())?))
            })
            .collect()
    }

    /// How many outbox rows wait, over all channels.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn pending_alert_count(&self) -> Result<u64> {
        let tx = self.read()?;
        Ok(tx.open_table(CHANNEL_ALERT)?.len()?)
    }

    /// Removes row `id` of `channel` durably: the endpoint accepted it. With `gave_up`, an
    /// event saying why it was dropped is recorded in the same write.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn alert_done(
        &self,
        channel: u8,
        id: u64,
        now: i64,
        gave_up: Option<NewEvent>,
    ) -> Result<()> {
        self.write_async(Durability::Immediate, move |tx| {
            tx.open_table(CHANNEL_ALERT)?.remove((channel, id))?;
            if let Some(e) = &gave_up {
                let mut e = e.clone();
                // A deleted project's alert is still reported, as a global event.
                if let Some(p) = e.project_id
                    && tx.open_table(PROJECTID_PROJECT)?.get(p)?.is_none()
                {
                    e.project_id = None;
                }
                record(tx, now, e)?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;
    use crate::store::test_support::temp_store;

    fn setup(store: &Store, alert: bool, suppress: bool) -> (ProjectId, u64) {
        store
            .transact(10, move |tx| {
                let raw = tx.raw();
                let project = Project {
                    id: 1,
                    name: "Demo".into(),
                    created: 1,
                    alert,
                    alert_chat: Some("-100".into()),
                    max_parallel_tasks: 0,
                    kind: String::new(),
                };
                raw.open_table(PROJECTID_PROJECT)?
                    .insert(1, codec::encode(&project).as_slice())?;
                let template = Template {
                    id: 7,
                    project_id: 1,
                    inventory_id: None,
                    repository_id: 1,
                    environment_id: None,
                    view_id: None,
                    name: "deploy".into(),
                    playbook: "site.yml".into(),
                    arguments: None,
                    allow_override_args_in_task: false,
                    description: None,
                    kind: String::new(),
                    start_version: None,
                    build_template_id: None,
                    autorun: false,
                    git_branch: None,
                    survey_vars: Vec::new(),
                    vaults: Vec::new(),
                    suppress_success_alerts: suppress,
                    app: "bash".into(),
                    max_duration_secs: 0,
                    runner_tag: None,
                    allow_ansible_vars_in_task: false,
                };
                raw.open_table(PROJECT_TEMPLATE)?
                    .insert((1, 7), codec::encode(&template).as_slice())?;
                Ok::<_, crate::store::Error>(())
            })
            .expect("setup");
        (1, 7)
    }

    fn finish(store: &Store, status: TaskStatus) {
        store
            .transact(20, move |tx| {
                let mut task = Task::waiting(1, 7, 10);
                tx.insert_task(&mut task)?;
                task.status = status;
                task.start = Some(11);
                task.end = Some(15);
                tx.put_task(&task)
            })
            .expect("finish");
    }

    #[test]
    fn a_finished_task_queues_one_row_per_channel_and_only_once() {
        let (_dir, store) = temp_store();
        setup(&store, true, false);
        store.set_alert_channels(&[1, 3, EMAIL]).expect("channels");
        finish(&store, TaskStatus::Error);
        // No member with alert on: no email row.
        assert_eq!(store.pending_alert_count().expect("count"), 2);
        let rows = store.pending_alerts(3, 10).expect("rows");
        assert_eq!(rows.len(), 1);
        let alert = &rows[0].1;
        assert_eq!(
            (alert.status.as_str(), alert.duration_secs),
            ("error", Some(4))
        );
        assert_eq!(alert.template_name, "deploy");
        assert_eq!(alert.chat.as_deref(), Some("-100"));
        // Writing the finished task again (bookkeeping) queues nothing more.
        store
            .transact(30, |tx| {
                let t = tx.task(1)?.expect("task");
                tx.put_task(&t)
            })
            .expect("rewrite");
        assert_eq!(store.pending_alert_count().expect("count"), 2);
    }

    #[test]
    fn alerts_off_suppressed_success_and_stopped_tasks_queue_nothing() {
        for (alert, suppress, status, rows) in [
            (false, false, TaskStatus::Error, 0),
            (true, true, TaskStatus::Success, 0),
            (true, true, TaskStatus::Error, 1),
            (true, false, TaskStatus::Success, 1),
            (true, false, TaskStatus::Stopped, 0),
        ] {
            let (_dir, store) = temp_store();
            setup(&store, alert, suppress);
            store.set_alert_channels(&[1]).expect("channels");
            finish(&store, status);
            assert_eq!(
                store.pending_alert_count().expect("count"),
                rows,
                "alert {alert} suppress {suppress} {status:?}"
            );
        }
    }
}
