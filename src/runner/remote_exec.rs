//! Running a task on a remote runner: the server claims it, resolves everything the runner
//! needs into one job (argv, environment, repository and its credentials, opened here and
//! sent only to that runner), hands it out with the runner's next poll, stores what the
//! runner reports, and ends it `error` if the runner is lost. Its output numbering and final
//! status go through the same store paths as a local run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::fleet::{Ending, Output};
use super::{Decision, Inner, Stop, exec, hostkeys, launch, terraform};
use crate::agent::protocol::{Job, JobRepository, Poll, Report, ReportAnswer};
use crate::model::{OutputLine, RemoteRunner, Task, TaskId, TaskStatus, Template};

/// The reported status of a job whose plan waits for a user's decision.
const WAITING: &str = "waiting_confirmation";

/// Most host keys in one job's report.
const MAX_HOST_KEYS: usize = 1000;

/// Variables of the base environment the runner sets itself (its own paths and `PATH`).
const RUNNER_SETS: [&str; 5] = ["PATH", "LANG", "HOME", "TMPDIR", "PWD"];

/// Runs task `id` on `runner` to its end (see the module docs).
pub(super) async fn run(
    inner: Arc<Inner>,
    id: TaskId,
    runner: u64,
    mut stop: watch::Receiver<Option<Stop>>,
    out: Arc<tokio::sync::Mutex<Output>>,
    mut ending: watch::Receiver<Ending>,
) {
    steps(&inner, id, runner, &mut stop, &out, &mut ending).await;
    inner.fleet.forget(id);
}

async fn steps(
    inner: &Arc<Inner>,
    id: TaskId,
    runner: u64,
    stop: &mut watch::Receiver<Option<Stop>>,
    out: &tokio::sync::Mutex<Output>,
    ending: &mut watch::Receiver<Ending>,
) {
    let Ok(Some(task)) = inner.store.task(id) else {
        return;
    };
    if *stop.borrow() == Some(Stop::Shutdown) {
        // It stays `waiting` and queues again at the next start.
        return;
    }
    let claimed = exec::update(inner, id, move |t| {
        if t.status != TaskStatus::Waiting {
            return false;
        }
        t.status = TaskStatus::Starting;
        t.runner_id = Some(runner);
        true
    })
    .await;
    if claimed.is_none() {
        return;
    }
    let Some(template) = inner.store.view().ok().and_then(|v| {
        v.get::<Template>(task.project_id, task.template_id)
            .ok()
            .flatten()
    }) else {
        let why = "the task's template no longer exists";
        return finish(inner, &task, out, TaskStatus::Error, Some(why.into())).await;
    };
    exec::record(
        inner,
        &task,
        format!("Task ID {id} ({}) is running", template.name),
    )
    .await;
    let name = inner
        .store
        .runner(runner)
        .ok()
        .flatten()
        .map(|r| r.name)
        .unwrap_or_default();
    let lines = [
        format!("Started: {id}"),
        format!("Run TaskRunner with template: {}", template.name),
        format!("Assigned to runner {runner} ({name})"),
    ];
    append(inner, &task, out, lines.map(line).to_vec()).await;
    let job = match resolve(inner, &task, &template) {
        Ok(job) => job,
        Err(why) => return finish(inner, &task, out, TaskStatus::Error, Some(why)).await,
    };
    inner.fleet.hand_out(id, job);
    let mut asked = false;
    loop {
        let event = tokio::select! {
            changed = ending.changed() => {
                let now = ending.borrow_and_update().clone();
                match now {
                    Ending::Open if changed.is_ok() => continue,
                    other => Ok(other),
                }
            }
            why = stop.wait_for(Option::is_some), if !asked => {
                Err(why.ok().and_then(|w| *w).unwrap_or(Stop::Kill))
            }
        };
        match event {
            Ok(Ending::Lost(why)) => {
                return finish(inner, &task, out, TaskStatus::Error, Some(why)).await;
            }
            Ok(_) => return,
            Err(why) => {
                asked = true;
                let may_run = inner.fleet.stop(id);
                if why == Stop::Shutdown {
                    let line = exec::SHUT_DOWN_LINE.to_owned();
                    return finish(inner, &task, out, TaskStatus::Error, Some(line)).await;
                }
                if !may_run {
                    let line = "Task stopped".to_owned();
                    return finish(inner, &task, out, TaskStatus::Stopped, Some(line)).await;
                }
                // The runner kills it and reports `stopped` (or it is lost).
            }
        }
    }
}

fn line(text: String) -> OutputLine {
    OutputLine {
        time_us: crate::clock::now_us(),
        text,
    }
}

/// Stores `lines` as the task's next output lines (within the output limits in lines and
/// bytes, as a local run's), then publishes
/// them. A write the store refuses is tried again once the store takes writes.
async fn append(
    inner: &Arc<Inner>,
    task: &Task,
    out: &tokio::sync::Mutex<Output>,
    lines: Vec<OutputLine>,
) {
    let mut o = out.lock().await;
    let mut keep = Vec::with_capacity(lines.len());
    o.cap
        .admit(lines.into_iter().map(|l| (l.time_us, l.text)), &mut keep);
    let lines = keep;
    if lines.is_empty() {
        return;
    }
    let n = lines.len() as u64;
    let lines: Arc<[OutputLine]> = Arc::from(lines);
    loop {
        match inner
            .store
            .append_output_async(task.id, o.next, Arc::clone(&lines))
            .await
        {
            Ok(()) => break,
            Err(e) if e.is_storage() => inner.storage_back().await,
            Err(e) => {
                tracing::error!(task = task.id, error = %e, "storing remote task output failed");
                return;
            }
        }
    }
    let first = o.next;
    o.next += n;
    drop(o);
    inner
        .stats
        .output_lines
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    inner.publish_lines(task, first, lines);
}

/// Ends the task with `status` (unless it ended already) after `why` as its last line.
async fn finish(
    inner: &Arc<Inner>,
    task: &Task,
    out: &tokio::sync::Mutex<Output>,
    status: TaskStatus,
    why: Option<String>,
) {
    let mut last: Vec<OutputLine> = out
        .lock()
        .await
        .cap
        .marker()
        .into_iter()
        .map(line)
        .collect();
    last.extend(why.map(line));
    if !last.is_empty() {
        // Past the limit: the reason must still be read.
        let mut o = out.lock().await;
        let first = o.next;
        let n = last.len() as u64;
        let lines: Arc<[OutputLine]> = Arc::from(last);
        if inner
            .store
            .append_output_async(task.id, first, Arc::clone(&lines))
            .await
            .is_ok()
        {
            o.next += n;
            inner.publish_lines(task, first, lines);
        }
    }
    let now = inner.host.now();
    let time_us = crate::clock::now_us();
    let finished = exec::update_then(
        inner,
        task.id,
        move |t| {
            if t.status.is_finished() {
                return false;
            }
            t.status = status;
            t.end = Some(now);
            true
        },
        move |tx, t| tx.task_ended(t, time_us),
    )
    .await;
    if let Some((t, deploys)) = finished {
        let outcome = status.as_str().to_uppercase();
        exec::record(inner, &t, format!("Task ID {} finished - {outcome}", t.id)).await;
        for (deploy, queued) in deploys {
            inner.enqueue(&deploy, queued);
        }
    }
}

/// The job a runner runs for `task`: what the local executor would start (the same program,
/// argv and environment, or for ansible the same inputs its argv is built from), with paths
/// left to the runner; for terraform/OpenTofu the inputs of its commands (its plan's
/// confirmation goes through [`report`] and the poll).
fn resolve(inner: &Inner, task: &Task, template: &Template) -> Result<Job, String> {
    crate::sandbox::check_task_vars(template, &task.environment)?;
    let m = exec::Materials::load(inner, task, template)?;
    let nowhere = Path::new("/");
    let mut vars = exec::Variables::collect(inner, task, &m, nowhere, nowhere)?;
    vars.env.extend(exec::build_env(template, task));
    let mut tf = None;
    let (program, args, env, ansible) = if template.app == "ansible" {
        let exec::Variables {
            extra,
            env,
            var_secrets,
        } = vars;
        let job = exec::ansible_job(inner, task, template, &m, extra, var_secrets)?;
        ("ansible-playbook".to_owned(), Vec::new(), env, Some(job))
    } else if terraform::handles(&template.app) {
        let (env, job) = terraform::job(inner, task, template, m.inventory.as_ref(), vars)?;
        tf = Some(job);
        (template.app.clone(), Vec::new(), env, None)
    } else {
        let (program, args, env) = exec::shell(template, task, vars);
        (program, args, env, None)
    };
    let env: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| !RUNNER_SETS.contains(&k.as_str()))
        .collect();
    let (path, prefix) = inner.host.app_command(&template.app);
    let repo = &m.repo;
    let credentials = launch::credentials_of(m.secret(inner, Some(repo.ssh_key_id))?);
    let max_duration_secs = if template.max_duration_secs > 0 {
        template.max_duration_secs
    } else {
        inner.settings.max_duration_secs
    };
    let script = ansible
        .as_ref()
        .map_or_else(|| template.playbook.clone(), |a| a.playbook.clone());
    Ok(Job {
        task_id: task.id,
        project_id: task.project_id,
        template_id: template.id,
        template_name: template.name.clone(),
        app: template.app.clone(),
        program: path.unwrap_or(program),
        prefix,
        args,
        env,
        repository: JobRepository {
            url: repo.git_url.clone(),
            branch: task
                .git_branch
                .clone()
                .or_else(|| template.git_branch.clone())
                .unwrap_or_else(|| repo.git_branch.clone()),
            commit: task.commit_hash.clone(),
            credentials,
        },
        script,
        max_duration_secs,
        stop_grace_secs: inner.settings.stop_grace.as_secs(),
        ansible,
        known_hosts: hostkeys::known_hosts(inner, task.project_id)?,
        terraform: tf,
    })
}

/// A poll of `record`'s runner: answers at once when it has jobs or stops, else waits up to
/// `wait_secs` (bounded so that a waiting runner is never taken for a lost one).
pub(super) async fn poll(inner: &Arc<Inner>, record: &RemoteRunner, wait_secs: u64) -> Poll {
    if inner.fleet.touch(record, inner.host.now()) {
        tracing::info!(runner = record.id, name = %record.name, "runner online");
        inner.wake.notify_one();
    }
    let timeout = inner.fleet.timeout();
    let wait = std::time::Duration::from_secs(wait_secs.min(crate::agent::protocol::MAX_WAIT_SECS))
        .min(timeout / 2);
    let deadline = tokio::time::Instant::now() + wait;
    let mut handout = loop {
        let (handout, wake) = inner.fleet.take_handout(record.id);
        if !handout.is_empty() {
            break handout;
        }
        let Some(wake) = wake else {
            break handout;
        };
        if tokio::time::timeout_at(deadline, wake.notified())
            .await
            .is_err()
        {
            break inner.fleet.take_handout(record.id).0;
        }
    };
    inner.fleet.touch(record, inner.host.now());
    Poll {
        jobs: handout.jobs.drain(..).map(|j| (*j).clone()).collect(),
        stop: handout.stop,
        confirm: handout.confirm,
        reject: handout.reject,
        timeout_secs: timeout.as_secs(),
    }
}

/// Stores what `record`'s runner reports: the first report of a job moves its task to
/// `running`; log records are stored once each (by their number); a final status ends the
/// task. Jobs that are not this runner's (any more) come back in `stop`.
///
/// # Errors
/// [`crate::service::Error::Invalid`] for an unknown status or a gap in the log numbering
/// (nothing of the report is stored then).
pub(super) async fn report(
    inner: &Arc<Inner>,
    record: &RemoteRunner,
    report: Report,
) -> crate::service::Result<ReportAnswer> {
    inner.fleet.touch(record, inner.host.now());
    let mut finals = Vec::with_capacity(report.jobs.len());
    for j in &report.jobs {
        let status = match j.status.as_str() {
            "running" | WAITING => None,
            "success" => Some(TaskStatus::Success),
            "error" => Some(TaskStatus::Error),
            "stopped" => Some(TaskStatus::Stopped),
            other => {
                return Err(crate::service::Error::Invalid(format!(
                    "jobs: task {}: unknown status {other:?} (running, waiting_confirmation, \
                     success, error, stopped)",
                    j.task_id
                )));
            }
        };
        let bad = j.host_keys.len() > MAX_HOST_KEYS
            || j.host_keys
                .iter()
                .any(|k| !hostkeys::well_formed(&k.host, &k.key_type, &k.key));
        if bad {
            return Err(crate::service::Error::Invalid(format!(
                "jobs: task {}: host_keys: at most {MAX_HOST_KEYS}, each host, key_type and key \
                 one word of printable ASCII",
                j.task_id
            )));
        }
        finals.push(status);
    }
    let mut stop = Vec::new();
    for (j, status) in report.jobs.into_iter().zip(finals) {
        let id = j.task_id;
        let Some((acked, seen, out)) = inner.fleet.with_job(record.id, id, |a| {
            let was = a.acked;
            a.acked = true;
            (was, a.seen, Arc::clone(&a.out))
        }) else {
            stop.push(id);
            continue;
        };
        let Some(task) = inner.store.task(id)? else {
            stop.push(id);
            continue;
        };
        if task.status.is_finished() {
            stop.push(id);
            continue;
        }
        if j.log_offset > seen {
            return Err(crate::service::Error::Invalid(format!(
                "jobs: task {id}: log_offset {} skips records (stored so far: {seen})",
                j.log_offset
            )));
        }
        if !acked {
            let now = inner.host.now();
            exec::update(inner, id, move |t| {
                if t.status != TaskStatus::Starting {
                    return false;
                }
                t.status = TaskStatus::Running;
                t.start = Some(now);
                true
            })
            .await;
        }
        let total = j.log_offset + j.log.len() as u64;
        let skip = usize::try_from(seen - j.log_offset).unwrap_or(usize::MAX);
        let fresh: Vec<OutputLine> = j
            .log
            .into_iter()
            .skip(skip)
            .map(|r| OutputLine {
                time_us: r.time,
                text: r.message,
            })
            .collect();
        if !fresh.is_empty() {
            append(inner, &task, &out, fresh).await;
            inner
                .fleet
                .with_job(record.id, id, |a| a.seen = a.seen.max(total));
        }
        if let Some(commit) = j.commit {
            exec::update(inner, id, move |t| {
                if t.commit_hash.as_deref() == Some(commit.hash.as_str()) {
                    return false;
                }
                t.commit_hash = Some(commit.hash.clone());
                t.commit_message.clone_from(&commit.message);
                true
            })
            .await;
        }
        if !j.host_keys.is_empty() {
            let met = j
                .host_keys
                .into_iter()
                .map(|k| (k.host, k.key_type, k.key))
                .collect();
            let pinned = hostkeys::learn(inner, task.project_id, id, met).await;
            if !pinned.is_empty() {
                let lines = pinned
                    .iter()
                    .map(|h| line(launch::pinned_line(h)))
                    .collect();
                append(inner, &task, &out, lines).await;
            }
        }
        if j.status == WAITING {
            awaiting(inner, id).await;
        } else if status.is_none() && task.status == TaskStatus::Confirmed {
            // The runner took the confirmation and applies.
            exec::update(inner, id, |t| {
                if t.status != TaskStatus::Confirmed {
                    return false;
                }
                t.status = TaskStatus::Running;
                true
            })
            .await;
        }
        if let Some(status) = status {
            finish(inner, &task, &out, status, None).await;
            inner.fleet.with_job(record.id, id, |a| {
                a.ending.send_replace(Ending::Reported);
            });
        }
    }
    inner.fleet.add_stops(record.id, &stop);
    Ok(ReportAnswer { stop })
}

/// Task `id`'s runner reported that its plan waits for a decision: the first such report
/// makes the task `waiting_confirmation` as a local plan's (confirm and reject then reach the
/// runner through [`Fleet::decide`](super::fleet::Fleet::decide)). A later one while a user's
/// decision is already taken hands that decision out again (the poll answer that carried it
/// may have been lost); otherwise it changes nothing.
async fn awaiting(inner: &Arc<Inner>, id: TaskId) {
    let (first, decided) = {
        let state = inner.lock();
        if state.shutting_down {
            return;
        }
        let Some(r) = state.running.get(&id) else {
            return;
        };
        let first = r.decision.send_if_modified(|d| {
            let first = *d == Decision::None;
            if first {
                *d = Decision::Awaiting;
            }
            first
        });
        (first, *r.decision.borrow())
    };
    if first {
        terraform::waiting(inner, id).await;
    } else if matches!(decided, Decision::Confirmed | Decision::Rejected) {
        inner.fleet.decide(id, decided == Decision::Confirmed);
    }
}

/// Active runner records in the store.
pub(super) fn active_runners(store: &crate::store::Store) -> crate::service::Result<usize> {
    Ok(store.runners()?.iter().filter(|r| r.active).count())
}

/// Takes silent runners offline every quarter of the timeout (at least every second), until
/// the runner is gone.
pub(super) async fn sweep_runners(inner: std::sync::Weak<Inner>) {
    let every = {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        (inner.fleet.timeout() / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(1),
        )
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let lost = inner.fleet.sweep(None);
        if lost > 0 {
            tracing::warn!(tasks = lost, "tasks lost their remote runner");
            inner.wake.notify_one();
        }
    }
}

impl Inner {
    /// The runner tag of template `template` of `project`.
    pub(super) fn runner_tag(
        &self,
        project: crate::model::ProjectId,
        template: u64,
    ) -> Option<String> {
        self.store
            .view()
            .ok()
            .and_then(|v| v.get::<Template>(project, template).ok().flatten())
            .and_then(|t| t.runner_tag)
    }
}

impl super::Runner {
    /// A poll of runner `record` (authenticated and active): see [`Poll`].
    pub async fn runner_poll(&self, record: &RemoteRunner, wait_secs: u64) -> Poll {
        poll(&self.inner, record, wait_secs).await
    }

    /// A report of runner `record`: see [`Report`].
    ///
    /// # Errors
    /// [`crate::service::Error::Invalid`] for a malformed report; storage failures.
    pub async fn runner_report(
        &self,
        record: &RemoteRunner,
        body: Report,
    ) -> crate::service::Result<ReportAnswer> {
        report(&self.inner, record, body).await
    }

    /// Runner `id` was deactivated, deleted or unregistered (`why`): it is offline at once,
    /// and its tasks end `error`. `active` is the number of active runners left.
    pub fn runner_gone(&self, id: u64, why: &str, active: usize) {
        self.inner.fleet.set_registered(active);
        if self.inner.fleet.sweep(Some((id, why))) > 0 {
            tracing::warn!(runner = id, "{why}: its tasks end");
        }
        self.inner.wake.notify_one();
    }

    /// The number of active runners changed (one registered or was activated).
    pub fn runners_changed(&self, active: usize) {
        self.inner.fleet.set_registered(active);
        self.inner.wake.notify_one();
    }

    /// Last contact of each online runner, Unix seconds.
    #[must_use]
    pub fn runners_touched(&self) -> std::collections::HashMap<u64, i64> {
        self.inner.fleet.touched()
    }

    /// Whether runner `id` polled within the timeout.
    #[must_use]
    pub fn runner_online(&self, id: u64) -> bool {
        self.inner.fleet.is_online(id)
    }
}
