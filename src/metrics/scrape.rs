//! One scrape: every counter Forge keeps, read where it lives (the request counters, the
//! runner, the store's writer, the login service, the hashing pool, the database file) and
//! written as one exposition. Also the scraper's token.

use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Text;
use crate::app::App;
use crate::config::Config;

/// Shortest metrics token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The scraper's token (`--metrics-token` or its file), kept only as its SHA-256.
#[derive(Debug)]
pub struct ScrapeToken([u8; 32]);

impl ScrapeToken {
    /// The configured token: the flag, or the first line of the file; `None` when neither is
    /// set.
    ///
    /// # Errors
    /// A message when the file cannot be read or the token is shorter than
    /// [`MIN_TOKEN_LEN`] or holds whitespace or control characters.
    pub fn configured(config: &Config) -> Result<Option<Self>, String> {
        let token = match (&config.metrics_token, &config.metrics_token_file) {
            (Some(token), _) => token.0.clone(),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    format!("cannot read the metrics token file {}: {e}", file.display())
                })?;
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            (None, None) => return Ok(None),
        };
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the metrics token must be at least {MIN_TOKEN_LEN} printable characters \
                 without spaces"
            ));
        }
        Ok(Some(Self(Sha256::digest(token.as_bytes()).into())))
    }

    /// Whether `presented` is the token, compared in constant time (over the digests, so
    /// the length does not show either).
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

/// The whole exposition of `app`, now.
#[must_use]
pub fn render(app: &App) -> String {
    let mut out = Text::default();
    let runner = app.runner.stats();
    let (running, waiting) = app.runner.counts();
    let writer = app.services.store().writer_stats();
    let logins = app.services.login_stats();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    // One unlabelled sample each: (name, type, help, value). The first is upstream's
    // (Semaphore 2.20), as is `semaphore_tasks_total` below.
    #[rustfmt::skip]
    let singles: [(&str, &str, &str, u64); 9] = [
        ("semaphore_tasks_running", "gauge", "Tasks running (or being prepared) now.",
            running as u64),
        ("forge_tasks_waiting", "gauge", "Tasks waiting in the queue for a slot now.",
            waiting as u64),
        ("forge_task_output_lines_total", "counter", "Task output lines stored.",
            load(&runner.output_lines)),
        ("forge_store_commits_total", "counter",
            "Write transactions the store's writer committed (each holds a batch of writes).",
            load(&writer.commits)),
        ("forge_store_writes_total", "counter", "Write requests committed.",
            load(&writer.writes)),
        ("forge_store_file_bytes", "gauge", "Size of the database file.",
            std::fs::metadata(&app.config.db).map_or(0, |m| m.len())),
        ("forge_login_failures_total", "counter",
            "Logins refused for a wrong password or an unknown user.", load(&logins.failed)),
        ("forge_login_throttled_total", "counter",
            "Logins refused by the throttle after too many failures.", load(&logins.throttled)),
        ("forge_password_hash_queue_depth", "gauge",
            "Password hashes (logins, password changes) waiting for a hashing thread now.",
            app.services.hash_queue_depth() as u64),
    ];
    for (name, kind, help, value) in singles {
        out.single(name, kind, help, value);
    }
    out.family(
        "semaphore_tasks_total",
        "counter",
        "Tasks that ended since the server started, by final status.",
    );
    for (status, n) in runner.ended_counts() {
        out.sample("semaphore_tasks_total", &[("status", status.as_str())], n);
    }
    let durations = runner.durations();
    let histograms = [
        (
            "forge_task_duration_seconds",
            "Run time (start to end) of the tasks that ran, by project.",
        ),
        (
            "forge_store_commit_batch_size",
            "Write requests per committed transaction.",
        ),
        (
            "forge_store_commit_duration_seconds",
            "Time to commit one transaction (its fsync when durable).",
        ),
    ];
    for (name, help) in histograms {
        out.family(name, "histogram", help);
        match name {
            "forge_task_duration_seconds" => {
                for (project, h) in &durations {
                    out.histogram(name, &[("project", &project.to_string())], h);
                }
            }
            "forge_store_commit_batch_size" => out.histogram(name, &[], &writer.batch_sizes),
            _ => out.histogram(name, &[], &writer.commit_latency),
        }
    }
    app.metrics.render(&mut out);
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_whole() {
        let mut config = Config::with_db("x".into());
        assert!(ScrapeToken::configured(&config).unwrap().is_none());
        config.metrics_token = Some(crate::config::Secret("short".into()));
        assert!(ScrapeToken::configured(&config).is_err());
        config.metrics_token = Some(crate::config::Secret("with space 0123456789".into()));
        assert!(ScrapeToken::configured(&config).is_err());
        config.metrics_token = Some(crate::config::Secret("scrape-0123456789abcdef".into()));
        let token = ScrapeToken::configured(&config).unwrap().unwrap();
        assert!(token.matches("scrape-0123456789abcdef"));
        assert!(!token.matches("scrape-0123456789abcde"));
        assert!(!token.matches("scrape-0123456789abcdef0"));
        assert!(!token.matches(""));
    }
}
