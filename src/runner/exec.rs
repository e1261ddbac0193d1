//! Running one task: claim it, prepare the repository, inventory and variables, start the app
//! as an argv (never a shell string) in its own process group, pump its output, honour stops
//! and the time limit at every step, and record how it ended.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use super::output::Sink;
use super::{Decision, Inner, Stop, hostkeys, secrets, terraform};
use crate::agent::protocol::{AnsibleJob, JobInventory, JobVault};
use crate::model::{
    AccessKey, Environment, Inventory, KeyKind, KeySecret, Repository, Task, TaskId, TaskStatus,
    Template,
};
use crate::store::{NewEvent, Tx};

use super::launch::{self, DRAIN_OUTPUT};
pub(super) use super::launch::{
    Outcome, SHUT_DOWN_LINE, deadline_after, exit_outcome, inside, stopped,
};

/// What to start.
pub(super) struct Prepared {
    pub(super) cwd: PathBuf,
    pub(super) program: String,
    /// The app's own arguments (`apps.<id>.args`), before every command's.
    pub(super) prefix: Vec<String>,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    /// Terraform/OpenTofu: the commands to run instead of `args`.
    pub(super) flow: Option<launch::Flow>,
    /// ansible: the project's pinned SSH host keys, written for the run (checked after it).
    pub(super) pins: Option<hostkeys::Pins>,
}

/// Runs task `id` to its end; every state change is stored before it is published.
pub(super) async fn run(
    inner: Arc<Inner>,
    id: TaskId,
    mut stop: watch::Receiver<Option<Stop>>,
    decision: Arc<watch::Sender<Decision>>,
) {
    let Ok(Some(task)) = inner.store.task(id) else {
        return;
    };
    let first = inner.store.output_len(id).unwrap_or(0);
    let sink = Sink::start(Arc::clone(&inner), task.clone(), first);
    let task_dir = inner.settings.work_dir.join("tasks").join(id.to_string());
    // Removes the task's secrets on every way out, a panic included.
    let _secrets = secrets::TaskDir::guard(task_dir.clone());
    let outcome = run_steps(&inner, task, &sink, &mut stop, &task_dir, &decision).await;
    let lost = sink.lost();
    let (mut status, line) = (outcome.status(), outcome.line());
    if let Some(line) = line {
        sink.line(line).await;
    }
    // Output a grandchild still holds open must not keep the task from finishing.
    if !sink.finish_within(DRAIN_OUTPUT).await {
        tracing::warn!(
            task = id,
            "task output still open after the app ended; finishing anyway"
        );
    }
    // Keys, passwords and extra vars go on every path (a crash is swept at the next start).
    secrets::remove(&task_dir);
    if matches!(outcome, Outcome::NotStarted) {
        return;
    }
    if lost.load(std::sync::atomic::Ordering::SeqCst) > 0 && status == TaskStatus::Success {
        // Its output has a gap (the marker line says so): not a clean success.
        status = TaskStatus::Error;
    }
    let now = inner.host.now();
    let time_us = crate::clock::now_us();
    // A successful build's version record and autorun deploy tasks are written in the same
    // transaction as its success, so none is stored without the others; the deploy tasks are
    // queued once it commits.
    let finished = update_then(
        &inner,
        id,
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
        record(
            &inner,
            &t,
            format!(
                "Task ID {} finished - {}",
                t.id,
                status.as_str().to_uppercase()
            ),
        )
        .await;
        for (deploy, queued) in deploys {
            tracing::info!(task = deploy.id, build = t.id, "autorun deploy queued");
            inner.enqueue(&deploy, queued);
        }
    }
}

async fn run_steps(
    inner: &Arc<Inner>,
    task: Task,
    sink: &Sink,
    stop: &mut watch::Receiver<Option<Stop>>,
    task_dir: &Path,
    decision: &watch::Sender<Decision>,
) -> Outcome {
    let id = task.id;
    let Some(template) = inner.store.view().ok().and_then(|v| {
        v.get::<Template>(task.project_id, task.template_id)
            .ok()
            .flatten()
    }) else {
        return Outcome::Failed("the task's template no longer exists".into());
    };
    if *stop.borrow() == Some(Stop::Shutdown) {
        return Outcome::NotStarted;
    }
    let claimed = update(inner, id, |t| {
        if t.status != TaskStatus::Waiting {
            return false;
        }
        t.status = TaskStatus::Starting;
        true
    })
    .await;
    if claimed.is_none() {
        return Outcome::Stopped;
    }
    record(
        inner,
        &task,
        format!("Task ID {id} ({}) is running", template.name),
    )
    .await;
    sink.line(format!("Started: {id}")).await;
    sink.line(format!("Run TaskRunner with template: {}", template.name))
        .await;
    let asked = *stop.borrow();
    if asked.is_some() {
        return stopped(asked);
    }
    let now = inner.host.now();
    let running = update(inner, id, move |t| {
        if t.status != TaskStatus::Starting {
            return false;
        }
        t.status = TaskStatus::Running;
        t.start = Some(now);
        true
    })
    .await;
    let Some(task) = running else {
        return Outcome::Stopped;
    };
    sink.line(format!("Preparing: {id}")).await;

    let max_secs = if template.max_duration_secs > 0 {
        template.max_duration_secs
    } else {
        inner.settings.max_duration_secs
    };
    let sleep_until_deadline = tokio::time::sleep_until(deadline_after(max_secs));
    tokio::pin!(sleep_until_deadline);

    let prepared = tokio::select! {
        p = prepare(inner, &task, &template, sink, task_dir) => p,
        why = stop.wait_for(Option::is_some) => return stopped(why.ok().and_then(|w| *w)),
        () = &mut sleep_until_deadline => return Outcome::TimedOut(max_secs),
    };
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(why) => return Outcome::Failed(why),
    };
    // An admin's `path`/`args` for the app (argv, never a shell string).
    let (path, prefix) = inner.host.app_command(&template.app);
    if let Some(path) = path {
        prepared.program = path;
    }
    prepared.prefix = prefix;
    if let Some(flow) = prepared.flow.take() {
        let run = terraform::Run {
            inner,
            id,
            sink,
            prepared: &prepared,
            max_secs,
        };
        return run.steps(flow, stop, sleep_until_deadline, decision).await;
    }
    let args = prepared.args.clone();
    let pins = prepared.pins.take();
    let outcome = match run_command(
        inner,
        id,
        &prepared,
        args,
        stop,
        &mut sleep_until_deadline,
        sink,
        max_secs,
    )
    .await
    {
        Ok(status) => exit_outcome(status),
        Err(outcome) => outcome,
    };
    match pins {
        Some(pins) => launch::pins_checked(outcome, check_pins(inner, &pins, task.id, sink).await),
        None => outcome,
    }
}

/// After a run that used ssh with the project's pinned keys: ssh's log lines into the output,
/// hosts met for the first time pinned, and the line saying why the task fails when a host
/// showed another key than its pinned one.
async fn check_pins(
    inner: &Inner,
    pins: &hostkeys::Pins,
    task: TaskId,
    sink: &Sink,
) -> Option<String> {
    let changed = launch::ssh_lines(pins, sink).await;
    for host in hostkeys::learn(inner, pins.project(), task, pins.met()).await {
        sink.line(launch::pinned_line(&host)).await;
    }
    changed
}

/// Starts `prepared.program` with the app's prefix and `args` in its own process group and
/// waits for it (see [`launch::supervise`]): its exit status, or how a stop or the deadline
/// ended it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_command(
    inner: &Arc<Inner>,
    id: TaskId,
    prepared: &Prepared,
    args: Vec<String>,
    stop: &mut watch::Receiver<Option<Stop>>,
    deadline: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    sink: &Sink,
    max_secs: u64,
) -> Result<std::io::Result<std::process::ExitStatus>, Outcome> {
    let app = launch::App {
        cwd: prepared.cwd.clone(),
        program: prepared.program.clone(),
        prefix: prepared.prefix.clone(),
        env: prepared.env.clone(),
    };
    let launch::Started {
        mut child,
        pgid,
        output_done,
    } = launch::start(sink, &app, &args)?;
    update(inner, id, move |t| {
        t.process_group = Some(pgid);
        true
    })
    .await;

    let outcome = launch::supervise(
        &mut child,
        pgid,
        stop,
        deadline,
        inner.settings.stop_grace,
        max_secs,
    )
    .await;
    // Every line the app wrote comes before the line saying how it ended.
    sink.drained(output_done, DRAIN_OUTPUT).await;
    outcome
}

/// Applies `change` to the stored task in one transaction when it returns true; returns the
/// updated task (published to live followers), or `None` when nothing changed. A write the
/// store refuses for its disk (full, reopening) is tried again until it is stored: a status
/// change is never dropped.
pub(super) async fn update(
    inner: &Arc<Inner>,
    id: TaskId,
    change: impl Fn(&mut Task) -> bool + Send + Sync + 'static,
) -> Option<Task> {
    update_then(inner, id, change, |_, _| Ok(()))
        .await
        .map(|(t, ())| t)
}

/// [`update`], then `then` with the updated task in the same transaction (only when it
/// changed); returns what `then` made with the task.
pub(super) async fn update_then<T: Send + 'static>(
    inner: &Arc<Inner>,
    id: TaskId,
    change: impl Fn(&mut Task) -> bool + Send + Sync + 'static,
    then: impl Fn(&Tx<'_>, &Task) -> crate::store::Result<T> + Send + Sync + 'static,
) -> Option<(Task, T)> {
    let now = inner.host.now();
    let steps = Arc::new((change, then));
    let result = loop {
        let steps = Arc::clone(&steps);
        let result = inner
            .store
            .transact_async(now, move |tx| {
                let (change, then) = &*steps;
                let Some(mut t) = tx.task(id)? else {
                    return Ok(None);
                };
                let before = (t.status, t.start, t.end);
                if !change(&mut t) {
                    return Ok(None);
                }
                tx.put_task(&t)?;
                let made = then(tx, &t)?;
                let visible = before != (t.status, t.start, t.end);
                Ok::<_, crate::store::Error>(Some((t, visible, made)))
            })
            .await;
        match result {
            Err(e) if e.is_storage() => {
                tracing::warn!(task = id, error = %e, "task update refused; retrying");
                inner.storage_back().await;
            }
            other => break other,
        }
    };
    match result {
        Ok(Some((t, visible, made))) => {
            // Bookkeeping (the process group) is not news for followers.
            if visible {
                inner.publish_update(&t);
            }
            Some((t, made))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(task = id, error = %e, "updating task failed");
            None
        }
    }
}

pub(super) async fn record(inner: &Arc<Inner>, task: &Task, description: String) {
    let event = NewEvent {
        user_id: task.user_id,
        project_id: Some(task.project_id),
        object_id: Some(task.id),
        object_type: "task",
        description,
    };
    let (store, now) = (inner.store.clone(), inner.host.now());
    let _ = tokio::task::spawn_blocking(move || store.record_event(now, event)).await;
}

/// What a run draws on, read in one view at the start.
pub(super) struct Materials {
    pub(super) repo: Repository,
    environment: Option<Environment>,
    pub(super) inventory: Option<Inventory>,
    keys: Vec<AccessKey>,
}

impl Materials {
    pub(super) fn load(inner: &Inner, task: &Task, template: &Template) -> Result<Self, String> {
        let p = task.project_id;
        let err = |e: crate::store::Error| e.to_string();
        let view = inner.store.view().map_err(err)?;
        let repo: Repository = view
            .get(p, template.repository_id)
            .map_err(err)?
            .ok_or("the template's repository no longer exists")?;
        let environment = match template.environment_id {
            Some(e) => view.get(p, e).map_err(err)?,
            None => None,
        };
        // A task's inventory override falls back to the template's when it is gone.
        let inventory = match task.inventory_id {
            Some(i) => view.get::<Inventory>(p, i).map_err(err)?,
            None => None,
        };
        let inventory = match (inventory, template.inventory_id) {
            (Some(i), _) => Some(i),
            (None, Some(i)) => view.get(p, i).map_err(err)?,
            (None, None) => None,
        };
        let keys = view.list(p).map_err(err)?;
        Ok(Self {
            repo,
            environment,
            inventory,
            keys,
        })
    }

    /// The opened secret of key `id`, if it exists.
    pub(super) fn secret(
        &self,
        inner: &Inner,
        id: Option<u64>,
    ) -> Result<Option<(KeyKind, KeySecret)>, String> {
        let Some(key) = id.and_then(|id| self.keys.iter().find(|k| k.id == id)) else {
            return Ok(None);
        };
        let secret = inner.host.open_key(key)?;
        Ok(Some((key.kind, secret)))
    }
}

async fn prepare(
    inner: &Arc<Inner>,
    task: &Task,
    template: &Template,
    sink: &Sink,
    task_dir: &Path,
) -> Result<Prepared, String> {
    crate::sandbox::check_task_vars(template, &task.environment)?;
    let m = Materials::load(inner, task, template)?;
    launch::private_dir(&task_dir.join("tmp"))?;
    let cwd = prepare_repository(inner, task, template, &m, sink, task_dir).await?;
    record_commit(inner, task, &cwd, task_dir, sink).await;
    let mut vars = Variables::collect(inner, task, &m, &cwd, task_dir)?;
    vars.env.extend(build_env(template, task));
    if template.app == "ansible" {
        // ansible's ssh checks host keys against the project's pinned ones (hosts met for the
        // first time are pinned after the run); a changed key fails the task.
        let pins = hostkeys::Pins::write(inner, task.project_id, task_dir)?;
        let job = ansible_job(inner, task, template, &m, vars.extra, vars.var_secrets)?;
        let (args, env) = launch::ansible(&job, &cwd, task_dir, vars.env)?;
        Ok(Prepared {
            cwd,
            program: "ansible-playbook".into(),
            prefix: Vec::new(),
            args,
            env,
            flow: None,
            pins: Some(pins),
        })
    } else if terraform::handles(&template.app) {
        let inputs = terraform::Inputs {
            inner,
            task,
            template,
            inventory: m.inventory.as_ref(),
            task_dir,
        };
        inputs.prepare(vars, &cwd)
    } else {
        inside(&cwd, &template.playbook, "script")?;
        let (program, args, env) = shell(template, task, vars);
        Ok(Prepared {
            cwd,
            program,
            prefix: Vec::new(),
            args,
            env,
            flow: None,
            pins: None,
        })
    }
}

/// The checkout to run in: a local path in place, anything else cloned or fetched into a
/// directory of this repository and template (one template never runs twice at once).
async fn prepare_repository(
    inner: &Inner,
    task: &Task,
    template: &Template,
    m: &Materials,
    sink: &Sink,
    task_dir: &Path,
) -> Result<PathBuf, String> {
    let repo = &m.repo;
    if repo.git_url.starts_with('/') {
        let path = inner.local_repository(&repo.git_url)?;
        if !path.is_dir() {
            return Err(format!("repository path {} does not exist", repo.git_url));
        }
        return Ok(path);
    }
    inner.check_clone_source(&repo.git_url)?;
    let branch = task
        .git_branch
        .clone()
        .or_else(|| template.git_branch.clone())
        .unwrap_or_else(|| repo.git_branch.clone());
    let dir = inner
        .settings
        .work_dir
        .join("repos")
        .join(format!("repository_{}_{}", repo.id, template.id));
    super::sandbox::trust_clone_source(&repo.git_url, task_dir)?;
    let secret = m.secret(inner, Some(repo.ssh_key_id))?;
    let (env, submodule_env) = launch::git_envs(task.id, secret, task_dir, &dir, &repo.git_url)?;
    let pins = hostkeys::Pins::write(inner, task.project_id, task_dir)?;
    let checked_out =
        launch::checkout(&repo.git_url, &branch, &dir, &env, &submodule_env, sink).await;
    if let Some(line) = check_pins(inner, &pins, task.id, sink).await {
        return Err(line);
    }
    checked_out?;
    if let Some(hash) = &task.commit_hash {
        launch::detach(hash, &dir, &env, sink).await?;
    }
    Ok(dir)
}

/// Variables of a run: extra vars (environment JSON, then the task's own, which win), the
/// child's environment, and `var`-type secrets.
pub(super) struct Variables {
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
    pub(super) env: Vec<(String, String)>,
    pub(super) var_secrets: BTreeMap<String, String>,
}

impl Variables {
    pub(super) fn collect(
        inner: &Inner,
        task: &Task,
        m: &Materials,
        cwd: &Path,
        task_dir: &Path,
    ) -> Result<Self, String> {
        let mut extra = serde_json::Map::new();
        if let Some(env) = &m.environment
            && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&env.json)
        {
            extra.extend(map);
        }
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&task.environment) {
            extra.extend(map);
        }
        let mut env = launch::base_env(task.id, task_dir, cwd);
        let mut var_secrets = BTreeMap::new();
        if let Some(e) = &m.environment {
            if let Some(Ok(serde_json::Value::Object(map))) = e
                .env
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>)
            {
                env.extend(map.into_iter().filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    _ => None,
                }));
            }
            for key in m.keys.iter().filter(|k| k.environment_id == Some(e.id)) {
                let value = inner.host.open_key(key)?.string;
                match key.name.split_once('.') {
                    Some(("env", name)) => env.push((name.to_owned(), value)),
                    Some((_, name)) => {
                        var_secrets.insert(name.to_owned(), value);
                    }
                    None => {
                        var_secrets.insert(key.name.clone(), value);
                    }
                }
            }
        }
        Ok(Self {
            extra,
            env,
            var_secrets,
        })
    }
}

/// Upstream's variables for build and deploy tasks: `SEMAPHORE_TASK_TYPE`, and the version a
/// build makes (`SEMAPHORE_TASK_TARGET_VERSION`) or a deploy receives
/// (`SEMAPHORE_TASK_INCOMING_VERSION`).
pub(super) fn build_env(template: &Template, task: &Task) -> Vec<(String, String)> {
    let version = match template.kind.as_str() {
        "build" => "SEMAPHORE_TASK_TARGET_VERSION",
        "deploy" => "SEMAPHORE_TASK_INCOMING_VERSION",
        _ => return Vec::new(),
    };
    let mut env = vec![("SEMAPHORE_TASK_TYPE".to_owned(), template.kind.clone())];
    if let Some(v) = &task.version {
        env.push((version.to_owned(), v.clone()));
    }
    env
}

/// Template arguments, then the task's own when the template allows them.
pub(super) fn arguments(template: &Template, task: &Task) -> (Vec<String>, Vec<String>) {
    let parse = |a: Option<&str>| -> Vec<String> {
        a.and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default()
    };
    let task_args = if template.allow_override_args_in_task {
        parse(task.arguments.as_deref())
    } else {
        Vec::new()
    };
    (parse(template.arguments.as_deref()), task_args)
}

/// `bash|python3 <script> [template args] [KEY=extra var ...] [task args]` (upstream's order;
/// extra vars sorted by key); `var` secrets are `NAME=secret` in the environment (upstream
/// puts them on the command line, where `ps` shows them). The program, app and environment,
/// for the local runner and remote runners alike.
pub(super) fn shell(
    template: &Template,
    task: &Task,
    vars: Variables,
) -> (String, Vec<String>, Vec<(String, String)>) {
    let program = match template.app.as_str() {
        "bash" => "bash".to_owned(),
        "python" => "python3".to_owned(),
        other => other.to_owned(),
    };
    let (template_args, task_args) = arguments(template, task);
    let mut args = vec![template.playbook.clone()];
    args.extend(template_args);
    for (k, v) in &vars.extra {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        args.push(format!("{k}={value}"));
    }
    args.extend(task_args);
    // Secrets go through the environment, never app (which anyone on the host can read).
    let mut env = vars.env;
    env.extend(vars.var_secrets);
    (program, args, env)
}

/// What `ansible-playbook` needs for `task` ([`launch::ansible`] builds its app from it),
/// for the local runner and remote runners alike: the inventory, its keys opened (an SSH key
/// as a file, a login and password and the become password as extra vars), the vault
/// passwords, and every extra variable (`extra`, then `var` secrets, the task's secret
/// variables and `semaphore_vars`).
pub(super) fn ansible_job(
    inner: &Inner,
    task: &Task,
    template: &Template,
    m: &Materials,
    mut extra: serde_json::Map<String, serde_json::Value>,
    var_secrets: BTreeMap<String, String>,
) -> Result<AnsibleJob, String> {
    let inventory = m
        .inventory
        .as_ref()
        .ok_or("an ansible template needs an inventory")?;
    let mut ssh_key = None;
    match m.secret(inner, inventory.ssh_key_id)? {
        Some((KeyKind::Ssh, s)) => ssh_key = launch::credentials_of(Some((KeyKind::Ssh, s))),
        Some((KeyKind::LoginPassword, s)) => {
            extra.insert("ansible_user".into(), s.login.into());
            extra.insert("ansible_password".into(), s.password.into());
        }
        _ => {}
    }
    if let Some((KeyKind::LoginPassword, s)) = m.secret(inner, inventory.become_key_id)? {
        if !s.login.is_empty() {
            extra.insert("ansible_become_user".into(), s.login.into());
        }
        extra.insert("ansible_become_password".into(), s.password.into());
    }
    let mut vaults = Vec::new();
    for vault in &template.vaults {
        if let Some((_, s)) = m.secret(inner, Some(vault.vault_key_id))? {
            vaults.push(JobVault {
                name: vault.name.clone().unwrap_or_else(|| "default".into()),
                password: s.password,
            });
        }
    }
    let flags = [
        ("-vvvv", task.debug),
        ("--diff", task.diff),
        ("--check", task.dry_run),
    ];
    for (k, v) in var_secrets {
        extra.insert(k, v.into());
    }
    if !task.sealed_secret.is_empty() {
        let plain = inner.host.open_sealed(&task.sealed_secret)?;
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&plain) {
            extra.extend(map);
        }
    }
    extra.insert(
        "semaphore_vars".into(),
        serde_json::json!({"task_details": {"id": task.id, "message": task.message}}),
    );
    let (mut args, task_args) = arguments(template, task);
    args.extend(task_args);
    let playbook = if task.playbook.is_empty() {
        &template.playbook
    } else {
        &task.playbook
    };
    Ok(AnsibleJob {
        inventory: JobInventory {
            kind: inventory.kind.clone(),
            inventory: inventory.inventory.clone(),
        },
        ssh_key,
        vaults,
        extra_vars: extra,
        flags: flags
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| f.to_owned())
            .collect(),
        args,
        limit: task.limit.clone(),
        playbook: playbook.clone(),
    })
}

/// Stores on the task the hash and subject of the commit checked out in `cwd` (`commit_hash`,
/// `commit_message`), when `cwd` is a git work tree's top: every clone, and a local-path
/// repository only when it is a git repository itself (left as it is: read, never checked
/// out). A failure to read it only leaves the fields as they were.
async fn record_commit(inner: &Arc<Inner>, task: &Task, cwd: &Path, task_dir: &Path, sink: &Sink) {
    if !cwd.join(".git").exists() {
        return;
    }
    let env = launch::base_env(task.id, task_dir, cwd);
    let Some((hash, subject)) = launch::read_commit(sink, cwd, env).await else {
        tracing::warn!(task = task.id, dir = %cwd.display(), "cannot read the checked-out commit");
        return;
    };
    update(inner, task.id, move |t| {
        t.commit_hash = Some(hash.clone());
        t.commit_message.clone_from(&subject);
        true
    })
    .await;
}
