//! The schedule loop, owned by the server: it keeps the next fire time of every active
//! schedule in a priority queue and sleeps until the earliest (never a per-second scan), on
//! the injectable clock.
//!
//! At start it accounts for the occurrences missed while the server was down (one event per
//! schedule; `catch_up` runs the latest once). Then each due occurrence is fired through
//! [`Services::fire_schedule`], whose transaction stores the task together with the
//! schedule's exactly-once cursor; the task is then queued on the runner as a launch is (and
//! if the server dies in between, the runner's recovery queues the stored `waiting` task).
//! A schedule change ([`Services::schedule_changed`]) re-plans that one schedule; a firing
//! planned from an older version of a schedule is dropped here (by generation) and, should one
//! slip through, by the transaction itself (by timing and cursor).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::App;
use crate::clock::ClockHandle;
use crate::cron::Spec;
use crate::model::{ProjectId, Schedule};
use crate::runner::Runner;
use crate::service::Services;
use crate::service::resources::schedules::{Fired, Timing};

/// The longest the loop sleeps without looking at the clock again, so that a wall clock
/// stepped forward is noticed soon (one wake-up a second costs nothing measurable).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Delay before retrying a firing whose transaction failed (full disk and the like).
const RETRY_AFTER: i64 = 1;

/// A schedule's key.
type Key = (ProjectId, u64);

/// A planned firing of one schedule.
#[derive(Debug, Clone)]
struct Planned {
    key: Key,
    /// The schedule's generation when planned; a newer one makes this stale.
    generation: u64,
    /// The occurrence to fire (Unix seconds).
    occurrence: i64,
    timing: Timing,
    spec: Spec,
    /// Repository-triggered: poll the branch head before firing.
    polls: bool,
}

/// The running loop; [`Scheduler::stop`] ends it.
#[derive(Debug)]
pub struct Scheduler {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    /// Starts the loop for `app`.
    #[must_use]
    pub fn start(app: &App) -> Self {
        let (shutdown, closed) = watch::channel(false);
        let run = Loop {
            services: Arc::clone(&app.services),
            runner: app.runner.clone(),
            clock: app.config.clock.clone(),
            queue: BinaryHeap::new(),
            plans: HashMap::new(),
            generations: HashMap::new(),
            next_seq: 0,
            scratch: app.config.work_dir().join("schedule-polls"),
        };
        Self {
            shutdown,
            task: tokio::spawn(run.run(closed)),
        }
    }

    /// Stops the loop and waits for it (a firing in progress completes or not as a whole).
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        let _ = self.task.await;
    }
}

/// What a firing hands back: its plan, the occurrence it fired, and the outcome.
type Done = (Planned, i64, crate::service::Result<Fired>);

enum Wake {
    Due,
    Changed,
    Fired(Result<Done, tokio::task::JoinError>),
    Stop,
}

struct Loop {
    services: Arc<Services>,
    runner: Runner,
    clock: ClockHandle,
    /// (wake-up time in Unix seconds, sequence number of the plan), earliest first.
    queue: BinaryHeap<Reverse<(i64, u64)>>,
    /// The plans in the queue, by sequence number.
    plans: HashMap<u64, Planned>,
    /// Each schedule's current generation (bumped by every change).
    generations: HashMap<Key, u64>,
    next_seq: u64,
    /// Where repository polls keep their key files (one directory per schedule).
    scratch: std::path::PathBuf,
}

impl Loop {
    async fn run(mut self, mut closed: watch::Receiver<bool>) {
        self.start_up().await;
        // Firings in flight: each runs on its own (a slow repository poll delays no other
        // schedule) and comes back here to plan its schedule's next occurrence.
        let mut firing = JoinSet::new();
        loop {
            let wait = self.until_next();
            let woke = tokio::select! {
                () = tokio::time::sleep(wait) => Wake::Due,
                () = self.services.schedules_changed().notified() => Wake::Changed,
                Some(done) = firing.join_next(), if !firing.is_empty() => Wake::Fired(done),
                _ = closed.wait_for(|c| *c) => Wake::Stop,
            };
            match woke {
                Wake::Stop => {
                    // A firing's transaction commits whole or not at all, and a task it stored
                    // is queued again by the runner's recovery at the next start: a poll or a
                    // commit in flight need not hold the shutdown.
                    firing.abort_all();
                    while firing.join_next().await.is_some() {}
                    return;
                }
                Wake::Due => self.fire_due(&mut firing),
                Wake::Fired(Ok((plan, occurrence, fired))) => {
                    self.fired(plan, occurrence, fired);
                }
                Wake::Fired(Err(e)) => tracing::error!(error = %e, "a schedule firing panicked"),
                Wake::Changed => {
                    for key in self.services.take_changed_schedules() {
                        let current = self.services.stored_schedule(key.0, key.1);
                        match current {
                            Ok(s) => self.replan(key, s.as_ref()),
                            Err(e) => tracing::error!(error = %e, "cannot read a schedule"),
                        }
                    }
                }
            }
        }
    }

    /// Accounts for the runs missed while the server was down, then plans every schedule.
    async fn start_up(&mut self) {
        let all = loop {
            match self.services.all_schedules() {
                Ok(all) => break all,
                Err(e) => {
                    // Never a silent stop: the store may be reopening; try again.
                    tracing::error!(error = %e, "cannot read the schedules; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let now = self.clock.now();
        for s in &all {
            let Some(spec) = self.services.timing_of(s) else {
                continue;
            };
            let timing = (Timing::of(s), spec);
            match self
                .services
                .missed_schedule(s.project_id, s.id, now, timing)
                .await
            {
                Ok(fired) => self.enqueue(fired),
                Err(e) => tracing::error!(error = %e, schedule = s.id, "cannot record missed runs"),
            }
        }
        // Re-read: the missed runs moved the cursors.
        for s in self.services.all_schedules().unwrap_or(all) {
            self.replan((s.project_id, s.id), Some(&s));
        }
    }

    /// Plans schedule `key` afresh from its stored state `s` (`None`: it is gone).
    fn replan(&mut self, key: Key, s: Option<&Schedule>) {
        let generation = {
            let g = self.generations.entry(key).or_insert(0);
            *g += 1;
            *g
        };
        let Some(s) = s else {
            self.generations.remove(&key);
            return;
        };
        let Some(spec) = self.services.timing_of(s) else {
            return;
        };
        if let Some(occurrence) = spec.next_after(s.done_until) {
            self.push(
                occurrence,
                Planned {
                    key,
                    generation,
                    occurrence,
                    timing: Timing::of(s),
                    spec,
                    polls: s.repository_id.is_some(),
                },
            );
        }
    }

    fn push(&mut self, wake: i64, plan: Planned) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.plans.insert(seq, plan);
        self.queue.push(Reverse((wake, seq)));
    }

    /// How long until the earliest planned firing (capped), by the clock's milliseconds.
    fn until_next(&self) -> Duration {
        let Some(Reverse((due, _))) = self.queue.peek() else {
            return MAX_SLEEP;
        };
        let wait_ms = due.saturating_mul(1000).saturating_sub(self.clock.now_ms());
        Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)).min(MAX_SLEEP)
    }

    /// Starts firing every planned occurrence that is due, all at once (their transactions
    /// commit together); each comes back through [`Loop::fired`].
    fn fire_due(&mut self, firing: &mut JoinSet<Done>) {
        let now = self.clock.now();
        while let Some(&Reverse((wake, seq))) = self.queue.peek() {
            if wake > now {
                break;
            }
            self.queue.pop();
            let Some(plan) = self.plans.remove(&seq) else {
                continue;
            };
            if self.generations.get(&plan.key) != Some(&plan.generation) {
                continue;
            }
            // The latest occurrence that is due: a loop woken late runs it once, and the
            // transaction records the ones in between as missed.
            let occurrence = plan
                .spec
                .between(plan.occurrence - 1, now)
                .map_or(plan.occurrence, |(latest, _)| latest);
            let services = Arc::clone(&self.services);
            let scratch = self.scratch.join(plan.key.1.to_string());
            firing.spawn(async move {
                let head = if plan.polls {
                    Some(poll(&services, plan.key, &scratch).await)
                } else {
                    None
                };
                let timing = (plan.timing.clone(), plan.spec.clone());
                let fired = services
                    .fire_schedule(plan.key.0, plan.key.1, occurrence, timing, head)
                    .await;
                (plan, occurrence, fired)
            });
        }
    }

    /// Plans what follows a firing: the next occurrence, a retry, or a fresh look at a
    /// schedule that changed.
    fn fired(&mut self, mut plan: Planned, occurrence: i64, fired: crate::service::Result<Fired>) {
        {
            match fired {
                Ok(Fired::Nothing) => {
                    // Handled already, changed, or gone (with its template or project):
                    // plan from what is stored.
                    match self.services.stored_schedule(plan.key.0, plan.key.1) {
                        Ok(s) => self.replan(plan.key, s.as_ref()),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read a schedule; retrying");
                            self.push(self.clock.now() + RETRY_AFTER, plan);
                        }
                    }
                }
                Ok(fired) => {
                    // Fire-time error (stored − due), for benches/schedules.py.
                    let late_ms = self.clock.now_ms() - occurrence.saturating_mul(1000);
                    tracing::debug!(schedule = plan.key.1, occurrence, late_ms, "schedule fired");
                    self.enqueue(fired);
                    if let Some(next) = plan.spec.next_after(occurrence) {
                        plan.occurrence = next;
                        self.push(next, plan);
                    }
                }
                Err(e) => {
                    // Never a silent stop: the same occurrence is tried again shortly.
                    tracing::error!(error = %e, schedule = plan.key.1, "schedule firing failed; retrying");
                    plan.occurrence = occurrence;
                    self.push(self.clock.now() + RETRY_AFTER, plan);
                }
            }
        }
    }

    fn enqueue(&self, fired: Fired) {
        if let Fired::Task(task, line) = fired {
            self.runner.enqueue(&task, line);
        }
    }
}

/// The branch head of repository-triggered schedule `key` (`git ls-remote`).
async fn poll(services: &Services, key: Key, scratch: &std::path::Path) -> Result<String, String> {
    let s = services
        .stored_schedule(key.0, key.1)
        .map_err(|e| e.to_string())?
        .ok_or("the schedule is gone")?;
    let (url, branch, secret) = services.schedule_remote(&s)?;
    crate::runner::remote::branch_head(&url, &branch, secret, scratch).await
}
