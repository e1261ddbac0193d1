//! `forge runner`: a remote runner agent. `register` trades the server's registration token
//! for a runner token and writes the config file (`0600`); `start` long-polls the server for
//! jobs, runs them (see [`job`]), and reports their status and output in batches; `unregister`
//! removes the runner. Across server outages it retries with backoff while its jobs keep
//! running; their output waits in a bounded memory buffer that spills to disk ([`spool`]).
//! docs/runners.md describes the protocol.

pub mod client;
pub mod job;
pub mod protocol;
pub mod spool;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use client::Api;
use job::JobHandle;
use protocol::{JobReport, Poll, Register, Registered, Report, ReportAnswer};

use crate::model::TaskId;

/// Most output records of one job in one report.
const BATCH: usize = 20_000;
/// About the most output bytes in one report (the server's default body limit is 1 MiB).
const BATCH_BYTES: usize = 512 * 1024;
/// A job is reported at least this often (the server learns which jobs the runner holds).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Pause between reports while output flows (gathers a batch).
const GATHER: Duration = Duration::from_millis(20);
/// Longest pause between retries while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `forge runner` commands.
#[derive(Debug, clap::Subcommand)]
pub enum RunnerCommand {
    /// Register with a server (the registration token is read from standard input) and write
    /// the config file (0600).
    Register {
        /// The server's URL, e.g. `https://forge.example.com`.
        #[arg(long)]
        server: String,
        /// Read the registration token from the first line of standard input (required).
        #[arg(long, required = true)]
        registration_token_stdin: bool,
        /// The runner's name.
        #[arg(long, default_value = "")]
        name: String,
        /// Tags templates choose it by (comma-separated).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Most tasks it runs at once (0 = no limit).
        #[arg(long, default_value_t = 0)]
        max_parallel_tasks: u32,
        /// Where it checks repositories out and runs tasks (default: next to the config).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// The config file to write.
        #[arg(long, env = "FORGE_RUNNER_CONFIG")]
        config: PathBuf,
    },
    /// Run jobs until SIGTERM or Ctrl-C.
    Start {
        /// The config file `register` wrote.
        #[arg(long, env = "FORGE_RUNNER_CONFIG")]
        config: PathBuf,
        /// How jobs are confined, as the server's `--sandbox`: `landlock` (read-write only in
        /// their workspace and task directory; never the config file or another job's
        /// files) or `off`.
        #[arg(long, env = "FORGE_SANDBOX", value_enum, default_value_t = crate::sandbox::Mode::Landlock)]
        sandbox: crate::sandbox::Mode,
    },
    /// Remove this runner from the server (its token stops working) and its config file.
    Unregister {
        /// The config file `register` wrote.
        #[arg(long, env = "FORGE_RUNNER_CONFIG")]
        config: PathBuf,
    },
}

/// The config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerConfig {
    /// The server's URL.
    pub server: String,
    /// The runner's id.
    pub id: u64,
    /// Its token.
    pub token: String,
    /// Where it works.
    pub work_dir: PathBuf,
}

/// Runs a `forge runner` command.
///
/// # Errors
/// A message for the operator.
pub async fn command(cmd: RunnerCommand) -> Result<(), String> {
    match cmd {
        RunnerCommand::Register {
            server,
            registration_token_stdin: _,
            name,
            tags,
            max_parallel_tasks,
            work_dir,
            config,
        } => {
            let mut token = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut token)
                .map_err(|e| format!("cannot read the registration token: {e}"))?;
            let body = Register {
                registration_token: token.trim().to_owned(),
                name,
                tags,
                max_parallel_tasks,
                ..Register::default()
            };
            let api = Api::new(&server, "")?;
            let (status, answer) = api
                .call(
                    Method::POST,
                    "/api/internal/runners",
                    Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
                    Duration::from_secs(30),
                )
                .await?;
            if status != StatusCode::CREATED {
                return Err(format!(
                    "the server refused the registration: {} {}",
                    status.as_u16(),
                    client::error_text(&answer)
                ));
            }
            let r: Registered =
                serde_json::from_slice(&answer).map_err(|e| format!("unexpected answer: {e}"))?;
            let work_dir = if let Some(w) = work_dir {
                std::path::absolute(w).map_err(|e| e.to_string())?
            } else {
                let mut name = std::path::absolute(&config)
                    .map_err(|e| e.to_string())?
                    .into_os_string();
                name.push(".work");
                PathBuf::from(name)
            };
            let cfg = RunnerConfig {
                server,
                id: r.id,
                token: r.token,
                work_dir,
            };
            write_config(&config, &cfg)?;
            println!(
                "registered as runner {}; config in {}",
                r.id,
                config.display()
            );
            Ok(())
        }
        RunnerCommand::Start { config, sandbox } => {
            let cfg = read_config(&config)?;
            let config = std::path::absolute(&config).map_err(|e| e.to_string())?;
            start(cfg, &config, sandbox).await
        }
        RunnerCommand::Unregister { config } => {
            let cfg = read_config(&config)?;
            let api = Api::new(&cfg.server, &cfg.token)?;
            let (status, answer) = api
                .call(
                    Method::DELETE,
                    "/api/internal/runners",
                    None,
                    Duration::from_secs(30),
                )
                .await?;
            if status != StatusCode::NO_CONTENT && status != StatusCode::UNAUTHORIZED {
                return Err(format!(
                    "the server refused: {} {}",
                    status.as_u16(),
                    client::error_text(&answer)
                ));
            }
            std::fs::remove_file(&config)
                .map_err(|e| format!("cannot remove {}: {e}", config.display()))?;
            println!("unregistered runner {}", cfg.id);
            Ok(())
        }
    }
}

/// Writes the config where only we can read it (a temp file renamed over the old one).
fn write_config(path: &Path, cfg: &RunnerConfig) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(cfg).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn read_config(path: &Path) -> Result<RunnerConfig, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The agent's state.
struct Agent {
    api: Api,
    work: PathBuf,
    jobs: Mutex<HashMap<TaskId, Arc<JobHandle>>>,
    /// How its jobs' commands are confined.
    jail: Arc<crate::sandbox::Jail>,
    /// Wakes the reporter (a job started or ended).
    report_now: tokio::sync::Notify,
}

impl Agent {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<JobHandle>>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Passes a user's plan decisions on to the jobs waiting with them.
    fn decide(&self, ids: &[TaskId], confirmed: bool) {
        let jobs = self.jobs();
        for id in ids {
            if let Some(j) = jobs.get(id) {
                tracing::info!(task = id, confirmed, "plan decided");
                j.decide(confirmed);
            }
        }
    }

    fn stop(&self, ids: &[TaskId]) {
        let jobs = self.jobs();
        for id in ids {
            if let Some(j) = jobs.get(id) {
                tracing::info!(task = id, "stopping task");
                j.ask_stop();
            }
        }
    }
}

/// Runs jobs for `cfg` (read from `config`) with the sandbox `sandbox` until SIGTERM or
/// Ctrl-C.
async fn start(
    cfg: RunnerConfig,
    config: &Path,
    sandbox: crate::sandbox::Mode,
) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cfg.work_dir.join("spool"))
        .map_err(|e| format!("cannot create {}: {e}", cfg.work_dir.display()))?;
    // After the work dir exists: its real path is what the sandbox keeps jobs out of.
    let jail = Arc::new(crate::sandbox::Jail::for_runner(
        sandbox,
        &cfg.work_dir,
        config,
    )?);
    job::sweep_leftovers(&cfg.work_dir);
    let agent = Arc::new(Agent {
        api: Api::new(&cfg.server, &cfg.token)?,
        work: cfg.work_dir.clone(),
        jobs: Mutex::default(),
        jail,
        report_now: tokio::sync::Notify::new(),
    });
    tracing::info!(runner = cfg.id, server = %cfg.server, "runner started");
    let reporter = tokio::spawn(report_loop(Arc::clone(&agent)));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut backoff = Duration::from_millis(100);
    let mut wait = 0;
    let result = loop {
        let path = format!("/api/internal/runners?wait={wait}");
        let call = agent
            .api
            .call(Method::GET, &path, None, Duration::from_secs(wait + 15));
        let answer = tokio::select! {
            a = call => a,
            _ = sigterm.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        match answer {
            Ok((StatusCode::OK, body)) => {
                backoff = Duration::from_millis(100);
                let poll: Poll = match serde_json::from_slice(&body) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable poll answer");
                        continue;
                    }
                };
                wait = (poll.timeout_secs / 3).clamp(1, protocol::MAX_WAIT_SECS);
                agent.stop(&poll.stop);
                agent.decide(&poll.confirm, true);
                agent.decide(&poll.reject, false);
                for j in poll.jobs {
                    let id = j.task_id;
                    let handle = {
                        let mut jobs = agent.jobs();
                        if jobs.contains_key(&id) {
                            continue;
                        }
                        let spill = agent.work.join("spool").join(id.to_string());
                        let h = Arc::new(JobHandle::new(spill));
                        jobs.insert(id, Arc::clone(&h));
                        h
                    };
                    tracing::info!(task = id, template = %j.template_name, "job started");
                    agent.report_now.notify_one();
                    let (agent2, work) = (Arc::clone(&agent), agent.work.clone());
                    let jail = Arc::clone(&agent.jail);
                    tokio::spawn(async move {
                        job::run(j, work, handle, jail).await;
                        agent2.report_now.notify_one();
                    });
                }
            }
            Ok((StatusCode::UNAUTHORIZED, _)) => {
                break Err(
                    "the server refused this runner's token (deactivated or deleted)".into(),
                );
            }
            Ok((status, body)) => {
                tracing::warn!(status = status.as_u16(), error = %client::error_text(&body), "poll failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis(), "server unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    // Whatever runs is stopped (the server ends those tasks when this runner goes silent).
    let ids: Vec<TaskId> = agent.jobs().keys().copied().collect();
    agent.stop(&ids);
    if result.is_ok() {
        // Give the reporter a moment to send how they ended.
        let drained = async {
            while !agent.jobs().is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), drained).await;
    }
    reporter.abort();
    tracing::info!("runner stopped");
    result
}

/// Sends the jobs' status and output: at once when a job starts or ends, every [`GATHER`]
/// while output flows, every [`HEARTBEAT`] otherwise. A failed report is sent again (same
/// record numbers) after a backoff.
async fn report_loop(agent: Arc<Agent>) {
    let mut backoff = Duration::from_millis(100);
    let mut last = tokio::time::Instant::now();
    loop {
        let pending = {
            let jobs = agent.jobs();
            jobs.values().any(|j| {
                let s = j.lock();
                !s.spool.is_empty()
                    || s.status != "running"
                    || s.commit.is_some()
                    || !s.host_keys.is_empty()
            })
        };
        if !pending {
            let _ = tokio::time::timeout(HEARTBEAT, agent.report_now.notified()).await;
        }
        let handles: Vec<(TaskId, Arc<JobHandle>)> = agent
            .jobs()
            .iter()
            .map(|(id, h)| (*id, Arc::clone(h)))
            .collect();
        if handles.is_empty() {
            continue;
        }
        let mut sent = Vec::with_capacity(handles.len());
        let mut report = Report::default();
        let mut budget = BATCH_BYTES;
        for (id, h) in &handles {
            let mut s = h.lock();
            let (offset, log) = s.spool.peek(if budget > 0 { BATCH } else { 0 }, budget);
            budget = budget.saturating_sub(log.iter().map(|r| r.message.len() + 32).sum());
            // The final status goes only with the last of the output.
            let done = s.status != "running" && log.len() as u64 == s.spool.len();
            let status = if done {
                s.status
            } else if s.waiting {
                "waiting_confirmation"
            } else {
                "running"
            };
            sent.push((*id, log.len(), done, s.host_keys.len()));
            report.jobs.push(JobReport {
                task_id: *id,
                status: status.to_owned(),
                log_offset: offset,
                log,
                commit: s.commit.clone(),
                host_keys: s.host_keys.clone(),
            });
        }
        let quiet = report.jobs.iter().all(|j| {
            j.log.is_empty()
                && j.status == "running"
                && j.commit.is_none()
                && j.host_keys.is_empty()
        });
        if quiet && last.elapsed() < HEARTBEAT {
            continue;
        }
        let body = match serde_json::to_vec(&report) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a report");
                continue;
            }
        };
        let answer = agent
            .api
            .call(
                Method::PUT,
                "/api/internal/runners",
                Some(body),
                Duration::from_secs(60),
            )
            .await;
        match answer {
            Ok((StatusCode::OK, body)) => {
                backoff = Duration::from_millis(100);
                last = tokio::time::Instant::now();
                let answer: ReportAnswer = serde_json::from_slice(&body).unwrap_or_default();
                acknowledge(&agent, &sent);
                agent.stop(&answer.stop);
                tokio::time::sleep(GATHER).await;
            }
            Ok((status, body)) => {
                tracing::warn!(status = status.as_u16(), error = %client::error_text(&body), "report refused");
                if status == StatusCode::BAD_REQUEST {
                    // Not worth sending again as it is: drop those records.
                    let dropped: Vec<_> = sent
                        .iter()
                        .map(|(id, n, _, k)| (*id, *n, false, *k))
                        .collect();
                    acknowledge(&agent, &dropped);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::warn!(error = %e, "report failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The server stored the first `n` records of each job `id`, its first `k` host keys (and
/// its end when `done`).
fn acknowledge(agent: &Agent, sent: &[(TaskId, usize, bool, usize)]) {
    let mut jobs = agent.jobs();
    for &(id, n, done, k) in sent {
        if let Some(h) = jobs.get(&id) {
            let mut s = h.lock();
            s.spool.ack(n);
            s.commit = None;
            let k = k.min(s.host_keys.len());
            s.host_keys.drain(..k);
            drop(s);
            if done {
                jobs.remove(&id);
                tracing::info!(task = id, "job reported");
            }
        }
    }
}
