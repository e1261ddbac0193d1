//! The retention loop: when to prune what. The server owns it (started and stopped with the
//! accept loop); the work itself is the store's ([`crate::store::retention`]), one short write
//! transaction per batch with a pause between batches so request writes go first.
//!
//! - A full sweep runs every `--prune-interval-secs`: every template over its cap, tasks past
//!   `--task-retention-days`, events past `--event-retention-days`, and output rows of removed
//!   tasks still queued (also after a crash).
//! - A template is pruned [`SOON`] after one of its tasks finishes, so the per-template cap
//!   holds under churn without waiting for the next sweep.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::clock::ClockHandle;
use crate::config::Config;
use crate::model::ProjectId;
use crate::runner::LiveEvent;
use crate::store::retention::{Batch, Pruned};
use crate::store::{self, Store};

/// How long after a task finishes its template is pruned (finishing tasks are gathered).
pub const SOON: Duration = Duration::from_secs(1);
/// The pause between two batches, during which request writes have the writer to themselves.
pub const PAUSE: Duration = Duration::from_millis(5);

const DAY_SECS: i64 = 24 * 3600;

/// What to keep; a zero keeps everything of its kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Finished tasks kept per template.
    pub max_tasks_per_template: u64,
    /// Days a finished task is kept after its end.
    pub task_retention_days: u64,
    /// Days an event is kept.
    pub event_retention_days: u64,
}

impl Policy {
    /// The policy of `config`.
    #[must_use]
    pub fn of(config: &Config) -> Self {
        Self {
            max_tasks_per_template: config.max_tasks_per_template,
            task_retention_days: config.task_retention_days,
            event_retention_days: config.event_retention_days,
        }
    }
}

/// Unix seconds `days` before `now` (the config bounds `days`).
fn cutoff(now: i64, days: u64) -> i64 {
    now.saturating_sub(i64::try_from(days).unwrap_or(i64::MAX / DAY_SECS) * DAY_SECS)
}

/// Prunes a store by a policy, batch by batch.
#[derive(Debug, Clone)]
pub struct Retention {
    store: Store,
    policy: Policy,
    clock: ClockHandle,
    pause: Duration,
}

impl Retention {
    /// A pruner of `store` by `policy`, dating by `clock`.
    #[must_use]
    pub fn new(store: Store, policy: Policy, clock: ClockHandle) -> Self {
        Self {
            store,
            policy,
            clock,
            pause: PAUSE,
        }
    }

    /// Runs `step` (a blocking store batch) off the reactor, then pauses.
    async fn batch<C: Send + 'static>(
        &self,
        step: impl FnOnce(&Store) -> store::Result<Batch<C>> + Send + 'static,
    ) -> store::Result<Batch<C>> {
        let s = self.store.clone();
        let out = tokio::task::spawn_blocking(move || step(&s))
            .await
            .map_err(|e| store::Error::Write(format!("a prune batch failed: {e}")))??;
        tokio::time::sleep(self.pause).await;
        Ok(out)
    }

    /// Deletes every queued output row of removed tasks.
    async fn purge(&self) -> store::Result<u64> {
        let mut lines = 0;
        loop {
            let b = self.batch(Store::purge_output).await?;
            lines += b.removed;
            if b.more.is_none() || b.removed == 0 {
                return Ok(lines);
            }
        }
    }

    /// Brings `templates` down to the per-template cap (with their removed tasks' output).
    ///
    /// # Errors
    /// Storage failures; what was pruned before one stays pruned.
    pub async fn prune_templates(
        &self,
        templates: impl IntoIterator<Item = (ProjectId, u64)>,
    ) -> store::Result<Pruned> {
        let pruned = self.cap(templates).await?;
        self.checkpoint(pruned).await?;
        Ok(pruned)
    }

    /// Makes a run's batches durable (they are not one by one), when it removed anything.
    async fn checkpoint(&self, pruned: Pruned) -> store::Result<()> {
        if pruned.is_empty() {
            return Ok(());
        }
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || s.prune_checkpoint())
            .await
            .map_err(|e| store::Error::Write(format!("a prune checkpoint failed: {e}")))?
    }

    async fn cap(
        &self,
        templates: impl IntoIterator<Item = (ProjectId, u64)>,
    ) -> store::Result<Pruned> {
        let mut pruned = Pruned::default();
        let keep = self.policy.max_tasks_per_template;
        if keep == 0 {
            return Ok(pruned);
        }
        for (project, template) in templates {
            loop {
                let b = self
                    .batch(move |s| s.prune_template(project, template, keep))
                    .await?;
                pruned.tasks += b.removed;
                // Output goes as it is freed, so the queue stays short.
                pruned.lines += self.purge().await?;
                if b.more.is_none() {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    /// One full sweep: every template over its cap, expired tasks, expired events and any
    /// output still queued.
    ///
    /// # Errors
    /// Storage failures; what was pruned before one stays pruned.
    pub async fn sweep(&self) -> store::Result<Pruned> {
        let mut pruned = Pruned::default();
        pruned.lines += self.purge().await?;
        if self.policy.max_tasks_per_template > 0 {
            let s = self.store.clone();
            let templates = tokio::task::spawn_blocking(move || s.task_templates())
                .await
                .map_err(|e| store::Error::Write(format!("listing templates failed: {e}")))??;
            pruned += self.cap(templates).await?;
        }
        if self.policy.task_retention_days > 0 {
            let before = cutoff(self.clock.now(), self.policy.task_retention_days);
            let mut from = 0;
            loop {
                let b = self
                    .batch(move |s| s.prune_expired_tasks(before, from))
                    .await?;
                pruned.tasks += b.removed;
                pruned.lines += self.purge().await?;
                match b.more {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        if self.policy.event_retention_days > 0 {
            let before = cutoff(self.clock.now(), self.policy.event_retention_days);
            loop {
                let b = self.batch(move |s| s.prune_events(before)).await?;
                pruned.events += b.removed;
                if b.more.is_none() || b.removed == 0 {
                    break;
                }
            }
        }
        self.checkpoint(pruned).await?;
        Ok(pruned)
    }
}

fn report(what: &str, result: store::Result<Pruned>) {
    match result {
        Ok(p) if p.is_empty() => {}
        Ok(p) => tracing::info!(
            tasks = p.tasks,
            output_lines = p.lines,
            events = p.events,
            "pruned ({what})"
        ),
        Err(e) => tracing::warn!(error = %e, "pruning failed ({what}); retrying later"),
    }
}

/// The loop: a full sweep every `every`, and a template's cap enforced [`SOON`] after one of its
/// tasks finishes (seen on `live`). Runs until aborted (the server aborts it at shutdown; a
/// batch under way is one transaction, so it commits whole or not at all).
pub async fn run(
    retention: Arc<Retention>,
    live: tokio::sync::broadcast::Receiver<Arc<LiveEvent>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Finishing tasks matter only with a cap. Without one the receiver is dropped at once: a
    // receiver that is never read keeps the channel's last 4096 events (output batches
    // included) alive.
    let mut live = (retention.policy.max_tasks_per_template > 0).then_some(live);
    let mut finished: BTreeSet<(ProjectId, u64)> = BTreeSet::new();
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let soon = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {
                report("sweep", retention.sweep().await);
                finished.clear();
                due = None;
            }
            () = soon => {
                let templates = std::mem::take(&mut finished);
                due = None;
                report("finished tasks", retention.prune_templates(templates).await);
            }
            event = async {
                match live.as_mut() {
                    Some(live) => live.recv().await,
                    None => Err(RecvError::Closed),
                }
            }, if live.is_some() => match event.as_deref() {
                Ok(LiveEvent::Update { project_id, template_id, status, .. })
                    if status.is_finished() =>
                {
                    finished.insert((*project_id, *template_id));
                    due.get_or_insert_with(|| tokio::time::Instant::now() + SOON);
                }
                Ok(_) => {}
                // Missed some: the next sweep covers every template.
                Err(RecvError::Lagged(_)) => {
                    tick.reset_immediately();
                }
                Err(RecvError::Closed) => live = None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::model::{OutputLine, Task, TaskStatus};
    use crate::store::test_support::temp_store;

    fn finished(project: ProjectId, template: u64, created: i64) -> Task {
        let json = serde_json::json!({
            "id": 0, "project_id": project, "template_id": template, "status": TaskStatus::Success,
            "debug": false, "dry_run": false, "diff": false, "playbook": "",
            "environment": "{}", "limit": "", "arguments": null, "git_branch": null,
            "user_id": null, "integration_id": null, "schedule_id": null, "created": created,
            "start": created, "end": created, "message": "", "commit_hash": null,
            "commit_message": "", "build_task_id": null, "version": null,
            "inventory_id": null, "process_group": null, "sealed_secret": [],
            "params": ""
        });
        serde_json::from_value(json).expect("a task")
    }

    fn add(store: &Store, t: Task, lines: u64) -> u64 {
        store
            .transact(t.created, move |tx| {
                let mut t = t.clone();
                let id = tx.insert_task(&mut t)?;
                let out: Vec<OutputLine> = (0..lines)
                    .map(|i| OutputLine {
                        time_us: 0,
                        text: format!("line {i}"),
                    })
                    .collect();
                tx.append_output(id, 0, &out)?;
                Ok::<_, store::Error>(id)
            })
            .expect("add a task")
    }

    #[tokio::test]
    async fn a_sweep_finishes_output_left_queued_by_an_interrupted_run() {
        let (_dir, store) = temp_store();
        let old = add(&store, finished(1, 1, 10), 3000);
        add(&store, finished(1, 1, 20), 5);
        // A run that removed the task and then stopped (a crash) before its output went.
        assert_eq!(store.prune_template(1, 1, 1).expect("prune").removed, 1);
        assert_eq!(store.output_len(old).expect("len"), 3000);
        // A server restarted with no retention configured still finishes the job.
        let clock = ClockHandle(Arc::new(ManualClock::new(1000)));
        let pruned = Retention::new(store.clone(), Policy::default(), clock)
            .sweep()
            .await
            .expect("sweep");
        assert_eq!(
            pruned,
            Pruned {
                tasks: 0,
                lines: 3000,
                events: 0
            }
        );
        assert_eq!(store.output_len(old).expect("len"), 0);
        assert_eq!(store.purge_backlog().expect("backlog"), 0);
    }

    #[tokio::test]
    async fn a_sweep_applies_every_knob_by_the_clock() {
        let (_dir, store) = temp_store();
        let clock = Arc::new(ManualClock::new(100 * DAY_SECS));
        for day in [1, 2, 98, 99] {
            add(&store, finished(1, 1, day * DAY_SECS), 10);
        }
        let policy = Policy {
            max_tasks_per_template: 3,
            task_retention_days: 50,
            event_retention_days: 0,
        };
        let pruned = Retention::new(store.clone(), policy, ClockHandle(clock.clone()))
            .sweep()
            .await
            .expect("sweep");
        // The cap takes the oldest; expiry the next one (ended 98 days ago); two stay.
        assert_eq!((pruned.tasks, pruned.lines), (2, 20));
        let (count, _) = store.template_task_stats(1, 1).expect("stats");
        assert_eq!(count, 2);
    }
}
