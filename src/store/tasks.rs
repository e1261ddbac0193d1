//! Tasks, the index of unfinished tasks, and task output lines.

use std::sync::Arc;

use redb::{Durability, ReadableTable, WriteTransaction};

use super::projects::{Resource, Tx, View};
use super::tables::{ACTIVE_TASK, OUTPUT_CHUNK, PROJECT_TASK, TASKID_PROJECT, TEMPLATE_TASK};
use super::{Error, Result, Store, codec};
use crate::model::{OutputLine, ProjectId, Task, TaskId};

/// Writes a task with its indexes (the active-task index follows the status).
fn put_task(tx: &WriteTransaction, task: &Task) -> Result<()> {
    tx.open_table(PROJECT_TASK)?
        .insert((task.project_id, task.id), codec::encode(task).as_slice())?;
    tx.open_table(TASKID_PROJECT)?
        .insert(task.id, task.project_id)?;
    tx.open_table(TEMPLATE_TASK)?
        .insert((task.project_id, task.template_id, task.id), ())?;
    let mut active = tx.open_table(ACTIVE_TASK)?;
    if task.status.is_finished() {
        // Leaving the active index is finishing: the alerts go out with it, in this
        // transaction (see `store::outbox`).
        let finishing = active.remove(task.id)?.is_some();
        drop(active);
        if finishing {
            super::outbox::enqueue(tx, task)?;
        }
    } else {
        active.insert(task.id, ())?;
    }
    Ok(())
}

impl Tx<'_> {
    /// Stores a new task (assigning its id) with its indexes.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn insert_task(&self, task: &mut Task) -> Result<TaskId> {
        task.id = super::next_id(self.raw(), Task::COUNTER)?;
        put_task(self.raw(), task)?;
        Ok(task.id)
    }

    /// Replaces a task, keeping the active-task index in step with its status.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn put_task(&self, task: &Task) -> Result<()> {
        put_task(self.raw(), task)
    }

    /// Task `id` wherever it lives.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn task(&self, id: TaskId) -> Result<Option<Task>> {
        let Some(project) = self
            .raw()
            .open_table(TASKID_PROJECT)?
            .get(id)?
            .map(|p| p.value())
        else {
            return Ok(None);
        };
        self.get::<Task>(project, id)
    }

    /// Deletes a task with its output.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn delete_task(&self, task: &Task) -> Result<()> {
        self.raw()
            .open_table(PROJECT_TASK)?
            .remove((task.project_id, task.id))?;
        self.raw().open_table(TASKID_PROJECT)?.remove(task.id)?;
        self.raw().open_table(ACTIVE_TASK)?.remove(task.id)?;
        self.raw().open_table(TEMPLATE_TASK)?.remove((
            task.project_id,
            task.template_id,
            task.id,
        ))?;
        super::output::delete(&mut self.raw().open_table(OUTPUT_CHUNK)?, task.id)
    }

    /// The tasks of template `template`, oldest first.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn template_tasks(&self, project: ProjectId, template: u64) -> Result<Vec<Task>> {
        let ids: Vec<TaskId> = self
            .raw()
            .open_table(TEMPLATE_TASK)?
            .range((project, template, 0)..=(project, template, u64::MAX))?
            .map(|row| Ok::<_, Error>(row?.0.value().2))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.get::<Task>(project, id)?);
        }
        Ok(out)
    }

    /// Appends output lines to task `id` starting at line number `first`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn append_output(&self, id: TaskId, first: u64, lines: &[OutputLine]) -> Result<()> {
        super::output::append(self.raw(), id, first, lines)
    }
}

impl Store {
    /// Task `id` wherever it lives.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn task(&self, id: TaskId) -> Result<Option<Task>> {
        let tx = self.read()?;
        let Some(project) = tx.open_table(TASKID_PROJECT)?.get(id)?.map(|p| p.value()) else {
            return Ok(None);
        };
        match tx.open_table(PROJECT_TASK)?.get((project, id))? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every unfinished task, oldest first (from the active-task index, not a scan).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn active_tasks(&self) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        self.each_active_task(|t| out.push(t))?;
        Ok(out)
    }

    /// Calls `f` with each unfinished task, oldest first, one decoded at a time (a backlog of
    /// waiting tasks is never all in memory at once).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn each_active_task(&self, mut f: impl FnMut(Task)) -> Result<()> {
        let tx = self.read()?;
        let active = tx.open_table(ACTIVE_TASK)?;
        let index = tx.open_table(TASKID_PROJECT)?;
        let tasks = tx.open_table(PROJECT_TASK)?;
        for row in active.iter()? {
            let id = row?.0.value();
            let Some(project) = index.get(id)?.map(|p| p.value()) else {
                continue;
            };
            if let Some(bytes) = tasks.get((project, id))? {
                f(codec::decode(bytes.value())?);
            }
        }
        Ok(())
    }

    /// Calls `f` with each task of template `template`, oldest first, one decoded at a time.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn each_template_task(
        &self,
        project: ProjectId,
        template: u64,
        mut f: impl FnMut(&Task),
    ) -> Result<()> {
        let tx = self.read()?;
        let index = tx.open_table(TEMPLATE_TASK)?;
        let tasks = tx.open_table(PROJECT_TASK)?;
        for row in index.range((project, template, 0)..=(project, template, u64::MAX))? {
            let id = row?.0.value().2;
            if let Some(bytes) = tasks.get((project, id))? {
                f(&codec::decode(bytes.value())?);
            }
        }
        Ok(())
    }

    /// How many tasks template `template` has, and its newest one.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn template_task_stats(
        &self,
        project: ProjectId,
        template: u64,
    ) -> Result<(u64, Option<Task>)> {
        let tx = self.read()?;
        let index = tx.open_table(TEMPLATE_TASK)?;
        let range = (project, template, 0)..=(project, template, u64::MAX);
        let count = index.range(range.clone())?.count() as u64;
        let last = match index.range(range)?.next_back().transpose()? {
            Some((k, _)) => {
                let tasks = tx.open_table(PROJECT_TASK)?;
                match tasks.get((project, k.value().2))? {
                    Some(bytes) => Some(codec::decode(bytes.value())?),
                    None => None,
                }
            }
            None => None,
        };
        Ok((count, last))
    }

    /// Appends a batch of output lines durably in one transaction.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn append_output(&self, id: TaskId, first: u64, lines: &[OutputLine]) -> Result<()> {
        let lines: Arc<[OutputLine]> = Arc::from(lines);
        self.write(Durability::Immediate, move |tx| {
            super::output::append(tx, id, first, &lines)
        })
    }

    /// [`Store::append_output`] for async callers, taking lines the caller shares (the task
    /// runner publishes the same lines once they are stored): nothing is copied.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn append_output_async(
        &self,
        id: TaskId,
        first: u64,
        lines: Arc<[OutputLine]>,
    ) -> Result<()> {
        self.write_async(Durability::Immediate, move |tx| {
            super::output::append(tx, id, first, &lines)
        })
        .await
    }

    /// Output lines `offset..offset+limit` of task `id`, with their line numbers.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn output(&self, id: TaskId, offset: u64, limit: usize) -> Result<Vec<(u64, OutputLine)>> {
        let tx = self.read()?;
        super::output::read(&tx.open_table(OUTPUT_CHUNK)?, id, offset, limit)
    }

    /// How many output lines task `id` has.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn output_len(&self, id: TaskId) -> Result<u64> {
        let tx = self.read()?;
        super::output::len(&tx.open_table(OUTPUT_CHUNK)?, id)
    }
}

impl View {
    /// The newest tasks of `project` (optionally of one template), newest first, at most
    /// `limit`: a reverse range read of `limit` rows, never a scan of the project's tasks.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn recent_tasks(
        &self,
        project: ProjectId,
        template: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Task>> {
        let tasks = self.raw().open_table(PROJECT_TASK)?;
        let mut out = Vec::with_capacity(limit.min(256));
        let Some(template) = template else {
            for row in tasks
                .range((project, 0)..=(project, u64::MAX))?
                .rev()
                .take(limit)
            {
                out.push(codec::decode(row?.1.value())?);
            }
            return Ok(out);
        };
        let index = self.raw().open_table(TEMPLATE_TASK)?;
        for row in index
            .range((project, template, 0)..=(project, template, u64::MAX))?
            .rev()
            .take(limit)
        {
            let id = row?.0.value().2;
            if let Some(bytes) = tasks.get((project, id))? {
                out.push(codec::decode(bytes.value())?);
            }
        }
        Ok(out)
    }
}
