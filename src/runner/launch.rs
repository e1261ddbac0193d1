//! The executor both the server's local runner ([`super::exec`]) and `forge runner`
//! ([`crate::agent::job`]) run a resolved job with: the repository checkout (clone or update,
//! credentials only for its own host, submodules without them), the commit read back, paths
//! checked to stay inside the checkout, ansible's argv with its secrets in `0600` files and
//! FIFO handoffs of the task's private dir ([`super::secrets`]), the app started as an argv in
//! its own process group inside the task sandbox, and its supervision (a stop, the grace, the
//! time limit). Nothing here touches the store: the server resolves what a job needs from it
//! first ([`super::exec`], [`super::remote_exec`]) and records what happened after.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::process::{self, Chunk};
use super::{Stop, hostkeys, secrets};
use crate::agent::protocol::{AnsibleJob, Credentials, TerraformJob};
use crate::model::{KeyKind, KeySecret, TaskId, TaskStatus};
pub(crate) use hostkeys::Pins;

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Success,
    Failed(String),
    Stopped,
    /// A user rejected the plan the task waited with.
    Rejected,
    TimedOut(u64),
    /// Stopped because the server shuts down.
    ShutDown,
    /// Never claimed: the server shut down first, and the task stays `waiting`.
    NotStarted,
}

impl Outcome {
    /// The status a task ends with after this outcome (`Waiting` when it never started).
    pub(crate) fn status(&self) -> TaskStatus {
        match self {
            Self::Success => TaskStatus::Success,
            Self::Failed(_) | Self::TimedOut(_) | Self::ShutDown => TaskStatus::Error,
            Self::Stopped | Self::Rejected => TaskStatus::Stopped,
            Self::NotStarted => TaskStatus::Waiting,
        }
    }

    /// The last output line that says how the task ended, if one does.
    pub(crate) fn line(&self) -> Option<String> {
        match self {
            Self::Success | Self::NotStarted => None,
            Self::Failed(why) => Some(why.clone()),
            Self::Stopped => Some("Task stopped".to_owned()),
            Self::Rejected => Some("Plan rejected: nothing was applied".to_owned()),
            Self::TimedOut(secs) => Some(format!(
                "Task timed out: it ran longer than {secs} s and was killed"
            )),
            Self::ShutDown => Some(SHUT_DOWN_LINE.to_owned()),
        }
    }
}

/// The last output line of a task the server stopped on shutdown.
pub(crate) const SHUT_DOWN_LINE: &str = "stopped: server shut down";

/// A child's environment.
pub(crate) type Env = Vec<(String, String)>;

/// How long the output of an app that has ended may take to drain (a process that left its
/// group can hold the pipe open for ever).
pub(crate) const DRAIN_OUTPUT: Duration = Duration::from_secs(5);

/// Where a run's output goes and how its commands are confined: the server's output sink, or
/// a runner's job log.
pub(crate) trait Log: Sync {
    /// A sender for a reader of a process's output.
    fn sender(&self) -> mpsc::Sender<Chunk>;
    /// Adds a line of Forge's own (`Cloning Repository ...`), in order with the output.
    fn note(&self, text: String) -> impl Future<Output = ()> + Send;
    /// A command running `program` inside the task sandbox, read-write in `workspace` and the
    /// task's private directory only.
    fn command(&self, program: &str, workspace: &Path) -> Command;
}

/// The outcome a stop asked for.
pub(crate) fn stopped(why: Option<Stop>) -> Outcome {
    if why == Some(Stop::Shutdown) {
        Outcome::ShutDown
    } else {
        Outcome::Stopped
    }
}

/// When a run that may take `max_secs` (0 = no limit) and starts now must end.
pub(crate) fn deadline_after(max_secs: u64) -> tokio::time::Instant {
    // Far enough to never fire, near enough not to overflow.
    let secs = if max_secs > 0 {
        max_secs
    } else {
        100 * 365 * 86_400
    };
    tokio::time::Instant::now() + Duration::from_secs(secs)
}

/// The outcome of an app that exited by itself.
pub(crate) fn exit_outcome(status: std::io::Result<std::process::ExitStatus>) -> Outcome {
    match status {
        Ok(s) if s.success() => Outcome::Success,
        Ok(s) => Outcome::Failed(match s.code() {
            Some(code) => format!("Running app failed: exit status {code}"),
            None => "Running app failed: killed by a signal".into(),
        }),
        Err(e) => Outcome::Failed(format!("Running app failed: {e}")),
    }
}

/// What to start: an argv (never a shell string), where, with which environment.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) cwd: PathBuf,
    pub(crate) program: String,
    /// The app's own arguments (`apps.<id>.args`), before every command's.
    pub(crate) prefix: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
}

/// A started app: the child, its process group and the end of its output.
pub(crate) struct Started {
    pub(crate) child: tokio::process::Child,
    pub(crate) pgid: i32,
    pub(crate) output_done: tokio::sync::oneshot::Receiver<()>,
}

/// Starts `argv` with `args` in its own process group inside the sandbox, its output into
/// `log`; a failure to start is the task's failure.
pub(crate) fn start(log: &impl Log, app: &App, args: &[String]) -> Result<Started, Outcome> {
    let mut cmd = log.command(&app.program, &app.cwd);
    cmd.args(&app.prefix)
        .args(args)
        .current_dir(&app.cwd)
        .env_clear()
        .envs(app.env.iter().cloned());
    let (child, output_done) = process::spawn(cmd, log.sender()).map_err(|e| {
        Outcome::Failed(format!(
            "Running app failed: cannot start {}: {e}",
            app.program
        ))
    })?;
    let pgid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or(0);
    Ok(Started {
        child,
        pgid,
        output_done,
    })
}

/// Waits for the app, honouring a stop (SIGTERM, then SIGKILL after `grace`; SIGKILL at once
/// when forced) and the deadline; whatever is left of its process group is killed at the end.
/// `Ok` with the exit status when it ended by itself.
pub(crate) async fn supervise(
    child: &mut tokio::process::Child,
    pgid: i32,
    stop: &mut watch::Receiver<Option<Stop>>,
    deadline: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    grace: Duration,
    max_secs: u64,
) -> Result<std::io::Result<std::process::ExitStatus>, Outcome> {
    let mut outcome = None;
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
            why = stop.wait_for(Option::is_some), if outcome.is_none() => {
                // A closed channel (the runner is gone) counts as a forced stop.
                let why = why.ok().and_then(|w| *w).unwrap_or(Stop::Kill);
                outcome = Some(stopped(Some(why)));
                if why == Stop::Kill {
                    process::signal_group(pgid, Signal::SIGKILL);
                } else {
                    process::signal_group(pgid, Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + grace);
                }
            }
            () = deadline.as_mut(), if outcome.is_none() => {
                outcome = Some(Outcome::TimedOut(max_secs));
                process::signal_group(pgid, Signal::SIGKILL);
            }
            () = kill_timer => {
                process::signal_group(pgid, Signal::SIGKILL);
                kill_at = None;
            }
        }
    };
    // Nothing of the task may outlive it: end whatever the app left running in its group.
    process::signal_group(pgid, Signal::SIGKILL);
    match outcome {
        Some(outcome) => Err(outcome),
        None => Ok(status),
    }
}

/// Makes a directory (and parents) readable only by us.
pub(crate) fn private_dir(path: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Writes a file only we can read (keys, passwords, extra vars).
pub(crate) fn private_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(contents)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `path` (relative) inside `root`, following symlinks: refuses anything that resolves outside.
pub(crate) fn inside(root: &Path, path: &str, what: &str) -> Result<PathBuf, String> {
    crate::service::validate::relative_path(path, what)?;
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let full = root
        .join(path)
        .canonicalize()
        .map_err(|_| format!("{what} {path} not found in the repository"))?;
    if !full.starts_with(&root) {
        return Err(format!("{what} {path} points outside the repository"));
    }
    Ok(full)
}

/// The base environment every child gets: nothing of the host process's but `PATH` and
/// `LANG`; its own `HOME` and `TMPDIR` in the task's private dir.
pub(crate) fn base_env(task: TaskId, home: &Path, cwd: &Path) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
    vec![
        ("PATH".into(), path),
        ("LANG".into(), lang),
        ("HOME".into(), home.display().to_string()),
        ("TMPDIR".into(), home.join("tmp").display().to_string()),
        ("PWD".into(), cwd.display().to_string()),
        ("FORGE_TASK_ID".into(), task.to_string()),
    ]
}

/// After ssh ran with the project's pinned keys ([`Pins`]): ssh's log lines into the output,
/// and the line saying why the task fails when a host showed another key than its pinned one.
pub(crate) async fn ssh_lines(pins: &Pins, log: &impl Log) -> Option<String> {
    let (lines, changed) = pins.explain();
    for line in lines {
        log.note(line).await;
    }
    changed
}

/// The output line for a host whose key was pinned for the project.
pub(crate) fn pinned_line(host: &str) -> String {
    format!("Pinned the SSH host key of {host} for this project")
}

/// A run's outcome once ssh's log is read: a changed host key fails a run that ended by
/// itself (`changed` says why).
pub(crate) fn pins_checked(outcome: Outcome, changed: Option<String>) -> Outcome {
    match changed {
        Some(changed) if matches!(outcome, Outcome::Success | Outcome::Failed(_)) => {
            Outcome::Failed(changed)
        }
        _ => outcome,
    }
}

/// Writes an SSH private key where only we can read it; returns its path.
fn key_file(task_dir: &Path, name: &str, private_key: &str) -> Result<PathBuf, String> {
    let path = task_dir.join(name);
    let mut key = private_key.to_owned();
    if !key.ends_with('\n') {
        key.push('\n');
    }
    private_file(&path, key.as_bytes())?;
    Ok(path)
}

/// The environment that gives git the credentials of a repository's key, through files in
/// `dir` (an SSH key, `0600`): an SSH command, or a credential helper reading the child's
/// environment for a login and password (never the URL, which would show in `ps`).
pub(crate) fn git_credentials(
    secret: Option<(KeyKind, KeySecret)>,
    dir: &Path,
    url: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    match secret {
        Some((KeyKind::Ssh, s)) => {
            let key = key_file(dir, "git_ssh_key", &s.private_key)?;
            env.push((
                "GIT_SSH_COMMAND".into(),
                hostkeys::ssh_command(Some(&key), dir),
            ));
        }
        // Credentials reach git through a helper reading the child's environment, never
        // through the URL (which would show in `ps` and in .git/config), and only for the
        // repository's own host.
        Some((KeyKind::LoginPassword, s)) => {
            env.extend(secrets::credential_env(url, s.login, s.password));
        }
        _ => {}
    }
    Ok(env)
}

/// An opened key as a job carries it ([`Credentials`]), back to the kind and secret.
pub(crate) fn credentials_secret(c: Option<&Credentials>) -> Option<(KeyKind, KeySecret)> {
    let c = c?;
    let kind = match c.kind.as_str() {
        "ssh" => KeyKind::Ssh,
        "login_password" => KeyKind::LoginPassword,
        _ => return None,
    };
    Some((
        kind,
        KeySecret {
            login: c.login.clone(),
            password: c.password.clone(),
            private_key: c.private_key.clone(),
            ..KeySecret::default()
        },
    ))
}

/// An opened key for a job ([`Credentials`]): SSH keys and logins only.
pub(crate) fn credentials_of(secret: Option<(KeyKind, KeySecret)>) -> Option<Credentials> {
    let (kind, s) = secret?;
    let kind = match kind {
        KeyKind::Ssh => "ssh",
        KeyKind::LoginPassword => "login_password",
        _ => return None,
    };
    Some(Credentials {
        kind: kind.into(),
        login: s.login,
        password: s.password,
        private_key: s.private_key,
    })
}

/// The git environments of a checkout into `dir` of `url` with the key `secret`: the one
/// with the repository's credentials, and the one for its submodules, which gets none (a
/// `.gitmodules` URL must not collect them). Both use the task's known hosts in `task_dir`
/// and never prompt.
pub(crate) fn git_envs(
    task: TaskId,
    secret: Option<(KeyKind, KeySecret)>,
    task_dir: &Path,
    dir: &Path,
    url: &str,
) -> Result<(Env, Env), String> {
    let mut env = base_env(task, task_dir, dir);
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    let mut submodule_env = env.clone();
    submodule_env.push((
        "GIT_SSH_COMMAND".into(),
        hostkeys::ssh_command(None, task_dir),
    ));
    let credentials = git_credentials(secret, task_dir, url)?;
    if !credentials.iter().any(|(k, _)| k == "GIT_SSH_COMMAND") {
        env.push((
            "GIT_SSH_COMMAND".into(),
            hostkeys::ssh_command(None, task_dir),
        ));
    }
    env.extend(credentials);
    Ok((env, submodule_env))
}

/// Clones `url` at `branch` into `dir`, or brings an existing clone up to date (re-cloning
/// when that fails); submodules with `submodule_env`.
pub(crate) async fn checkout(
    url: &str,
    branch: &str,
    dir: &Path,
    env: &[(String, String)],
    submodule_env: &[(String, String)],
    log: &impl Log,
) -> Result<(), String> {
    if dir.join(".git").is_dir() {
        log.note(format!("Updating Repository {url}")).await;
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let remote = format!("refs/remotes/origin/{branch}");
        let updated = async {
            git(&["remote", "set-url", "origin", url], dir, env, log).await?;
            git(
                &["fetch", "--prune", "origin", refspec.as_str()],
                dir,
                env,
                log,
            )
            .await?;
            git(
                &["checkout", "--force", "-B", branch, remote.as_str(), "--"],
                dir,
                env,
                log,
            )
            .await?;
            git(&["clean", "-ffdx"], dir, env, log).await?;
            submodules(dir, submodule_env, log).await
        }
        .await;
        if updated.is_ok() {
            return Ok(());
        }
        log.note("Update failed; cloning again".into()).await;
        let _ = std::fs::remove_dir_all(dir);
    }
    log.note(format!("Cloning Repository {url}")).await;
    // Into the workspace made first: the sandbox lets git write there and nowhere else.
    private_dir(dir)?;
    let args = ["clone", "--branch", branch, "--", url, "."];
    git(&args, dir, env, log).await?;
    submodules(dir, submodule_env, log).await
}

/// Checks out commit `hash` in the clone in `dir`.
pub(crate) async fn detach(
    hash: &str,
    dir: &Path,
    env: &[(String, String)],
    log: &impl Log,
) -> Result<(), String> {
    log.note(format!("Checking out commit {hash}")).await;
    git(
        &["checkout", "--force", "--detach", hash, "--"],
        dir,
        env,
        log,
    )
    .await
}

/// Checks out the submodules of the clone in `dir`, with `env` (which holds no credentials).
async fn submodules(dir: &Path, env: &[(String, String)], log: &impl Log) -> Result<(), String> {
    git(
        &["submodule", "update", "--init", "--recursive"],
        dir,
        env,
        log,
    )
    .await
}

/// Runs one git command (argv, output into the task log); a failure is an error.
async fn git(
    args: &[&str],
    cwd: &Path,
    env: &[(String, String)],
    log: &impl Log,
) -> Result<(), String> {
    let mut cmd = log.command("git", cwd);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().cloned());
    let (mut child, output_done) =
        process::spawn(cmd, log.sender()).map_err(|e| format!("cannot run git: {e}"))?;
    // git starts helpers (git-remote-http, ssh) in its group: if this future is dropped by a
    // stop or a timeout, or git fails, none of them may live on.
    let group = process::GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
    let status = child.wait().await.map_err(|e| format!("git failed: {e}"))?;
    drop(group);
    // Its lines come before the next step's.
    let _ = tokio::time::timeout(DRAIN_OUTPUT, output_done).await;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {} failed: {status}",
            args.first().copied().unwrap_or_default()
        ))
    }
}

/// The hash and subject of the commit checked out in `cwd`, when `cwd` is a git work tree's
/// top (`None` otherwise, or when git cannot tell).
pub(crate) async fn read_commit(
    log: &impl Log,
    cwd: &Path,
    env: Vec<(String, String)>,
) -> Option<(String, String)> {
    if !cwd.join(".git").exists() {
        return None;
    }
    let safe = format!("safe.directory={}", cwd.display());
    let out = log
        .command("git", cwd)
        .args(["-c", safe.as_str(), "log", "-1", "--format=%H%n%s"])
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())?;
    parse_commit(&String::from_utf8_lossy(&out.stdout))
}

/// `<hash>\n<subject>` as `git log -1 --format=%H%n%s` prints it.
fn parse_commit(text: &str) -> Option<(String, String)> {
    let mut lines = text.lines();
    let hash = lines.next()?.trim();
    let ok = (40..=64).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| (hash.to_owned(), lines.next().unwrap_or_default().to_owned()))
}

/// `ansible-playbook -i <inventory> [key options] [-vvvv] [--diff] [--check]
/// --extra-vars=@<file> [template args] [task args] [--limit=X] <playbook>` for `job` in
/// checkout `cwd`, with `env` (the task's) extended with ansible's own. No secret is on the
/// command line: keys and a static inventory are `0600` files in `task_dir`, extra vars and
/// vault passwords [`secrets::handoff`]s. ansible's ssh checks host keys against
/// `task_dir/known_hosts` (written by the caller).
pub(crate) fn ansible(
    job: &AnsibleJob,
    cwd: &Path,
    task_dir: &Path,
    mut env: Vec<(String, String)>,
) -> Result<(Vec<String>, Env), String> {
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    env.extend(hostkeys::ansible_env(task_dir));
    env.push((
        "ANSIBLE_LOCAL_TEMP".into(),
        task_dir.join("tmp").display().to_string(),
    ));
    // ansible's remote temp dir, expanded by the target's shell: the task's home on
    // `localhost` (the only place the sandbox lets a local-connection play write; upstream's
    // `~` default names the login's home from the user database), the login's home elsewhere.
    env.push(("ANSIBLE_REMOTE_TEMP".into(), "$HOME/.ansible/tmp".into()));
    let inventory = &job.inventory;
    let inventory_path = if inventory.kind == "file" {
        inside(cwd, &inventory.inventory, "inventory")?
    } else {
        let name = if inventory.kind == "static-yaml" {
            "inventory.yml"
        } else {
            "inventory"
        };
        let path = task_dir.join(name);
        private_file(&path, inventory.inventory.as_bytes())?;
        path
    };
    let mut args = vec!["-i".to_owned(), inventory_path.display().to_string()];
    if let Some(key) = job.ssh_key.as_ref().filter(|k| k.kind == "ssh") {
        let file = key_file(task_dir, "inventory_ssh_key", &key.private_key)?;
        args.push(format!("--private-key={}", file.display()));
        if !key.login.is_empty() {
            args.push(format!("--user={}", key.login));
        }
    }
    for (i, vault) in job.vaults.iter().enumerate() {
        let file = secrets::handoff(
            task_dir,
            &format!("vault_{i}"),
            vault.password.clone().into_bytes(),
        )?;
        args.push(format!("--vault-id={}@{}", vault.name, file.display()));
    }
    args.extend(job.flags.iter().cloned());
    // Read once by ansible through a FIFO removed as soon as it opens it: never on disk.
    let vars_file = secrets::handoff(
        task_dir,
        "extra_vars.json",
        serde_json::Value::Object(job.extra_vars.clone())
            .to_string()
            .into_bytes(),
    )?;
    args.push(format!("--extra-vars=@{}", vars_file.display()));
    args.extend(job.args.iter().cloned());
    if !job.limit.is_empty() {
        args.push(format!("--limit={}", job.limit));
    }
    inside(cwd, &job.playbook, "playbook")?;
    args.push(job.playbook.clone());
    Ok((args, env))
}

/// The plan file of a terraform/OpenTofu run, in its task's private directory.
pub(crate) const PLAN_FILE: &str = "plan.tfplan";

/// A task's terraform options (its `params`; unknown keys, such as ansible's, are ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(clippy::struct_excessive_bools)] // upstream's five independent flags
pub struct Params {
    /// Only plan: the task ends after the plan.
    pub plan: bool,
    /// Plan a destroy.
    pub destroy: bool,
    /// Apply the plan without waiting for a confirmation.
    pub auto_approve: bool,
    /// `init -upgrade`.
    pub upgrade: bool,
    /// `init -reconfigure`.
    pub reconfigure: bool,
}

impl Params {
    /// The params stored on a task (JSON object text; empty = none).
    #[must_use]
    pub fn from_task(params: &str) -> Self {
        serde_json::from_str(params).unwrap_or_default()
    }
}

/// The commands of one terraform/OpenTofu run (see `runner::terraform`), on the server and on
/// a runner alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) params: Params,
    pub(crate) init: Vec<String>,
    pub(crate) workspace: Option<Vec<String>>,
    pub(crate) plan: Vec<String>,
    pub(crate) apply: Vec<String>,
}

impl Flow {
    /// The argv (after the program and the app's own arguments) of every step of `job`, its
    /// plan saved to `plan_file`.
    pub(crate) fn new(job: &TerraformJob, plan_file: &Path) -> Self {
        let params = job.params;
        let strings = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut init = strings(&["init", "-input=false"]);
        if params.upgrade {
            init.push("-upgrade".into());
        }
        if params.reconfigure {
            init.push("-reconfigure".into());
        }
        let workspace = job.workspace.as_ref().map(|w| {
            let mut a = strings(&["workspace", "select", "-or-create=true"]);
            a.push(w.clone());
            a
        });
        let mut plan = strings(&["plan", "-input=false", "-detailed-exitcode"]);
        if params.destroy {
            plan.push("-destroy".into());
        }
        plan.push(format!("-out={}", plan_file.display()));
        for (k, v) in &job.vars {
            plan.push("-var".into());
            plan.push(format!("{k}={v}"));
        }
        plan.extend(job.args.iter().cloned());
        let mut apply = strings(&["apply", "-input=false"]);
        apply.push(plan_file.display().to_string());
        Self {
            params,
            init,
            workspace,
            plan,
            apply,
        }
    }
}

/// The directory a terraform/OpenTofu run works in: `dir` (empty: the checkout's top) inside
/// `checkout`.
pub(crate) fn terraform_dir(checkout: &Path, dir: &str) -> Result<PathBuf, String> {
    let cwd = if dir.is_empty() {
        checkout.to_path_buf()
    } else {
        inside(checkout, dir, "directory")?
    };
    if !cwd.is_dir() {
        return Err(format!("{dir} is not a directory"));
    }
    Ok(cwd)
}

/// The lines around a plan's confirmation, as the server and runners write them.
pub(crate) const WAITING_LINE: &str =
    "Waiting for confirmation: confirm to apply the plan, or reject it";
pub(crate) const CONFIRMED_LINE: &str = "Plan confirmed: applying";
pub(crate) const NO_CHANGES_LINE: &str = "No changes: nothing to apply";
pub(crate) const PLAN_ONLY_LINE: &str = "Plan only: not applied";

/// The `Running: ...` line shown before each terraform command.
pub(crate) fn running_line(program: &str, prefix: &[String], args: &[String]) -> String {
    let shown: Vec<&str> = std::iter::once(program)
        .chain(prefix.iter().map(String::as_str))
        .chain(args.iter().map(String::as_str))
        .collect();
    format!("Running: {}", shown.join(" "))
}

/// A command that must succeed exited with `code`.
pub(crate) fn succeeded(code: i32) -> Result<(), Outcome> {
    if code == 0 {
        Ok(())
    } else {
        Err(Outcome::Failed(format!(
            "Running app failed: exit status {code}"
        )))
    }
}

/// What a plan's exit `code` means: `Ok(true)` changes to apply, `Ok(false)` none (the task
/// succeeds), `Err` a failed plan.
pub(crate) fn plan_changes(code: i32) -> Result<bool, Outcome> {
    match code {
        2 => Ok(true),
        code => succeeded(code).map(|()| false),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use super::{ansible, parse_commit};
    use crate::agent::protocol::{AnsibleJob, Credentials, JobInventory, JobVault};

    #[test]
    fn ansibles_secrets_stay_off_its_argv_in_private_files_and_handoffs() {
        let checkout = tempfile::tempdir().expect("dir");
        std::fs::write(checkout.path().join("site.yml"), "- hosts: all\n").expect("playbook");
        let task_dir = tempfile::tempdir().expect("dir");
        let job = AnsibleJob {
            inventory: JobInventory {
                kind: "static".into(),
                inventory: "web ansible_host=10.0.0.5\n".into(),
            },
            ssh_key: Some(Credentials {
                kind: "ssh".into(),
                login: "deploy".into(),
                private_key: "PRIVATE-KEY-MATERIAL".into(),
                ..Credentials::default()
            }),
            vaults: vec![JobVault {
                name: "prod".into(),
                password: "VAULT-PASSWORD".into(),
            }],
            extra_vars: serde_json::json!({"db_password": "EXTRA-SECRET"})
                .as_object()
                .cloned()
                .expect("object"),
            flags: vec!["--diff".into()],
            args: vec!["--tags".into(), "web".into()],
            limit: "web".into(),
            playbook: "site.yml".into(),
        };
        let (args, env) =
            ansible(&job, checkout.path(), task_dir.path(), Vec::new()).expect("argv");
        let line = args.join(" ");
        for secret in ["PRIVATE-KEY-MATERIAL", "VAULT-PASSWORD", "EXTRA-SECRET"] {
            assert!(!line.contains(secret), "{secret} in {line}");
            assert!(
                !env.iter().any(|(_, v)| v.contains(secret)),
                "{secret} in env"
            );
        }
        let dir = task_dir.path().display().to_string();
        assert_eq!(args[0], "-i");
        assert_eq!(args[1], format!("{dir}/inventory"));
        assert!(args.contains(&format!("--private-key={dir}/inventory_ssh_key")));
        assert!(args.contains(&"--user=deploy".to_owned()));
        assert!(args.contains(&format!("--vault-id=prod@{dir}/vault_0")));
        assert_eq!(
            args[args.len() - 6..],
            [
                "--diff".to_owned(),
                format!("--extra-vars=@{dir}/extra_vars.json"),
                "--tags".to_owned(),
                "web".to_owned(),
                "--limit=web".to_owned(),
                "site.yml".to_owned(),
            ]
        );
        for file in ["inventory", "inventory_ssh_key"] {
            let mode = std::fs::metadata(task_dir.path().join(file))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        for fifo in ["vault_0", "extra_vars.json"] {
            let kind = std::fs::metadata(task_dir.path().join(fifo))
                .expect("fifo")
                .file_type();
            assert!(kind.is_fifo(), "{fifo} is a read-once handoff");
        }
        crate::runner::secrets::remove(task_dir.path());
    }

    #[test]
    fn a_commit_is_its_full_hash_and_subject() {
        let hash = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parse_commit(&format!("{hash}\nFix the deploy\n")),
            Some((hash.to_owned(), "Fix the deploy".to_owned()))
        );
        assert_eq!(
            parse_commit(&format!("{hash}\n")),
            Some((hash.to_owned(), String::new()))
        );
        assert_eq!(parse_commit("fatal: not a git repository\n"), None);
        assert_eq!(parse_commit("abc123\nshort\n"), None);
        assert_eq!(parse_commit(""), None);
    }
}
