//! The waiting tasks: FIFO within each project, oldest first across projects. Only a
//! project's oldest waiting task can start (once it is blocked, its later tasks wait too), so
//! the dispatcher looks at one head per project instead of scanning every waiting task: a
//! backlog of a million tasks costs it nothing.
//!
//! It holds ids, not tasks (24 bytes a waiting task): the executor loads its task from the
//! store when the task starts. Each project's tasks are kept in id order (ids are given in
//! creation order, and two launches may reach the queue in the other order), so finding a
//! task of a known project is a binary search.

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
    /// Adds a task among its project's others, in id order (nearly always at the back);
    /// whether it was not queued yet.
    pub fn push(&mut self, q: Queued) -> bool {
        let tasks = self.by_project.entry(q.project).or_default();
        if tasks.back().is_none_or(|last| last.id < q.id) {
            tasks.push_back(q);
            return true;
        }
        match tasks.binary_search_by_key(&q.id, |t| t.id) {
            Ok(_) => false,
            Err(pos) => {
                tasks.insert(pos, q);
                true
            }
        }
    }

    /// Whether task `id` of `project` waits here.
    pub fn contains(&self, project: ProjectId, id: TaskId) -> bool {
        self.by_project
            .get(&project)
            .is_some_and(|tasks| tasks.binary_search_by_key(&id, |t| t.id).is_ok())
    }

    /// Removes task `id` wherever it waits; whether it was there.
    pub fn remove(&mut self, id: TaskId) -> bool {
        let found = self.by_project.iter_mut().find_map(|(project, tasks)| {
            let pos = tasks.binary_search_by_key(&id, |q| q.id).ok()?;
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
    fn a_late_arrival_takes_its_place_in_id_order_and_is_queued_once() {
        let mut queue = Queue::default();
        for id in [1, 3, 4] {
            assert!(queue.push(q(id, 7)));
        }
        assert!(queue.push(q(2, 7)));
        assert!(!queue.push(q(3, 7)));
        assert!(queue.contains(7, 2));
        assert!(!queue.contains(8, 2));
        assert!(!queue.contains(7, 5));
        let order: Vec<_> = std::iter::from_fn(|| queue.pop(7)).map(|q| q.id).collect();
        assert_eq!(order, [1, 2, 3, 4]);
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
