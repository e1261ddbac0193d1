//! Logins, sessions and API tokens.
//!
//! Secrets (session ids, API tokens) are 256-bit random values; only their SHA-256 is stored.
//! Looking a secret up by its hash is an exact comparison whose timing reveals nothing about
//! the secret (the attacker does not control the hash), so no separate constant-time compare
//! of the raw value is needed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Caller, Error, Result, Services, blocking};
use crate::model::{ApiToken, SecretHash, Session, User, UserTotp};
use crate::store::NewEvent;

/// Length of an API token: 32 random bytes, padded URL-safe base64, lower-cased (upstream's
/// shape, `^[a-z0-9_-]{43}=$`).
pub const TOKEN_LEN: usize = 44;

/// Seconds between two recorded activity updates of one session; requests in between do not
/// write at all.
const TOUCH_EVERY_SECS: i64 = 60;

/// Where a login comes from.
#[derive(Debug, Clone)]
pub struct LoginClient {
    /// Client address (throttling key, stored with the session).
    pub ip: String,
    /// `User-Agent` header.
    pub user_agent: String,
}

/// SHA-256 of a secret.
#[must_use]
pub fn secret_hash(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// At most `max` characters of `s` (for log lines built from client input).
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A new API token string.
#[must_use]
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE.encode(bytes).to_lowercase()
}

/// Whether `s` has the shape of an API token (as opposed to a listed handle).
#[must_use]
pub fn looks_like_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.ends_with('=')
}

/// The non-secret handle listed for a token: 16 hex digits of its hash.
fn handle_of(hash: &SecretHash) -> String {
    hex(&hash[..8])
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Services {
    /// Checks a login and opens a session; returns the session id for the cookie. The session
    /// of a user enrolled in two-factor login awaits a code (`service::totp`).
    ///
    /// # Errors
    /// [`Error::Throttled`] after too many failures for the account or the address;
    /// [`Error::Unauthorized`] for an unknown user, a wrong password or an external user.
    pub async fn login(
        &self,
        login: &str,
        password: String,
        client: LoginClient,
    ) -> Result<String> {
        // Longer than any stored login or email: refused before it costs a hash or a
        // throttle entry.
        if login.len() > super::users::MAX_FIELD_LEN {
            return Err(Error::Unauthorized);
        }
        let attempt = self
            .throttle
            .begin(&login.to_lowercase(), &client.ip, self.now())
            .map_err(|retry_after| {
                self.logins.throttled.fetch_add(1, Ordering::Relaxed);
                Error::Throttled { retry_after }
            })?;

        let user = self.store.user_by_login(login)?;
        let phc = user
            .as_ref()
            .filter(|u| !u.external)
            .map(|u| u.password_hash.clone());
        let ok = self.hasher.verify(password, phc).await?;
        let Some(user) = user.filter(|_| ok) else {
            self.logins.failed.fetch_add(1, Ordering::Relaxed);
            attempt.failed();
            let event = NewEvent {
                user_id: None,
                project_id: None,
                object_id: None,
                object_type: "user",
                description: format!(
                    "Failed login for {:?} from {}",
                    truncate(login, 64),
                    client.ip
                ),
            };
            let (store, now) = (self.store.clone(), self.now());
            blocking(move || Ok(store.record_event(now, event)?)).await?;
            return Err(Error::Unauthorized);
        };
        attempt.succeeded();

        let id = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let now = self.now();
        let session = Session {
            user_id: user.id,
            created: now,
            last_active: now,
            ip: client.ip,
            user_agent: client.user_agent,
        };
        let event = NewEvent {
            user_id: Some(user.id),
            project_id: None,
            object_id: Some(user.id),
            object_type: "user",
            description: format!("User {} logged in from {}", user.username, session.ip),
        };
        let store = self.store.clone();
        let hash = secret_hash(&id);
        // An enrolled user's session can do nothing but verify a code until it has.
        if self.needs_second_factor(user.id)? {
            blocking(move || Ok(store.create_pending_session(&hash, &session, event)?)).await?;
        } else {
            blocking(move || Ok(store.create_session(&hash, &session, Some(event))?)).await?;
        }
        Ok(id)
    }

    /// Revokes the session with id `session_id`, if it exists.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn logout(&self, session_id: &str) -> Result<()> {
        let store = self.store.clone();
        let hash = secret_hash(session_id);
        blocking(move || Ok(store.revoke_session(&hash).map(drop)?)).await?;
        self.access_changed();
        Ok(())
    }

    /// The user a session id belongs to, with the session's hash; `None` for an unknown or
    /// idle-expired session (which is then deleted). Activity is recorded at most once a
    /// minute per session.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn session_user(&self, session_id: &str) -> Result<Option<(User, SecretHash)>> {
        let hash = secret_hash(session_id);
        let Some(session) = self.store.session(&hash)? else {
            return Ok(None);
        };
        let now = self.now();
        if now - session.last_active > self.session_idle_secs {
            let store = self.store.clone();
            blocking(move || Ok(store.revoke_session(&hash).map(drop)?)).await?;
            self.access_changed();
            return Ok(None);
        }
        let Some(user) = self.store.user(session.user_id)? else {
            return Ok(None);
        };
        if now - session.last_active >= TOUCH_EVERY_SECS {
            let store = self.store.clone();
            match blocking(move || Ok(store.touch_session(&hash, now)?)).await {
                // Activity is bookkeeping: a full disk must not lock its users out of reads.
                Err(e) if e.is_storage() => tracing::debug!(error = %e, "session not touched"),
                other => other?,
            }
        }
        Ok(Some((user, hash)))
    }

    /// The user an API token belongs to; `None` for an unknown or expired token. One hash,
    /// then the answer remembered since the last access change (see `access_cache`), or one
    /// read transaction; no write.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn token_user(&self, token: &str) -> Result<Option<Arc<Caller>>> {
        let hash = secret_hash(token);
        // Read before the store (see `store::writer::Generation`).
        let generation = self.store.writer_stats().access.current();
        if let Some(caller) = self.access_cache.token_user(&hash, generation) {
            return Ok(Some(caller));
        }
        let Some(user) = self.store.token_user(&hash)? else {
            return Ok(None);
        };
        let caller = Arc::new(Caller::new(user));
        self.access_cache.keep_token_user(hash, generation, &caller);
        Ok(Some(caller))
    }

    /// `caller`'s own `GET /api/user` answer: `render` of the user and, while TOTP is on,
    /// their enrolment; kept beside `caller` and given again while nothing it was rendered
    /// from has changed. The user is current as long as `caller` is (a remembered token user
    /// is dropped on any access change; a session's is read for each request). The enrolment
    /// is not access data, so with TOTP on the answer is kept for the data generation read
    /// before the enrolment (see `store::writer::Generation`): any commit renders it again.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn own_view(
        &self,
        caller: &Caller,
        render: impl FnOnce(&User, Option<UserTotp>) -> Bytes,
    ) -> Result<Bytes> {
        let generation = self
            .totp_on()
            .then(|| self.store.writer_stats().data.current());
        if let Some(view) = caller.kept_view(generation) {
            return Ok(view);
        }
        let user = caller.user();
        let totp = if self.totp_on() {
            self.totp_of_user(user, user.id)?
        } else {
            None
        };
        let view = render(user, totp);
        caller.keep_view(generation, view.clone());
        Ok(view)
    }

    /// Creates an API token for `user`; returns the token itself (shown once) and its record.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn create_token(&self, user: &User) -> Result<(String, ApiToken)> {
        let token = new_token();
        let hash = secret_hash(&token);
        let record = ApiToken {
            user_id: user.id,
            handle: handle_of(&hash),
            created: self.now(),
            expired: false,
        };
        let store = self.store.clone();
        let stored = record.clone();
        blocking(move || Ok(store.create_token(&hash, &stored)?)).await?;
        Ok((token, record))
    }

    /// Every token of `user`, expired ones included.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn tokens(&self, user: &User) -> Result<Vec<ApiToken>> {
        Ok(self.store.tokens_of(user.id)?)
    }

    /// Expires one of `user`'s tokens, named by its listed handle or by the token itself.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `user` has no such token.
    pub async fn expire_token(&self, user: &User, id: &str) -> Result<()> {
        let store = self.store.clone();
        let user_id = user.id;
        if looks_like_token(id) {
            let hash = secret_hash(id);
            blocking(move || Ok(store.expire_token_by_hash(user_id, &hash)?)).await
        } else {
            let handle = id.to_owned();
            blocking(move || Ok(store.expire_token_by_handle(user_id, &handle)?)).await
        }?;
        self.access_changed();
        Ok(())
    }

    /// Deletes sessions idle for longer than the idle timeout; returns how many.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn sweep_sessions(&self) -> Result<usize> {
        let store = self.store.clone();
        let before = self.now() - self.session_idle_secs;
        let gone = blocking(move || Ok(store.sweep_sessions(before)?)).await?;
        if gone > 0 {
            self.access_changed();
        }
        Ok(gone)
    }

    /// Tells long-lived responses that access may have been taken away (a session or token
    /// revoked, a user changed or deleted, a membership changed): each re-checks its caller.
    pub(crate) fn access_changed(&self) {
        self.access_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes when access may have been taken away (see [`Services::access_changed`]).
    #[must_use]
    pub fn watch_access(&self) -> tokio::sync::watch::Receiver<u64> {
        self.access_changes.subscribe()
    }

    /// The user of session `session_id` now, without recording activity (for long-lived
    /// responses re-checking their caller): `None` once it is revoked or idle-expired, or its
    /// user is gone.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn session_user_now(&self, session_id: &str) -> Result<Option<User>> {
        let Some(session) = self.store.session(&secret_hash(session_id))? else {
            return Ok(None);
        };
        if self.now() - session.last_active > self.session_idle_secs {
            return Ok(None);
        }
        Ok(self.store.user(session.user_id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape_matches_upstream() {
        for _ in 0..200 {
            let t = new_token();
            assert_eq!(t.len(), TOKEN_LEN);
            assert!(t.ends_with('='));
            assert!(
                t[..43]
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
            );
            assert!(looks_like_token(&t));
        }
        let h = handle_of(&secret_hash("x"));
        assert_eq!(h.len(), 16);
        assert!(!looks_like_token(&h));
    }
}
