//! Access keys: a secret (SSH key, login/password, string) sealed before it is stored.

use serde::Deserialize;

use super::{Names, ProjectResource, Refs, Target, body, invalid, users};
use crate::model::{AccessKey, Inventory, KeyKind, KeySecret, ProjectId, Repository, Template};
use crate::service::{Error, Result, Services, validate};
use crate::store::{Lists, Tx};

/// SSH fields of a key body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SshInput {
    /// Login user.
    pub login: Option<String>,
    /// Key passphrase.
    pub passphrase: Option<String>,
    /// Private key (required for `ssh`).
    pub private_key: Option<String>,
}

/// Login/password fields of a key body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LoginPasswordInput {
    /// Login.
    pub login: Option<String>,
    /// Password (required for `login_password`).
    pub password: Option<String>,
}

/// An access key body (create and update).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeyInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// `none`, `ssh`, `login_password` or `string`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// SSH secret.
    #[serde(deserialize_with = "crate::service::input::object")]
    pub ssh: Option<SshInput>,
    /// Login/password secret.
    #[serde(deserialize_with = "crate::service::input::object")]
    pub login_password: Option<LoginPasswordInput>,
    /// String secret.
    pub string: Option<String>,
    /// On update: replace type and secret (otherwise only the name changes).
    pub override_secret: Option<bool>,
}

fn key_kind(text: &str) -> Result<KeyKind> {
    KeyKind::parse(text).ok_or_else(|| Error::Invalid(format!("invalid access key type: {text:?}")))
}

fn key_name(name: &str) -> Result<String> {
    validate::name(name, "name").map_err(Error::Invalid)?;
    Ok(name.trim().to_owned())
}

fn key_secret(input: &KeyInput) -> Result<(KeyKind, KeySecret)> {
    let kind = key_kind(input.kind.as_deref().unwrap_or_default())?;
    let mut secret = KeySecret::default();
    match kind {
        KeyKind::None => {}
        KeyKind::Ssh => {
            let ssh = input.ssh.clone().unwrap_or_default();
            secret.private_key = ssh.private_key.unwrap_or_default();
            if secret.private_key.trim().is_empty() {
                return invalid("private key can not be empty");
            }
            secret.login = ssh.login.unwrap_or_default();
            secret.passphrase = ssh.passphrase.unwrap_or_default();
        }
        KeyKind::LoginPassword => {
            let lp = input.login_password.clone().unwrap_or_default();
            secret.password = lp.password.unwrap_or_default();
            if secret.password.is_empty() {
                return invalid("password can not be empty");
            }
            secret.login = lp.login.unwrap_or_default();
        }
        KeyKind::String => {
            secret.string = input.string.clone().unwrap_or_default();
            if secret.string.is_empty() {
                return invalid("string can not be empty");
            }
        }
    }
    Ok((kind, secret))
}

/// A validated key body: the trimmed name, and the type with its sealed secret when it is set
/// (always on create; on update only with `override_secret`).
pub struct KeyFields {
    project: ProjectId,
    name: String,
    secret: Option<(KeyKind, Vec<u8>)>,
}

/// A key restored from a project backup (which carries no secrets): its name and type, checked
/// as on create, and no secret until its owner sets one ([`needs_secret`]).
///
/// # Errors
/// [`Error::Invalid`] for a bad name or type.
pub fn restored_key(project: ProjectId, name: &str, kind: &str) -> Result<KeyFields> {
    Ok(KeyFields {
        project,
        name: key_name(name)?,
        secret: Some((key_kind(kind)?, Vec::new())),
    })
}

/// Whether a key still lacks the secret its type needs (a key restored from a backup); `none`
/// keys need nothing.
#[must_use]
pub fn needs_secret(key: &AccessKey) -> bool {
    key.kind != KeyKind::None && key.sealed_secret.is_empty()
}

impl ProjectResource for AccessKey {
    body!(KeyInput);
    type Fields = KeyFields;
    const NAMES: Names = Names::new("key", "Access Key").id_label("Access key");

    fn listed(&self) -> bool {
        self.environment_id.is_none()
    }

    fn fields(services: &Services, input: KeyInput, to: Target) -> Result<KeyFields> {
        let name = key_name(input.name.as_deref().unwrap_or_default())?;
        let secret = if to.id.is_none() || input.override_secret.unwrap_or(false) {
            let (kind, secret) = key_secret(&input)?;
            Some((kind, services.seal_secret(kind, &secret)))
        } else {
            None
        };
        Ok(KeyFields {
            project: to.project,
            name,
            secret,
        })
    }

    fn record(_tx: &Tx<'_>, fields: &KeyFields, current: Option<Self>) -> Result<Self> {
        // The secret stays unless the body replaces it (always on create).
        let (kind, sealed_secret) = match (&fields.secret, &current) {
            (Some((kind, sealed)), _) => (*kind, sealed.clone()),
            (None, Some(key)) => (key.kind, key.sealed_secret.clone()),
            (None, None) => (KeyKind::None, Vec::new()),
        };
        Ok(AccessKey {
            id: current.map_or(0, |key| key.id),
            project_id: fields.project,
            name: fields.name.clone(),
            kind,
            sealed_secret,
            environment_id: None,
        })
    }

    fn refs(lists: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
        Ok(Refs {
            templates: users(lists, p, |t: &Template| {
                t.vaults.iter().any(|v| v.vault_key_id == id)
            })?,
            inventories: users(lists, p, |i: &Inventory| {
                i.ssh_key_id == Some(id) || i.become_key_id == Some(id)
            })?,
            repositories: users(lists, p, |r: &Repository| r.ssh_key_id == id)?,
        })
    }

    /// Integrations signing with it lose their secret (and then refuse every delivery).
    fn removing(&self, tx: &Tx<'_>) -> Result<()> {
        crate::service::integrations::forget_key(tx, self.project_id, self.id)
    }
}

impl Services {
    /// Seals a key's secret (nothing for a `none` key).
    pub(super) fn seal_secret(&self, kind: KeyKind, secret: &KeySecret) -> Vec<u8> {
        if kind == KeyKind::None {
            return Vec::new();
        }
        let plain = serde_json::to_vec(secret).unwrap_or_default();
        self.cipher.seal(&plain)
    }

    /// Seals arbitrary secret bytes (a task's secret variables).
    #[must_use]
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        self.cipher.seal(plain)
    }

    /// Opens what [`Services::seal`] sealed.
    ///
    /// # Errors
    /// [`Error::Internal`] when it does not decrypt.
    pub fn open_sealed(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        self.cipher
            .open(sealed)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Opens a key's secret (for the task runner; never for the API).
    ///
    /// # Errors
    /// [`Error::Internal`] when the stored secret does not decrypt.
    /// [`Error::Invalid`] for a key that still [`needs_secret`].
    pub fn open_secret(&self, key: &AccessKey) -> Result<KeySecret> {
        if needs_secret(key) {
            return Err(Error::Invalid(match key.environment_id {
                Some(_) => format!(
                    "environment secret {:?} has no value yet (restored from a backup): set it \
                     first",
                    super::secret_kind_name(&key.name).1
                ),
                None => format!(
                    "access key {:?} has no secret yet (restored from a backup): set it first",
                    key.name
                ),
            }));
        }
        if key.sealed_secret.is_empty() {
            return Ok(KeySecret::default());
        }
        let plain = self
            .cipher
            .open(&key.sealed_secret)
            .map_err(|e| Error::Internal(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| Error::Internal(e.to_string()))
    }
}
