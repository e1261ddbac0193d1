//! Task alerts: chat, webhook and email messages when a task ends.
//!
//! Delivery never blocks a task and never loses an alert: finishing a task appends one row
//! per channel to the outbox in the same transaction (`store::outbox`); a [`Notifier`] owns
//! one sender per channel ([`sender`]) that drains its rows with retries and backoff, marks
//! each delivered in a durable write once the endpoint accepted it, and gives up after
//! [`AlertConfig::alert_give_up_secs`] with an event saying why. A crash between the accept
//! and that write sends the alert again after the restart (at least once; exactly once in
//! every other case).
//!
//! - [`channels`]: the channels configured by flags and environment, and one send each.
//! - [`outbox`]: what a message says, built from an outbox row.
//! - [`client`]: the HTTPS client (rustls, system roots plus `--alert-ca-file`).
//! - [`sender`]: the drain loops.

pub mod channels;
pub mod client;
pub mod outbox;
pub mod sender;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Secret;

pub use channels::{Channels, Kind};

/// Default seconds one delivery may take (connect, TLS, answer).
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
/// Default seconds after a task's end when an undelivered alert is dropped.
pub const DEFAULT_GIVE_UP_SECS: u64 = 3600;

/// The alert channels and their delivery settings (`forge serve` flags and environment).
/// A channel is on when its URL, token or SMTP host is set; secrets come from the
/// environment or a file rather than the command line (which `ps` shows).
#[derive(Debug, Clone, clap::Args)]
pub struct AlertConfig {
    /// Slack incoming-webhook URL (a secret: prefer the variable or the file).
    #[arg(long, env = "FORGE_ALERT_SLACK_URL", hide_env_values = true)]
    pub alert_slack_url: Option<Secret>,
    /// File holding the Slack incoming-webhook URL.
    #[arg(long, env = "FORGE_ALERT_SLACK_URL_FILE")]
    pub alert_slack_url_file: Option<PathBuf>,
    /// Microsoft Teams incoming-webhook URL (a secret).
    #[arg(long, env = "FORGE_ALERT_TEAMS_URL", hide_env_values = true)]
    pub alert_teams_url: Option<Secret>,
    /// File holding the Teams incoming-webhook URL.
    #[arg(long, env = "FORGE_ALERT_TEAMS_URL_FILE")]
    pub alert_teams_url_file: Option<PathBuf>,
    /// Telegram bot token (a secret).
    #[arg(long, env = "FORGE_ALERT_TELEGRAM_TOKEN", hide_env_values = true)]
    pub alert_telegram_token: Option<Secret>,
    /// File holding the Telegram bot token.
    #[arg(long, env = "FORGE_ALERT_TELEGRAM_TOKEN_FILE")]
    pub alert_telegram_token_file: Option<PathBuf>,
    /// Telegram chat id alerts go to unless the project's `alert_chat` names another.
    #[arg(long, env = "FORGE_ALERT_TELEGRAM_CHAT")]
    pub alert_telegram_chat: Option<String>,
    /// Telegram Bot API base URL.
    #[arg(long, env = "FORGE_ALERT_TELEGRAM_API", default_value = channels::TELEGRAM_API)]
    pub alert_telegram_api: String,
    /// Generic webhook URL: each finished task's JSON document is posted there.
    #[arg(long, env = "FORGE_ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,
    /// Key of the webhook's `X-Forge-Signature-256: sha256=<hex HMAC-SHA256 of the body>`
    /// header (no header without it).
    #[arg(long, env = "FORGE_ALERT_WEBHOOK_SECRET", hide_env_values = true)]
    pub alert_webhook_secret: Option<Secret>,
    /// File holding the webhook signing key.
    #[arg(long, env = "FORGE_ALERT_WEBHOOK_SECRET_FILE")]
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// SMTP server for email alerts (to project members whose `alert` is on).
    #[arg(long, env = "FORGE_ALERT_SMTP_HOST")]
    pub alert_smtp_host: Option<String>,
    /// SMTP port (default: 587 for `starttls`, 465 for `tls`, 25 for `none`).
    #[arg(long, env = "FORGE_ALERT_SMTP_PORT")]
    pub alert_smtp_port: Option<u16>,
    /// SMTP transport security: `starttls`, `tls` (implicit) or `none` (loopback relays only).
    #[arg(long, env = "FORGE_ALERT_SMTP_SECURITY", default_value = "starttls",
          value_parser = ["starttls", "tls", "none"])]
    pub alert_smtp_security: String,
    /// SMTP user name (AUTH PLAIN/LOGIN; none when unset).
    #[arg(long, env = "FORGE_ALERT_SMTP_USERNAME")]
    pub alert_smtp_username: Option<String>,
    /// SMTP password (a secret).
    #[arg(long, env = "FORGE_ALERT_SMTP_PASSWORD", hide_env_values = true)]
    pub alert_smtp_password: Option<Secret>,
    /// File holding the SMTP password.
    #[arg(long, env = "FORGE_ALERT_SMTP_PASSWORD_FILE")]
    pub alert_smtp_password_file: Option<PathBuf>,
    /// Sender address of email alerts.
    #[arg(
        long,
        env = "FORGE_ALERT_EMAIL_FROM",
        default_value = "forge@localhost"
    )]
    pub alert_email_from: String,
    /// PEM file of extra CA certificates trusted for HTTPS and SMTP alert endpoints (on top
    /// of the system's roots).
    #[arg(long, env = "FORGE_ALERT_CA_FILE")]
    pub alert_ca_file: Option<PathBuf>,
    /// Seconds one delivery attempt may take.
    #[arg(long, env = "FORGE_ALERT_TIMEOUT_SECS", default_value_t = DEFAULT_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub alert_timeout_secs: u64,
    /// Seconds after a task's end when an alert still undelivered is dropped (an event
    /// records it).
    #[arg(long, env = "FORGE_ALERT_GIVE_UP_SECS", default_value_t = DEFAULT_GIVE_UP_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub alert_give_up_secs: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            alert_slack_url: None,
            alert_slack_url_file: None,
            alert_teams_url: None,
            alert_teams_url_file: None,
            alert_telegram_token: None,
            alert_telegram_token_file: None,
            alert_telegram_chat: None,
            alert_telegram_api: channels::TELEGRAM_API.into(),
            alert_webhook_url: None,
            alert_webhook_secret: None,
            alert_webhook_secret_file: None,
            alert_smtp_host: None,
            alert_smtp_port: None,
            alert_smtp_security: "starttls".into(),
            alert_smtp_username: None,
            alert_smtp_password: None,
            alert_smtp_password_file: None,
            alert_email_from: "forge@localhost".into(),
            alert_ca_file: None,
            alert_timeout_secs: DEFAULT_TIMEOUT_SECS,
            alert_give_up_secs: DEFAULT_GIVE_UP_SECS,
        }
    }
}

/// The running senders; dropping it stops them (undelivered rows stay in the outbox).
#[derive(Debug)]
pub struct Notifier {
    /// The configured channels.
    pub channels: Arc<Channels>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Notifier {
    /// Starts one sender per configured channel over `store`.
    #[must_use]
    pub fn start(
        channels: Arc<Channels>,
        store: &crate::store::Store,
        clock: &crate::clock::ClockHandle,
        give_up_secs: u64,
    ) -> Self {
        let senders = channels
            .kinds()
            .into_iter()
            .map(|kind| {
                let drain = sender::Sender {
                    kind,
                    channels: Arc::clone(&channels),
                    store: store.clone(),
                    clock: clock.clone(),
                    give_up_secs: i64::try_from(give_up_secs).unwrap_or(i64::MAX),
                };
                tokio::spawn(drain.run())
            })
            .collect();
        Self { channels, senders }
    }
}

impl Notifier {
    /// Sends a test message for project `project` on every configured channel at once
    /// (each bounded by the delivery timeout): what each answered, in code order. The test
    /// email goes to the project's members with `alert` on; the Telegram chat is the
    /// project's `alert_chat` or the server's.
    pub async fn test(
        &self,
        project: &crate::model::Project,
        sent_by: &str,
        recipients: Vec<String>,
    ) -> Vec<(Kind, Result<(), String>)> {
        let alert = Arc::new(outbox::Alert {
            task_id: 0,
            project_id: project.id,
            project_name: project.name.clone(),
            template_id: 0,
            template_name: String::new(),
            status: outbox::TEST_STATUS.to_owned(),
            started_by: sent_by.to_owned(),
            duration_secs: None,
            finished: 0,
            chat: project.alert_chat.clone().filter(|c| !c.trim().is_empty()),
            recipients,
        });
        let mut sends = tokio::task::JoinSet::new();
        for kind in self.channels.kinds() {
            let (channels, alert) = (Arc::clone(&self.channels), Arc::clone(&alert));
            sends.spawn(async move { (kind, channels.send(kind, &alert).await) });
        }
        let mut out: Vec<_> = sends.join_all().await;
        out.sort_by_key(|(k, _)| k.code());
        out
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for s in &self.senders {
            s.abort();
        }
    }
}
