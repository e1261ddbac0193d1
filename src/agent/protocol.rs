//! The JSON bodies of the runner protocol (`/api/internal/runners`), shared by the server and
//! `forge runner`. docs/runners.md describes each one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::TaskId;

/// The header a runner authenticates with.
pub const TOKEN_HEADER: &str = "x-runner-token";

/// Longest long-poll a runner may ask for (`?wait=`), in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

/// `POST /api/internal/runners`: register with the registration token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Register {
    /// The server's `--runner-registration-token`.
    pub registration_token: String,
    /// Display name (default: `runner-<id>`).
    pub name: String,
    /// A URL to reach the runner at (kept, shown; never called).
    pub webhook: String,
    /// Most tasks it runs at once (0 = no limit).
    pub max_parallel_tasks: u32,
    /// Tags templates choose it by.
    pub tags: Vec<String>,
    /// Upstream's RSA key for encrypted polls: accepted and ignored (use HTTPS).
    pub public_key: Option<String>,
}

/// The answer to a registration: the runner's id and its token (shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The runner's id.
    pub id: u64,
    /// The token to send as `X-Runner-Token`.
    pub token: String,
}

/// `GET /api/internal/runners`: what the runner must do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Poll {
    /// Jobs to start (a job already running is sent again until its first report).
    pub jobs: Vec<Job>,
    /// Tasks to kill.
    pub stop: Vec<TaskId>,
    /// Terraform/OpenTofu tasks whose plan a user confirmed: apply it.
    pub confirm: Vec<TaskId>,
    /// Terraform/OpenTofu tasks whose plan a user rejected: end them without applying.
    pub reject: Vec<TaskId>,
    /// The server's `--runner-timeout`: poll (or report) at least this often.
    pub timeout_secs: u64,
}

/// One task to run, resolved by the server: the runner needs nothing else.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// The task.
    pub task_id: TaskId,
    /// Its project.
    pub project_id: u64,
    /// Its template.
    pub template_id: u64,
    /// The template's name (for log lines).
    pub template_name: String,
    /// The app (`bash`, `python`, ...).
    pub app: String,
    /// The executable.
    pub program: String,
    /// Arguments before `args` (an administrator's `apps.<id>.args`).
    pub prefix: Vec<String>,
    /// The arguments.
    pub args: Vec<String>,
    /// Environment variables on top of the runner's base environment (`PATH`, `LANG`,
    /// `HOME`, `TMPDIR`, `PWD`, `FORGE_TASK_ID`); secrets of `env` type included.
    pub env: BTreeMap<String, String>,
    /// The repository to run in.
    pub repository: JobRepository,
    /// The script, relative to the checkout (must resolve inside it).
    pub script: String,
    /// Time limit in seconds (0 = none).
    pub max_duration_secs: u64,
    /// Seconds between SIGTERM and SIGKILL on a stop.
    pub stop_grace_secs: u64,
    /// An ansible job: what the runner builds `ansible-playbook`'s argv from (then `args` is
    /// empty and `script` the playbook).
    pub ansible: Option<AnsibleJob>,
    /// The project's pinned SSH host keys (`known_hosts` lines) git's and ansible's ssh check
    /// hosts against; hosts not pinned yet are accepted.
    pub known_hosts: String,
    /// A terraform/OpenTofu job: what the runner builds its commands from (then `args` is
    /// empty and `script` the directory to run in, relative to the checkout; empty: its top).
    pub terraform: Option<TerraformJob>,
}

/// What a terraform/OpenTofu run's commands are built from (see `runner::launch::Flow`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TerraformJob {
    /// The task's options (plan only, destroy, auto-approve, init flags).
    pub params: crate::runner::launch::Params,
    /// The workspace to select (or create) after `init` (a `terraform-workspace` inventory).
    pub workspace: Option<String>,
    /// The extra variables, as `-var name=value` (secrets travel in `env` as `TF_VAR_*`).
    pub vars: Vec<(String, String)>,
    /// Template arguments, then the task's, after the plan's own.
    pub args: Vec<String>,
}

/// What `ansible-playbook` needs, resolved and opened by the server for one job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AnsibleJob {
    /// The inventory.
    pub inventory: JobInventory,
    /// The inventory's SSH key (`kind` `ssh`; a login and password went into `extra_vars`).
    pub ssh_key: Option<Credentials>,
    /// Vault passwords, by vault id.
    pub vaults: Vec<JobVault>,
    /// Every extra variable, secrets included (environment, task, `var` secrets, secret
    /// task variables, login and become passwords, `semaphore_vars`).
    pub extra_vars: serde_json::Map<String, serde_json::Value>,
    /// `-vvvv`, `--diff`, `--check` as the task asks.
    pub flags: Vec<String>,
    /// Template arguments, then the task's.
    pub args: Vec<String>,
    /// `--limit`, when not empty.
    pub limit: String,
    /// The playbook, relative to the checkout.
    pub playbook: String,
}

/// An inventory as a job carries it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobInventory {
    /// `static`, `static-yaml`, or `file` (a path in the checkout).
    pub kind: String,
    /// The inventory text, or the path of a `file` inventory.
    pub inventory: String,
}

/// One vault password.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobVault {
    /// The vault id (`default` when the template names none).
    pub name: String,
    /// The password.
    pub password: String,
}

/// Where a job's files come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRepository {
    /// A git URL, or an absolute path on the runner used in place.
    pub url: String,
    /// The branch to check out.
    pub branch: String,
    /// A commit to check out after the branch.
    pub commit: Option<String>,
    /// The repository's credentials, when it has some.
    pub credentials: Option<Credentials>,
}

/// An access key's secret, opened for one job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Credentials {
    /// `ssh` or `login_password`.
    pub kind: String,
    /// Login (user name).
    pub login: String,
    /// Password.
    pub password: String,
    /// SSH private key (PEM).
    pub private_key: String,
}

/// `PUT /api/internal/runners`: the state of the runner's jobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Report {
    /// One entry per job the runner holds (every job at least once a poll interval).
    pub jobs: Vec<JobReport>,
}

/// What became of one job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobReport {
    /// The task.
    pub task_id: TaskId,
    /// `running`, `waiting_confirmation` (a terraform plan waits for a user's confirm or
    /// reject; no process runs), or how it ended: `success`, `error`, `stopped`.
    pub status: String,
    /// The number (from 0) of the first record of `log` among all the job's records: a
    /// batch sent again after a lost answer is stored once.
    pub log_offset: u64,
    /// New output records.
    pub log: Vec<LogRecord>,
    /// The commit checked out.
    pub commit: Option<Commit>,
    /// SSH host keys the job's ssh met for the first time (hosts not in the job's
    /// `known_hosts`): the server pins them for the project.
    pub host_keys: Vec<HostKeyReport>,
}

/// A host key met for the first time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostKeyReport {
    /// The host as ssh names it (`example.com`, `[10.0.0.5]:2222`).
    pub host: String,
    /// The key type (`ssh-ed25519`).
    pub key_type: String,
    /// The key (base64).
    pub key: String,
}

/// One output line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogRecord {
    /// When it was written, Unix microseconds.
    pub time: i64,
    /// The line.
    pub message: String,
}

/// A checked-out commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Commit {
    /// Full hash.
    pub hash: String,
    /// Subject line.
    pub message: String,
}

/// The answer to a report: reported jobs the runner must kill (not its, or finished here).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportAnswer {
    /// Tasks to kill.
    pub stop: Vec<TaskId>,
}
