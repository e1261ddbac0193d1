//! Business rules: authentication (passwords, sessions, API tokens, throttling), users,
//! projects, tasks, and the project resources (`resources`: one module each over one generic
//! CRUD). Services sit between the HTTP layer and the store and know nothing of HTTP.

mod access_cache;
pub mod apps;
pub mod auth;
mod builds;
pub mod input;
pub mod integrations;
pub mod options;
mod password;
pub mod project_backup;
pub mod projects;
pub mod resources;
pub mod runners;
pub mod secrets;
pub mod tasks;
mod throttle;
pub mod totp;
pub mod users;
pub mod validate;

use std::sync::Arc;

use crate::clock::ClockHandle;
use crate::config::Config;
use crate::store::{self, Store};

pub use access_cache::Caller;
pub use auth::LoginClient;
pub use users::{NewUserInput, UserUpdate};

/// What a service call can fail with; the HTTP layer maps each variant to one status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist (or the caller may not learn that it does).
    #[error("not found")]
    NotFound,
    /// The request breaks a rule; the message is shown to the client.
    #[error("{0}")]
    Invalid(String),
    /// Not authenticated, or (as upstream answers for user routes) not allowed.
    #[error("unauthorized")]
    Unauthorized,
    /// Authenticated but lacking a permission.
    #[error("forbidden")]
    Forbidden,
    /// The change conflicts with the current state (already a member, still referenced).
    #[error("{0}")]
    Conflict(String),
    /// A resource cannot be deleted while templates (or others) use it.
    #[error("{0}")]
    InUse(String),
    /// Too busy to take the request now (password hashing queue full).
    #[error("busy")]
    Busy {
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// Too many failed logins; retry after this many seconds.
    #[error("too many failed logins")]
    Throttled {
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The disk is full: nothing of the change was stored.
    #[error("the disk is full")]
    StorageFull,
    /// The store is being reopened after a failed write; retry shortly.
    #[error("storage is temporarily unavailable")]
    StorageUnavailable,
    /// An internal failure; logged, never shown in detail.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether the error is the store's state (full disk, reopening), not the request's.
    #[must_use]
    pub fn is_storage(&self) -> bool {
        matches!(self, Error::StorageFull | Error::StorageUnavailable)
    }
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound => Error::NotFound,
            store::Error::Conflict(msg) => Error::Invalid(msg.to_owned()),
            e @ store::Error::LastAdmin => Error::Invalid(e.to_string()),
            store::Error::Full => Error::StorageFull,
            store::Error::Unavailable => Error::StorageUnavailable,
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Shorthand for service results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The services of one server, sharing one store.
#[derive(Debug)]
pub struct Services {
    store: Store,
    clock: ClockHandle,
    hasher: password::Hasher,
    throttle: Arc<throttle::Throttle>,
    session_idle_secs: i64,
    non_admin_can_create_project: bool,
    cipher: secrets::Cipher,
    /// Which apps are active by default (what `PATH` held at start).
    app_defaults: apps::Defaults,
    schedule_hub: resources::schedules::Hub,
    /// Failed webhook authentications per client address (`integrations`).
    delivery_throttle: Arc<throttle::Throttle>,
    /// Bumped whenever a session, token, user or membership changes in a way that may take
    /// access away; long-lived responses (web sockets, followed output) re-check their caller.
    access_changes: tokio::sync::watch::Sender<u64>,
    /// Login outcomes counted for metrics.
    logins: LoginStats,
    /// Token users and memberships remembered with exact invalidation (Bearer hot path).
    access_cache: access_cache::AccessCache,
    /// Which local-path repositories may be saved (`--local-repo-roots`).
    local_repos: crate::sandbox::LocalRepos,
    /// `--totp on`: enrolled users verify a code after their password.
    totp_on: bool,
    /// Failed second-factor codes per (user, address) (`totp`).
    totp_throttle: Arc<throttle::Throttle>,
}

/// Failed and throttled logins since start (for metrics).
#[derive(Debug, Default)]
pub struct LoginStats {
    /// Logins refused for a wrong password, an unknown or an external user.
    pub failed: std::sync::atomic::AtomicU64,
    /// Logins refused by the throttle without checking the password.
    pub throttled: std::sync::atomic::AtomicU64,
}

impl Services {
    /// Services over `store`, sealing secrets with `cipher`, configured by `config`.
    #[must_use]
    pub fn new(store: Store, cipher: secrets::Cipher, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock: config.clock.clone(),
            hasher: password::Hasher::new(
                config.scrypt_log_n,
                config.hash_threads,
                config.hash_queue,
            ),
            throttle: Arc::new(throttle::Throttle::new(
                config.login_max_failures,
                config.login_window_secs,
            )),
            session_idle_secs: config.session_idle_secs,
            non_admin_can_create_project: config.non_admin_can_create_project,
            cipher,
            app_defaults: apps::Defaults::discover(
                std::env::var_os("PATH").as_deref(),
                &config.extra_apps,
            ),
            schedule_hub: resources::schedules::Hub::new(&config.schedule_timezone),
            delivery_throttle: Arc::new(throttle::Throttle::new(
                integrations::MAX_FAILURES,
                integrations::FAILURE_WINDOW,
            )),
            access_changes: tokio::sync::watch::channel(0).0,
            logins: LoginStats::default(),
            access_cache: access_cache::AccessCache::default(),
            local_repos: crate::sandbox::LocalRepos::new(config),
            totp_on: config.totp == crate::config::Switch::On,
            totp_throttle: Arc::new(throttle::Throttle::new(
                config.login_max_failures,
                config.login_window_secs,
            )),
        })
    }

    /// The store these services write to.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Current time, Unix seconds.
    #[must_use]
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Failed and throttled logins since start.
    #[must_use]
    pub fn login_stats(&self) -> &LoginStats {
        &self.logins
    }

    /// Password hashes waiting for a hashing thread.
    #[must_use]
    pub fn hash_queue_depth(&self) -> usize {
        self.hasher.waiting()
    }

    /// Which local-path repositories may be saved and run.
    #[must_use]
    pub fn local_repos(&self) -> &crate::sandbox::LocalRepos {
        &self.local_repos
    }

    /// Whether non-admin users may create projects (`can_create_project`).
    #[must_use]
    pub fn non_admin_can_create_project(&self) -> bool {
        self.non_admin_can_create_project
    }
}

/// Runs blocking work (a durable redb write, scrypt) off the async reactor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}
