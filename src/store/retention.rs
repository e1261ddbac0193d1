//! Retention: removing old finished tasks (with their output) and old events in bounded
//! batches, each one short write transaction, so that pruning never holds the writer long
//! enough to delay requests. The schedule (when to prune what) is [`crate::retention`]'s.
//!
//! A task goes in two steps:
//! 1. one transaction removes its row and its index rows (`tasks`, `task_projects`,
//!    `tasks_by_template`) and records its id in `tasks_purging` (`PURGE_TASK`): from then on
//!    the API no longer finds it, and template counts and `last_task` no longer include it;
//! 2. its output goes as range deletes over `task_output_chunks` keyed `(task id, first line)`,
//!    whole chunks of about [`OUTPUT_BATCH`] lines per transaction; the id leaves
//!    `tasks_purging` with its last chunk.
//!
//! A crash between the steps leaves the id queued and the next sweep finishes the job (task ids
//! are never reused, so the rows cannot be mistaken for a new task's). An unfinished task
//! (waiting, starting, running, stopping) is never removed: every removal re-reads the task in
//! its transaction and checks.

use std::collections::HashSet;

use redb::{Durability, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::tables::{
    ACTIVE_TASK, EVENTID_EVENT, OUTPUT_CHUNK, PROJECT_EVENTID, PROJECT_TASK, PURGE_TASK,
    TASKID_PROJECT, TEMPLATE_TASK,
};
use super::{Error, Result, Store, codec, output};
use crate::model::{Event, ProjectId, Task, TaskId};

/// Most tasks one transaction removes (rows and index rows only; output goes separately).
pub const TASK_BATCH: usize = 128;
/// Output lines one transaction deletes (whole chunks: at least one, never past this
/// unless a single chunk is larger).
pub const OUTPUT_BATCH: u64 = 2048;
/// Most events one transaction deletes.
pub const EVENT_BATCH: usize = 2048;
/// Prune batches are not fsynced on their own: a crash can only undo some pruning (the next
/// sweep redoes it; each batch is atomic either way), and a batch that shares a commit with a
/// request's write is made durable by it. [`Store::prune_checkpoint`] ends a prune run durably.
const BATCH_DURABILITY: Durability = Durability::None;
/// Most task rows one expiry scan reads (outside the writer) before handing over a batch.
const SCAN_BATCH: usize = 4096;

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Tasks removed (rows and indexes).
    pub tasks: u64,
    /// Output rows deleted.
    pub lines: u64,
    /// Events deleted (with their per-project index rows).
    pub events: u64,
}

impl Pruned {
    /// Nothing was removed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, other: Self) {
        self.tasks += other.tasks;
        self.lines += other.lines;
        self.events += other.events;
    }
}

/// One batch's outcome: how many it removed and whether more is left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<C = ()> {
    /// Rows removed (tasks, output lines or events).
    pub removed: u64,
    /// Where to go on, when there is more.
    pub more: Option<C>,
}

/// Removes each listed task of `project` that is finished and that `keep` does not want
/// kept: its row and index rows go, its id is queued for output purging. Returns how many.
fn forget(
    tx: &WriteTransaction,
    victims: &[(ProjectId, TaskId)],
    keep: impl Fn(&Task) -> bool,
) -> Result<u64> {
    let mut tasks = tx.open_table(PROJECT_TASK)?;
    let mut by_id = tx.open_table(TASKID_PROJECT)?;
    let mut by_template = tx.open_table(TEMPLATE_TASK)?;
    let mut active = tx.open_table(ACTIVE_TASK)?;
    let mut purge = tx.open_table(PURGE_TASK)?;
    let mut removed = 0;
    for &(project, id) in victims {
        let task: Task = match tasks.get((project, id))? {
            Some(bytes) => codec::decode(bytes.value())?,
            None => continue,
        };
        if !task.status.is_finished() || keep(&task) {
            continue;
        }
        tasks.remove((project, id))?;
        by_id.remove(id)?;
        by_template.remove((project, task.template_id, id))?;
        active.remove(id)?;
        purge.insert(id, ())?;
        removed += 1;
    }
    Ok(removed)
}

impl Store {
    /// Every (project, template) that has tasks, including templates deleted since.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn task_templates(&self) -> Result<Vec<(ProjectId, u64)>> {
        let tx = self.read()?;
        let index = tx.open_table(TEMPLATE_TASK)?;
        let mut out = Vec::new();
        let mut from = (0, 0, 0);
        while let Some(row) = index.range(from..)?.next() {
            let (project, template, _) = row?.0.value();
            out.push((project, template));
            from = match template.checked_add(1) {
                Some(next) => (project, next, 0),
                None => match project.checked_add(1) {
                    Some(next) => (next, 0, 0),
                    None => break,
                },
            };
        }
        Ok(out)
    }

    /// Removes up to [`TASK_BATCH`] of the oldest finished tasks of `template` beyond the
    /// newest `keep` finished ones (unfinished tasks neither count nor go). `more` says whether
    /// it has more to remove than one batch took. Counting runs in the write transaction, so
    /// the cap is exact even while tasks start, finish or are deleted.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn prune_template(&self, project: ProjectId, template: u64, keep: u64) -> Result<Batch> {
        self.write(BATCH_DURABILITY, move |tx| {
            let victims = {
                let index = tx.open_table(TEMPLATE_TASK)?;
                let range = (project, template, 0)..=(project, template, u64::MAX);
                let total = index.range(range.clone())?.count() as u64;
                // The unfinished tasks of this template (the active index is small).
                let mut unfinished = HashSet::new();
                for row in tx.open_table(ACTIVE_TASK)?.iter()? {
                    let id = row?.0.value();
                    if index.get((project, template, id))?.is_some() {
                        unfinished.insert(id);
                    }
                }
                let excess = (total - unfinished.len() as u64).saturating_sub(keep);
                let take = usize::try_from(excess).map_or(TASK_BATCH, |e| e.min(TASK_BATCH));
                let victims = index
                    .range(range)?
                    .map(|row| Ok::<_, Error>(row?.0.value().2))
                    .filter(|id| id.as_ref().map_or(true, |id| !unfinished.contains(id)))
                    .take(take)
                    .map(|id| id.map(|id| (project, id)))
                    .collect::<Result<Vec<_>>>()?;
                (victims, excess > take as u64)
            };
            let (victims, more) = victims;
            let removed = forget(tx, &victims, |_| false)?;
            Ok(Batch {
                removed,
                more: (more && removed > 0).then_some(()),
            })
        })
    }

    /// Removes up to [`TASK_BATCH`] finished tasks that ended before `cutoff` (Unix seconds),
    /// looking at task ids from `from` up. Task ids follow creation time, so the scan stops at
    /// the first task created at or after `cutoff`. `more` is the id to go on from.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn prune_expired_tasks(&self, cutoff: i64, from: TaskId) -> Result<Batch<TaskId>> {
        let expired = move |t: &Task| t.status.is_finished() && t.end.unwrap_or(t.created) < cutoff;
        // Find them in a read snapshot, outside the writer; the write re-checks each.
        let (victims, more) = {
            let tx = self.read()?;
            let by_id = tx.open_table(TASKID_PROJECT)?;
            let tasks = tx.open_table(PROJECT_TASK)?;
            let mut victims = Vec::new();
            let mut more = None;
            for (scanned, row) in by_id.range(from..)?.enumerate() {
                let (id, project) = {
                    let (k, v) = row?;
                    (k.value(), v.value())
                };
                if scanned == SCAN_BATCH || victims.len() == TASK_BATCH {
                    more = Some(id);
                    break;
                }
                let Some(bytes) = tasks.get((project, id))? else {
                    continue;
                };
                let task: Task = codec::decode(bytes.value())?;
                if task.created >= cutoff {
                    break;
                }
                if expired(&task) {
                    victims.push((project, id));
                }
            }
            (victims, more)
        };
        let removed = if victims.is_empty() {
            0
        } else {
            self.write(BATCH_DURABILITY, move |tx| {
                forget(tx, &victims, |t| !expired(t))
            })?
        };
        Ok(Batch { removed, more })
    }

    /// Deletes about [`OUTPUT_BATCH`] output lines of removed tasks (range deletes of whole
    /// chunks over `task_output_chunks`, oldest task first; a batch ends before the chunk that
    /// would pass the budget, except that it always takes one); a task leaves the purge queue
    /// with its last chunk. `removed` counts lines.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn purge_output(&self) -> Result<Batch> {
        self.write(BATCH_DURABILITY, |tx| {
            let mut purge = tx.open_table(PURGE_TASK)?;
            let mut output = tx.open_table(OUTPUT_CHUNK)?;
            let queued: Vec<TaskId> = purge
                .iter()?
                .take(TASK_BATCH)
                .map(|row| Ok::<_, Error>(row?.0.value()))
                .collect::<Result<_>>()?;
            let mut left = OUTPUT_BATCH;
            let mut removed = 0;
            let mut done = Vec::new();
            for id in queued {
                if left == 0 {
                    break;
                }
                // The chunks that fit in `left`: where the range delete ends.
                let mut lines = 0;
                let mut last = None;
                let mut whole = true;
                for row in output.range((id, 0)..=(id, u64::MAX))? {
                    let (k, v) = row?;
                    // A chunk that does not decode still goes (`forge check` reports such).
                    let n = output::decode_chunk(v.value()).map_or(1, |c| c.len() as u64);
                    if (last.is_some() || removed > 0) && lines + n > left {
                        whole = false;
                        break;
                    }
                    lines += n;
                    last = Some(k.value().1);
                }
                if let Some(last) = last {
                    output.retain_in((id, 0)..=(id, last), |_, _| false)?;
                }
                if whole {
                    done.push(id);
                }
                left = left.saturating_sub(lines);
                removed += lines;
            }
            for id in &done {
                purge.remove(id)?;
            }
            let more = !purge.is_empty()?;
            Ok(Batch {
                removed,
                more: more.then_some(()),
            })
        })
    }

    /// Deletes up to [`EVENT_BATCH`] events created before `cutoff` (Unix seconds), oldest
    /// first, with their per-project index rows. Event ids follow creation time, so it stops at
    /// the first event created at or after `cutoff`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn prune_events(&self, cutoff: i64) -> Result<Batch> {
        self.write(BATCH_DURABILITY, move |tx| {
            let mut events = tx.open_table(EVENTID_EVENT)?;
            let mut by_project = tx.open_table(PROJECT_EVENTID)?;
            let mut old = Vec::new();
            let mut more = false;
            for row in events.iter()? {
                let event: Event = codec::decode(row?.1.value())?;
                if event.created >= cutoff {
                    break;
                }
                if old.len() == EVENT_BATCH {
                    more = true;
                    break;
                }
                old.push((event.id, event.project_id));
            }
            for &(id, project) in &old {
                events.remove(id)?;
                if let Some(p) = project {
                    by_project.remove((p, id))?;
                }
            }
            Ok(Batch {
                removed: old.len() as u64,
                more: more.then_some(()),
            })
        })
    }

    /// A durable commit ending a prune run: space freed by its batches can then be reused
    /// (redb reuses pages freed in non-durable commits only after a durable one).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn prune_checkpoint(&self) -> Result<()> {
        self.write(Durability::Immediate, |tx| {
            tx.open_table(PURGE_TASK)?;
            Ok(())
        })
    }

    /// How many removed tasks still have output rows queued for deletion.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn purge_backlog(&self) -> Result<u64> {
        Ok(self.read()?.open_table(PURGE_TASK)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OutputLine, TaskStatus};
    use crate::store::test_support::temp_store;

    fn task(project: ProjectId, template: u64, status: TaskStatus, created: i64) -> Task {
        let json = serde_json::json!({
            "id": 0, "project_id": project, "template_id": template, "status": status,
            "debug": false, "dry_run": false, "diff": false, "playbook": "",
            "environment": "{}", "limit": "", "arguments": null, "git_branch": null,
            "user_id": null, "integration_id": null, "schedule_id": null, "created": created,
            "start": null, "end": status.is_finished().then_some(created + 1), "message": "",
            "commit_hash": null, "commit_message": "", "build_task_id": null, "version": null,
            "inventory_id": null, "process_group": null, "sealed_secret": [],
            "params": ""
        });
        serde_json::from_value(json).expect("a task")
    }

    /// Adds a task with `lines` output lines; returns its id.
    fn add(store: &Store, t: Task, lines: u64) -> TaskId {
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
                Ok::<_, Error>(id)
            })
            .expect("add a task")
    }

    fn drain(store: &Store) -> u64 {
        let mut lines = 0;
        loop {
            let b = store.purge_output().expect("purge");
            lines += b.removed;
            if b.more.is_none() {
                return lines;
            }
        }
    }

    #[test]
    fn the_cap_keeps_the_newest_finished_and_every_unfinished_task() {
        let (_dir, store) = temp_store();
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(add(&store, task(1, 7, TaskStatus::Success, 100 + i), 10));
        }
        let running = add(&store, task(1, 7, TaskStatus::Running, 200), 3);
        let waiting = add(&store, task(1, 7, TaskStatus::Waiting, 201), 1);
        let other = add(&store, task(1, 8, TaskStatus::Error, 50), 5);
        let b = store.prune_template(1, 7, 2).expect("prune");
        assert_eq!(
            b,
            Batch {
                removed: 4,
                more: None
            }
        );
        assert_eq!(drain(&store), 40);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                store.task(*id).expect("read").is_some(),
                i >= 4,
                "task {id}"
            );
            assert_eq!(
                store.output_len(*id).expect("len"),
                if i >= 4 { 10 } else { 0 }
            );
        }
        for id in [running, waiting, other] {
            assert!(store.task(id).expect("read").is_some());
        }
        let (count, last) = store.template_task_stats(1, 7).expect("stats");
        assert_eq!((count, last.map(|t| t.id)), (4, Some(waiting)));
        assert_eq!(store.purge_backlog().expect("backlog"), 0);
        // At the cap, nothing more goes.
        assert_eq!(store.prune_template(1, 7, 2).expect("prune").removed, 0);
    }

    #[test]
    fn output_larger_than_a_batch_goes_over_several_batches() {
        let (_dir, store) = temp_store();
        let big = add(
            &store,
            task(1, 1, TaskStatus::Success, 1),
            OUTPUT_BATCH * 2 + 5,
        );
        let small = add(&store, task(1, 1, TaskStatus::Success, 2), 7);
        add(&store, task(1, 1, TaskStatus::Success, 3), 1);
        assert_eq!(store.prune_template(1, 1, 1).expect("prune").removed, 2);
        let first = store.purge_output().expect("purge");
        assert_eq!(first.removed, OUTPUT_BATCH);
        assert!(first.more.is_some());
        assert_eq!(drain(&store), OUTPUT_BATCH + 5 + 7);
        assert_eq!(store.output_len(big).expect("len"), 0);
        assert_eq!(store.output_len(small).expect("len"), 0);
    }

    #[test]
    fn expiry_goes_by_end_time_and_stops_at_newer_tasks() {
        let (_dir, store) = temp_store();
        let old = add(&store, task(1, 1, TaskStatus::Success, 100), 2);
        let mut long = task(1, 1, TaskStatus::Success, 100);
        long.end = Some(1000);
        let long = add(&store, long, 2);
        let stuck = add(&store, task(1, 1, TaskStatus::Running, 100), 2);
        let new = add(&store, task(1, 1, TaskStatus::Success, 600), 2);
        let b = store.prune_expired_tasks(500, 0).expect("expire");
        assert_eq!(
            b,
            Batch {
                removed: 1,
                more: None
            }
        );
        assert!(store.task(old).expect("read").is_none());
        for id in [long, stuck, new] {
            assert!(store.task(id).expect("read").is_some(), "task {id}");
        }
        assert_eq!(drain(&store), 2);
    }

    #[test]
    fn events_go_with_their_project_index_rows() {
        let (_dir, store) = temp_store();
        for (now, project) in [(10, Some(1)), (20, None), (30, Some(1)), (40, Some(2))] {
            store
                .record_event(
                    now,
                    crate::store::NewEvent {
                        user_id: None,
                        project_id: project,
                        object_id: None,
                        object_type: "project",
                        description: format!("at {now}"),
                    },
                )
                .expect("event");
        }
        assert_eq!(store.prune_events(30).expect("prune").removed, 2);
        let view = store.view().expect("view");
        let left: Vec<i64> = view
            .events(10, |_| true)
            .expect("events")
            .iter()
            .map(|e| e.created)
            .collect();
        assert_eq!(left, vec![40, 30]);
        assert_eq!(view.project_events(1, 10).expect("events").len(), 1);
        assert_eq!(view.project_events(2, 10).expect("events").len(), 1);
    }

    #[test]
    fn templates_are_listed_once_each() {
        let (_dir, store) = temp_store();
        for (p, t) in [(1, 2), (1, 2), (1, 5), (3, 1)] {
            add(&store, task(p, t, TaskStatus::Success, 1), 0);
        }
        assert_eq!(
            store.task_templates().expect("templates"),
            vec![(1, 2), (1, 5), (3, 1)]
        );
    }
}
