//! The schedule loop, owned by the server: it keeps the next fire time of every active
//! schedule in a priority queue and sleeps until the earliest (never a per-second scan), on
//! the injectable clock.
//!
//! At start it accounts for the occurrences missed while the server was down (one event per
//! schedule; `catch_up` runs the latest once). Then each due occurrence is fired through
//! [`Services::fire_schedule`], whose transaction stores the task together with the
//! schedule's exactly-once cursor; the task is then queued on the runner as a launch is (and
//! if the server dies in between, the runner's recovery queues the stored `waiting` task).
//! A schedule change wakes the loop, which re-reads the schedules; a firing planned from an
//! older version of a schedule is dropped by the transaction itself.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::clock::ClockHandle;
use crate::cron::Spec;
use crate::model::ProjectId;
use crate::runner::Runner;
use crate::service::Services;
use crate::service::resources::schedules::{Fired, Timing};

/// The longest the loop sleeps without looking at the clock again, so that a wall clock
/// stepped forward is noticed soon.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Delay before retrying a firing whose transaction failed (full disk and the like).
const RETRY_AFTER: i64 = 1;

/// A planned firing.
#[derive(Debug, Clone)]
struct Planned {
    project: ProjectId,
    id: u64,
    timing: Timing,
    spec: Spec,
}

/// The queue: wake-up time (Unix seconds), then the index of the planned firing in `plans`.
type Queue = BinaryHeap<Reverse<(i64, u64)>>;

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
            plans: Vec::new(),
            queue: Queue::new(),
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

enum Wake {
    Due,
    Changed,
}

struct Loop {
    services: Arc<Services>,
    runner: Runner,
    clock: ClockHandle,
    /// Planned firings (occurrence, schedule) by index; the queue holds the indexes.
    plans: Vec<(i64, Planned)>,
    queue: Queue,
}

impl Loop {
    async fn run(mut self, mut closed: watch::Receiver<bool>) {
        self.start_up().await;
        loop {
            let wait = self.until_next();
            let woke = tokio::select! {
                () = tokio::time::sleep(wait) => Wake::Due,
                () = self.services.schedules_changed().notified() => Wake::Changed,
                _ = closed.wait_for(|c| *c) => return,
            };
            match woke {
                Wake::Due => self.fire_due().await,
                Wake::Changed => self.reload(),
            }
        }
    }

    /// Accounts for the runs missed while the server was down, then plans the rest.
    async fn start_up(&mut self) {
        let now = self.clock.now();
        for (project, id, plan) in self.read_all() {
            let timing = (plan.timing.clone(), plan.spec.clone());
            match self
                .services
                .missed_schedule(project, id, now, timing)
                .await
            {
                Ok(fired) => self.enqueue(fired),
                Err(e) => tracing::error!(error = %e, schedule = id, "cannot record missed runs"),
            }
        }
        self.reload();
    }

    /// Every active schedule with its timing.
    fn read_all(&self) -> Vec<(ProjectId, u64, Planned)> {
        let all = match self.services.all_schedules() {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the schedules");
                return Vec::new();
            }
        };
        all.into_iter()
            .filter_map(|s| {
                let spec = self.services.timing_of(&s)?;
                Some((
                    s.project_id,
                    s.id,
                    Planned {
                        project: s.project_id,
                        id: s.id,
                        timing: Timing::of(&s),
                        spec,
                    },
                ))
            })
            .collect()
    }

    /// Re-reads the schedules and plans each one's next occurrence after its cursor.
    fn reload(&mut self) {
        self.plans.clear();
        self.queue.clear();
        let done: std::collections::HashMap<(ProjectId, u64), i64> = self
            .services
            .all_schedules()
            .unwrap_or_default()
            .into_iter()
            .map(|s| ((s.project_id, s.id), s.done_until))
            .collect();
        for (project, id, plan) in self.read_all() {
            let after = done.get(&(project, id)).copied().unwrap_or_default();
            if let Some(due) = plan.spec.next_after(after) {
                self.plan(due, plan);
            }
        }
    }

    fn plan(&mut self, due: i64, plan: Planned) {
        let seq = self.plans.len() as u64;
        self.plans.push((due, plan));
        self.queue.push(Reverse((due, seq)));
    }

    /// How long until the earliest planned firing (capped), by the clock's milliseconds.
    fn until_next(&self) -> Duration {
        let Some(Reverse((due, _))) = self.queue.peek() else {
            return MAX_SLEEP;
        };
        let wait_ms = due.saturating_mul(1000).saturating_sub(self.clock.now_ms());
        Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)).min(MAX_SLEEP)
    }

    /// Fires every planned occurrence that is due, all at once (their transactions commit
    /// together), and plans each schedule's next one.
    async fn fire_due(&mut self) {
        let now = self.clock.now();
        let mut firing = tokio::task::JoinSet::new();
        while let Some(&Reverse((due, seq))) = self.queue.peek() {
            if due > now {
                break;
            }
            self.queue.pop();
            let Some((planned, plan)) = usize::try_from(seq)
                .ok()
                .and_then(|i| self.plans.get(i))
                .cloned()
            else {
                continue;
            };
            // The latest occurrence that is due: a loop woken late runs it once, and the
            // transaction records the ones in between as missed.
            let occurrence = plan
                .spec
                .between(planned - 1, now)
                .map_or(planned, |(latest, _)| latest);
            let services = Arc::clone(&self.services);
            firing.spawn(async move {
                let timing = (plan.timing.clone(), plan.spec.clone());
                let fired = services
                    .fire_schedule(plan.project, plan.id, occurrence, timing)
                    .await;
                (plan, occurrence, fired)
            });
        }
        while let Some(joined) = firing.join_next().await {
            let Ok((plan, occurrence, fired)) = joined else {
                continue;
            };
            match fired {
                Ok(fired) => {
                    self.enqueue(fired);
                    if let Some(next) = plan.spec.next_after(occurrence) {
                        self.plan(next, plan);
                    }
                }
                Err(e) => {
                    // Never a silent stop: the same occurrence is tried again shortly.
                    tracing::error!(error = %e, schedule = plan.id, "schedule firing failed; retrying");
                    let seq = self.plans.len() as u64;
                    self.plans.push((occurrence, plan));
                    self.queue
                        .push(Reverse((self.clock.now() + RETRY_AFTER, seq)));
                }
            }
        }
        if self.plans.len() > 4 * self.queue.len() + 1024 {
            self.reload();
        }
    }

    fn enqueue(&self, fired: Fired) {
        if let Fired::Task(task, line) = fired {
            self.runner.enqueue(&task, line);
        }
    }
}
