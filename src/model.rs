//! Plain data types stored by Forge. No behaviour beyond small helpers; serde only.

use serde::{Deserialize, Serialize};

mod host_keys;
mod integrations;
pub use host_keys::HostKey;
pub use integrations::{
    Delivery, DeliveryOutcome, Integration, IntegrationAlias, IntegrationMatcher, IntegrationValue,
};
mod runners;
pub use runners::RemoteRunner;
mod totp;
pub use totp::UserTotp;

/// A user id (JSON integer, increasing from 1).
pub type UserId = u64;

/// A SHA-256 digest of a secret (session id or API token); what the store keys secrets by.
pub type SecretHash = [u8; 32];

/// A user account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Server-assigned id.
    pub id: UserId,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Login name, unique case-insensitively across usernames and emails.
    pub username: String,
    /// Display name.
    pub name: String,
    /// Email address, unique case-insensitively.
    pub email: String,
    /// System administrator.
    pub admin: bool,
    /// Authenticated elsewhere (LDAP/OIDC); cannot log in with or change a password.
    pub external: bool,
    /// Wants email alerts.
    pub alert: bool,
    /// scrypt PHC string; empty for external users.
    pub password_hash: String,
}

/// A login session; stored under the hash of its random id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Whose session.
    pub user_id: UserId,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Last request seen, Unix seconds (sliding inactivity expiry).
    pub last_active: i64,
    /// Client address at login.
    pub ip: String,
    /// `User-Agent` at login.
    pub user_agent: String,
}

/// An API token; stored under the hash of the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Owner.
    pub user_id: UserId,
    /// Stable, non-secret handle listed as the token's `id` after creation.
    pub handle: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Revoked; an expired token never authenticates.
    pub expired: bool,
}

/// A project id.
pub type ProjectId = u64;

/// A project: the unit of membership and of every resource below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Server-assigned id.
    pub id: ProjectId,
    /// Display name (non-empty).
    pub name: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Send alerts for this project's tasks.
    pub alert: bool,
    /// Chat to alert, if any.
    pub alert_chat: Option<String>,
    /// Tasks of this project that may run at once; 0 = unlimited.
    pub max_parallel_tasks: u32,
    /// Free-form project type (upstream's `type`, usually empty).
    pub kind: String,
}

/// A member's role in a project; each grants a set of [`Permissions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Everything in the project.
    Owner,
    /// Run tasks and manage resources.
    Manager,
    /// Run and stop tasks.
    TaskRunner,
    /// Read only.
    Guest,
}

/// Permission bits, as upstream encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions(pub u8);

impl Permissions {
    /// Run, stop and confirm tasks.
    pub const RUN_TASKS: Self = Self(1);
    /// Change or delete the project itself.
    pub const UPDATE_PROJECT: Self = Self(2);
    /// Create, change and delete keys, repositories, inventories, environments, templates.
    pub const MANAGE_RESOURCES: Self = Self(4);
    /// Add, change and remove members.
    pub const MANAGE_USERS: Self = Self(8);
    /// Nothing beyond reading.
    pub const NONE: Self = Self(0);
    /// Every bit.
    pub const ALL: Self = Self(15);

    /// Whether every bit of `other` is set here.
    #[must_use]
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl Role {
    /// The wire name (`owner`, `manager`, `task_runner`, `guest`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Manager => "manager",
            Role::TaskRunner => "task_runner",
            Role::Guest => "guest",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Role::Owner),
            "manager" => Some(Role::Manager),
            "task_runner" => Some(Role::TaskRunner),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }

    /// What the role may do.
    #[must_use]
    pub fn permissions(self) -> Permissions {
        match self {
            Role::Owner => Permissions::ALL,
            Role::Manager => {
                Permissions(Permissions::RUN_TASKS.0 | Permissions::MANAGE_RESOURCES.0)
            }
            Role::TaskRunner => Permissions::RUN_TASKS,
            Role::Guest => Permissions::NONE,
        }
    }

    /// Compact storage form.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            Role::Owner => 0,
            Role::Manager => 1,
            Role::TaskRunner => 2,
            Role::Guest => 3,
        }
    }

    /// Inverse of [`Role::to_u8`]; unknown values read as the least privilege.
    #[must_use]
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Role::Owner,
            1 => Role::Manager,
            2 => Role::TaskRunner,
            _ => Role::Guest,
        }
    }
}

/// The kind of an access key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    /// No credentials.
    None,
    /// An SSH private key (with optional login and passphrase).
    Ssh,
    /// A login and password.
    LoginPassword,
    /// A single secret string (environment secrets).
    String,
}

impl KeyKind {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::None => "none",
            KeyKind::Ssh => "ssh",
            KeyKind::LoginPassword => "login_password",
            KeyKind::String => "string",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(KeyKind::None),
            "ssh" => Some(KeyKind::Ssh),
            "login_password" => Some(KeyKind::LoginPassword),
            "string" => Some(KeyKind::String),
            _ => None,
        }
    }
}

/// The plaintext of a key's secret; stored only encrypted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySecret {
    /// SSH or password login.
    pub login: String,
    /// Password (`login_password`).
    pub password: String,
    /// SSH key passphrase.
    pub passphrase: String,
    /// SSH private key.
    pub private_key: String,
    /// Secret string (`string` keys).
    pub string: String,
}

/// An access key: credentials used by repositories, inventories and tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// Display name.
    pub name: String,
    /// Kind of secret.
    pub kind: KeyKind,
    /// [`KeySecret`], encrypted with the server key; empty for `none` keys.
    pub sealed_secret: Vec<u8>,
    /// The environment this key is a secret of (hidden from key lists), if any.
    pub environment_id: Option<u64>,
}

/// A git repository (or a local directory) that tasks run from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// Display name.
    pub name: String,
    /// Where to clone from, or an absolute local path.
    pub git_url: String,
    /// Branch to check out.
    pub git_branch: String,
    /// Key used to fetch (the project's `None` key for anonymous access).
    pub ssh_key_id: u64,
}

/// An Ansible inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// Display name.
    pub name: String,
    /// INI or YAML text, or a path inside the repository checkout (`file`).
    pub inventory: String,
    /// Login key for the hosts.
    pub ssh_key_id: Option<u64>,
    /// Key for privilege escalation.
    pub become_key_id: Option<u64>,
    /// `static`, `static-yaml` or `file`.
    pub kind: String,
    /// Owning template (workspaces), if any.
    pub holder_id: Option<u64>,
    /// Repository a `file` inventory lives in, if not the template's.
    pub repository_id: Option<u64>,
}

/// A set of variables for tasks: extra vars, environment variables and secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// Display name.
    pub name: String,
    /// A JSON object (as text) of extra variables.
    pub json: String,
    /// A JSON object (as text) of string environment variables, if any.
    pub env: Option<String>,
    /// Legacy vault password, encrypted; never returned.
    pub sealed_password: Vec<u8>,
}

/// One question a template asks when a task is launched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyVar {
    /// Variable name.
    pub name: String,
    /// Label.
    pub title: String,
    /// Help text.
    pub description: String,
    /// `""` (string), `int`, `enum` or `secret`.
    pub kind: String,
    /// Must be answered.
    pub required: bool,
    /// Choices for `enum`.
    pub values: Vec<SurveyValue>,
}

/// A choice of an `enum` survey variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyValue {
    /// Label.
    pub name: String,
    /// Value.
    pub value: String,
}

/// An Ansible vault password attached to a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVault {
    /// Id within the template.
    pub id: u64,
    /// The `login_password` key holding the vault password.
    pub vault_key_id: u64,
    /// Vault id name; `None` = `default`.
    pub name: Option<String>,
}

/// A task template: what to run, from where, with what.
// Its flags are upstream's independent wire fields, not a state machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// Inventory (required for `ansible`).
    pub inventory_id: Option<u64>,
    /// Repository the playbook/script lives in.
    pub repository_id: u64,
    /// Environment, if any.
    pub environment_id: Option<u64>,
    /// UI grouping.
    pub view_id: Option<u64>,
    /// Display name.
    pub name: String,
    /// Playbook or script path inside the repository.
    pub playbook: String,
    /// A JSON array of strings (as text), if any.
    pub arguments: Option<String>,
    /// A task may append its own arguments.
    pub allow_override_args_in_task: bool,
    /// Free text.
    pub description: Option<String>,
    /// `""`, `build` or `deploy`.
    pub kind: String,
    /// First version of a build template.
    pub start_version: Option<String>,
    /// Build template of a deploy template.
    pub build_template_id: Option<u64>,
    /// Run after a successful build.
    pub autorun: bool,
    /// Branch override.
    pub git_branch: Option<String>,
    /// Questions asked at launch.
    pub survey_vars: Vec<SurveyVar>,
    /// Vault passwords.
    pub vaults: Vec<TemplateVault>,
    /// No alert on success.
    pub suppress_success_alerts: bool,
    /// `bash`, `python`, `ansible`, or a configured app id.
    pub app: String,
    /// Longest a task of this template may run, in seconds (Forge extension; 0 = default).
    pub max_duration_secs: u64,
    /// Only runners carrying this tag run its tasks; `None` = any runner (or the local one).
    /// Added in format version 4.
    pub runner_tag: Option<String>,
    /// A task's own variables may set ansible's connection variables (`ansible_*`); off by
    /// default (Forge extension). Added in format version 4.
    pub allow_ansible_vars_in_task: bool,
}

/// A view: a named tab of a project's templates list, in `position` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// Tab title.
    pub title: String,
    /// Place among the project's views (ascending; ties in id order).
    pub position: i64,
}

/// The version of a build template's newest successful build, kept apart from its tasks so
/// that a build pruned or deleted never frees its number for the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildVersion {
    /// Owning project.
    pub project_id: ProjectId,
    /// The build template.
    pub template_id: u64,
    /// The version its newest successful build had.
    pub version: String,
}

/// A schedule: runs a template at the times its cron expression names, or once at `run_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// The template it runs (deleting the template deletes the schedule).
    pub template_id: u64,
    /// Cron expression (`""` for a one-off).
    pub cron_format: String,
    /// Display name.
    pub name: String,
    /// Whether it fires.
    pub active: bool,
    /// Fire only when this repository's branch head changed since the last run.
    pub repository_id: Option<u64>,
    /// `""` (cron) or `"run_at"` (one-off).
    pub kind: String,
    /// One-off time, Unix seconds.
    pub run_at: Option<i64>,
    /// A one-off is deleted after its run (else made inactive).
    pub delete_after_run: bool,
    /// Launch options for its tasks: a JSON object as text (empty = none).
    pub task_params: String,
    /// IANA time zone (empty = the server's default).
    pub timezone: String,
    /// Run the latest occurrence missed while the server was down, once, at start-up.
    pub catch_up: bool,
    /// Every occurrence at or before this instant (Unix seconds) has been handled: fired
    /// (in the transaction that stored its task) or skipped. The exactly-once cursor.
    pub done_until: i64,
    /// With `repository_id`: the branch head its last task was created for (and checks out).
    pub last_commit: String,
}

/// Something that happened, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Server-assigned id (increasing).
    pub id: u64,
    /// Who did it, if anyone.
    pub user_id: Option<UserId>,
    /// In which project, if any.
    pub project_id: Option<ProjectId>,
    /// The object it concerns.
    pub object_id: Option<u64>,
    /// `project`, `key`, `repository`, `inventory`, `environment`, `template`, `user`, ...
    pub object_type: String,
    /// What happened, in words.
    pub description: String,
    /// When, Unix seconds.
    pub created: i64,
}

/// A task id.
pub type TaskId = u64;

/// Where a task is in its life (upstream's wire values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Queued.
    Waiting,
    /// Taken from the queue, preparing.
    Starting,
    /// Waiting for a plan approval (terraform/tofu): no process runs.
    WaitingConfirmation,
    /// Plan approved.
    Confirmed,
    /// The app runs.
    Running,
    /// A stop was asked for; the process is being ended.
    Stopping,
    /// Ended by a stop.
    Stopped,
    /// Ended with exit status 0.
    Success,
    /// Ended otherwise (non-zero exit, preparation failure, timeout, interruption).
    Error,
}

impl TaskStatus {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Starting => "starting",
            TaskStatus::WaitingConfirmation => "waiting_confirmation",
            TaskStatus::Confirmed => "confirmed",
            TaskStatus::Running => "running",
            TaskStatus::Stopping => "stopping",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Success => "success",
            TaskStatus::Error => "error",
        }
    }

    /// `success`, `error` or `stopped`: nothing will change any more.
    #[must_use]
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Stopped | TaskStatus::Success | TaskStatus::Error
        )
    }
}

/// A run of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Server-assigned id (increasing).
    pub id: TaskId,
    /// Project.
    pub project_id: ProjectId,
    /// Template it runs.
    pub template_id: u64,
    /// Current status.
    pub status: TaskStatus,
    /// ansible `-vvvv`.
    pub debug: bool,
    /// ansible `--check`.
    pub dry_run: bool,
    /// ansible `--diff`.
    pub diff: bool,
    /// Playbook override (ansible only).
    pub playbook: String,
    /// Extra variables: a JSON object as text.
    pub environment: String,
    /// ansible `--limit`.
    pub limit: String,
    /// Extra arguments: a JSON array of strings as text (if the template allows).
    pub arguments: Option<String>,
    /// Branch override.
    pub git_branch: Option<String>,
    /// Who started it.
    pub user_id: Option<UserId>,
    /// Integration that started it.
    pub integration_id: Option<u64>,
    /// Schedule that started it.
    pub schedule_id: Option<u64>,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// When it started running.
    pub start: Option<i64>,
    /// When it finished.
    pub end: Option<i64>,
    /// Free text from the starter.
    pub message: String,
    /// Commit to check out.
    pub commit_hash: Option<String>,
    /// Message of the checked-out commit.
    pub commit_message: String,
    /// Build task a deploy task deploys.
    pub build_task_id: Option<u64>,
    /// Build version.
    pub version: Option<String>,
    /// Inventory override.
    pub inventory_id: Option<u64>,
    /// Process group of the running app (to kill leftovers after a crash).
    pub process_group: Option<i32>,
    /// Secret extra variables (a JSON object), encrypted; never returned.
    pub sealed_secret: Vec<u8>,
    /// App options as a JSON object in text (terraform: `plan`, `destroy`, `auto_approve`,
    /// `upgrade`, `reconfigure`); empty = none. Added in format version 3.
    pub params: String,
    /// The remote runner it was given to; `None` = run (or to be run) by the server itself.
    /// Added in format version 4.
    pub runner_id: Option<u64>,
}

impl Task {
    /// A new `waiting` task of `template` created at `created`, every option unset (no
    /// starter, no id yet: the store assigns it).
    #[must_use]
    pub fn waiting(project_id: ProjectId, template_id: u64, created: i64) -> Self {
        Self {
            id: 0,
            project_id,
            template_id,
            status: TaskStatus::Waiting,
            debug: false,
            dry_run: false,
            diff: false,
            playbook: String::new(),
            environment: "{}".into(),
            limit: String::new(),
            arguments: None,
            git_branch: None,
            user_id: None,
            integration_id: None,
            schedule_id: None,
            created,
            start: None,
            end: None,
            message: String::new(),
            commit_hash: None,
            commit_message: String::new(),
            build_task_id: None,
            version: None,
            inventory_id: None,
            process_group: None,
            sealed_secret: Vec::new(),
            params: String::new(),
            runner_id: None,
        }
    }
}

/// One stored line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    /// When the line was read, Unix microseconds.
    pub time_us: i64,
    /// The line, without its newline.
    pub text: String,
}
