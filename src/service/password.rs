//! scrypt password hashing on the blocking pool, bounded so that a login storm cannot take
//! every core or unbounded memory (each hash at `log_n` 17 uses 128 MiB).

use std::sync::Arc;

use scrypt::Scrypt;
use scrypt::password_hash::phc::PasswordHash;
use scrypt::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::{OnceCell, Semaphore};

use super::{Error, Result, blocking};

/// Hashes and verifies passwords.
#[derive(Debug)]
pub struct Hasher {
    params: scrypt::Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password with the current parameters, verified against when the
    /// login names no user, so that "no such user" costs what "wrong password" costs.
    dummy: OnceCell<String>,
}

impl Hasher {
    /// A hasher producing scrypt hashes with cost `log_n` (r = 8, p = 1).
    pub fn new(log_n: u8) -> Self {
        let params = scrypt::Params::new(log_n, scrypt::Params::RECOMMENDED_R, 1)
            .unwrap_or(scrypt::Params::RECOMMENDED);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            params,
            permits: Arc::new(Semaphore::new(cores.saturating_sub(1).max(1))),
            dummy: OnceCell::new(),
        }
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String> {
        let _permit = self.permit().await?;
        let params = self.params;
        blocking(move || hash_sync(params, &password)).await
    }

    /// Whether `password` matches `phc`. With no hash (unknown user) it verifies against a
    /// dummy hash, costing the same time, and answers `false`.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool> {
        let (phc, real) = match phc {
            Some(phc) => (phc, true),
            None => (self.dummy().await?, false),
        };
        let _permit = self.permit().await?;
        let ok = blocking(move || Ok(verify_sync(&password, &phc))).await?;
        Ok(ok && real)
    }

    async fn dummy(&self) -> Result<String> {
        let params = self.params;
        self.dummy
            .get_or_try_init(|| async move {
                let random: [u8; 16] = rand::random();
                let password = super::auth::hex(&random);
                blocking(move || hash_sync(params, &password)).await
            })
            .await
            .cloned()
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(e.to_string()))
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
    async fn unknown_user_never_verifies() {
        let h = Hasher::new(4);
        assert!(!h.verify("anything".into(), None).await.unwrap());
        let phc = h.hash("pw".into()).await.unwrap();
        assert!(h.verify("pw".into(), Some(phc)).await.unwrap());
    }
}
