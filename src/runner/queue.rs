//! The waiting tasks: FIFO within each project, oldest first across projects. Only a
//! project's oldest waiting task can start (once it is blocked, its later tasks wait too), so
//! the dispatcher looks at one head per project instead of scanning every waiting task: a
//! backlog of a million tasks costs it nothing.

use std::collections::{BTreeMap, VecDeque};

use crate::model::{ProjectId, TaskId};

/// A waiting task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Queued {
    pub id: TaskId,
    pub project: ProjectId,
    pub template: u64,
}

/// Waiting tasks by project, each project's in arrival order.
#[derive(Debug, Default)]
pub(super) struct Queue {
    by_project: BTreeMap<ProjectId, VecDeque<Queued>>,
}

impl Queue {
    /// Adds a task behind its project's others.
    pub fn push(&mut self, q: Queued) {
        self.by_project.entry(q.project).or_default().push_back(q);
    }

    /// Removes task `id` wherever it waits; whether it was there.
    pub fn remove(&mut self, id: TaskId) -> bool {
        let found = self.by_project.iter_mut().find_map(|(project, tasks)| {
            let pos = tasks.iter().position(|q| q.id == id)?;
            tasks.remove(pos);
            Some((*project, tasks.is_empty()))
        });
        if let Some((project, true)) = found {
            self.by_project.remove(&project);
        }
        found.is_some()
    }

    /// The oldest waiting task (lowest id) at the head of a project `eligible` accepts.
    pub fn oldest_head(&self, eligible: impl Fn(ProjectId) -> bool) -> Option<Queued> {
        self.by_project
            .iter()
            .filter(|(project, _)| eligible(**project))
            .filter_map(|(_, tasks)| tasks.front().copied())
            .min_by_key(|q| q.id)
    }

    /// Forgets every waiting task of `project`.
    pub fn remove_project(&mut self, project: ProjectId) {
        self.by_project.remove(&project);
    }

    /// Takes project `project`'s oldest waiting task.
    pub fn pop(&mut self, project: ProjectId) -> Option<Queued> {
        let tasks = self.by_project.get_mut(&project)?;
        let q = tasks.pop_front();
        if tasks.is_empty() {
            self.by_project.remove(&project);
        }
        q
    }

    /// Every waiting task, by project.
    pub fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.by_project.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: TaskId, project: ProjectId) -> Queued {
        Queued {
            id,
            project,
            template: 1,
        }
    }

    #[test]
    fn oldest_head_first_and_fifo_within_a_project() {
        let mut queue = Queue::default();
        for (id, project) in [(1, 2), (2, 1), (3, 2), (4, 1), (5, 3)] {
            queue.push(q(id, project));
        }
        assert_eq!(queue.oldest_head(|_| true), Some(q(1, 2)));
        assert_eq!(queue.oldest_head(|p| p != 2), Some(q(2, 1)));
        assert_eq!(queue.oldest_head(|p| p == 3), Some(q(5, 3)));
        assert_eq!(queue.pop(2), Some(q(1, 2)));
        assert_eq!(queue.oldest_head(|_| true), Some(q(2, 1)));
        assert_eq!(queue.oldest_head(|p| p == 2), Some(q(3, 2)));
        assert_eq!(queue.oldest_head(|_| false), None);
    }

    #[test]
    fn removing_and_popping_the_last_task_forgets_the_project() {
        let mut queue = Queue::default();
        queue.push(q(1, 7));
        queue.push(q(2, 7));
        queue.push(q(3, 8));
        assert!(queue.remove(2));
        assert!(!queue.remove(2));
        assert_eq!(queue.iter().count(), 2);
        assert!(queue.remove(3));
        assert_eq!(queue.pop(8), None);
        assert_eq!(queue.pop(7), Some(q(1, 7)));
        assert_eq!(queue.pop(7), None);
        assert!(queue.by_project.is_empty());
        assert_eq!(queue.oldest_head(|_| true), None);
    }

    #[test]
    fn removing_a_project_forgets_only_its_tasks() {
        let mut queue = Queue::default();
        for (id, project) in [(1, 7), (2, 8), (3, 7)] {
            queue.push(q(id, project));
        }
        queue.remove_project(7);
        assert_eq!(queue.iter().copied().collect::<Vec<_>>(), [q(2, 8)]);
        queue.remove_project(9);
        assert_eq!(queue.oldest_head(|_| true), Some(q(2, 8)));
    }
}
