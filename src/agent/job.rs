//! Running one job on the runner with the server's own executor ([`launch`]): a private
//! `0700` task directory for its keys and secret handoffs (removed on every path, swept at
//! start-up), the repository checked out (or a local path used in place), the script or
//! ansible's playbook checked to stay inside it, the program started as an argv in its own
//! process group inside the task sandbox with only the job's environment, and a stop
//! (SIGTERM, SIGKILL after the grace) and the time limit honoured at every step.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::protocol::{Commit, HostKeyReport, Job, LogRecord};
use super::spool::Spool;
use crate::model::TaskStatus;
use crate::runner::Stop;
use crate::runner::launch::{self, App, DRAIN_OUTPUT, Log, Outcome, Pins};
use crate::runner::process::{self, Chunk};
use crate::runner::secrets;
use crate::sandbox::Jail;

/// A job's shared state: its output, status and commit, read by the reporter.
#[derive(Debug)]
pub struct JobState {
    /// Unsent output.
    pub spool: Spool,
    /// `running`, or how it ended.
    pub status: &'static str,
    /// The commit checked out, until reported.
    pub commit: Option<Commit>,
    /// Host keys met for the first time, until reported.
    pub host_keys: Vec<HostKeyReport>,
    /// Its terraform plan waits for a user's decision.
    pub waiting: bool,
}

/// A running job.
#[derive(Debug)]
pub struct JobHandle {
    /// Asks it to stop.
    pub(crate) stop: watch::Sender<Option<Stop>>,
    /// A user's decision on its plan: confirmed (`true`) or rejected.
    decision: watch::Sender<Option<bool>>,
    /// Its state.
    pub state: Mutex<JobState>,
}

impl JobHandle {
    /// A new job's handle, spilling output to `spill`.
    #[must_use]
    pub fn new(spill: PathBuf) -> Self {
        Self {
            stop: watch::Sender::new(None),
            decision: watch::Sender::new(None),
            state: Mutex::new(JobState {
                spool: Spool::new(spill, super::spool::MEMORY_BOUND),
                status: "running",
                commit: None,
                host_keys: Vec::new(),
                waiting: false,
            }),
        }
    }

    /// Locks its state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the host keys ssh met for the first time so far, to report them.
    fn met(&self, pins: &Pins) {
        let mut state = self.lock();
        for (host, key_type, key) in pins.met() {
            let k = HostKeyReport {
                host,
                key_type,
                key,
            };
            if !state.host_keys.contains(&k) {
                state.host_keys.push(k);
            }
        }
    }

    /// Passes on a user's decision on the plan it waits with (the first one counts).
    pub fn decide(&self, confirmed: bool) {
        self.decision.send_if_modified(|d| {
            let first = d.is_none();
            if first {
                *d = Some(confirmed);
            }
            first
        });
    }

    /// Asks it to stop (SIGTERM, then SIGKILL after the grace).
    pub fn ask_stop(&self) {
        self.stop.send_replace(Some(Stop::Term));
    }
}

/// A job's log and sandbox: lines go through one channel into its spool, in order; commands
/// run in the runner's jail, read-write in their workspace and the task directory only.
struct JobLog {
    tx: mpsc::Sender<Chunk>,
    jail: Arc<Jail>,
    task_dir: PathBuf,
    /// The folder of a `file://` repository, which git reads.
    source: Option<PathBuf>,
}

impl Log for JobLog {
    fn sender(&self) -> mpsc::Sender<Chunk> {
        self.tx.clone()
    }

    async fn note(&self, text: String) {
        let line = process::Line {
            time_us: crate::clock::now_us(),
            text,
        };
        let _ = self.tx.send(vec![line]).await;
    }

    fn command(&self, program: &str, workspace: &Path) -> Command {
        let read: Vec<&Path> = self.source.as_deref().into_iter().collect();
        self.jail
            .command(program, &[workspace, self.task_dir.as_path()], &read)
    }
}

/// Runs `job` under `work` in `jail` to its end, recording everything in `handle`.
pub async fn run(job: Job, work: PathBuf, handle: Arc<JobHandle>, jail: Arc<Jail>) {
    let id = job.task_id;
    let task_dir = work.join("tasks").join(id.to_string());
    // Keys, inventories and unread handoffs go on every way out, a panic included.
    let guard = secrets::TaskDir::guard(task_dir.clone());
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let pump = tokio::spawn(pump(rx, Arc::clone(&handle)));
    let log = JobLog {
        tx,
        jail,
        task_dir: task_dir.clone(),
        source: crate::sandbox::local_path(&job.repository.url).map(PathBuf::from),
    };
    log.note(format!("Preparing: {id}")).await;
    let mut stop = handle.stop.subscribe();
    let outcome = steps(&job, &work, &log, &handle, &mut stop).await;
    let status = match outcome.status() {
        TaskStatus::Success => "success",
        TaskStatus::Stopped => "stopped",
        _ => "error",
    };
    let last = outcome.line();
    if let Some(last) = last {
        log.note(last).await;
    }
    drop(log);
    // Output a grandchild still holds open must not keep the job from ending.
    let _ = tokio::time::timeout(DRAIN_OUTPUT, pump).await;
    drop(guard);
    handle.lock().status = status;
}

async fn steps(
    job: &Job,
    work: &Path,
    log: &JobLog,
    handle: &Arc<JobHandle>,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Outcome {
    let max_secs = job.max_duration_secs;
    let deadline = tokio::time::sleep_until(launch::deadline_after(max_secs));
    tokio::pin!(deadline);
    let prepared = tokio::select! {
        r = prepare(job, work, log, handle) => r,
        why = stop.wait_for(Option::is_some) => return launch::stopped(why.ok().and_then(|w| *w)),
        () = &mut deadline => return Outcome::TimedOut(max_secs),
    };
    let (app, args, pins) = match prepared {
        Ok(p) => p,
        Err(why) => return Outcome::Failed(why),
    };
    let grace = Duration::from_secs(job.stop_grace_secs);
    if let Some(tf) = &job.terraform {
        let flow = launch::Flow::new(tf, &log.task_dir.join(launch::PLAN_FILE));
        let run = Terraform {
            app: &app,
            log,
            handle,
            grace,
            max_secs,
        };
        return run.steps(flow, stop, deadline).await;
    }
    let launch::Started {
        mut child,
        pgid,
        output_done,
    } = match launch::start(log, &app, &args) {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    // Read by the next start of the runner if this one is killed (see `sweep_leftovers`).
    let _ = std::fs::write(log.task_dir.join("pgid"), pgid.to_string());
    let outcome = launch::supervise(&mut child, pgid, stop, &mut deadline, grace, max_secs).await;
    // Every line the app wrote comes before the line saying how it ended.
    let _ = tokio::time::timeout(DRAIN_OUTPUT, output_done).await;
    let outcome = match outcome {
        Ok(status) => launch::exit_outcome(status),
        Err(outcome) => outcome,
    };
    if job.ansible.is_none() {
        return outcome;
    }
    // ansible's own ssh connections use the pins too.
    let changed = launch::ssh_lines(&pins, log).await;
    handle.met(&pins);
    launch::pins_checked(outcome, changed)
}

/// A terraform/OpenTofu job's run through its commands, as the server's (`runner::terraform`):
/// init, workspace, plan, then as the params and the plan say, apply; a plan that waits for a
/// decision is reported `waiting_confirmation` until the server passes a confirm or reject on.
struct Terraform<'a> {
    app: &'a App,
    log: &'a JobLog,
    handle: &'a Arc<JobHandle>,
    grace: Duration,
    max_secs: u64,
}

impl Terraform<'_> {
    /// Runs `args`; `Ok(exit code)` when it ended by itself, the outcome otherwise.
    async fn command(
        &self,
        args: &[String],
        stop: &mut watch::Receiver<Option<Stop>>,
        deadline: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<i32, Outcome> {
        let app = self.app;
        let line = launch::running_line(&app.program, &app.prefix, args);
        self.log.note(line).await;
        let launch::Started {
            mut child,
            pgid,
            output_done,
        } = launch::start(self.log, app, args)?;
        let _ = std::fs::write(self.log.task_dir.join("pgid"), pgid.to_string());
        let status =
            launch::supervise(&mut child, pgid, stop, deadline, self.grace, self.max_secs).await;
        let _ = tokio::time::timeout(DRAIN_OUTPUT, output_done).await;
        match status? {
            Ok(s) => Ok(s.code().unwrap_or(-1)),
            Err(e) => Err(Outcome::Failed(format!("Running app failed: {e}"))),
        }
    }

    /// Runs `args`, which must succeed.
    async fn must(
        &self,
        args: &[String],
        stop: &mut watch::Receiver<Option<Stop>>,
        deadline: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Outcome> {
        launch::succeeded(self.command(args, stop, deadline).await?)
    }

    async fn steps(
        self,
        flow: launch::Flow,
        stop: &mut watch::Receiver<Option<Stop>>,
        mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Outcome {
        let outcome = async {
            self.must(&flow.init, stop, &mut deadline).await?;
            if let Some(ws) = &flow.workspace {
                self.must(ws, stop, &mut deadline).await?;
            }
            let code = self.command(&flow.plan, stop, &mut deadline).await?;
            if !launch::plan_changes(code)? {
                self.log.note(launch::NO_CHANGES_LINE.into()).await;
                return Ok(Outcome::Success);
            }
            if flow.params.plan {
                self.log.note(launch::PLAN_ONLY_LINE.into()).await;
                return Ok(Outcome::Success);
            }
            if !flow.params.auto_approve {
                self.confirmation(stop).await?;
                deadline
                    .as_mut()
                    .reset(launch::deadline_after(self.max_secs));
            }
            self.must(&flow.apply, stop, &mut deadline).await?;
            Ok(Outcome::Success)
        }
        .await;
        outcome.unwrap_or_else(|o| o)
    }

    /// Reports the job waiting until the server passes on a decision, or a stop comes.
    async fn confirmation(&self, stop: &mut watch::Receiver<Option<Stop>>) -> Result<(), Outcome> {
        self.handle.lock().waiting = true;
        self.log.note(launch::WAITING_LINE.into()).await;
        let mut decided = self.handle.decision.subscribe();
        let confirmed = tokio::select! {
            d = decided.wait_for(Option::is_some) => d.is_ok_and(|d| *d == Some(true)),
            why = stop.wait_for(Option::is_some) => {
                return Err(launch::stopped(why.ok().and_then(|w| *w)));
            }
        };
        self.handle.lock().waiting = false;
        if !confirmed {
            return Err(Outcome::Rejected);
        }
        self.log.note(launch::CONFIRMED_LINE.into()).await;
        Ok(())
    }
}

/// Moves the program's output into the job's spool.
async fn pump(mut rx: mpsc::Receiver<Chunk>, handle: Arc<JobHandle>) {
    while let Some(chunk) = rx.recv().await {
        let mut state = handle.lock();
        for l in chunk {
            state.spool.push(LogRecord {
                time: l.time_us,
                message: l.text,
            });
        }
    }
}

/// The checkout to run in (its commit recorded) and what to start there: the job's app, or
/// ansible's built from the job's inputs, with its secrets in the task directory.
async fn prepare(
    job: &Job,
    work: &Path,
    log: &JobLog,
    handle: &Arc<JobHandle>,
) -> Result<(App, Vec<String>, Pins), String> {
    let task_dir = log.task_dir.as_path();
    launch::private_dir(&task_dir.join("tmp"))?;
    let pins = Pins::from_text(job.project_id, &job.known_hosts, task_dir)?;
    let repo = &job.repository;
    let cwd = if repo.url.starts_with('/') {
        let path = PathBuf::from(&repo.url);
        if !path.is_dir() {
            return Err(format!("repository path {} does not exist", repo.url));
        }
        path
    } else {
        let dir = work
            .join("repos")
            .join(format!("repository_{}_{}", job.project_id, job.template_id));
        let secret = launch::credentials_secret(repo.credentials.as_ref());
        let (env, submodule_env) =
            launch::git_envs(job.task_id, secret, task_dir, &dir, &repo.url)?;
        let checked_out =
            launch::checkout(&repo.url, &repo.branch, &dir, &env, &submodule_env, log).await;
        let changed = launch::ssh_lines(&pins, log).await;
        handle.met(&pins);
        if let Some(line) = changed {
            return Err(line);
        }
        checked_out?;
        if let Some(hash) = &repo.commit {
            launch::detach(hash, &dir, &env, log).await?;
        }
        dir
    };
    let env = launch::base_env(job.task_id, task_dir, &cwd);
    if let Some((hash, message)) = launch::read_commit(log, &cwd, env.clone()).await {
        handle.lock().commit = Some(Commit { hash, message });
    }
    let mut env = env;
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (args, env, cwd) = if let Some(ansible) = &job.ansible {
        let (args, env) = launch::ansible(ansible, &cwd, task_dir, env)?;
        (args, env, cwd)
    } else if job.terraform.is_some() {
        let dir = launch::terraform_dir(&cwd, &job.script)?;
        (Vec::new(), env, dir)
    } else {
        launch::inside(&cwd, &job.script, "script")?;
        (job.args.clone(), env, cwd)
    };
    let app = App {
        cwd,
        program: job.program.clone(),
        prefix: job.prefix.clone(),
        env,
    };
    Ok((app, args, pins))
}

/// Kills what jobs of a killed runner left running (their process groups, when a member still
/// carries the task's `FORGE_TASK_ID`) and removes their task directories; runs at start.
pub fn sweep_leftovers(work: &Path) {
    let Ok(entries) = std::fs::read_dir(work.join("tasks")) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let pgid = std::fs::read_to_string(entry.path().join("pgid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pgid) = pgid
            && process::kill_leftover_group(pgid, id)
        {
            tracing::warn!(
                task = id,
                pgid,
                "killed leftover processes of an interrupted job"
            );
        }
        secrets::remove(&entry.path());
    }
}
