//! Wiring: the store, the services and the router of one server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::config::Config;
use crate::http::router::{Router, routes};
use crate::model::{AccessKey, KeySecret, User};
use crate::runner::{self, Runner};
use crate::service::secrets::{Cipher, KeyError};
use crate::service::{self, NewUserInput, Services};
use crate::store::{self, Store};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database file could not be opened.
    #[error("cannot open the database {path}: {source}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: store::Error,
    },
    /// The server key for secrets is missing, malformed or wrong.
    #[error("{0}")]
    Key(KeyError),
    /// Recovering unfinished tasks failed.
    #[error("cannot recover unfinished tasks: {0}")]
    Runner(service::Error),
    /// The configured paths could not be made absolute.
    #[error("cannot resolve the configured paths: {0}")]
    Paths(std::io::Error),
    /// The administrator from the configuration could not be created.
    #[error("cannot create the administrator: {0}")]
    Admin(service::Error),
    /// The alert channels are misconfigured (the text names the flag).
    #[error("alerts: {0}")]
    Alerts(String),
    /// The task sandbox cannot be set up (an unknown `--task-user`, or one without root).
    #[error("{0}")]
    Sandbox(String),
    /// The metrics token (or its file) is unusable.
    #[error("{0}")]
    MetricsToken(String),
}

/// The runner's narrow view of the services: the clock, the cipher and the apps' commands,
/// nothing else.
#[derive(Debug)]
struct RunnerHost(Arc<Services>);

impl runner::Host for RunnerHost {
    fn now(&self) -> i64 {
        self.0.now()
    }

    fn open_key(&self, key: &AccessKey) -> Result<KeySecret, String> {
        self.0.open_secret(key).map_err(|e| e.to_string())
    }

    fn open_sealed(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        self.0.open_sealed(sealed).map_err(|e| e.to_string())
    }

    fn app_command(&self, app: &str) -> (Option<String>, Vec<String>) {
        self.0.app_command(app)
    }
}

/// A running server's state, shared by every connection.
#[derive(Debug)]
pub struct App {
    /// The configuration it was started with.
    pub config: Config,
    /// Business rules over the store.
    pub services: Arc<Services>,
    /// The route table.
    pub router: Router,
    /// The task runner.
    pub runner: Runner,
    /// `ansible --version`, looked up on first use.
    ansible: OnceCell<String>,
    /// One backup at a time (each needs disk space the size of the database).
    pub backups: crate::backup::Gate,
    /// The alert senders and channels.
    pub notifier: crate::notify::Notifier,
    /// Request counters, by route.
    pub metrics: crate::metrics::Http,
    /// The scraper's token for `/api/metrics`, when one is configured.
    pub metrics_token: Option<crate::metrics::scrape::ScrapeToken>,
    /// Hot JSON answers kept rendered until the store changes.
    pub rendered: crate::http::rendered::Rendered,
}

impl App {
    /// Opens the store, creates the configured administrator if missing, builds the router.
    ///
    /// # Errors
    /// [`StartError`] when the database cannot be opened (in use, unreadable) or the
    /// administrator cannot be created.
    pub async fn start(mut config: Config) -> Result<Arc<Self>, StartError> {
        config.resolve_paths().map_err(StartError::Paths)?;
        let jail = Arc::new(crate::sandbox::Jail::new(&config).map_err(StartError::Sandbox)?);
        let metrics_token = crate::metrics::scrape::ScrapeToken::configured(&config)
            .map_err(StartError::MetricsToken)?;
        let (path, faults) = (config.db.clone(), config.disk_faults.clone());
        let upgrade = store::migrate::Upgrade {
            backup: !config.no_upgrade_backup,
        };
        let store = tokio::task::spawn_blocking(move || Store::open_with(&path, &upgrade, faults))
            .await
            .map_err(|e| StartError::Store {
                path: config.db.display().to_string(),
                source: store::Error::Db(redb::Error::Io(std::io::Error::other(e.to_string()))),
            })?
            .map_err(|source| StartError::Store {
                path: config.db.display().to_string(),
                source,
            })?;
        let cipher = Cipher::load(&config, &store).map_err(StartError::Key)?;
        // Before the runner: tasks it ends while recovering alert like any other.
        let channels = crate::notify::Channels::from_config(&config.alerts, &config.web_host)
            .map_err(StartError::Alerts)?;
        let codes: Vec<u8> = channels.kinds().iter().map(|k| k.code()).collect();
        let writing = store.clone();
        tokio::task::spawn_blocking(move || writing.set_alert_channels(&codes))
            .await
            .map_err(|e| StartError::Alerts(e.to_string()))?
            .map_err(|source| StartError::Store {
                path: config.db.display().to_string(),
                source,
            })?;
        let notifier = crate::notify::Notifier::start(
            Arc::new(channels),
            &store,
            &config.clock,
            config.alerts.alert_give_up_secs,
        );
        let services = Services::new(store, cipher, &config);
        let host = Arc::new(RunnerHost(Arc::clone(&services)));
        let runner = Runner::start(host, services.store().clone(), &config, jail)
            .map_err(StartError::Runner)?;
        let router = Router::new(routes());
        let metrics = crate::metrics::Http::new(
            router
                .routes()
                .iter()
                .map(|r| (r.method.to_string(), r.path)),
        );
        tracing::debug!(
            routes = router.routes().len(),
            metrics_token = metrics_token.is_some(),
            "route table and request counters ready"
        );
        let app = Arc::new(Self {
            config,
            services,
            router,
            runner,
            ansible: OnceCell::new(),
            backups: crate::backup::Gate::default(),
            notifier,
            metrics,
            metrics_token,
            rendered: crate::http::rendered::Rendered::default(),
        });
        if let Some(user) = app.bootstrap_admin().await.map_err(StartError::Admin)? {
            tracing::info!(login = %user.username, "created administrator");
        }
        Ok(app)
    }

    /// Creates the administrator named by `FORGE_ADMIN`/`FORGE_ADMIN_PASSWORD` unless a user
    /// with that login already exists (its password is then left alone).
    async fn bootstrap_admin(&self) -> service::Result<Option<User>> {
        let (Some(login), Some(password)) = (&self.config.admin, &self.config.admin_password)
        else {
            return Ok(None);
        };
        if self.services.store().user_by_login(login)?.is_some() {
            return Ok(None);
        }
        let input = NewUserInput {
            username: login.clone(),
            name: self
                .config
                .admin_name
                .clone()
                .unwrap_or_else(|| login.clone()),
            email: self
                .config
                .admin_email
                .clone()
                .unwrap_or_else(|| format!("{login}@localhost")),
            password: password.0.clone(),
            admin: true,
            ..NewUserInput::default()
        };
        self.services.add_user(input).await.map(Some)
    }

    /// The first line(s) `ansible --version` prints, or `""` when ansible is not installed.
    pub async fn ansible_version(&self) -> &str {
        self.ansible
            .get_or_init(|| async {
                let run = tokio::process::Command::new("ansible")
                    .arg("--version")
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output();
                match tokio::time::timeout(Duration::from_secs(10), run).await {
                    Ok(Ok(out)) if out.status.success() => {
                        String::from_utf8_lossy(&out.stdout).into_owned()
                    }
                    _ => String::new(),
                }
            })
            .await
    }
}
