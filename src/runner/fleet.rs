//! Remote runners as the dispatcher sees them: which are online (polled within
//! `--runner-timeout`), what each holds, the jobs waiting to be handed out, and the stops
//! waiting to be delivered. Memory only: after a restart, runners come back with their next
//! poll, and tasks they held were ended by the start-up recovery (their runner is told to
//! kill them when it reports them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::agent::protocol::Job;
use crate::config::LocalRunner;
use crate::model::{RemoteRunner, TaskId};

/// How a remote task ended from the executor's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ending {
    /// Still running.
    Open,
    /// The runner reported its end, and it is stored.
    Reported,
    /// The runner is gone (timed out, deactivated, deleted): end it `error` with this line.
    Lost(String),
}

/// Where a waiting task should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// On this server.
    Local,
    /// On remote runner `id`.
    Remote(u64),
    /// Nowhere yet: it waits.
    Wait,
}

/// A runner that polled lately.
#[derive(Debug)]
struct Online {
    record: RemoteRunner,
    /// Last contact (poll or report).
    seen: Instant,
    /// Last contact, Unix seconds (shown as `touched`).
    touched: i64,
    /// Tasks it must kill, delivered with its next poll.
    stops: BTreeSet<TaskId>,
    /// Plan decisions (confirmed or not) for its tasks, delivered with its next poll.
    decisions: BTreeMap<TaskId, bool>,
    /// Wakes its long-poll.
    wake: Arc<Notify>,
}

/// A task assigned to a runner.
#[derive(Debug)]
pub(super) struct Assigned {
    pub runner: u64,
    /// The job, once resolved; handed out with every poll until the runner reports it.
    pub job: Option<Arc<Job>>,
    /// The runner reported it at least once.
    pub acked: bool,
    /// Log records of the runner stored so far.
    pub seen: u64,
    /// The next output line number of the task, shared by everything that writes its output.
    pub out: Arc<tokio::sync::Mutex<Output>>,
    /// How it ended (watched by its executor).
    pub ending: watch::Sender<Ending>,
}

/// A remote task's output position.
#[derive(Debug)]
pub(super) struct Output {
    /// Next line number.
    pub next: u64,
    /// The output limits (as a local run's).
    pub cap: super::output::Cap,
}

/// The remote runners' state (see the module docs).
#[derive(Debug)]
pub(super) struct Fleet {
    timeout: Duration,
    local: LocalRunner,
    /// Active runner records in the store (for `--local-runner auto`).
    registered: AtomicUsize,
    state: Mutex<FleetState>,
}

#[derive(Debug, Default)]
struct FleetState {
    online: HashMap<u64, Online>,
    jobs: HashMap<TaskId, Assigned>,
}

/// What a poll hands a runner.
#[derive(Debug, Default)]
pub(super) struct Handout {
    pub jobs: Vec<Arc<Job>>,
    pub stop: Vec<TaskId>,
    pub confirm: Vec<TaskId>,
    pub reject: Vec<TaskId>,
}

impl Handout {
    /// Whether the runner has nothing to do.
    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.stop.is_empty()
            && self.confirm.is_empty()
            && self.reject.is_empty()
    }
}

impl Fleet {
    pub(super) fn new(timeout: Duration, local: LocalRunner, registered: usize) -> Self {
        Self {
            timeout,
            local,
            registered: AtomicUsize::new(registered),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FleetState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(super) fn set_registered(&self, n: usize) {
        self.registered.store(n, Ordering::Relaxed);
    }

    /// Where a task of a template with `tag` goes. `local_free`: this server has a slot.
    pub(super) fn place(&self, tag: Option<&str>, local_free: bool) -> Place {
        let local_allowed = match self.local {
            LocalRunner::On => true,
            LocalRunner::Off => false,
            LocalRunner::Auto => self.registered.load(Ordering::Relaxed) == 0,
        };
        if tag.is_none() && local_allowed && local_free {
            return Place::Local;
        }
        let state = self.lock();
        let mut load: HashMap<u64, u64> = HashMap::new();
        for a in state.jobs.values() {
            *load.entry(a.runner).or_default() += 1;
        }
        state
            .online
            .values()
            .filter(|o| o.record.active && o.seen.elapsed() <= self.timeout)
            .filter(|o| tag.is_none_or(|t| o.record.tags.iter().any(|x| x == t)))
            .filter_map(|o| {
                let n = load.get(&o.record.id).copied().unwrap_or(0);
                let max = u64::from(o.record.max_parallel_tasks);
                if max > 0 && n >= max {
                    return None;
                }
                // Least loaded first (as a share of its limit), then fewest tasks, then id.
                let share = (n * 1_000_000).checked_div(max).unwrap_or(0);
                Some(((share, n, o.record.id), o.record.id))
            })
            .min()
            .map_or(Place::Wait, |(_, id)| Place::Remote(id))
    }

    /// Records task `id` as assigned to `runner`; returns its output position and the
    /// receiver of its ending.
    pub(super) fn assign(
        &self,
        id: TaskId,
        runner: u64,
        next_line: u64,
        cap: super::output::Cap,
    ) -> (Arc<tokio::sync::Mutex<Output>>, watch::Receiver<Ending>) {
        let out = Arc::new(tokio::sync::Mutex::new(Output {
            next: next_line,
            cap,
        }));
        let (ending, rx) = watch::channel(Ending::Open);
        self.lock().jobs.insert(
            id,
            Assigned {
                runner,
                job: None,
                acked: false,
                seen: 0,
                out: Arc::clone(&out),
                ending,
            },
        );
        (out, rx)
    }

    /// Makes task `id`'s job available to its runner's next poll (waking a waiting one).
    pub(super) fn hand_out(&self, id: TaskId, job: Job) {
        let mut state = self.lock();
        let Some(a) = state.jobs.get_mut(&id) else {
            return;
        };
        a.job = Some(Arc::new(job));
        let runner = a.runner;
        if let Some(o) = state.online.get(&runner) {
            o.wake.notify_one();
        }
    }

    /// Asks task `id`'s runner to kill it; whether the runner may have it (it was handed out
    /// at least once).
    pub(super) fn stop(&self, id: TaskId) -> bool {
        let mut state = self.lock();
        let Some(a) = state.jobs.get_mut(&id) else {
            return false;
        };
        let handed = a.job.is_some();
        // Never hand it out again.
        a.job = None;
        let runner = a.runner;
        let acked = a.acked;
        if let Some(o) = state.online.get_mut(&runner) {
            o.stops.insert(id);
            o.wake.notify_one();
        }
        acked || handed
    }

    /// Tells task `id`'s runner with its next poll that a user confirmed (or rejected) the
    /// plan the task waits with.
    pub(super) fn decide(&self, id: TaskId, confirmed: bool) {
        let mut state = self.lock();
        let Some(runner) = state.jobs.get(&id).map(|a| a.runner) else {
            return;
        };
        if let Some(o) = state.online.get_mut(&runner) {
            o.decisions.insert(id, confirmed);
            o.wake.notify_one();
        }
    }

    /// Forgets task `id` (its executor ended); the runner is told to kill it if it still
    /// reports it.
    pub(super) fn forget(&self, id: TaskId) {
        self.lock().jobs.remove(&id);
    }

    /// The assignment of task `id` to `runner`, if it is that runner's.
    pub(super) fn with_job<T>(
        &self,
        runner: u64,
        id: TaskId,
        f: impl FnOnce(&mut Assigned) -> T,
    ) -> Option<T> {
        let mut state = self.lock();
        state
            .jobs
            .get_mut(&id)
            .filter(|a| a.runner == runner)
            .map(f)
    }

    /// Adds `ids` to the stops of `runner`.
    pub(super) fn add_stops(&self, runner: u64, ids: &[TaskId]) {
        let mut state = self.lock();
        if let Some(o) = state.online.get_mut(&runner) {
            o.stops.extend(ids.iter().copied());
        }
    }

    /// Records a contact of `record`'s runner (it comes online if it was not); returns
    /// whether it just came online.
    pub(super) fn touch(&self, record: &RemoteRunner, now: i64) -> bool {
        let mut state = self.lock();
        if let Some(o) = state.online.get_mut(&record.id) {
            o.seen = Instant::now();
            o.touched = now;
            o.record = record.clone();
            false
        } else {
            state.online.insert(
                record.id,
                Online {
                    record: record.clone(),
                    seen: Instant::now(),
                    touched: now,
                    stops: BTreeSet::new(),
                    decisions: BTreeMap::new(),
                    wake: Arc::new(Notify::new()),
                },
            );
            true
        }
    }

    /// What `runner` should do now: jobs not yet acknowledged, and stops and decisions
    /// (taken).
    pub(super) fn take_handout(&self, runner: u64) -> (Handout, Option<Arc<Notify>>) {
        let mut state = self.lock();
        let jobs = state
            .jobs
            .values()
            .filter(|a| a.runner == runner && !a.acked)
            .filter_map(|a| a.job.clone())
            .collect();
        let Some(o) = state.online.get_mut(&runner) else {
            return (Handout::default(), None);
        };
        let stop = std::mem::take(&mut o.stops).into_iter().collect();
        let (mut confirm, mut reject) = (Vec::new(), Vec::new());
        for (id, confirmed) in std::mem::take(&mut o.decisions) {
            if confirmed {
                confirm.push(id);
            } else {
                reject.push(id);
            }
        }
        let handout = Handout {
            jobs,
            stop,
            confirm,
            reject,
        };
        (handout, Some(Arc::clone(&o.wake)))
    }

    /// Last contact of each online runner, Unix seconds.
    pub(super) fn touched(&self) -> HashMap<u64, i64> {
        self.lock()
            .online
            .values()
            .map(|o| (o.record.id, o.touched))
            .collect()
    }

    /// Takes runners silent for longer than the timeout offline (and `gone`, whatever its
    /// last contact); their tasks end with a line saying why. Returns how many tasks lost
    /// their runner.
    pub(super) fn sweep(&self, gone: Option<(u64, &str)>) -> usize {
        let mut state = self.lock();
        let mut lost: Vec<(u64, String)> = Vec::new();
        let timeout = self.timeout;
        state.online.retain(|id, o| {
            if let Some((g, why)) = gone
                && g == *id
            {
                lost.push((*id, format!("runner {} ({}) {why}", id, o.record.name)));
                return false;
            }
            if o.seen.elapsed() > timeout {
                lost.push((
                    *id,
                    format!(
                        "runner {} ({}) was lost: no contact for {} s",
                        id,
                        o.record.name,
                        timeout.as_secs()
                    ),
                ));
                // A waiting poll returns at once.
                o.wake.notify_waiters();
                return false;
            }
            true
        });
        if let Some((g, why)) = gone
            && !lost.iter().any(|(id, _)| *id == g)
        {
            lost.push((g, format!("runner {g} {why}")));
        }
        let mut n = 0;
        for a in state.jobs.values() {
            if let Some((_, why)) = lost.iter().find(|(id, _)| *id == a.runner) {
                a.ending.send_if_modified(|e| {
                    if *e == Ending::Open {
                        *e = Ending::Lost(why.clone());
                        true
                    } else {
                        false
                    }
                });
                n += 1;
            }
        }
        n
    }

    /// Whether `runner` is online.
    pub(super) fn is_online(&self, runner: u64) -> bool {
        self.lock().online.contains_key(&runner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, tags: &[&str], max: u32) -> RemoteRunner {
        RemoteRunner {
            id,
            name: format!("r{id}"),
            webhook: String::new(),
            max_parallel_tasks: max,
            active: true,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            token_hash: [0; 32],
            created: 0,
        }
    }

    #[test]
    fn placement_follows_tags_limits_and_the_local_mode() {
        let fleet = Fleet::new(Duration::from_secs(60), LocalRunner::Auto, 0);
        // No runner registered: untagged tasks run here, tagged ones wait.
        assert_eq!(fleet.place(None, true), Place::Local);
        assert_eq!(fleet.place(Some("a"), true), Place::Wait);
        fleet.set_registered(2);
        assert_eq!(fleet.place(None, true), Place::Wait);
        fleet.touch(&record(1, &["a"], 1), 0);
        fleet.touch(&record(2, &[], 2), 0);
        assert_eq!(fleet.place(Some("a"), true), Place::Remote(1));
        assert_eq!(fleet.place(Some("b"), true), Place::Wait);
        let _ = fleet.assign(10, 1, 0, super::super::output::Cap::with_limits(10, 10, 0));
        // Runner 1 is full: tag a waits; untagged goes to the least loaded (runner 2).
        assert_eq!(fleet.place(Some("a"), true), Place::Wait);
        assert_eq!(fleet.place(None, true), Place::Remote(2));
        let _ = fleet.assign(11, 2, 0, super::super::output::Cap::with_limits(10, 10, 0));
        let _ = fleet.assign(12, 2, 0, super::super::output::Cap::with_limits(10, 10, 0));
        assert_eq!(fleet.place(None, true), Place::Wait);
        // A deactivated runner is gone at once; its task is lost.
        let (_, mut ending) =
            fleet.assign(13, 1, 0, super::super::output::Cap::with_limits(10, 10, 0));
        assert_eq!(fleet.sweep(Some((1, "was deactivated"))), 2);
        assert!(
            matches!(&*ending.borrow_and_update(), Ending::Lost(why) if why.contains("was deactivated"))
        );
        assert!(!fleet.is_online(1));
        fleet.forget(10);
        fleet.forget(13);
        assert_eq!(fleet.place(Some("a"), true), Place::Wait);
    }

    #[test]
    fn stops_reach_the_runner_once() {
        let fleet = Fleet::new(Duration::from_secs(60), LocalRunner::Off, 1);
        fleet.touch(&record(1, &[], 0), 0);
        let _ = fleet.assign(5, 1, 0, super::super::output::Cap::with_limits(10, 10, 0));
        fleet.hand_out(5, Job::default());
        assert_eq!(fleet.take_handout(1).0.jobs.len(), 1);
        assert!(fleet.stop(5));
        let (h, _) = fleet.take_handout(1);
        assert!(h.jobs.is_empty());
        assert_eq!(h.stop, [5]);
        assert!(fleet.take_handout(1).0.stop.is_empty());
    }

    #[test]
    fn plan_decisions_reach_the_runner_once() {
        let fleet = Fleet::new(Duration::from_secs(60), LocalRunner::Off, 1);
        fleet.touch(&record(1, &[], 0), 0);
        let _ = fleet.assign(6, 1, 0, super::super::output::Cap::with_limits(10, 10, 0));
        let _ = fleet.assign(7, 1, 0, super::super::output::Cap::with_limits(10, 10, 0));
        fleet.decide(6, true);
        fleet.decide(7, false);
        // Not this server's task: nothing to deliver.
        fleet.decide(8, true);
        let (h, _) = fleet.take_handout(1);
        assert_eq!((h.confirm, h.reject), (vec![6], vec![7]));
        assert!(fleet.take_handout(1).0.is_empty());
    }
}
