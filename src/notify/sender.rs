//! One drain loop per channel. Each round reads the channel's oldest outbox rows and tries
//! those due: a delivery the endpoint accepted is removed in a durable write; a failed one
//! waits with exponential backoff (its own, so one bad message does not hold the others)
//! and the round ends there (a dead endpoint then costs one timeout per round, not one per
//! row). A row older than the give-up bound is removed with an event saying why. Channels
//! never wait for each other, and the runner never waits for any of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::channels::{Channels, Kind};
use super::outbox::Alert;
use crate::clock::ClockHandle;
use crate::store::{NewEvent, Store};

/// Pause between rounds when nothing is due (new rows are picked up within it).
pub const IDLE: Duration = Duration::from_millis(250);
/// Rows read per round.
const BATCH: usize = 64;
/// First retry delay; doubles per failure up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A row that failed: when to try again and why it failed.
struct Retry {
    attempts: u32,
    next: Instant,
    error: String,
}

/// The drain loop of one channel.
#[derive(Debug)]
pub struct Sender {
    /// The channel drained.
    pub kind: Kind,
    /// How to deliver.
    pub channels: Arc<Channels>,
    /// Where the outbox is.
    pub store: Store,
    /// The server's clock (the give-up bound counts from the task's end in its time).
    pub clock: ClockHandle,
    /// Seconds after a task's end when its alert is dropped.
    pub give_up_secs: i64,
}

/// The delay before attempt `attempts + 1`.
fn backoff(attempts: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

impl Sender {
    /// Drains forever (the [`super::Notifier`] aborts it).
    pub async fn run(self) {
        let code = self.kind.code();
        let mut retries: HashMap<u64, Retry> = HashMap::new();
        loop {
            let store = self.store.clone();
            let rows = tokio::task::spawn_blocking(move || store.pending_alerts(code, BATCH)).await;
            let rows = match rows {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::warn!(channel = self.kind.name(), error = %e, "reading the alert outbox failed");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            retries.retain(|id, _| rows.iter().any(|(r, _)| r == id));
            for (id, alert) in rows {
                if retries.get(&id).is_some_and(|r| r.next > Instant::now()) {
                    continue;
                }
                let now = self.clock.now();
                if now.saturating_sub(alert.finished) >= self.give_up_secs {
                    let retry = retries.remove(&id);
                    self.give_up(id, &alert, now, retry.as_ref()).await;
                    continue;
                }
                match self.channels.send(self.kind, &alert).await {
                    Ok(()) => {
                        retries.remove(&id);
                        self.delivered(id, &alert).await;
                    }
                    Err(error) => {
                        let attempts = retries.get(&id).map_or(0, |r| r.attempts) + 1;
                        tracing::warn!(
                            channel = self.kind.name(),
                            task = alert.task_id,
                            attempts,
                            error = %error,
                            "alert not delivered; will retry"
                        );
                        retries.insert(
                            id,
                            Retry {
                                attempts,
                                next: Instant::now() + backoff(attempts),
                                error,
                            },
                        );
                        break;
                    }
                }
            }
            tokio::time::sleep(IDLE).await;
        }
    }

    /// Removes a delivered row; retried while the store refuses writes (a full disk), since
    /// a row left behind would be sent again.
    async fn delivered(&self, id: u64, alert: &Alert) {
        loop {
            match self
                .store
                .alert_done(self.kind.code(), id, self.clock.now(), None)
                .await
            {
                Ok(()) => {
                    tracing::info!(
                        channel = self.kind.name(),
                        task = alert.task_id,
                        "alert delivered"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(channel = self.kind.name(), error = %e, "marking an alert delivered failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn give_up(&self, id: u64, alert: &Alert, now: i64, retry: Option<&Retry>) {
        let (attempts, error) =
            retry.map_or((0, "never attempted"), |r| (r.attempts, r.error.as_str()));
        let description = format!(
            "Alert for task {} ({}) on {} not delivered after {attempts} attempt(s) within {} s; \
             gave up: {error}",
            alert.task_id,
            alert.status,
            self.kind.name(),
            self.give_up_secs
        );
        tracing::error!(
            channel = self.kind.name(),
            task = alert.task_id,
            "{description}"
        );
        let event = NewEvent {
            user_id: None,
            project_id: Some(alert.project_id),
            object_id: Some(alert.task_id),
            object_type: "task",
            description,
        };
        if let Err(e) = self
            .store
            .alert_done(self.kind.code(), id, now, Some(event))
            .await
        {
            tracing::warn!(channel = self.kind.name(), error = %e, "dropping an alert failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}
