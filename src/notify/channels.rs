//! The alert channels a server has, from its flags and environment, and one delivery on
//! each: Slack and Teams incoming webhooks, a Telegram bot, a generic JSON webhook (signed
//! with HMAC-SHA256 when a key is set), and email over SMTP.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;

use super::AlertConfig;
use super::client::{HttpClient, read_ca_file, tls_config};
use super::outbox::{Alert, Message};
use crate::config::Secret;

/// Telegram's Bot API.
pub const TELEGRAM_API: &str = "https://api.telegram.org";
/// The generic webhook's signature header.
pub const SIGNATURE_HEADER: &str = "x-forge-signature-256";

/// A kind of channel. The code is stored in outbox keys: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// Microsoft Teams incoming webhook: a `MessageCard`.
    Teams,
    /// Telegram bot `sendMessage`.
    Telegram,
    /// Generic JSON webhook.
    Webhook,
    /// Email over SMTP.
    Email,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 5] = [
        Kind::Slack,
        Kind::Teams,
        Kind::Telegram,
        Kind::Webhook,
        Kind::Email,
    ];

    /// The stored code.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Kind::Slack => 1,
            Kind::Teams => 2,
            Kind::Telegram => 3,
            Kind::Webhook => 4,
            Kind::Email => crate::store::outbox::EMAIL,
        }
    }

    /// The name in answers, logs and events.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Slack => "slack",
            Kind::Teams => "teams",
            Kind::Telegram => "telegram",
            Kind::Webhook => "webhook",
            Kind::Email => "email",
        }
    }
}

/// The Telegram bot.
struct Telegram {
    token: String,
    chat: Option<String>,
    api: String,
}

/// The generic webhook.
struct Webhook {
    url: String,
    key: Option<Vec<u8>>,
}

/// The SMTP relay.
struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// The configured channels (secrets inside: `Debug` shows only which are on).
pub struct Channels {
    slack: Option<String>,
    teams: Option<String>,
    telegram: Option<Telegram>,
    webhook: Option<Webhook>,
    email: Option<Email>,
    /// Built only when a channel posts over HTTP (or a CA file is given): loading and
    /// parsing the system's root certificates costs start-up time and memory that a server
    /// without alerts does not need.
    http: Option<HttpClient>,
    web_host: String,
    timeout: Duration,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("kinds", &self.kinds())
            .finish_non_exhaustive()
    }
}

/// A secret given as a value or as a file (trailing whitespace trimmed), not both.
fn secret(
    value: Option<&Secret>,
    file: Option<&PathBuf>,
    flag: &str,
) -> Result<Option<String>, String> {
    match (value, file) {
        (Some(_), Some(_)) => Err(format!("give --{flag} or --{flag}-file, not both")),
        (Some(v), None) => Ok(Some(v.0.trim().to_owned()).filter(|v| !v.is_empty())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--{flag}-file {}: {e}", path.display()))?;
            let text = text.trim();
            if text.is_empty() {
                return Err(format!("--{flag}-file {} is empty", path.display()));
            }
            Ok(Some(text.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// A URL a channel posts to: `http` or `https` with a host.
fn endpoint(url: String, flag: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("--{flag}: not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(url),
        _ => Err(format!("--{flag}: expected an http:// or https:// URL")),
    }
}

impl Channels {
    /// The channels `config` turns on; `web_host` is the base of task links.
    ///
    /// # Errors
    /// A text naming the flag at fault: an unreadable secret file or CA file, a bad URL,
    /// an invalid sender address.
    pub fn from_config(config: &AlertConfig, web_host: &str) -> Result<Self, String> {
        let extra = match &config.alert_ca_file {
            Some(path) => read_ca_file(path).map_err(|e| format!("--alert-ca-file: {e}"))?,
            None => Vec::new(),
        };
        let timeout = Duration::from_secs(config.alert_timeout_secs);
        let slack = secret(
            config.alert_slack_url.as_ref(),
            config.alert_slack_url_file.as_ref(),
            "alert-slack-url",
        )?
        .map(|u| endpoint(u, "alert-slack-url"))
        .transpose()?;
        let teams = secret(
            config.alert_teams_url.as_ref(),
            config.alert_teams_url_file.as_ref(),
            "alert-teams-url",
        )?
        .map(|u| endpoint(u, "alert-teams-url"))
        .transpose()?;
        let telegram = secret(
            config.alert_telegram_token.as_ref(),
            config.alert_telegram_token_file.as_ref(),
            "alert-telegram-token",
        )?
        .map(|token| {
            let api = endpoint(config.alert_telegram_api.clone(), "alert-telegram-api")?;
            Ok::<_, String>(Telegram {
                token,
                chat: config
                    .alert_telegram_chat
                    .clone()
                    .filter(|c| !c.trim().is_empty()),
                api: api.trim_end_matches('/').to_owned(),
            })
        })
        .transpose()?;
        let key = secret(
            config.alert_webhook_secret.as_ref(),
            config.alert_webhook_secret_file.as_ref(),
            "alert-webhook-secret",
        )?;
        let webhook = config
            .alert_webhook_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .map(|url| {
                Ok::<_, String>(Webhook {
                    url: endpoint(url, "alert-webhook-url")?,
                    key: key.map(String::into_bytes),
                })
            })
            .transpose()?;
        let posts = slack.is_some() || teams.is_some() || telegram.is_some() || webhook.is_some();
        let http = if posts || !extra.is_empty() {
            Some(HttpClient::new(tls_config(&extra)?, timeout))
        } else {
            None
        };
        let email = match config.alert_smtp_host.as_deref().map(str::trim) {
            Some(host) if !host.is_empty() => Some(email(config, host, &extra, timeout)?),
            _ => None,
        };
        Ok(Self {
            slack,
            teams,
            telegram,
            webhook,
            email,
            http,
            web_host: web_host.to_owned(),
            timeout,
        })
    }

    /// The kinds configured, in code order.
    #[must_use]
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| match k {
                Kind::Slack => self.slack.is_some(),
                Kind::Teams => self.teams.is_some(),
                Kind::Telegram => self.telegram.is_some(),
                Kind::Webhook => self.webhook.is_some(),
                Kind::Email => self.email.is_some(),
            })
            .collect()
    }

    /// Delivers `alert` on channel `kind`: `Ok` once the endpoint accepted it.
    ///
    /// # Errors
    /// Why it was not accepted (never containing a secret).
    pub async fn send(&self, kind: Kind, alert: &Alert) -> Result<(), String> {
        let message = Message::new(alert, &self.web_host);
        let sent = async {
            match kind {
                Kind::Slack => self.slack(&message).await,
                Kind::Teams => self.teams(&message).await,
                Kind::Telegram => self.telegram(&message).await,
                Kind::Webhook => self.webhook(&message).await,
                Kind::Email => self.email(&message).await,
            }
        };
        // Each step has its own bound; this one holds them all together.
        tokio::time::timeout(self.timeout + Duration::from_secs(1), sent)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", self.timeout.as_secs())))
    }

    /// The HTTP client; there is one whenever a channel that posts is configured.
    fn http(&self) -> Result<&HttpClient, String> {
        self.http
            .as_ref()
            .ok_or_else(|| "not configured".to_owned())
    }

    async fn slack(&self, m: &Message<'_>) -> Result<(), String> {
        let url = self.slack.as_deref().ok_or("not configured")?;
        let body = json!({ "text": m.text() });
        self.http()?
            .post_json(url, &[], body.to_string().into_bytes())
            .await?;
        Ok(())
    }

    async fn teams(&self, m: &Message<'_>) -> Result<(), String> {
        let url = self.teams.as_deref().ok_or("not configured")?;
        let color = match m.alert.status.as_str() {
            "success" => "2EB886",
            "error" => "D00000",
            _ => "439FE0",
        };
        let text = m.text().replace('\n', "  \n");
        let body = json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "themeColor": color,
            "summary": m.subject(),
            "title": m.subject(),
            "text": text,
        });
        self.http()?
            .post_json(url, &[], body.to_string().into_bytes())
            .await?;
        Ok(())
    }

    async fn telegram(&self, m: &Message<'_>) -> Result<(), String> {
        let bot = self.telegram.as_ref().ok_or("not configured")?;
        let chat = m
            .alert
            .chat
            .as_deref()
            .or(bot.chat.as_deref())
            .ok_or("no chat: set --alert-telegram-chat or the project's alert_chat")?;
        let url = format!("{}/bot{}/sendMessage", bot.api, bot.token);
        let body = json!({
            "chat_id": chat,
            "text": m.text(),
            "disable_web_page_preview": true,
        });
        let answer = self
            .http()?
            .post_json(&url, &[], body.to_string().into_bytes())
            .await
            .map_err(|e| e.replace(&bot.token, "<token>"))?;
        let answer: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|_| "the Bot API answered with something not JSON".to_owned())?;
        if answer["ok"] == true {
            Ok(())
        } else {
            Err(format!(
                "the Bot API refused: {}",
                answer["description"].as_str().unwrap_or("no description")
            ))
        }
    }

    async fn webhook(&self, m: &Message<'_>) -> Result<(), String> {
        let hook = self.webhook.as_ref().ok_or("not configured")?;
        let body = m.json().to_string().into_bytes();
        let mut headers = vec![(
            "x-forge-event",
            if m.is_test() { "test" } else { "task_finished" }.to_owned(),
        )];
        if let Some(key) = &hook.key {
            headers.push((SIGNATURE_HEADER, signature(key, &body)));
        }
        self.http()?.post_json(&hook.url, &headers, body).await?;
        Ok(())
    }

    async fn email(&self, m: &Message<'_>) -> Result<(), String> {
        let mail = self.email.as_ref().ok_or("not configured")?;
        if m.alert.recipients.is_empty() {
            return Err("no recipient: no member of the project has alerts on".into());
        }
        let mut builder = lettre::Message::builder()
            .from(mail.from.clone())
            .subject(m.subject());
        for to in &m.alert.recipients {
            let to: Mailbox = to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?;
            builder = builder.to(to);
        }
        let message = builder
            .body(m.text())
            .map_err(|e| format!("cannot build the email: {e}"))?;
        mail.transport
            .send(message)
            .await
            .map_err(|e| format!("SMTP: {e}"))?;
        Ok(())
    }
}

/// `sha256=<hex HMAC-SHA256 of body under key>`, GitHub's form.
///
/// # Panics
/// Never: HMAC takes keys of any length.
#[must_use]
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The SMTP transport `config` describes.
fn email(
    config: &AlertConfig,
    host: &str,
    extra: &[rustls::pki_types::CertificateDer<'static>],
    timeout: Duration,
) -> Result<Email, String> {
    let from: Mailbox = config
        .alert_email_from
        .parse()
        .map_err(|e| format!("--alert-email-from: {e}"))?;
    let tls = || {
        let mut params = TlsParameters::builder(host.to_owned());
        for cert in extra {
            let cert = Certificate::from_der(cert.to_vec())
                .map_err(|e| format!("--alert-ca-file: {e}"))?;
            params = params.add_root_certificate(cert);
        }
        params
            .build_rustls()
            .map_err(|e| format!("SMTP TLS settings: {e}"))
    };
    let (security, default_port) = match config.alert_smtp_security.as_str() {
        "tls" => (Tls::Wrapper(tls()?), 465),
        "none" => (Tls::None, 25),
        _ => (Tls::Required(tls()?), 587),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(config.alert_smtp_port.unwrap_or(default_port))
        .tls(security)
        .timeout(Some(timeout));
    let password = secret(
        config.alert_smtp_password.as_ref(),
        config.alert_smtp_password_file.as_ref(),
        "alert-smtp-password",
    )?;
    match (&config.alert_smtp_username, password) {
        (Some(user), Some(password)) => {
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        (Some(_), None) => return Err("--alert-smtp-username needs a password".into()),
        (None, Some(_)) => return Err("an SMTP password needs --alert-smtp-username".into()),
        (None, None) => {}
    }
    Ok(Email {
        transport: builder.build(),
        from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_come_from_a_value_or_a_file_not_both() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("s");
        std::fs::write(&file, "hook-url\n").expect("write");
        let v = Secret("x".into());
        assert_eq!(
            secret(None, Some(&file), "f").expect("file"),
            Some("hook-url".into())
        );
        assert_eq!(
            secret(Some(&v), None, "f").expect("value"),
            Some("x".into())
        );
        assert!(secret(Some(&v), Some(&file), "f").is_err());
        assert!(secret(None, Some(&dir.path().join("missing")), "f").is_err());
    }
}
