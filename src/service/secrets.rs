//! Secrets at rest: XChaCha20-Poly1305 under a server key that Forge creates on first start
//! (a 0600 file beside the database) or takes from `FORGE_SECRET_KEY`. A sealed check value in
//! the database proves at start-up that the key is the one that sealed the stored secrets, so a
//! wrong or missing key stops the server instead of corrupting data.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::config::Config;
use crate::store::Store;

/// Settings name of the sealed check value.
const CHECK_SETTING: &str = "secret_key_check";
/// What the check value seals.
const CHECK_PLAINTEXT: &[u8] = b"forge secret key check v1";
/// Associated data binding every sealed value to this use.
const AAD: &[u8] = b"forge-secret-v1";
const NONCE_LEN: usize = 24;

/// Why the server key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key text is not 32 bytes of hex or base64.
    #[error("the server key must be 32 bytes written as 64 hex digits or base64")]
    Malformed,
    /// The key file could not be read or created.
    #[error("server key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The database holds secrets but the key file is gone.
    #[error(
        "the database holds secrets sealed with a server key, but {0} does not exist; restore it \
         or set FORGE_SECRET_KEY (refusing to start rather than lose them)"
    )]
    Missing(String),
    /// The key does not open the database's secrets.
    #[error(
        "the server key does not match the one that sealed this database's secrets; \
         refusing to start (if a `forge key rotate` was interrupted, the key file's `.new` \
         sibling holds the new key)"
    )]
    Wrong,
    /// The key file is readable by group or others, or owned by another user (the message
    /// names the fix).
    #[error("{0}")]
    Exposed(String),
    /// Reading or writing the check value failed.
    #[error("{0}")]
    Store(#[from] crate::store::Error),
    /// A key rotation was refused or failed; nothing was changed.
    #[error("{0}")]
    Rotate(String),
}

/// A sealed value did not open (tampered with, or sealed under another key).
#[derive(Debug, thiserror::Error)]
#[error("a stored secret could not be decrypted")]
pub struct OpenError;

/// Seals and opens secrets.
pub struct Cipher {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    /// A cipher over a raw 32-byte key.
    #[must_use]
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: XChaCha20Poly1305::new(&(*key).into()),
        }
    }

    /// Loads the configured key (creating the key file on a database without secrets) and
    /// checks it against the database.
    ///
    /// # Errors
    /// [`KeyError`] when the key is malformed, missing, unreadable or wrong.
    pub fn load(config: &Config, store: &Store) -> Result<Self, KeyError> {
        let check = store.setting(CHECK_SETTING)?;
        let key = if let Some(text) = &config.secret_key {
            parse_key(&text.0)?
        } else {
            let path = config.key_file();
            if path.exists() {
                read_key_file(&path)?
            } else if check.is_some() {
                return Err(KeyError::Missing(path.display().to_string()));
            } else {
                create_key_file(&path)?
            }
        };
        let cipher = Self::new(&key);
        match check {
            Some(sealed) => {
                if cipher.open(&sealed).ok().as_deref() != Some(CHECK_PLAINTEXT) {
                    return Err(KeyError::Wrong);
                }
            }
            None => store.set_setting(CHECK_SETTING, &cipher.seal(CHECK_PLAINTEXT))?,
        }
        Ok(cipher)
    }

    /// Encrypts `plaintext`: a random nonce followed by the ciphertext and tag.
    ///
    /// # Panics
    /// Never in practice: XChaCha20-Poly1305 encryption only fails for messages over 256 GiB.
    #[must_use]
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from(nonce);
        let sealed = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: AAD,
                },
            )
            .expect("secrets are far below the AEAD's message size limit");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value made by [`Cipher::seal`].
    ///
    /// # Errors
    /// [`OpenError`] when it was tampered with or sealed under another key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        self.aead
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: AAD,
                },
            )
            .map_err(|_| OpenError)
    }
}

/// What `forge key rotate` did.
#[derive(Debug)]
pub struct Rotation {
    /// The new key file.
    pub key_file: std::path::PathBuf,
    /// Where the old key was kept.
    pub old_key_file: std::path::PathBuf,
    /// How many sealed values were re-sealed.
    pub resealed: crate::store::reseal::Resealed,
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Re-seals every secret of `store` under a fresh key (the server must be stopped): checks
/// that the current key file opens the check value and every secret, writes the new key to
/// `<key>.new` (0600, synced), re-seals everything in one durable transaction, keeps the old
/// key as `<key>.old` and moves the new one into place. An existing `.old` is never
/// overwritten: it may be the only key that opens older backups.
///
/// # Errors
/// [`KeyError`] when the key is missing, wrong or given by `FORGE_SECRET_KEY`, when
/// `<key>.old` exists, or when a secret does not open (then nothing is changed).
pub fn rotate(config: &Config, store: &Store) -> Result<Rotation, KeyError> {
    if config.secret_key.is_some() {
        return Err(KeyError::Rotate(
            "the key comes from FORGE_SECRET_KEY; rotation rewrites the key file, so unset it \
             and keep the key in the file"
                .into(),
        ));
    }
    let path = config.key_file();
    let old_path = with_suffix(&path, ".old");
    let new_path = with_suffix(&path, ".new");
    if old_path.exists() {
        return Err(KeyError::Rotate(format!(
            "{} exists from an earlier rotation; delete it once no backup needs it, then \
             rotate again",
            old_path.display()
        )));
    }
    if !path.exists() {
        return Err(KeyError::Missing(path.display().to_string()));
    }
    let old = Cipher::new(&read_key_file(&path)?);
    match store.setting(CHECK_SETTING)? {
        Some(check) if old.open(&check).ok().as_deref() == Some(CHECK_PLAINTEXT) => {}
        Some(_) => return Err(KeyError::Wrong),
        None => {
            return Err(KeyError::Rotate(
                "this database has never been opened by a server with this key; nothing to \
                 rotate"
                    .into(),
            ));
        }
    }
    if new_path.exists() {
        return Err(KeyError::Rotate(format!(
            "{} exists: an earlier rotation was interrupted. If the server refuses the current \
             key, that file holds the key the database is sealed with: move it into place",
            new_path.display()
        )));
    }
    let key = create_key_file(&new_path)?;
    let new = Cipher::new(&key);
    let resealed = store
        .reseal_all(&[CHECK_SETTING], move |sealed| {
            old.open(sealed).ok().map(|plain| new.seal(&plain))
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(&new_path);
            KeyError::Rotate(format!("nothing was changed: {e}"))
        })?;
    // The database is sealed under the new key from here on: keep the old key, then move the
    // new one into place (a rename, so the key file is never half-written).
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::hard_link(&path, &old_path).map_err(io)?;
    std::fs::rename(&new_path, &path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(Rotation {
        key_file: path,
        old_key_file: old_path,
        resealed,
    })
}

impl Cipher {
    /// The configured key (flag, environment or key file), read without creating a key file:
    /// for offline tools. `None` when no key is configured and the key file does not exist.
    ///
    /// # Errors
    /// [`KeyError`] when the key is malformed or the file unreadable.
    pub fn configured(config: &Config) -> Result<Option<Self>, KeyError> {
        if let Some(text) = &config.secret_key {
            return Ok(Some(Self::new(&parse_key(&text.0)?)));
        }
        let path = config.key_file();
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Self::new(&read_key_file(&path)?)))
    }
}

impl crate::store::check::Unseal for Cipher {
    fn unseal(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.open(sealed).ok()
    }

    fn is_check_value(&self, sealed: &[u8]) -> bool {
        self.open(sealed).ok().as_deref() == Some(CHECK_PLAINTEXT)
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| KeyError::Malformed)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map_err(|_| KeyError::Malformed)?
    };
    bytes.try_into().map_err(|_| KeyError::Malformed)
}

/// Reads the key file, refusing one that others could read or replace: readable or writable
/// by group or others, or owned by another user than the one Forge runs as. The checks use
/// the metadata of the opened file, so a swap between check and read changes nothing.
fn read_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    exposed(
        path,
        meta.mode(),
        meta.uid(),
        nix::unistd::geteuid().as_raw(),
    )?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    parse_key(&text)
}

/// [`KeyError::Exposed`] when a key file of `mode` owned by `owner` is not private to `me`.
fn exposed(path: &Path, mode: u32, owner: u32, me: u32) -> Result<(), KeyError> {
    let shown = path.display();
    if owner != me {
        return Err(KeyError::Exposed(format!(
            "the server key file {shown} is owned by uid {owner}, not by uid {me} that Forge \
             runs as, so another user could read or replace it; fix it with \
             `chown {me} {shown} && chmod 600 {shown}`"
        )));
    }
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed(format!(
            "the server key file {shown} has mode {:04o}: group or others can read it; fix it \
             with `chmod 600 {shown}` (and rotate the key with `forge key rotate` if anyone \
             else may have read it)",
            mode & 0o7777
        )));
    }
    Ok(())
}

fn create_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let key: [u8; 32] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{}\n", super::auth::hex(&key)).as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    tracing::info!(path = %path.display(), "created the server key for secrets at rest; back it up");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let c = Cipher::new(&[7; 32]);
        let sealed = c.seal(b"hunter2");
        assert_eq!(c.open(&sealed).unwrap(), b"hunter2");
        assert_ne!(c.seal(b"hunter2"), sealed, "fresh nonce each time");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(c.open(&bad).is_err());
        assert!(Cipher::new(&[8; 32]).open(&sealed).is_err());
        assert!(c.open(&[1, 2, 3]).is_err());
    }

    #[test]
    fn the_check_tool_reads_the_same_setting() {
        assert_eq!(CHECK_SETTING, crate::store::check::CHECK_SETTING);
    }

    #[test]
    fn key_parsing() {
        assert_eq!(parse_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        assert_eq!(parse_key(&b64).unwrap(), [5; 32]);
        assert!(parse_key("short").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn key_file_is_created_then_required_and_checked() {
        let (dir, store) = temp_store();
        let config = Config::with_db(dir.path().join("forge.redb"));
        let key_file = config.key_file();
        let first = Cipher::load(&config, &store).unwrap();
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = first.seal(b"x");
        // The same file opens the same secrets.
        assert_eq!(
            Cipher::load(&config, &store)
                .unwrap()
                .open(&sealed)
                .unwrap(),
            b"x"
        );
        // A missing file with secrets stored is refused, not replaced.
        std::fs::remove_file(&key_file).unwrap();
        assert!(matches!(
            Cipher::load(&config, &store),
            Err(KeyError::Missing(_))
        ));
        assert!(!key_file.exists());
        // A different key is refused.
        let mut wrong = config.clone();
        wrong.secret_key = Some(crate::config::Secret("cd".repeat(32)));
        assert!(matches!(Cipher::load(&wrong, &store), Err(KeyError::Wrong)));
    }

    #[test]
    fn an_exposed_key_file_is_refused_with_the_fix() {
        let path = Path::new("/srv/forge.redb.key");
        assert!(exposed(path, 0o100_600, 7, 7).is_ok());
        assert!(exposed(path, 0o100_400, 7, 7).is_ok());
        for mode in [0o100_640, 0o100_604, 0o100_620, 0o100_602, 0o100_644] {
            let err = exposed(path, mode, 7, 7).unwrap_err().to_string();
            assert!(
                err.contains("chmod 600 /srv/forge.redb.key"),
                "{mode:o}: {err}"
            );
        }
        let err = exposed(path, 0o100_600, 65_534, 7).unwrap_err().to_string();
        assert!(
            err.contains("uid 65534") && err.contains("chown 7 /srv"),
            "{err}"
        );
    }
}
