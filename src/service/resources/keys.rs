//! Access keys: a secret (SSH key, login/password, string) sealed before it is stored.

use serde::Deserialize;

use super::{Refs, check_ids, check_project, get_or_404, invalid};
use crate::model::{AccessKey, Inventory, KeyKind, KeySecret, ProjectId, Repository, Template};
use crate::service::projects::Access;
use crate::service::{Error, Result, Services, validate};
use crate::store::Lists;

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

fn key_secret(input: &KeyInput) -> Result<(KeyKind, KeySecret)> {
    let kind_text = input.kind.clone().unwrap_or_default();
    let kind = KeyKind::parse(&kind_text)
        .ok_or_else(|| Error::Invalid(format!("invalid access key type: {kind_text:?}")))?;
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

impl Services {
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
    pub fn open_secret(&self, key: &AccessKey) -> Result<KeySecret> {
        if key.sealed_secret.is_empty() {
            return Ok(KeySecret::default());
        }
        let plain = self
            .cipher
            .open(&key.sealed_secret)
            .map_err(|e| Error::Internal(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| Error::Internal(e.to_string()))
    }

    /// The project's access keys, without environment secrets.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn keys(&self, access: &Access) -> Result<Vec<AccessKey>> {
        let keys: Vec<AccessKey> = self.store.view()?.list(access.project_id())?;
        Ok(keys
            .into_iter()
            .filter(|k| k.environment_id.is_none())
            .collect())
    }

    /// One access key (not an environment secret).
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn key(&self, access: &Access, id: u64) -> Result<AccessKey> {
        self.store
            .view()?
            .get::<AccessKey>(access.project_id(), id)?
            .filter(|k| k.environment_id.is_none())
            .ok_or(Error::NotFound)
    }

    /// Creates an access key with its secret sealed.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty name, unknown type, missing secret or mismatched project.
    pub async fn create_key(&self, access: &Access, input: KeyInput) -> Result<AccessKey> {
        check_project(input.project_id, access.project_id())?;
        let name = input.name.clone().unwrap_or_default();
        validate::name(&name, "name").map_err(Error::Invalid)?;
        let (kind, secret) = key_secret(&input)?;
        let sealed = self.seal_secret(kind, &secret);
        let access = access.clone();
        self.transact(move |tx| {
            let mut key = AccessKey {
                id: 0,
                project_id: access.project_id(),
                name: name.trim().to_owned(),
                kind,
                sealed_secret: sealed.clone(),
                environment_id: None,
            };
            let id = tx.insert(&mut key)?;
            tx.record(access.event("key", id, format!("Access Key {} created", key.name)))?;
            Ok(key)
        })
        .await
    }

    /// Updates a key: the name, and with `override_secret` also its type and secret.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`].
    pub async fn update_key(&self, access: &Access, id: u64, input: KeyInput) -> Result<()> {
        check_ids(
            input.id,
            id,
            input.project_id,
            access.project_id(),
            "Access key",
        )?;
        let name = input.name.clone().unwrap_or_default();
        validate::name(&name, "name").map_err(Error::Invalid)?;
        let replace = if input.override_secret.unwrap_or(false) {
            let (kind, secret) = key_secret(&input)?;
            Some((kind, self.seal_secret(kind, &secret)))
        } else {
            None
        };
        let access = access.clone();
        self.transact(move |tx| {
            let mut key: AccessKey = get_or_404(tx, access.project_id(), id)?;
            if key.environment_id.is_some() {
                return Err(Error::NotFound);
            }
            name.trim().clone_into(&mut key.name);
            if let Some((kind, sealed)) = &replace {
                key.kind = *kind;
                key.sealed_secret.clone_from(sealed);
            }
            tx.put(&key)?;
            tx.record(access.event("key", id, format!("Access Key {} updated", key.name)))?;
            Ok(())
        })
        .await
    }

    /// Deletes a key unless something uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InUse`].
    pub async fn delete_key(&self, access: &Access, id: u64) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let key: AccessKey = get_or_404(tx, access.project_id(), id)?;
            if key.environment_id.is_some() {
                return Err(Error::NotFound);
            }
            if !key_refs(tx, access.project_id(), id)?.is_empty() {
                return Err(Error::InUse(
                    "Access Key is in use by one or more templates".into(),
                ));
            }
            tx.remove::<AccessKey>(access.project_id(), id)?;
            tx.record(access.event("key", id, format!("Access Key {} deleted", key.name)))?;
            Ok(())
        })
        .await
    }

    /// What uses key `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn key_refs(&self, access: &Access, id: u64) -> Result<Refs> {
        self.key(access, id)?;
        let p = access.project_id();
        key_refs(&self.store.view()?, p, id)
    }
}

fn key_refs(tx: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
    let mut refs = Refs::default();
    for t in tx.list::<Template>(p)? {
        if t.vaults.iter().any(|v| v.vault_key_id == id) {
            refs.templates.push((t.id, t.name));
        }
    }
    for i in tx.list::<Inventory>(p)? {
        if i.ssh_key_id == Some(id) || i.become_key_id == Some(id) {
            refs.inventories.push((i.id, i.name));
        }
    }
    for r in tx.list::<Repository>(p)? {
        if r.ssh_key_id == id {
            refs.repositories.push((r.id, r.name));
        }
    }
    Ok(refs)
}
