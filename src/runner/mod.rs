//! The task runner: a FIFO queue with global, per-project and per-template limits, dispatching
//! the moment a slot frees up; one executor per running task; live events for followers and
//! WebSocket clients; a shutdown that lets running tasks finish (bounded) and records how the
//! rest ended; and recovery of unfinished tasks after a restart.
//!
//! State in memory is only the queue order and the running set; every status change is written
//! to the store first, so a crash loses nothing that was acknowledged.

mod exec;
mod fleet;
mod hostkeys;
pub(crate) mod launch;
mod output;
pub mod process;
mod queue;
pub mod remote;
mod remote_exec;
mod sandbox;
pub(crate) mod secrets;
pub mod terraform;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use crate::config::Config;
use crate::model::{AccessKey, KeySecret, OutputLine, ProjectId, Task, TaskId, TaskStatus};
use crate::store::Store;
use queue::{Queue, Queued};

/// What the runner needs from the services, and nothing more: the clock, and opening the
/// sealed secrets a task uses. [`crate::app`] hands it the services behind this.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Now, Unix seconds (the services' clock, injectable in tests).
    fn now(&self) -> i64;
    /// A key's decrypted secret.
    ///
    /// # Errors
    /// A message when the stored secret does not decrypt.
    fn open_key(&self, key: &AccessKey) -> Result<KeySecret, String>;
    /// A sealed blob (a task's secret extra variables), decrypted.
    ///
    /// # Errors
    /// A message when it does not decrypt.
    fn open_sealed(&self, sealed: &[u8]) -> Result<Vec<u8>, String>;
    /// What to start for app `app`: its executable when an admin set one (`None` = the
    /// default), and the arguments that go before Forge's own.
    fn app_command(&self, app: &str) -> (Option<String>, Vec<String>);
}

/// Something that happened to a task, for live followers and WebSocket clients.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The task's status (or times) changed.
    Update {
        /// Task.
        task_id: TaskId,
        /// Its project.
        project_id: ProjectId,
        /// Its template.
        template_id: u64,
        /// New status.
        status: TaskStatus,
        /// Start time, Unix seconds.
        start: Option<i64>,
        /// End time, Unix seconds.
        end: Option<i64>,
    },
    /// Lines were stored (they are durable when this is sent).
    Log {
        /// Task.
        task_id: TaskId,
        /// Its project.
        project_id: ProjectId,
        /// Line number of the first line.
        first: u64,
        /// The lines.
        lines: Arc<[OutputLine]>,
    },
}

/// Limits and places the runner works with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    max_parallel: usize,
    stop_grace: Duration,
    max_duration_secs: u64,
    output_max_lines: u64,
    output_max_bytes: u64,
    work_dir: PathBuf,
    /// How task processes are confined.
    jail: Arc<crate::sandbox::Jail>,
    /// Which local-path repositories may run.
    local_repos: crate::sandbox::LocalRepos,
}

/// Why a running task is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A user stop: SIGTERM, then SIGKILL after the stop grace; the task ends `stopped`.
    Term,
    /// A forced user stop: SIGKILL at once; the task ends `stopped`.
    Kill,
    /// The server is shutting down and the shutdown grace is over: SIGTERM, then SIGKILL after
    /// the stop grace; the task ends `error` with `stopped: server shut down`.
    Shutdown,
}

/// How long executors get, past the stop grace, to flush output and record how their task
/// ended once they were told to stop (on shutdown or when their project is deleted).
const FINISH_BOUND: Duration = Duration::from_secs(20);

/// Where a task stands with its plan approval (terraform/tofu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing awaited.
    None,
    /// The task waits for a confirmation (no process runs).
    Awaiting,
    /// A user confirmed: apply.
    Confirmed,
    /// A user rejected: end without applying.
    Rejected,
}

#[derive(Debug)]
struct Running {
    project: ProjectId,
    template: u64,
    /// `Some(why)` once a stop was asked for; the first reason wins.
    stop: watch::Sender<Option<Stop>>,
    /// The plan approval, shared with the executor.
    decision: Arc<watch::Sender<Decision>>,
    /// The remote runner it runs on (`None`: here).
    remote: Option<u64>,
}

impl Running {
    /// Asks the executor to stop, unless it already was asked.
    fn ask(&self, why: Stop) {
        self.stop.send_if_modified(|s| {
            if s.is_some() {
                return false;
            }
            *s = Some(why);
            true
        });
    }
}

#[derive(Debug, Default)]
struct State {
    queue: Queue,
    running: HashMap<TaskId, Running>,
    /// Projects being deleted (with how many deletes are under way): their waiting tasks do
    /// not start.
    closing: HashMap<ProjectId, usize>,
    /// The server is shutting down: no task starts waiting for a confirmation any more.
    shutting_down: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    host: Arc<dyn Host>,
    store: Store,
    settings: Settings,
    state: Mutex<State>,
    wake: Notify,
    /// Bumped whenever an executor has ended (its task left `running`).
    ended: watch::Sender<()>,
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// Counters for metrics.
    stats: Stats,
    /// The remote runners.
    fleet: fleet::Fleet,
}

/// What the runner has done since start, for metrics.
#[derive(Debug)]
pub struct Stats {
    /// Tasks that ended, by status: `success`, `error`, `stopped` (see [`Stats::ENDINGS`]).
    ended: [std::sync::atomic::AtomicU64; 3],
    /// Durations (start to end) of the tasks that ran, in seconds, per project.
    durations: Mutex<std::collections::BTreeMap<ProjectId, Arc<crate::metrics::Histogram>>>,
    /// Task output lines stored.
    pub output_lines: std::sync::atomic::AtomicU64,
}

/// Task duration buckets, in seconds: 1 s to a day.
const DURATION_SECS: &[u64] = &[
    1, 5, 10, 30, 60, 120, 300, 600, 1_800, 3_600, 7_200, 21_600, 86_400,
];

impl Stats {
    /// The final statuses counted, in the order of `ended`.
    pub const ENDINGS: [TaskStatus; 3] =
        [TaskStatus::Success, TaskStatus::Error, TaskStatus::Stopped];

    fn new() -> Self {
        Self {
            ended: Default::default(),
            durations: Mutex::default(),
            output_lines: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts a task that just ended (with its duration, when it ran).
    fn ended(&self, task: &Task) {
        if let Some(i) = Self::ENDINGS.iter().position(|s| *s == task.status) {
            self.ended[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let (Some(start), Some(end)) = (task.start, task.end) {
            let histogram = Arc::clone(
                self.durations
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(task.project_id)
                    .or_insert_with(|| {
                        Arc::new(crate::metrics::Histogram::new(DURATION_SECS, 1.0))
                    }),
            );
            histogram.observe(u64::try_from(end - start).unwrap_or(0));
        }
    }

    /// Tasks ended with each status of [`Stats::ENDINGS`].
    #[must_use]
    pub fn ended_counts(&self) -> [(TaskStatus, u64); 3] {
        let n = |i: usize| self.ended[i].load(std::sync::atomic::Ordering::Relaxed);
        [
            (Self::ENDINGS[0], n(0)),
            (Self::ENDINGS[1], n(1)),
            (Self::ENDINGS[2], n(2)),
        ]
    }

    /// The duration histogram of each project with a task that ran.
    #[must_use]
    pub fn durations(&self) -> Vec<(ProjectId, Arc<crate::metrics::Histogram>)> {
        self.durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(p, h)| (*p, Arc::clone(h)))
            .collect()
    }
}

/// A handle to the runner; cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    inner: Arc<Inner>,
    dispatcher: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// Where an unfinished task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Waiting for a slot.
    Queue,
    /// Being prepared or run.
    Running,
}

impl Runner {
    /// Recovers unfinished tasks (running ones become `error`, their leftover processes are
    /// killed; waiting ones are queued again), removes the workspaces a crash left behind, and
    /// starts dispatching.
    ///
    /// # Errors
    /// Storage failures during recovery.
    pub fn start(
        host: Arc<dyn Host>,
        store: Store,
        config: &Config,
        jail: Arc<crate::sandbox::Jail>,
    ) -> crate::service::Result<Self> {
        // Events go out as `Arc`s: the channel fills all of its 4096 slots when it is made,
        // and a slot holding a pointer instead of the event costs an idle server ~300 KB less.
        let (live, _) = broadcast::channel(4096);
        let store_for_fleet = store.clone();
        let inner = Arc::new(Inner {
            store,
            host,
            settings: Settings {
                max_parallel: config.max_parallel_tasks,
                stop_grace: Duration::from_secs(config.stop_grace_secs),
                max_duration_secs: config.max_task_duration_secs,
                output_max_lines: config.output_max_lines.max(1),
                output_max_bytes: config.output_max_bytes.max(1),
                work_dir: config.work_dir(),
                jail,
                local_repos: crate::sandbox::LocalRepos::new(config),
            },
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            ended: watch::Sender::new(()),
            live,
            stats: Stats::new(),
            fleet: fleet::Fleet::new(
                Duration::from_secs(config.runner_timeout),
                config.local_runner,
                remote_exec::active_runners(&store_for_fleet)?,
            ),
        });
        inner.recover()?;
        // After recovery killed the leftover processes, which could still write there.
        sweep_task_dirs(&inner.settings.work_dir);
        let dispatcher = tokio::spawn(Arc::clone(&inner).dispatch_loop());
        tokio::spawn(remote_exec::sweep_runners(Arc::downgrade(&inner)));
        Ok(Self {
            inner,
            dispatcher: Arc::new(Mutex::new(Some(dispatcher))),
        })
    }

    /// Queues a task stored as `waiting`; it starts as soon as the limits allow. Its first
    /// stored line (`queued`: `Task N added to queue`) goes out to live followers with the
    /// update.
    pub fn enqueue(&self, task: &Task, queued: OutputLine) {
        self.inner.enqueue(task, queued);
    }

    /// Stops a task: a queued one never runs; a running one gets SIGTERM (or SIGKILL with
    /// `force`) on its process group and ends `stopped`. A finished task is left as it is.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn stop(&self, task_id: TaskId, force: bool) -> crate::service::Result<()> {
        enum Action {
            Dequeued,
            Signalled,
            Orphan,
        }
        let action = {
            let mut state = self.inner.lock();
            if state.queue.remove(task_id) {
                Action::Dequeued
            } else if let Some(running) = state.running.get(&task_id) {
                running.ask(if force { Stop::Kill } else { Stop::Term });
                Action::Signalled
            } else {
                Action::Orphan
            }
        };
        let inner = Arc::clone(&self.inner);
        match action {
            Action::Dequeued => {
                inner
                    .finish_without_running(
                        task_id,
                        TaskStatus::Stopped,
                        "Task stopped before it started",
                    )
                    .await
            }
            Action::Signalled => {
                // The executor ends it; record that a stop is under way (unless it already ended).
                inner
                    .set_status_if_active(task_id, TaskStatus::Stopping)
                    .await
            }
            Action::Orphan => {
                let active = inner
                    .store
                    .task(task_id)?
                    .is_some_and(|t| !t.status.is_finished());
                if active {
                    inner
                        .finish_without_running(task_id, TaskStatus::Stopped, "Task stopped")
                        .await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Stops a task (not forced, as [`Runner::stop`]) and waits until its executor has
    /// recorded its end, so nothing of it is written afterwards (an admin deletes it next).
    ///
    /// # Errors
    /// Storage failures; [`crate::service::Error::Busy`] when it has not ended within the stop
    /// grace and a bound (its executor is stuck on storage).
    pub async fn stop_and_wait(&self, task_id: TaskId) -> crate::service::Result<()> {
        self.stop(task_id, false).await?;
        let bound = self.inner.settings.stop_grace + FINISH_BOUND;
        let mut ended = self.inner.ended.subscribe();
        let wait = async {
            while self.inner.lock().running.contains_key(&task_id) {
                if ended.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(bound, wait).await.is_err() {
            tracing::error!(task = task_id, "task did not end within {bound:?}");
            return Err(crate::service::Error::Busy { retry_after: 5 });
        }
        Ok(())
    }

    /// Confirms the plan task `task_id` waits with: it goes `confirmed`, and its executor
    /// applies the plan.
    ///
    /// # Errors
    /// [`crate::service::Error::Invalid`] when the task is not waiting for a confirmation;
    /// storage failures.
    pub async fn confirm(&self, task_id: TaskId) -> crate::service::Result<()> {
        self.decide(task_id, TaskStatus::Confirmed, Decision::Confirmed)
            .await
    }

    /// Rejects the plan task `task_id` waits with: it ends `stopped` without applying, and
    /// its workspace (with the plan file) is removed.
    ///
    /// # Errors
    /// As [`Runner::confirm`].
    pub async fn reject(&self, task_id: TaskId) -> crate::service::Result<()> {
        self.decide(task_id, TaskStatus::Stopping, Decision::Rejected)
            .await
    }

    /// Moves a task from `waiting_confirmation` to `status` in the store (the one check both
    /// a confirm and a reject race through), then tells its executor.
    async fn decide(
        &self,
        task_id: TaskId,
        status: TaskStatus,
        decision: Decision,
    ) -> crate::service::Result<()> {
        let found = {
            let state = self.inner.lock();
            state
                .running
                .get(&task_id)
                .filter(|r| *r.decision.borrow() == Decision::Awaiting)
                .map(|r| (Arc::clone(&r.decision), r.remote))
        };
        let not_waiting = || {
            crate::service::Error::Invalid(format!(
                "task {task_id} is not waiting for a confirmation"
            ))
        };
        let (sender, remote) = found.ok_or_else(not_waiting)?;
        let now = self.inner.host.now();
        let task = self
            .inner
            .store
            .transact_async(now, move |tx| {
                let Some(mut t) = tx.task(task_id)? else {
                    return Ok(None);
                };
                if t.status != TaskStatus::WaitingConfirmation {
                    return Ok(None);
                }
                t.status = status;
                tx.put_task(&t)?;
                Ok::<_, crate::store::Error>(Some(t))
            })
            .await?
            .ok_or_else(not_waiting)?;
        self.inner.publish_update(&task);
        sender.send_replace(decision);
        if remote.is_some() {
            // Its runner applies or ends it after its next poll.
            self.inner
                .fleet
                .decide(task_id, decision == Decision::Confirmed);
        }
        Ok(())
    }

    /// What the runner has done since start.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Tasks running (or being prepared) and tasks waiting in the queue, now.
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.running.len(), state.queue.iter().count())
    }

    /// A receiver of every live event.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.inner.live.subscribe()
    }

    /// The unfinished tasks this runner knows, with where they are.
    #[must_use]
    pub fn active(&self) -> Vec<(TaskId, ProjectId, Location)> {
        let state = self.inner.lock();
        let mut out: Vec<_> = state
            .queue
            .iter()
            .map(|q| (q.id, q.project, Location::Queue))
            .collect();
        out.extend(
            state
                .running
                .iter()
                .map(|(id, r)| (*id, r.project, Location::Running)),
        );
        out.sort_by_key(|(id, _, _)| *id);
        out
    }

    /// Ends the runner on server shutdown: no waiting task starts any more (they stay
    /// `waiting` in the store and run after the next start); running tasks get `grace` to
    /// finish; those still running are then stopped (SIGTERM to the whole process group,
    /// SIGKILL after the stop grace) and end `error` with `stopped: server shut down`. Returns
    /// once every executor has flushed its output and recorded its end (bounded).
    pub async fn shutdown(&self, grace: Duration) {
        let handle = self
            .dispatcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            h.abort();
        }
        let running = {
            let mut state = self.inner.lock();
            // A task waiting for a confirmation could wait for ever: it ends now (and one that
            // gets there later ends then; see `terraform::Run::confirmation`).
            state.shutting_down = true;
            for r in state.running.values() {
                // Remote runners cannot report once the server stops serving: end them now.
                if *r.decision.borrow() == Decision::Awaiting || r.remote.is_some() {
                    r.ask(Stop::Shutdown);
                }
            }
            state.running.len()
        };
        if running == 0 {
            return;
        }
        tracing::info!(
            tasks = running,
            grace_secs = grace.as_secs(),
            "waiting for running tasks to finish"
        );
        let all = |_: &Running| true;
        if tokio::time::timeout(grace, self.inner.wait_ended(all))
            .await
            .is_ok()
        {
            return;
        }
        let stopped = {
            let state = self.inner.lock();
            for r in state.running.values() {
                r.ask(Stop::Shutdown);
            }
            state.running.len()
        };
        tracing::warn!(
            tasks = stopped,
            "stopping tasks still running after the grace"
        );
        let bound = self.inner.settings.stop_grace + FINISH_BOUND;
        if tokio::time::timeout(bound, self.inner.wait_ended(all))
            .await
            .is_err()
        {
            tracing::error!("tasks did not record their end within {bound:?}; exiting anyway");
        }
    }

    /// Before project `project` is deleted: its waiting tasks stop being dispatched, and its
    /// running tasks are stopped (SIGTERM to their process groups, SIGKILL after the stop
    /// grace) and waited for, so nothing of them is written after the delete. Dropping the
    /// returned guard forgets the project's queued tasks if the project is gone, and lets them
    /// start otherwise.
    ///
    /// # Errors
    /// [`crate::service::Error::Busy`] when a task has not ended within the stop grace and a
    /// bound (its executor is stuck on storage): the project must not be deleted yet.
    pub async fn close_project(
        &self,
        project: ProjectId,
    ) -> crate::service::Result<ClosingProject> {
        {
            let mut state = self.inner.lock();
            *state.closing.entry(project).or_default() += 1;
            for r in state.running.values().filter(|r| r.project == project) {
                r.ask(Stop::Term);
            }
        }
        let guard = ClosingProject {
            inner: Arc::clone(&self.inner),
            project,
        };
        let bound = self.inner.settings.stop_grace + FINISH_BOUND;
        let of_project = |r: &Running| r.project == project;
        if tokio::time::timeout(bound, self.inner.wait_ended(of_project))
            .await
            .is_err()
        {
            tracing::error!(project, "tasks of the project did not end within {bound:?}");
            return Err(crate::service::Error::Busy { retry_after: 5 });
        }
        Ok(guard)
    }
}

/// A project whose tasks were stopped for its deletion (see [`Runner::close_project`]).
#[derive(Debug)]
pub struct ClosingProject {
    inner: Arc<Inner>,
    project: ProjectId,
}

impl Drop for ClosingProject {
    fn drop(&mut self) {
        let gone = self
            .inner
            .store
            .view()
            .and_then(|v| v.project(self.project))
            .is_ok_and(|p| p.is_none());
        let mut state = self.inner.lock();
        if let Some(n) = state.closing.get_mut(&self.project) {
            *n -= 1;
            if *n == 0 {
                state.closing.remove(&self.project);
            }
        }
        if gone {
            state.queue.remove_project(self.project);
        }
        drop(state);
        self.inner.wake.notify_one();
    }
}

/// Removes the per-task directories (keys, passwords, extra vars) left under `work_dir` by
/// tasks that a crash interrupted; no task runs yet when this is called.
fn sweep_task_dirs(work_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(work_dir.join("tasks")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_none_or(|n| n.parse::<TaskId>().is_err()) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(
                dir = %entry.path().display(),
                "removed the workspace of an interrupted task"
            ),
            Err(e) => tracing::error!(
                dir = %entry.path().display(),
                error = %e,
                "cannot remove the workspace of an interrupted task"
            ),
        }
    }
}

impl Inner {
    /// Waits until the store takes writes again after refusing one for its disk (at least a
    /// short pause, so a retry loop never spins).
    async fn storage_back(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut health = self.store.watch_health();
        let _ = health.wait_for(|healthy| *healthy).await;
    }

    /// See [`Runner::enqueue`] (the runner queues the deploy tasks a build starts itself).
    fn enqueue(&self, task: &Task, queued: OutputLine) {
        self.publish_lines(task, 0, Arc::from(vec![queued]));
        {
            let mut state = self.lock();
            // A storage recovery scan may have queued it already (see `Inner::reconcile`):
            // `push` keeps one entry.
            state.queue.push(Queued {
                id: task.id,
                project: task.project_id,
                template: task.template_id,
            });
        }
        self.publish_update(task);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells followers of a task's new status (every change of a task's status goes through
    /// here once, which is where ended tasks are counted).
    fn publish_update(&self, task: &Task) {
        if task.status.is_finished() {
            self.stats.ended(task);
        }
        let _ = self.live.send(Arc::new(LiveEvent::Update {
            task_id: task.id,
            project_id: task.project_id,
            template_id: task.template_id,
            status: task.status,
            start: task.start,
            end: task.end,
        }));
    }

    fn publish_lines(&self, task: &Task, first: u64, lines: Arc<[OutputLine]>) {
        let _ = self.live.send(Arc::new(LiveEvent::Log {
            task_id: task.id,
            project_id: task.project_id,
            first,
            lines,
        }));
    }

    /// On start: unfinished tasks that were past the queue end as `error` (all in one
    /// transaction); waiting ones queue again in id (arrival) order.
    fn recover(&self) -> crate::service::Result<()> {
        let now = self.host.now();
        let interrupted = self.scan()?;
        if interrupted.is_empty() {
            return Ok(());
        }
        let line = OutputLine {
            time_us: crate::clock::now_us(),
            text: "interrupted: server restarted".into(),
        };
        self.store
            .transact(now, Self::interrupt(interrupted.clone(), now, line))?;
        for (id, _) in interrupted {
            tracing::info!(task = id, "marked interrupted task as error");
        }
        Ok(())
    }

    /// After the store was reopened (a full disk): the start-up scan again, for the tasks the
    /// runner no longer knows — a waiting one whose stop was refused queues again; one past
    /// the queue with no executor left ends `error`.
    async fn reconcile(&self) -> crate::service::Result<()> {
        let now = self.host.now();
        let interrupted = self.scan()?;
        if interrupted.is_empty() {
            return Ok(());
        }
        let line = OutputLine {
            time_us: crate::clock::now_us(),
            text: "interrupted: the server's storage failed".into(),
        };
        self.store
            .transact_async(now, Self::interrupt(interrupted.clone(), now, line))
            .await?;
        for (id, _) in interrupted {
            tracing::warn!(task = id, "marked task as error after a storage failure");
        }
        Ok(())
    }

    /// Unfinished tasks in the store the runner does not know (at start: all of them):
    /// waiting ones are queued (in id order); the others, with their output length, are
    /// returned to be ended. Leftover process groups of those are killed.
    fn scan(&self) -> crate::service::Result<Vec<(TaskId, u64)>> {
        let mut interrupted = Vec::new();
        // Under the lock: a task moves between the queue and the running set only with it
        // held, and leaves the running set only once its final status is stored.
        // Tasks are decoded one at a time and only their ids kept: a backlog of waiting tasks
        // costs the queue's few bytes each, not a task each.
        let mut state = self.lock();
        let mut past_queue = Vec::new();
        self.store.each_active_task(|task| {
            let known = state.running.contains_key(&task.id)
                || state.queue.contains(task.project_id, task.id);
            if known {
                return;
            }
            if task.status == TaskStatus::Waiting {
                state.queue.push(Queued {
                    id: task.id,
                    project: task.project_id,
                    template: task.template_id,
                });
                return;
            }
            past_queue.push((task.id, task.process_group));
        })?;
        for (id, process_group) in past_queue {
            if let Some(pgid) = process_group
                && process::kill_leftover_group(pgid, id)
            {
                tracing::warn!(
                    task = id,
                    pgid,
                    "killed leftover processes of an interrupted task"
                );
            }
            interrupted.push((id, self.store.output_len(id)?));
        }
        Ok(interrupted)
    }

    /// The write that ends `tasks` as `error` with `line`, unless one has finished meanwhile.
    fn interrupt(
        tasks: Vec<(TaskId, u64)>,
        now: i64,
        line: OutputLine,
    ) -> impl Fn(&crate::store::Tx<'_>) -> crate::store::Result<()> + Send + 'static {
        move |tx| {
            for &(id, first) in &tasks {
                let Some(mut t) = tx.task(id)? else {
                    continue;
                };
                if t.status.is_finished() {
                    continue;
                }
                t.status = TaskStatus::Error;
                t.end = Some(now);
                tx.put_task(&t)?;
                tx.append_output(id, first, std::slice::from_ref(&line))?;
            }
            Ok(())
        }
    }

    /// Returns once no running task matches `pred`.
    async fn wait_ended(&self, pred: impl Fn(&Running) -> bool) {
        let mut ended = self.ended.subscribe();
        loop {
            if !self.lock().running.values().any(&pred) {
                return;
            }
            if ended.changed().await.is_err() {
                return;
            }
        }
    }

    async fn dispatch_loop(self: Arc<Self>) {
        let mut health = self.store.watch_health();
        loop {
            self.dispatch();
            tokio::select! {
                () = self.wake.notified() => {}
                changed = health.changed() => {
                    let healthy = *health.borrow_and_update();
                    if changed.is_ok() && healthy && let Err(e) = self.reconcile().await {
                        tracing::error!(error = %e, "task recovery after a storage failure");
                    }
                }
            }
        }
    }

    /// Starts every queued task the limits allow, strictly FIFO within each project: once a
    /// project's oldest waiting task is blocked, its later tasks wait too.
    fn dispatch(self: &Arc<Self>) {
        let mut state = self.lock();
        let mut blocked: HashSet<ProjectId> = state.closing.keys().copied().collect();
        let mut limits: HashMap<ProjectId, u32> = HashMap::new();
        loop {
            let local = state
                .running
                .values()
                .filter(|r| r.remote.is_none())
                .count();
            let local_free = self.settings.max_parallel == 0 || local < self.settings.max_parallel;
            let Some(Queued {
                id,
                project,
                template,
            }) = state.queue.oldest_head(|p| !blocked.contains(&p))
            else {
                break;
            };
            let limit = *limits.entry(project).or_insert_with(|| {
                self.store
                    .view()
                    .ok()
                    .and_then(|v| v.project(project).ok().flatten())
                    .map_or(0, |p| p.max_parallel_tasks)
            });
            let in_project = state
                .running
                .values()
                .filter(|r| r.project == project)
                .count();
            let template_busy = state
                .running
                .values()
                .any(|r| r.project == project && r.template == template);
            if template_busy || (limit > 0 && in_project >= limit as usize) {
                blocked.insert(project);
                continue;
            }
            let tag = self.runner_tag(project, template);
            let place = self.fleet.place(tag.as_deref(), local_free);
            let remote = match place {
                fleet::Place::Local => None,
                fleet::Place::Remote(id) => Some(id),
                fleet::Place::Wait => {
                    blocked.insert(project);
                    continue;
                }
            };
            state.queue.pop(project);
            let (stop, stop_rx) = watch::channel(None);
            let decision = Arc::new(watch::Sender::new(Decision::None));
            state.running.insert(
                id,
                Running {
                    project,
                    template,
                    stop,
                    decision: Arc::clone(&decision),
                    remote,
                },
            );
            let inner = Arc::clone(self);
            let remote = remote.map(|runner| {
                let first = self.store.output_len(id).unwrap_or(0);
                let (out, ending) =
                    self.fleet
                        .assign(id, runner, first, output::Cap::new(self, first));
                (runner, out, ending)
            });
            tokio::spawn(async move {
                match remote {
                    Some((runner, out, ending)) => {
                        let run =
                            remote_exec::run(Arc::clone(&inner), id, runner, stop_rx, out, ending);
                        run.await;
                    }
                    None => exec::run(Arc::clone(&inner), id, stop_rx, decision).await,
                }
                inner.lock().running.remove(&id);
                inner.ended.send_replace(());
                inner.wake.notify_one();
            });
        }
    }

    /// Ends a task that never ran (stopped in the queue, or an orphan) with one output line.
    async fn finish_without_running(
        self: Arc<Self>,
        task_id: TaskId,
        status: TaskStatus,
        message: &'static str,
    ) -> crate::service::Result<()> {
        let now = self.host.now();
        let first = self.store.output_len(task_id)?;
        let line = OutputLine {
            time_us: crate::clock::now_us(),
            text: message.into(),
        };
        let task = self
            .store
            .transact_async(now, move |tx| {
                let Some(mut t) = tx.task(task_id)? else {
                    return Ok(None);
                };
                if t.status.is_finished() {
                    return Ok(None);
                }
                t.status = status;
                t.end = Some(now);
                tx.put_task(&t)?;
                tx.append_output(task_id, first, std::slice::from_ref(&line))?;
                Ok::<_, crate::store::Error>(Some((t, first, line.clone())))
            })
            .await?;
        if let Some((t, first, line)) = task {
            self.publish_lines(&t, first, Arc::from(vec![line]));
            self.publish_update(&t);
        }
        Ok(())
    }

    async fn set_status_if_active(
        self: Arc<Self>,
        task_id: TaskId,
        status: TaskStatus,
    ) -> crate::service::Result<()> {
        let now = self.host.now();
        let task = self
            .store
            .transact_async(now, move |tx| {
                let Some(mut t) = tx.task(task_id)? else {
                    return Ok(None);
                };
                if t.status.is_finished() || t.status == status {
                    return Ok(None);
                }
                t.status = status;
                tx.put_task(&t)?;
                Ok::<_, crate::store::Error>(Some(t))
            })
            .await?;
        if let Some(t) = task {
            self.publish_update(&t);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_task_workspaces_only() {
        let work = tempfile::tempdir().expect("temp dir");
        let tasks = work.path().join("tasks");
        std::fs::create_dir_all(tasks.join("17/tmp")).expect("task dir");
        std::fs::write(tasks.join("17/git_ssh_key"), "secret").expect("key file");
        std::fs::create_dir_all(tasks.join("not-a-task")).expect("other dir");
        std::fs::create_dir_all(work.path().join("repos/repository_1_1")).expect("clone");
        sweep_task_dirs(work.path());
        assert!(!tasks.join("17").exists());
        assert!(tasks.join("not-a-task").exists());
        assert!(work.path().join("repos/repository_1_1").exists());
        // No work directory yet: nothing to do.
        sweep_task_dirs(&work.path().join("missing"));
    }
}
