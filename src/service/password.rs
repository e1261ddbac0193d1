//! scrypt password hashing on a pool of its own: at most `threads` hashes run at once (each
//! uses 128 MiB at `log_n` 17), at most `queue` wait, and a login finding the queue full is
//! refused at once (503) instead of piling up. Nothing else runs on these threads, so Bearer
//! and cookie requests never wait behind logins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use scrypt::Scrypt;
use scrypt::password_hash::phc::PasswordHash;
use scrypt::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::{OnceCell, oneshot};

use super::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies passwords.
#[derive(Debug)]
pub struct Hasher {
    params: scrypt::Params,
    jobs: SyncSender<Job>,
    /// A hash of a random password with the current parameters, verified against when the
    /// login names no user, so that "no such user" costs what "wrong password" costs.
    dummy: OnceCell<String>,
    /// Hashes queued that no thread has started yet (for metrics).
    waiting: Arc<AtomicUsize>,
}

/// The default number of hashing threads: one per core but one, at least one.
#[must_use]
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    cores.saturating_sub(1).max(1)
}

impl Hasher {
    /// A hasher producing scrypt hashes with cost `log_n` (r = 8, p = 1) on `threads` threads
    /// (0 = [`default_threads`]) with at most `queue` hashes waiting.
    pub fn new(log_n: u8, threads: usize, queue: usize) -> Self {
        let params = scrypt::Params::new(log_n, scrypt::Params::RECOMMENDED_R, 1)
            .unwrap_or(scrypt::Params::RECOMMENDED);
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("forge-scrypt-{n}"))
                .spawn(move || work(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self {
            params,
            jobs,
            dummy: OnceCell::new(),
            waiting: Arc::default(),
        }
    }

    /// Runs `f` on the pool; [`Error::Busy`] at once when the queue is full.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let waiting = Arc::clone(&self.waiting);
        let job: Job = Box::new(move || {
            waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(f());
        });
        // Counted before it is sent: a thread may take it at once.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.jobs.try_send(job);
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Error::Busy { retry_after: 1 }),
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Internal("the password hashing pool is gone".into()));
            }
        }
        rx.await
            .map_err(|_| Error::Internal("a password hashing thread failed".into()))
    }

    /// Hashes waiting for a thread (queued, not started).
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String> {
        let params = self.params;
        self.run(move || hash_sync(params, &password)).await?
    }

    /// Whether `password` matches `phc`. With no hash (unknown user) it verifies against a
    /// dummy hash, costing the same time, and answers `false`.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool> {
        let (phc, real) = match phc {
            Some(phc) => (phc, true),
            None => (self.dummy().await?, false),
        };
        let ok = self.run(move || verify_sync(&password, &phc)).await?;
        Ok(ok && real)
    }

    async fn dummy(&self) -> Result<String> {
        let params = self.params;
        self.dummy
            .get_or_try_init(|| async move {
                let random: [u8; 16] = rand::random();
                let password = super::auth::hex(&random);
                self.run(move || hash_sync(params, &password)).await?
            })
            .await
            .cloned()
    }
}

/// A hashing thread: takes jobs until the hasher is dropped. It runs at the lowest priority:
/// under CPU contention every other request goes first, and logins wait (bounded by the queue).
fn work(rx: &Mutex<Receiver<Job>>) {
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(error = ?e, "cannot lower the password hashing thread's priority");
    }
    loop {
        let job = rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Hashes synchronously (callers are on the blocking pool, or the CLI).
pub fn hash_sync(params: scrypt::Params, password: &str) -> Result<String> {
    Scrypt::new_with_params(params)
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

/// Verifies synchronously with the parameters stored in `phc`; a malformed hash never matches.
pub fn verify_sync(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Scrypt::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify_with_stored_params() {
        let params = scrypt::Params::new(4, 8, 1).unwrap();
        let phc = hash_sync(params, "slashy\\pass \"q\" é").unwrap();
        assert!(phc.starts_with("$scrypt$ln=4,"));
        assert!(verify_sync("slashy\\pass \"q\" é", &phc));
        assert!(!verify_sync("slashy\\pass", &phc));
        assert!(!verify_sync("x", "not a phc string"));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let h = Hasher::new(14, 1, 1);
        let (a, b, c) = tokio::join!(h.hash("a".into()), h.hash("b".into()), h.hash("c".into()));
        let busy = [&a, &b, &c]
            .iter()
            .filter(|r| matches!(r, Err(Error::Busy { .. })))
            .count();
        assert!(
            busy >= 1,
            "one thread and one queue slot cannot take three hashes at once"
        );
        assert!([a, b, c].iter().any(Result::is_ok));
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let h = Hasher::new(4, 1, 4);
        assert!(!h.verify("anything".into(), None).await.unwrap());
        let phc = h.hash("pw".into()).await.unwrap();
        assert!(h.verify("pw".into(), Some(phc)).await.unwrap());
    }
}
