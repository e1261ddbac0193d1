//! Running one job on the runner: a private task directory, the repository checked out (or a
//! local path used in place), the script checked to stay inside it, the program started as an
//! argv in its own process group with only the job's environment, a stop (SIGTERM, SIGKILL
//! after the grace) and the time limit honoured at every step, and the task directory removed
//! on every path.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::protocol::{Commit, Job, LogRecord};
use super::spool::Spool;
use crate::runner::process::{self, Chunk, GroupGuard};

/// How long output may drain after the program ended.
const DRAIN: Duration = Duration::from_secs(5);

/// A job's shared state: its output, status and commit, read by the reporter.
#[derive(Debug)]
pub struct JobState {
    /// Unsent output.
    pub spool: Spool,
    /// `running`, or how it ended.
    pub status: &'static str,
    /// The commit checked out, until reported.
    pub commit: Option<Commit>,
}

/// A running job.
#[derive(Debug)]
pub struct JobHandle {
    /// Asks it to stop.
    pub stop: watch::Sender<bool>,
    /// Its state.
    pub state: Mutex<JobState>,
}

impl JobHandle {
    /// A new job's handle, spilling output to `spill`.
    #[must_use]
    pub fn new(spill: PathBuf) -> Self {
        Self {
            stop: watch::Sender::new(false),
            state: Mutex::new(JobState {
                spool: Spool::new(spill, super::spool::MEMORY_BOUND),
                status: "running",
                commit: None,
            }),
        }
    }

    /// Locks its state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn line(&self, text: impl Into<String>) {
        self.lock().spool.push(LogRecord {
            time: crate::clock::now_us(),
            message: text.into(),
        });
    }
}

enum Outcome {
    Success,
    Failed(String),
    Stopped,
    TimedOut(u64),
}

/// Runs `job` under `work` to its end, recording everything in `handle`.
pub async fn run(job: Job, work: PathBuf, handle: Arc<JobHandle>) {
    let id = job.task_id;
    let task_dir = work.join("tasks").join(id.to_string());
    handle.line(format!("Preparing: {id}"));
    let mut stop = handle.stop.subscribe();
    let deadline = crate::runner::seam::deadline(job.max_duration_secs);
    let outcome = tokio::select! {
        o = steps(&job, &work, &task_dir, &handle, &mut stop, deadline) => o,
        () = tokio::time::sleep_until(deadline) => Outcome::TimedOut(job.max_duration_secs),
    };
    let (status, last) = match outcome {
        Outcome::Success => ("success", None),
        Outcome::Failed(why) => ("error", Some(why)),
        Outcome::Stopped => ("stopped", Some("Task stopped".to_owned())),
        Outcome::TimedOut(secs) => (
            "error",
            Some(format!(
                "Task timed out: it ran longer than {secs} s and was killed"
            )),
        ),
    };
    if let Some(last) = last {
        handle.line(last);
    }
    if let Err(e) = std::fs::remove_dir_all(&task_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(task = id, error = %e, "cannot remove the task's workspace");
    }
    handle.lock().status = status;
}

async fn steps(
    job: &Job,
    work: &Path,
    task_dir: &Path,
    handle: &Arc<JobHandle>,
    stop: &mut watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) -> Outcome {
    if let Err(e) = private_dir(&task_dir.join("tmp")) {
        return Outcome::Failed(e);
    }
    let prepared = tokio::select! {
        r = prepare(job, work, task_dir, handle) => r,
        () = asked(stop) => return Outcome::Stopped,
    };
    let cwd = match prepared {
        Ok(cwd) => cwd,
        Err(why) => return Outcome::Failed(why),
    };
    let mut env = base_env(job, task_dir, &cwd);
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.prefix)
        .args(&job.args)
        .current_dir(&cwd)
        .env_clear()
        .envs(env);
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let pump = tokio::spawn(pump(rx, Arc::clone(handle)));
    let (mut child, output_done) = match process::spawn(cmd, tx) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(format!(
                "Running app failed: cannot start {}: {e}",
                job.program
            ));
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let _group = GroupGuard(pgid);
    // Read by the next start of the runner if this one is killed (see `sweep_leftovers`).
    let _ = std::fs::write(task_dir.join("pgid"), pgid.to_string());
    let grace = Duration::from_secs(job.stop_grace_secs);
    let mut stopped = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let status = loop {
        let kill_timer = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => break status,
            () = asked(stop), if !stopped => {
                stopped = true;
                process::signal_group(pgid, Signal::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + grace);
            }
            () = kill_timer => {
                process::signal_group(pgid, Signal::SIGKILL);
                kill_at = None;
            }
            () = tokio::time::sleep_until(deadline) => {
                process::signal_group(pgid, Signal::SIGKILL);
                let _ = tokio::time::timeout(DRAIN, output_done).await;
                let _ = tokio::time::timeout(DRAIN, pump).await;
                return Outcome::TimedOut(job.max_duration_secs);
            }
        }
    };
    process::signal_group(pgid, Signal::SIGKILL);
    let _ = tokio::time::timeout(DRAIN, output_done).await;
    let _ = tokio::time::timeout(DRAIN, pump).await;
    if stopped {
        return Outcome::Stopped;
    }
    match status {
        Ok(s) if s.success() => Outcome::Success,
        Ok(s) => Outcome::Failed(match s.code() {
            Some(code) => format!("Running app failed: exit status {code}"),
            None => "Running app failed: killed by a signal".into(),
        }),
        Err(e) => Outcome::Failed(format!("Running app failed: {e}")),
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

/// The checkout to run in, with its commit recorded; the script checked to be inside it.
async fn prepare(
    job: &Job,
    work: &Path,
    task_dir: &Path,
    handle: &Arc<JobHandle>,
) -> Result<PathBuf, String> {
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
        let mut env = base_env(job, task_dir, &dir);
        env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
        let submodule_env = crate::runner::seam::submodule_env(&env, task_dir);
        env.extend(crate::runner::seam::credentials_env(
            repo.credentials.as_ref(),
            task_dir,
            &repo.url,
        )?);
        checkout(&repo.url, &repo.branch, &dir, &env, &submodule_env, handle).await?;
        if let Some(hash) = &repo.commit {
            handle.line(format!("Checking out commit {hash}"));
            git(
                &["checkout", "--force", "--detach", hash.as_str(), "--"],
                &dir,
                &env,
                handle,
            )
            .await?;
        }
        dir
    };
    if cwd.join(".git").exists() {
        let safe = format!("safe.directory={}", cwd.display());
        let out = Command::new("git")
            .args(["-c", safe.as_str(), "log", "-1", "--format=%H%n%s"])
            .current_dir(&cwd)
            .env_clear()
            .envs(base_env(job, task_dir, &cwd))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        if let Ok(out) = out
            && out.status.success()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            if let Some(hash) = lines.next() {
                handle.lock().commit = Some(Commit {
                    hash: hash.trim().to_owned(),
                    message: lines.next().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    inside(&cwd, &job.script)?;
    Ok(cwd)
}

/// `path` (relative) inside `root`, following symlinks.
fn inside(root: &Path, path: &str) -> Result<(), String> {
    crate::service::validate::relative_path(path, "script")?;
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let full = root
        .join(path)
        .canonicalize()
        .map_err(|_| format!("script {path} not found in the repository"))?;
    if !full.starts_with(&root) {
        return Err(format!("script {path} points outside the repository"));
    }
    Ok(())
}

/// The runner's base environment for a job (as the server's: `PATH` and `LANG` of the
/// runner, its own `HOME` and `TMPDIR`).
fn base_env(job: &Job, home: &Path, cwd: &Path) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
    vec![
        ("PATH".into(), path),
        ("LANG".into(), lang),
        ("HOME".into(), home.display().to_string()),
        ("TMPDIR".into(), home.join("tmp").display().to_string()),
        ("PWD".into(), cwd.display().to_string()),
        ("FORGE_TASK_ID".into(), job.task_id.to_string()),
    ]
}

fn private_dir(path: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Clones `url` at `branch` into `dir`, or brings an existing clone up to date (cloning again
/// when that fails); submodules with `submodule_env`, which holds no credentials.
async fn checkout(
    url: &str,
    branch: &str,
    dir: &Path,
    env: &[(String, String)],
    submodule_env: &[(String, String)],
    handle: &Arc<JobHandle>,
) -> Result<(), String> {
    if dir.join(".git").is_dir() {
        handle.line(format!("Updating Repository {url}"));
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let remote = format!("refs/remotes/origin/{branch}");
        let steps: [&[&str]; 4] = [
            &["remote", "set-url", "origin", url],
            &["fetch", "--prune", "origin", refspec.as_str()],
            &["checkout", "--force", "-B", branch, remote.as_str(), "--"],
            &["clean", "-ffdx"],
        ];
        let mut updated = Ok(());
        for args in steps {
            updated = git(args, dir, env, handle).await;
            if updated.is_err() {
                break;
            }
        }
        if updated.is_ok() {
            updated = git(SUBMODULES, dir, submodule_env, handle).await;
        }
        if updated.is_ok() {
            return Ok(());
        }
        handle.line("Update failed; cloning again");
        let _ = std::fs::remove_dir_all(dir);
    }
    handle.line(format!("Cloning Repository {url}"));
    let parent = dir.parent().unwrap_or(dir);
    private_dir(parent)?;
    let target = dir.display().to_string();
    let args = ["clone", "--branch", branch, "--", url, target.as_str()];
    git(&args, parent, env, handle).await?;
    git(SUBMODULES, dir, submodule_env, handle).await
}

/// Checks out a clone's submodules (with an environment that holds no credentials).
const SUBMODULES: &[&str] = &["submodule", "update", "--init", "--recursive"];

/// One git command, its output into the job's log; a failure is an error.
async fn git(
    args: &[&str],
    cwd: &Path,
    env: &[(String, String)],
    handle: &Arc<JobHandle>,
) -> Result<(), String> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().cloned());
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let pump = tokio::spawn(pump(rx, Arc::clone(handle)));
    let (mut child, _done) = process::spawn(cmd, tx).map_err(|e| format!("cannot run git: {e}"))?;
    let _group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
    let status = child.wait().await.map_err(|e| format!("git failed: {e}"))?;
    let _ = tokio::time::timeout(DRAIN, pump).await;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {} failed: {status}",
            args.first().copied().unwrap_or_default()
        ))
    }
}

/// Returns once a stop is asked for.
async fn asked(stop: &mut watch::Receiver<bool>) {
    let asked = stop.wait_for(|s| *s).await.is_ok();
    if !asked {
        std::future::pending::<()>().await;
    }
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
        let _ = std::fs::remove_dir_all(entry.path());
    }
}
