//! Two-factor login with TOTP (RFC 6238; API.md §12.8).
//!
//! Enabling answers the shared secret (as an `otpauth://` URL) and the recovery codes once;
//! the secret is stored sealed with the server key, the recovery codes as SHA-256 hashes
//! (80 random bits each, so a fast hash is enough, as for API tokens). Until a first code has
//! been verified the QR code can be fetched again; after that the secret never leaves the
//! server. A password login of an enrolled user opens a *pending* session that can only
//! verify a code (or use a recovery code) or log out.
//!
//! Codes are six digits over 30 s steps with SHA-1 (what every authenticator app does); the
//! previous and next step are accepted for clock drift, a step is accepted once (no replay),
//! and attempts go through a login throttle keyed by (user, address), so a code cannot be
//! guessed: at most `--login-max-failures` tries per window and address, and
//! [`throttle::WIDE_FACTOR`] times that per user from all addresses.

use totp_rs::{Algorithm, Builder, Totp};

use super::{Error, Result, Services, auth::secret_hash, blocking, throttle};
use crate::model::{SecretHash, User, UserId, UserTotp};
use crate::store::NewEvent;
use crate::store::totp::{NewTotp, Outcome};

/// The `issuer` shown by authenticator apps.
pub const ISSUER: &str = "Forge";
/// Digits of a code.
pub const DIGITS: usize = 6;
/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Recovery codes handed out when enabling.
pub const RECOVERY_CODES: usize = 8;
/// Characters of a recovery code (without the dashes), from a 32-letter alphabet: 80 bits.
pub const RECOVERY_LEN: usize = 16;
/// The recovery code alphabet (RFC 4648 base32, lower case).
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Bytes of a new shared secret (RFC 4226 recommends 160 bits).
const SECRET_LEN: usize = 20;

/// What enabling answers, once: the secret as a URL and the recovery codes.
#[derive(Debug)]
pub struct Enabled {
    /// The stored enrolment.
    pub totp: UserTotp,
    /// `otpauth://totp/...` with the secret, for authenticator apps.
    pub url: String,
    /// The recovery codes, `xxxx-xxxx-xxxx-xxxx`.
    pub recovery_codes: Vec<String>,
}

/// Parses a passcode as typed: six ASCII digits, with any ASCII spaces or tabs (apps show
/// `123 456`) ignored. `None` for anything else (never panics; no allocation beyond six bytes).
#[must_use]
pub fn parse_passcode(input: &str) -> Option<String> {
    let mut code = String::with_capacity(DIGITS);
    for c in input.chars() {
        match c {
            ' ' | '\t' => {}
            '0'..='9' if code.len() < DIGITS => code.push(c),
            _ => return None,
        }
    }
    (code.len() == DIGITS).then_some(code)
}

/// Normalises a recovery code as typed: dashes and spaces dropped, letters lower-cased;
/// `None` unless [`RECOVERY_LEN`] characters of the recovery alphabet remain.
#[must_use]
pub fn parse_recovery_code(input: &str) -> Option<String> {
    let mut code = String::with_capacity(RECOVERY_LEN);
    for c in input.chars() {
        match c {
            '-' | ' ' | '\t' => {}
            c if c.is_ascii()
                && RECOVERY_ALPHABET.contains(&(c.to_ascii_lowercase() as u8))
                && code.len() < RECOVERY_LEN =>
            {
                code.push(c.to_ascii_lowercase());
            }
            _ => return None,
        }
    }
    (code.len() == RECOVERY_LEN).then_some(code)
}

/// A new recovery code, normalised (no dashes).
fn new_recovery_code() -> String {
    let bytes: [u8; RECOVERY_LEN] = rand::random();
    bytes
        .iter()
        .map(|b| char::from(RECOVERY_ALPHABET[usize::from(b & 31)]))
        .collect()
}

/// `abcdefghijklmnop` → `abcd-efgh-ijkl-mnop`.
fn dashed(code: &str) -> String {
    code.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// The TOTP of `secret` for `account`: SHA-1, six digits, 30 s steps, one step of skew.
fn totp_of(secret: Vec<u8>, account: &str) -> Result<Totp> {
    // ':' separates issuer and account in the URL's label, so it cannot be in either.
    let account = account.replace(':', "_");
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| Error::Internal(format!("TOTP: {e}")))
}

fn off() -> Error {
    Error::Invalid("two-factor login is turned off on this server (--totp off)".into())
}

fn not_enrolled() -> Error {
    Error::Invalid("two-factor login is not enabled for this user".into())
}

impl Services {
    /// Whether two-factor login is on (`--totp on`).
    #[must_use]
    pub fn totp_on(&self) -> bool {
        self.totp_on
    }

    /// Whether session `hash` of `user` may do nothing but verify its second factor: a
    /// password login of an enrolled user that has not verified a code yet (never while
    /// `--totp off`).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn session_awaits_totp(&self, hash: &SecretHash, user: UserId) -> Result<bool> {
        Ok(self.totp_on && self.store.session_pending(hash, user)?)
    }

    /// Whether `user` is enrolled (and TOTP is on): a login opens a pending session.
    pub(super) fn needs_second_factor(&self, user: UserId) -> Result<bool> {
        Ok(self.totp_on && self.store.totp(user)?.is_some())
    }

    /// The enrolment of `target`, if any, as `caller` may see it (themselves or an admin).
    ///
    /// # Errors
    /// [`Error::Forbidden`] for another user's, unless an admin asks.
    pub fn totp_of_user(&self, caller: &User, target: UserId) -> Result<Option<UserTotp>> {
        if caller.id != target && !caller.admin {
            return Err(Error::Forbidden);
        }
        Ok(self.store.totp(target)?)
    }

    /// Enables TOTP for `caller` (`target` must be the caller: the secret is theirs alone);
    /// answers the secret's URL and the recovery codes, shown this once.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for another user; [`Error::Conflict`] when already enabled;
    /// [`Error::Invalid`] while `--totp off` or for an external user.
    pub async fn enable_totp(&self, caller: &User, target: UserId) -> Result<Enabled> {
        if caller.id != target {
            return Err(Error::Forbidden);
        }
        if !self.totp_on {
            return Err(off());
        }
        if caller.external {
            return Err(Error::Invalid(
                "an external user signs in elsewhere: two-factor login is set up there".into(),
            ));
        }
        let secret: [u8; SECRET_LEN] = rand::random();
        let totp = totp_of(secret.to_vec(), &caller.username)?;
        let url = totp
            .to_url()
            .map_err(|e| Error::Internal(format!("TOTP URL: {e}")))?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let new = NewTotp {
            user_id: caller.id,
            created: self.now(),
            sealed_secret: self.cipher.seal(&secret),
            recovery_hashes: codes.iter().map(|c| secret_hash(c)).collect(),
        };
        let event = NewEvent {
            user_id: Some(caller.id),
            project_id: None,
            object_id: Some(caller.id),
            object_type: "user",
            description: format!("User {} enabled two-factor login", caller.username),
        };
        let store = self.store.clone();
        let stored = blocking(move || Ok(store.create_totp(new, event.clone())?)).await?;
        let totp = stored.ok_or_else(|| {
            Error::Conflict("two-factor login is already enabled: disable it first".into())
        })?;
        Ok(Enabled {
            totp,
            url,
            recovery_codes: codes.iter().map(|c| dashed(c)).collect(),
        })
    }

    /// The QR code (PNG) of enrolment `id` of `caller`, served only until a first code has
    /// been verified.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for another user's; [`Error::NotFound`]; [`Error::Conflict`]
    /// once confirmed.
    pub fn totp_qr(&self, caller: &User, target: UserId, id: u64) -> Result<Vec<u8>> {
        if caller.id != target {
            return Err(Error::Forbidden);
        }
        let totp = self
            .store
            .totp(target)?
            .filter(|t| t.id == id)
            .ok_or(Error::NotFound)?;
        if totp.confirmed {
            return Err(Error::Conflict(
                "the secret is no longer shown once a code has been verified: disable and \
                 enable two-factor login again to add a device"
                    .into(),
            ));
        }
        let secret = self
            .cipher
            .open(&totp.sealed_secret)
            .map_err(|e| Error::Internal(e.to_string()))?;
        totp_of(secret, &caller.username)?
            .to_qr_png()
            .map_err(|e| Error::Internal(format!("QR code: {e}")))
    }

    /// Disables enrolment `id` of `target` (the user themselves, or an admin for a user who
    /// lost their device).
    ///
    /// # Errors
    /// [`Error::Forbidden`] for another user's, unless an admin asks; [`Error::NotFound`].
    pub async fn disable_totp(&self, caller: &User, target: UserId, id: u64) -> Result<()> {
        if caller.id != target && !caller.admin {
            return Err(Error::Forbidden);
        }
        let event = NewEvent {
            user_id: Some(caller.id),
            project_id: None,
            object_id: Some(target),
            object_type: "user",
            description: format!(
                "User {} disabled two-factor login of user {target}",
                caller.username
            ),
        };
        let (store, now) = (self.store.clone(), self.now());
        let gone = blocking(move || Ok(store.delete_totp(target, id, now, event.clone())?)).await?;
        if !gone {
            return Err(Error::NotFound);
        }
        self.access_changed();
        Ok(())
    }

    /// Checks `passcode` for `user`: the current, previous or next step's code, not already
    /// used. On success the session `session` (when the caller used one) is no longer
    /// pending and the enrolment is confirmed. Throttled like logins, per (user, address).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed code, no enrolment or `--totp off`;
    /// [`Error::Throttled`] after too many failures; [`Error::Unauthorized`] for a wrong or
    /// replayed code.
    pub async fn verify_totp(
        &self,
        user: &User,
        session: Option<SecretHash>,
        passcode: &str,
        ip: &str,
    ) -> Result<()> {
        if !self.totp_on {
            return Err(off());
        }
        let code = parse_passcode(passcode).ok_or_else(|| {
            Error::Invalid("passcode: expected the 6 digits your authenticator app shows".into())
        })?;
        let totp = self.store.totp(user.id)?.ok_or_else(not_enrolled)?;
        let attempt = self.second_factor_attempt(user, ip)?;
        let secret = self
            .cipher
            .open(&totp.sealed_secret)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let now = u64::try_from(self.now()).unwrap_or(0);
        // totp-rs compares each candidate token in constant time.
        let Some(step) = totp_of(secret, &user.username)?.check(&code, now) else {
            attempt.failed();
            return Err(Error::Unauthorized);
        };
        let store = self.store.clone();
        let user_id = user.id;
        let outcome = blocking(move || Ok(store.accept_totp_step(user_id, step, session)?)).await?;
        self.settle(outcome, attempt)
    }

    /// Uses one recovery code of `user` (it then no longer works); otherwise as
    /// [`Services::verify_totp`].
    ///
    /// # Errors
    /// As [`Services::verify_totp`].
    pub async fn recover_totp(
        &self,
        user: &User,
        session: Option<SecretHash>,
        code: &str,
        ip: &str,
    ) -> Result<()> {
        if !self.totp_on {
            return Err(off());
        }
        let code = parse_recovery_code(code).ok_or_else(|| {
            Error::Invalid("recovery_code: expected a code like abcd-efgh-ijkl-mnop".into())
        })?;
        if self.store.totp(user.id)?.is_none() {
            return Err(not_enrolled());
        }
        let attempt = self.second_factor_attempt(user, ip)?;
        let (store, user_id, hash) = (self.store.clone(), user.id, secret_hash(&code));
        let outcome =
            blocking(move || Ok(store.use_recovery_code(user_id, hash, session)?)).await?;
        if outcome == Outcome::Accepted {
            let event = NewEvent {
                user_id: Some(user_id),
                project_id: None,
                object_id: Some(user_id),
                object_type: "user",
                description: format!("User {} used a recovery code", user.username),
            };
            let (store, now) = (self.store.clone(), self.now());
            blocking(move || Ok(store.record_event(now, event)?)).await?;
        }
        self.settle(outcome, attempt)
    }

    /// Settles a checked second factor: the throttle learns the verdict; an accepted one may
    /// have lifted a session's restriction, which long-lived responses re-check.
    fn settle(&self, outcome: Outcome, attempt: throttle::Attempt) -> Result<()> {
        match outcome {
            Outcome::Accepted => {
                attempt.succeeded();
                self.access_changed();
                Ok(())
            }
            Outcome::Refused => {
                attempt.failed();
                Err(Error::Unauthorized)
            }
            Outcome::NotEnrolled => Err(not_enrolled()),
        }
    }

    /// Counts one second-factor attempt of `user` from `ip`.
    fn second_factor_attempt(&self, user: &User, ip: &str) -> Result<throttle::Attempt> {
        self.totp_throttle
            .begin(&user.id.to_string(), ip, self.now())
            .map_err(|retry_after| Error::Throttled { retry_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn passcodes() {
        assert_eq!(parse_passcode("123456").as_deref(), Some("123456"));
        assert_eq!(parse_passcode(" 123 456\t").as_deref(), Some("123456"));
        assert_eq!(parse_passcode("012345").as_deref(), Some("012345"));
        assert_eq!(parse_passcode("12345"), None);
        assert_eq!(parse_passcode("1234567"), None);
        assert_eq!(parse_passcode("12345a"), None);
        assert_eq!(parse_passcode("+12345"), None);
        assert_eq!(parse_passcode("١٢٣٤٥٦"), None);
        assert_eq!(parse_passcode(""), None);
    }

    #[test]
    fn recovery_codes_round_trip() {
        for _ in 0..50 {
            let code = new_recovery_code();
            assert_eq!(code.len(), RECOVERY_LEN);
            let shown = dashed(&code);
            assert_eq!(shown.len(), RECOVERY_LEN + 3);
            assert_eq!(parse_recovery_code(&shown), Some(code.clone()));
            assert_eq!(parse_recovery_code(&shown.to_uppercase()), Some(code));
        }
        assert_eq!(parse_recovery_code("abcd-efgh-ijkl-mno"), None);
        assert_eq!(parse_recovery_code("abcd-efgh-ijkl-mnop-q"), None);
        assert_eq!(parse_recovery_code("abcd-efgh-ijkl-mno1"), None);
    }

    #[test]
    fn account_names_with_colons_still_make_a_url() {
        let url = totp_of(vec![7; SECRET_LEN], "a:b")
            .unwrap()
            .to_url()
            .unwrap();
        assert!(url.starts_with("otpauth://totp/Forge:a_b?"), "{url}");
        assert!(url.contains("issuer=Forge"), "{url}");
    }

    proptest! {
        #[test]
        fn parsers_never_panic_and_answer_canonical_codes(s in "\\PC{0,40}") {
            if let Some(code) = parse_passcode(&s) {
                prop_assert_eq!(code.len(), DIGITS);
                prop_assert!(code.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(parse_passcode(&code), Some(code.clone()));
            }
            if let Some(code) = parse_recovery_code(&s) {
                prop_assert_eq!(code.len(), RECOVERY_LEN);
                prop_assert_eq!(parse_recovery_code(&code), Some(code.clone()));
            }
        }
    }
}
