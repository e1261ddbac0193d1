//! Server configuration. Every field is a `forge serve` flag and an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::clock::ClockHandle;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// Default database file.
pub const DEFAULT_DB: &str = "./forge.redb";
const DEFAULT_SESSION_IDLE_SECS: i64 = 7 * 24 * 3600;
const DEFAULT_LOGIN_MAX_FAILURES: u32 = 5;
const DEFAULT_LOGIN_WINDOW_SECS: i64 = 15 * 60;
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
const DEFAULT_PRUNE_INTERVAL_SECS: u64 = 600;
/// Longest retention accepted, in days (about 100 years; beyond it "keep" is meant).
const MAX_RETENTION_DAYS: u64 = 36_500;

/// Configuration of a Forge server.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "FORGE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// The database file (created if missing).
    #[arg(long, env = "FORGE_DB", default_value = DEFAULT_DB)]
    pub db: PathBuf,

    /// Mark the session cookie `Secure` (serve behind HTTPS).
    #[arg(long, env = "FORGE_SECURE_COOKIES")]
    pub secure_cookies: bool,

    /// A session unused for this many seconds expires (sliding).
    #[arg(long, env = "FORGE_SESSION_IDLE_SECS", default_value_t = DEFAULT_SESSION_IDLE_SECS)]
    pub session_idle_secs: i64,

    /// Failed logins allowed per account or client address within the window.
    #[arg(long, env = "FORGE_LOGIN_MAX_FAILURES", default_value_t = DEFAULT_LOGIN_MAX_FAILURES)]
    pub login_max_failures: u32,

    /// Length of the login-throttling window, in seconds.
    #[arg(long, env = "FORGE_LOGIN_WINDOW_SECS", default_value_t = DEFAULT_LOGIN_WINDOW_SECS)]
    pub login_window_secs: i64,

    /// scrypt cost for new password hashes (log2 N); old hashes keep their own cost.
    #[arg(long, env = "FORGE_SCRYPT_LOG_N", default_value_t = scrypt::Params::RECOMMENDED_LOG_N,
          value_parser = clap::value_parser!(u8).range(1..=20))]
    pub scrypt_log_n: u8,

    /// Threads hashing passwords (0 = one per core but one, at least one).
    #[arg(long, env = "FORGE_HASH_THREADS", default_value_t = 0)]
    pub hash_threads: usize,

    /// Password hashes that may wait for a thread; a login beyond that gets 503 at once.
    #[arg(long, env = "FORGE_HASH_QUEUE", default_value_t = 16)]
    pub hash_queue: usize,

    /// Largest request body accepted, in bytes (larger → 413).
    #[arg(long, env = "FORGE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Seconds a client has to send its request headers (slow-loris guard).
    #[arg(long, env = "FORGE_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout_secs: u64,

    /// Seconds a client has to send its request body.
    #[arg(long, env = "FORGE_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,

    /// Let non-admin users create projects.
    #[arg(long, env = "FORGE_NON_ADMIN_CAN_CREATE_PROJECT")]
    pub non_admin_can_create_project: bool,

    /// Public URL of this server, reported by `/api/info`.
    #[arg(long, env = "FORGE_WEB_HOST", default_value = "")]
    pub web_host: String,

    /// Other origins (`https://host[:port]`, comma-separated) whose pages may send
    /// cookie-authenticated POST/PUT/DELETE requests, for browsers that send `Origin` but not
    /// `Sec-Fetch-Site` when a proxy rewrites `Host`. Same-origin requests always pass.
    #[arg(long, env = "FORGE_TRUSTED_ORIGINS", value_delimiter = ',')]
    pub trusted_origins: Vec<String>,

    /// Create this administrator on start unless a user with this login exists.
    #[arg(long, env = "FORGE_ADMIN")]
    pub admin: Option<String>,

    /// Password of that administrator (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "FORGE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,

    /// Email of that administrator (default `<login>@localhost`).
    #[arg(long, env = "FORGE_ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// Display name of that administrator (default: the login).
    #[arg(long, env = "FORGE_ADMIN_NAME")]
    pub admin_name: Option<String>,

    /// The server key sealing secrets at rest: 32 bytes as 64 hex digits or base64. Overrides
    /// the key file.
    #[arg(long, env = "FORGE_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,

    /// File holding the server key (created 0600 on first start); default: the db path + `.key`.
    #[arg(long, env = "FORGE_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// Apps active from the start whatever `PATH` holds (comma-separated): own app ids (run
    /// as an executable of that name), or built-in ones whose executable is not on `PATH`.
    #[arg(long, env = "FORGE_EXTRA_APPS", value_delimiter = ',')]
    pub extra_apps: Vec<String>,

    /// Tasks that may run at once on this server (0 = no limit).
    #[arg(long, env = "FORGE_MAX_PARALLEL_TASKS", default_value_t = 10)]
    pub max_parallel_tasks: usize,

    /// Seconds a stopped task gets between SIGTERM and SIGKILL.
    #[arg(long, env = "FORGE_STOP_GRACE_SECS", default_value_t = 10)]
    pub stop_grace_secs: u64,

    /// Seconds running tasks get to finish on SIGTERM/SIGINT before they are stopped.
    #[arg(long, env = "FORGE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Longest a task may run, in seconds, unless its template says otherwise (0 = no limit).
    #[arg(long, env = "FORGE_MAX_TASK_DURATION_SECS", default_value_t = 24 * 3600)]
    pub max_task_duration_secs: u64,

    /// Output lines stored per task; past it one marker line says how much was dropped.
    #[arg(long, env = "FORGE_OUTPUT_MAX_LINES", default_value_t = 100_000)]
    pub output_max_lines: u64,

    /// Output bytes stored per task (same marker).
    #[arg(long, env = "FORGE_OUTPUT_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub output_max_bytes: u64,

    /// Directory for repository checkouts and per-task homes; default: the db path + `.work`.
    #[arg(long, env = "FORGE_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// Upgrade an older database without first copying it to `<db>.pre-v<N>-<time>.bak`.
    /// (The variable takes `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.)
    #[arg(long, env = "FORGE_NO_UPGRADE_BACKUP",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_upgrade_backup: bool,
    /// Directory for scheduled backups (`forge-<UTC time>.redb`); needs `--backup-every`.
    #[arg(long, env = "FORGE_BACKUP_DIR", requires = "backup_every")]
    pub backup_dir: Option<PathBuf>,

    /// How often to write a scheduled backup: `90s`, `30m`, `6h`, `1d`, `1h30m`.
    #[arg(long, env = "FORGE_BACKUP_EVERY", requires = "backup_dir",
          value_parser = crate::backup::parse_duration)]
    pub backup_every: Option<std::time::Duration>,

    /// Scheduled backups kept in the directory; older ones are deleted.
    #[arg(long, env = "FORGE_BACKUP_KEEP", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub backup_keep: u32,
    /// Finished tasks kept per template; older ones go with their output (0 = keep all).
    #[arg(long, env = "FORGE_MAX_TASKS_PER_TEMPLATE", default_value_t = 0,
          value_parser = count, allow_negative_numbers = true)]
    pub max_tasks_per_template: u64,

    /// Finished tasks that ended more than this many days ago go with their output (0 = keep).
    #[arg(long, env = "FORGE_TASK_RETENTION_DAYS", default_value_t = 0,
          value_parser = days, allow_negative_numbers = true)]
    pub task_retention_days: u64,

    /// Events older than this many days go (0 = keep).
    #[arg(long, env = "FORGE_EVENT_RETENTION_DAYS", default_value_t = 0,
          value_parser = days, allow_negative_numbers = true)]
    pub event_retention_days: u64,

    /// Seconds between full retention sweeps (a template is also pruned soon after its tasks
    /// finish).
    #[arg(long, env = "FORGE_PRUNE_INTERVAL_SECS", default_value_t = DEFAULT_PRUNE_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    pub prune_interval_secs: u64,

    /// Default time zone of schedules (IANA name, e.g. `Europe/Berlin`); a schedule's own
    /// `timezone` or a `CRON_TZ=` prefix overrides it.
    #[arg(long, env = "FORGE_SCHEDULE_TIMEZONE", default_value = "UTC",
          value_parser = schedule_zone)]
    pub schedule_timezone: String,

    /// Task alerts: channels (Slack, Teams, Telegram, webhook, email) and delivery.
    #[command(flatten)]
    pub alerts: crate::notify::AlertConfig,
    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// shippers. Every request is logged once (target `forge::access`, level info).
    #[arg(long, env = "FORGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Bearer token a Prometheus scraper sends for `GET /api/metrics` (at least 16
    /// characters; it grants nothing else). Admins' sessions and tokens work without it.
    #[arg(
        long,
        env = "FORGE_METRICS_TOKEN",
        hide_env_values = true,
        conflicts_with = "metrics_token_file"
    )]
    pub metrics_token: Option<Secret>,

    /// File holding the metrics token (its first line), instead of `--metrics-token`.
    #[arg(long, env = "FORGE_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// Time source; tests inject a manual clock.
    #[arg(skip)]
    pub clock: ClockHandle,

    /// A switch that makes the database's disk fail as a full one; tests inject it.
    #[arg(skip)]
    pub disk_faults: Option<crate::store::disk::FaultSwitch>,

    /// Reverse proxies (addresses or networks, comma-separated: `127.0.0.1,10.0.0.0/8`)
    /// whose `--proxy-header` names the client's address; from anyone else it is ignored.
    #[arg(long, env = "FORGE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: crate::http::forwarded::TrustedProxies,

    /// The header the trusted proxies write the client's address to.
    #[arg(long, env = "FORGE_PROXY_HEADER", value_enum,
          default_value_t = crate::http::forwarded::ProxyHeader::XForwardedFor)]
    pub proxy_header: crate::http::forwarded::ProxyHeader,

    /// How tasks are confined: `landlock` (read-write only in their own workspace and
    /// private dir; the default, with a warning at start where the kernel lacks it) or `off`.
    #[arg(long, env = "FORGE_SANDBOX", value_enum, default_value_t = crate::sandbox::Mode::Landlock)]
    pub sandbox: crate::sandbox::Mode,

    /// Run tasks as this user (the server must run as root); their directories are given to
    /// that user.
    #[arg(long, env = "FORGE_TASK_USER")]
    pub task_user: Option<String>,

    /// Folders (comma-separated) under which local-path repositories are allowed; none by
    /// default, so every repository is a git URL cloned into the task's workspace.
    #[arg(long, env = "FORGE_LOCAL_REPO_ROOTS", value_delimiter = ',')]
    pub local_repo_roots: Vec<PathBuf>,

    /// More folders (comma-separated) tasks may read and execute from under the sandbox, for
    /// tool chains outside the system paths and `PATH`.
    #[arg(long, env = "FORGE_SANDBOX_READ_ONLY", value_delimiter = ',')]
    pub sandbox_read_only: Vec<PathBuf>,

    /// The forge binary that wraps task processes in the sandbox (default: this one); tests
    /// running the server in-process point it at the built binary.
    #[arg(skip)]
    pub sandbox_exe: Option<PathBuf>,

    /// Two-factor login (TOTP): `on` lets users enrol, and an enrolled user's login then
    /// needs a code; `off` turns both off (enrolments are kept and apply again once on).
    #[arg(long, env = "FORGE_TOTP", value_enum, default_value_t = Switch::On)]
    pub totp: Switch,

    /// The token `forge runner register` presents to register a remote runner (none: remote
    /// runners register only through an administrator's `POST /api/runners`).
    #[arg(
        long,
        env = "FORGE_RUNNER_REGISTRATION_TOKEN",
        hide_env_values = true,
        conflicts_with = "runner_registration_token_file"
    )]
    pub runner_registration_token: Option<Secret>,

    /// File holding the runner registration token (its first line).
    #[arg(long, env = "FORGE_RUNNER_REGISTRATION_TOKEN_FILE")]
    pub runner_registration_token_file: Option<PathBuf>,

    /// A remote runner silent for this many seconds is offline: it gets no job, and the tasks
    /// it ran end `error`.
    #[arg(long, env = "FORGE_RUNNER_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub runner_timeout: u64,

    /// Whether tasks run on this server: `on`, `off` (only remote runners run them), or
    /// `auto` (on while no remote runner is registered).
    #[arg(long, env = "FORGE_LOCAL_RUNNER", value_enum, default_value_t = LocalRunner::Auto)]
    pub local_runner: LocalRunner,
}

/// Where tasks without a runner tag may run (`--local-runner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalRunner {
    /// On this server while no remote runner is registered, else on remote runners.
    Auto,
    /// On this server (and on remote runners once it is full).
    On,
    /// Only on remote runners.
    Off,
}

impl Config {
    /// The runner registration token: the flag, or the first line of its file.
    ///
    /// # Errors
    /// An unreadable or empty file.
    pub fn runner_registration_token(&self) -> Result<Option<Secret>, String> {
        if let Some(token) = &self.runner_registration_token {
            return Ok(Some(token.clone()));
        }
        let Some(path) = &self.runner_registration_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or_default().trim();
        if line.is_empty() {
            return Err(format!(
                "{}: the runner registration token is empty",
                path.display()
            ));
        }
        Ok(Some(Secret(line.to_owned())))
    }
}

impl Config {
    /// Where checkouts and task homes live: the flag, or the database path with `.work`.
    #[must_use]
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(|| {
            let mut name = self.db.as_os_str().to_owned();
            name.push(".work");
            PathBuf::from(name)
        })
    }

    /// Where the server key file is: the flag, or the database path with `.key` appended.
    #[must_use]
    pub fn key_file(&self) -> PathBuf {
        self.secret_key_file.clone().unwrap_or_else(|| {
            let mut name = self.db.as_os_str().to_owned();
            name.push(".key");
            PathBuf::from(name)
        })
    }

    /// Makes the database, key file and work dir paths absolute against the current
    /// directory, once, so that nothing later (git running in a checkout, a task's working
    /// directory) reads them relative to another folder.
    ///
    /// # Errors
    /// When the current directory cannot be read.
    pub fn resolve_paths(&mut self) -> std::io::Result<()> {
        self.db = std::path::absolute(&self.db)?;
        for path in [&mut self.secret_key_file, &mut self.work_dir]
            .into_iter()
            .flatten()
        {
            *path = std::path::absolute(&*path)?;
        }
        Ok(())
    }

    /// The defaults, with the database at `db`; for embedding and tests.
    ///
    /// # Panics
    /// Never: the default listen address is a valid literal.
    #[must_use]
    pub fn with_db(db: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address parses"),
            db,
            secure_cookies: false,
            session_idle_secs: DEFAULT_SESSION_IDLE_SECS,
            login_max_failures: DEFAULT_LOGIN_MAX_FAILURES,
            login_window_secs: DEFAULT_LOGIN_WINDOW_SECS,
            scrypt_log_n: scrypt::Params::RECOMMENDED_LOG_N,
            hash_threads: 0,
            hash_queue: 16,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
            non_admin_can_create_project: false,
            web_host: String::new(),
            trusted_origins: Vec::new(),
            admin: None,
            admin_password: None,
            admin_email: None,
            admin_name: None,
            secret_key: None,
            secret_key_file: None,
            extra_apps: Vec::new(),
            max_parallel_tasks: 10,
            stop_grace_secs: 10,
            shutdown_grace_secs: 30,
            max_task_duration_secs: 24 * 3600,
            output_max_lines: 100_000,
            output_max_bytes: 64 * 1024 * 1024,
            work_dir: None,
            no_upgrade_backup: false,
            backup_dir: None,
            backup_every: None,
            backup_keep: 7,
            max_tasks_per_template: 0,
            task_retention_days: 0,
            event_retention_days: 0,
            prune_interval_secs: DEFAULT_PRUNE_INTERVAL_SECS,
            schedule_timezone: "UTC".into(),
            alerts: crate::notify::AlertConfig::default(),
            log_format: LogFormat::Text,
            metrics_token: None,
            metrics_token_file: None,
            clock: ClockHandle::default(),
            disk_faults: None,
            trusted_proxies: crate::http::forwarded::TrustedProxies::default(),
            proxy_header: crate::http::forwarded::ProxyHeader::XForwardedFor,
            runner_registration_token: None,
            runner_registration_token_file: None,
            runner_timeout: 60,
            local_runner: LocalRunner::Auto,
            sandbox: crate::sandbox::Mode::Landlock,
            task_user: None,
            local_repo_roots: Vec::new(),
            sandbox_read_only: Vec::new(),
            sandbox_exe: None,
            totp: Switch::On,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// A retention count: a whole number, 0 or more.
fn count(s: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|_| {
        format!("expected a whole number of tasks, 0 or more (0 = keep all), not {s:?}")
    })
}

/// A retention age in days: a whole number from 0 (keep) to [`MAX_RETENTION_DAYS`].
fn days(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(d) if d <= MAX_RETENTION_DAYS => Ok(d),
        _ => Err(format!(
            "expected a whole number of days from 0 (keep forever) to {MAX_RETENTION_DAYS}, not {s:?}"
        )),
    }
}

/// A secret string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// A feature switch (`--totp on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// A known IANA time zone name (from the embedded database).
fn schedule_zone(text: &str) -> Result<String, String> {
    crate::cron::zone(text).map(|_| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn relative_paths_become_absolute_and_derived_ones_follow() {
        let mut config = Config::with_db("./data/forge.redb".into());
        config.work_dir = Some("work".into());
        config.resolve_paths().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config.db, cwd.join("data/forge.redb"));
        assert_eq!(config.work_dir(), cwd.join("work"));
        assert_eq!(config.key_file(), cwd.join("data/forge.redb.key"));
        let mut absolute = Config::with_db("/srv/forge.redb".into());
        absolute.resolve_paths().unwrap();
        assert_eq!(absolute.db, std::path::Path::new("/srv/forge.redb"));
    }

    #[test]
    fn schedule_timezone_must_be_a_known_zone() {
        let parsed = Cli::try_parse_from(["forge", "--schedule-timezone", "Europe/Berlin"]);
        assert_eq!(parsed.unwrap().config.schedule_timezone, "Europe/Berlin");
        let err = Cli::try_parse_from(["forge", "--schedule-timezone", "Mars/Base"])
            .err()
            .expect("an unknown zone is refused");
        assert!(err.to_string().contains("unknown time zone"), "{err}");
    }

    #[test]
    fn with_db_matches_the_flag_defaults() {
        if std::env::vars().any(|(k, _)| k.starts_with("FORGE_")) {
            eprintln!("skipped: FORGE_* variables are set in this environment");
            return;
        }
        let parsed = Cli::parse_from(["forge"]).config;
        let built = Config::with_db(DEFAULT_DB.into());
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }
}
