//! Project resources: access keys, repositories, inventories, environments and templates.
//!
//! Every change runs in one transaction that re-reads what it references, so a reference to
//! another project's object (or to one deleted meanwhile) is refused and nothing is written.
//! Secrets are sealed before they reach the store and never come back out through the API.

use serde::Deserialize;

use super::projects::Access;
use super::{Error, Result, Services, validate};
use crate::model::{
    AccessKey, Environment, Inventory, KeyKind, KeySecret, ProjectId, Repository, SurveyValue,
    SurveyVar, Template, TemplateVault,
};
use crate::store::{Lists, Resource, Tx};

/// Apps Forge runs itself.
pub const BUILTIN_APPS: &[&str] = &["ansible", "bash", "python"];

/// Ids of the objects that use a resource (`GET .../refs`).
#[derive(Debug, Default, Clone)]
pub struct Refs {
    /// Templates, as (id, name).
    pub templates: Vec<(u64, String)>,
    /// Inventories, as (id, name).
    pub inventories: Vec<(u64, String)>,
    /// Repositories, as (id, name).
    pub repositories: Vec<(u64, String)>,
}

impl Refs {
    fn is_empty(&self) -> bool {
        self.templates.is_empty() && self.inventories.is_empty() && self.repositories.is_empty()
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

/// The body's `id` must equal the URL's; its `project_id`, when given, the URL's project.
fn check_ids(
    body_id: Option<u64>,
    id: u64,
    body_project: Option<u64>,
    project: ProjectId,
    what: &str,
) -> Result<()> {
    if body_id != Some(id) {
        return invalid(format!("{what} ID in body and URL must be the same"));
    }
    check_project(body_project, project)
}

fn check_project(body_project: Option<u64>, project: ProjectId) -> Result<()> {
    match body_project {
        Some(p) if p != 0 && p != project => invalid("Project ID in body and URL must be the same"),
        _ => Ok(()),
    }
}

/// A referenced object must exist in the same project; 400 otherwise (never another
/// project's object).
fn require<R: Resource>(
    tx: &Tx<'_>,
    project: ProjectId,
    id: u64,
    field: &str,
    what: &str,
) -> Result<R> {
    tx.get::<R>(project, id)?
        .ok_or_else(|| Error::Invalid(format!("{field}: no {what} with id {id} in this project")))
}

fn require_key(tx: &Tx<'_>, project: ProjectId, id: u64, field: &str) -> Result<AccessKey> {
    let key: AccessKey = require(tx, project, id, field, "access key")?;
    if key.environment_id.is_some() {
        return invalid(format!(
            "{field}: no access key with id {id} in this project"
        ));
    }
    Ok(key)
}

fn get_or_404<R: Resource>(tx: &Tx<'_>, project: ProjectId, id: u64) -> Result<R> {
    tx.get::<R>(project, id)?.ok_or(Error::NotFound)
}

// ---------------------------------------------------------------------------------------------
// Access keys

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
    #[serde(deserialize_with = "super::input::object")]
    pub ssh: Option<SshInput>,
    /// Login/password secret.
    #[serde(deserialize_with = "super::input::object")]
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
    fn seal_secret(&self, kind: KeyKind, secret: &KeySecret) -> Vec<u8> {
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

// ---------------------------------------------------------------------------------------------
// Repositories

/// A repository body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RepositoryInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Clone URL or absolute local path.
    pub git_url: Option<String>,
    /// Branch (optional for local paths).
    pub git_branch: Option<String>,
    /// Key for fetching.
    pub ssh_key_id: Option<u64>,
}

fn repository_fields(input: &RepositoryInput) -> Result<(String, String, String, u64)> {
    let name = input.name.clone().unwrap_or_default();
    if name.trim().is_empty() {
        return invalid("repository name can't be empty");
    }
    validate::name(&name, "repository name").map_err(Error::Invalid)?;
    let url = input.git_url.clone().unwrap_or_default().trim().to_owned();
    if url.is_empty() {
        return invalid("repository url can't be empty");
    }
    validate::git_url(&url).map_err(Error::Invalid)?;
    let branch = input
        .git_branch
        .clone()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if branch.is_empty() && !url.starts_with('/') {
        return invalid("repository branch can't be empty");
    }
    if !branch.is_empty() {
        validate::git_branch(&branch).map_err(Error::Invalid)?;
    }
    let key = input
        .ssh_key_id
        .ok_or_else(|| Error::Invalid("ssh_key_id: an access key is required".into()))?;
    Ok((name.trim().to_owned(), url, branch, key))
}

impl Services {
    /// The project's repositories.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn repositories(&self, access: &Access) -> Result<Vec<Repository>> {
        Ok(self.store.view()?.list(access.project_id())?)
    }

    /// One repository.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn repository(&self, access: &Access, id: u64) -> Result<Repository> {
        self.store
            .view()?
            .get(access.project_id(), id)?
            .ok_or(Error::NotFound)
    }

    /// Creates a repository.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields or a key of another project.
    pub async fn create_repository(
        &self,
        access: &Access,
        input: RepositoryInput,
    ) -> Result<Repository> {
        check_project(input.project_id, access.project_id())?;
        let (name, git_url, git_branch, ssh_key_id) = repository_fields(&input)?;
        let access = access.clone();
        self.transact(move |tx| {
            require_key(tx, access.project_id(), ssh_key_id, "ssh_key_id")?;
            let mut repo = Repository {
                id: 0,
                project_id: access.project_id(),
                name: name.clone(),
                git_url: git_url.clone(),
                git_branch: git_branch.clone(),
                ssh_key_id,
            };
            let id = tx.insert(&mut repo)?;
            tx.record(access.event(
                "repository",
                id,
                format!("Repository {} created", repo.name),
            ))?;
            Ok(repo)
        })
        .await
    }

    /// Replaces a repository.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`].
    pub async fn update_repository(
        &self,
        access: &Access,
        id: u64,
        input: RepositoryInput,
    ) -> Result<()> {
        check_ids(
            input.id,
            id,
            input.project_id,
            access.project_id(),
            "Repository",
        )?;
        let (name, git_url, git_branch, ssh_key_id) = repository_fields(&input)?;
        let access = access.clone();
        self.transact(move |tx| {
            get_or_404::<Repository>(tx, access.project_id(), id)?;
            require_key(tx, access.project_id(), ssh_key_id, "ssh_key_id")?;
            let repo = Repository {
                id,
                project_id: access.project_id(),
                name: name.clone(),
                git_url: git_url.clone(),
                git_branch: git_branch.clone(),
                ssh_key_id,
            };
            tx.put(&repo)?;
            tx.record(access.event(
                "repository",
                id,
                format!("Repository {} updated", repo.name),
            ))?;
            Ok(())
        })
        .await
    }

    /// Deletes a repository unless a template or inventory uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InUse`].
    pub async fn delete_repository(&self, access: &Access, id: u64) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let repo: Repository = get_or_404(tx, access.project_id(), id)?;
            if !repository_refs(tx, access.project_id(), id)?.is_empty() {
                return Err(Error::InUse(
                    "Repository is in use by one or more templates".into(),
                ));
            }
            tx.remove::<Repository>(access.project_id(), id)?;
            tx.record(access.event(
                "repository",
                id,
                format!("Repository {} deleted", repo.name),
            ))?;
            Ok(())
        })
        .await
    }

    /// What uses repository `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn repository_refs(&self, access: &Access, id: u64) -> Result<Refs> {
        self.repository(access, id)?;
        let p = access.project_id();
        repository_refs(&self.store.view()?, p, id)
    }
}

fn repository_refs(tx: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
    let mut refs = Refs::default();
    for t in tx.list::<Template>(p)? {
        if t.repository_id == id {
            refs.templates.push((t.id, t.name));
        }
    }
    for i in tx.list::<Inventory>(p)? {
        if i.repository_id == Some(id) {
            refs.inventories.push((i.id, i.name));
        }
    }
    Ok(refs)
}

// ---------------------------------------------------------------------------------------------
// Inventories

/// Inventory types Forge accepts.
pub const INVENTORY_TYPES: &[&str] = &["static", "static-yaml", "file"];

/// An inventory body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct InventoryInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Inventory text or file path.
    pub inventory: Option<String>,
    /// Login key.
    pub ssh_key_id: Option<u64>,
    /// Become key.
    pub become_key_id: Option<u64>,
    /// `static`, `static-yaml` or `file`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Owning template.
    pub holder_id: Option<u64>,
    /// Repository of a `file` inventory.
    pub repository_id: Option<u64>,
}

fn check_inventory_refs(tx: &Tx<'_>, p: ProjectId, inv: &Inventory) -> Result<()> {
    if let Some(k) = inv.ssh_key_id {
        require_key(tx, p, k, "ssh_key_id")?;
    }
    if let Some(k) = inv.become_key_id {
        require_key(tx, p, k, "become_key_id")?;
    }
    if let Some(r) = inv.repository_id {
        require::<Repository>(tx, p, r, "repository_id", "repository")?;
    }
    if let Some(t) = inv.holder_id {
        require::<Template>(tx, p, t, "holder_id", "template")?;
    }
    Ok(())
}

fn inventory_from(
    input: InventoryInput,
    id: u64,
    p: ProjectId,
    unknown_type: impl Fn(&str) -> String,
) -> Result<Inventory> {
    let name = input.name.unwrap_or_default();
    validate::name(&name, "inventory name").map_err(Error::Invalid)?;
    let kind = input.kind.unwrap_or_default();
    if !INVENTORY_TYPES.contains(&kind.as_str()) {
        return invalid(unknown_type(&kind));
    }
    let inventory = input.inventory.unwrap_or_default();
    if kind == "file" {
        validate::relative_path(inventory.trim(), "inventory").map_err(|_| {
            Error::Invalid("Invalid inventory file pathname. Must be: path/to/inventory.".into())
        })?;
    }
    Ok(Inventory {
        id,
        project_id: p,
        name: name.trim().to_owned(),
        inventory: if kind == "file" {
            inventory.trim().to_owned()
        } else {
            inventory
        },
        ssh_key_id: input.ssh_key_id.filter(|&k| k != 0),
        become_key_id: input.become_key_id.filter(|&k| k != 0),
        kind,
        holder_id: input.holder_id.filter(|&k| k != 0),
        repository_id: input.repository_id.filter(|&k| k != 0),
    })
}

impl Services {
    /// The project's inventories.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn inventories(&self, access: &Access) -> Result<Vec<Inventory>> {
        Ok(self.store.view()?.list(access.project_id())?)
    }

    /// One inventory.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn inventory(&self, access: &Access, id: u64) -> Result<Inventory> {
        self.store
            .view()?
            .get(access.project_id(), id)?
            .ok_or(Error::NotFound)
    }

    /// Creates an inventory.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields, escaping file paths or foreign references.
    pub async fn create_inventory(
        &self,
        access: &Access,
        input: InventoryInput,
    ) -> Result<Inventory> {
        check_project(input.project_id, access.project_id())?;
        let inv = inventory_from(input, 0, access.project_id(), |_| {
            "Not supported inventory type".into()
        })?;
        let access = access.clone();
        self.transact(move |tx| {
            let mut inv = inv.clone();
            check_inventory_refs(tx, access.project_id(), &inv)?;
            let id = tx.insert(&mut inv)?;
            tx.record(access.event("inventory", id, format!("Inventory {} created", inv.name)))?;
            Ok(inv)
        })
        .await
    }

    /// Replaces an inventory.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`].
    pub async fn update_inventory(
        &self,
        access: &Access,
        id: u64,
        input: InventoryInput,
    ) -> Result<()> {
        check_ids(
            input.id,
            id,
            input.project_id,
            access.project_id(),
            "Inventory",
        )?;
        let inv = inventory_from(input, id, access.project_id(), |k| {
            format!("unknown inventory type: {k}")
        })?;
        let access = access.clone();
        self.transact(move |tx| {
            get_or_404::<Inventory>(tx, access.project_id(), id)?;
            check_inventory_refs(tx, access.project_id(), &inv)?;
            tx.put(&inv)?;
            tx.record(access.event("inventory", id, format!("Inventory {} updated", inv.name)))?;
            Ok(())
        })
        .await
    }

    /// Deletes an inventory unless a template uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InUse`].
    pub async fn delete_inventory(&self, access: &Access, id: u64) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let inv: Inventory = get_or_404(tx, access.project_id(), id)?;
            if !inventory_refs(tx, access.project_id(), id)?.is_empty() {
                return Err(Error::InUse(
                    "Inventory is in use by one or more templates".into(),
                ));
            }
            tx.remove::<Inventory>(access.project_id(), id)?;
            tx.record(access.event("inventory", id, format!("Inventory {} deleted", inv.name)))?;
            Ok(())
        })
        .await
    }

    /// What uses inventory `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn inventory_refs(&self, access: &Access, id: u64) -> Result<Refs> {
        self.inventory(access, id)?;
        let p = access.project_id();
        inventory_refs(&self.store.view()?, p, id)
    }
}

fn inventory_refs(tx: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
    let mut refs = Refs::default();
    for t in tx.list::<Template>(p)? {
        if t.inventory_id == Some(id) {
            refs.templates.push((t.id, t.name));
        }
    }
    Ok(refs)
}

// ---------------------------------------------------------------------------------------------
// Environments

/// One secret operation in an environment body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SecretInput {
    /// The secret's id (update, delete).
    pub id: Option<u64>,
    /// `var` (extra variable) or `env` (environment variable).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Variable name.
    pub name: Option<String>,
    /// The value (create, update).
    pub secret: Option<String>,
    /// `create`, `update` or `delete`.
    pub operation: Option<String>,
}

/// An environment body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EnvironmentInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Legacy vault password (sealed, never returned).
    pub password: Option<String>,
    /// Extra variables: a JSON object, as text.
    pub json: Option<String>,
    /// Environment variables: a JSON object of strings, as text.
    pub env: Option<String>,
    /// Secret operations.
    #[serde(deserialize_with = "super::input::objects")]
    pub secrets: Option<Vec<SecretInput>>,
}

/// A secret of an environment as listed (never its value).
#[derive(Debug, Clone)]
pub struct SecretInfo {
    /// Id (of the underlying key).
    pub id: u64,
    /// `var` or `env`.
    pub kind: &'static str,
    /// Variable name.
    pub name: String,
}

/// A parsed secret name: `var.NAME` / `env.NAME` as upstream stores them.
fn secret_kind_name(key_name: &str) -> (&'static str, &str) {
    match key_name.split_once('.') {
        Some(("env", n)) => ("env", n),
        Some((_, n)) => ("var", n),
        None => ("var", key_name),
    }
}

fn environment_fields(input: &EnvironmentInput) -> Result<(String, String, Option<String>)> {
    let name = input.name.clone().unwrap_or_default();
    if name.trim().is_empty() {
        return invalid("Environment name can not be empty");
    }
    validate::name(&name, "Environment name").map_err(Error::Invalid)?;
    let json = input
        .json
        .clone()
        .filter(|j| !j.trim().is_empty())
        .unwrap_or_else(|| "{}".into());
    match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return invalid("Extra variables must be valid JSON"),
    }
    let env = input.env.clone().filter(|e| !e.trim().is_empty());
    if let Some(env) = &env {
        match serde_json::from_str::<serde_json::Value>(env) {
            Ok(serde_json::Value::Object(map))
                if map.values().all(serde_json::Value::is_string) => {}
            _ => return invalid("Environment variables must be valid JSON (an object of strings)"),
        }
    }
    Ok((name.trim().to_owned(), json, env))
}

fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validated secret operations, sealed and ready to apply.
#[derive(Clone)]
enum SecretOp {
    Create {
        kind: &'static str,
        name: String,
        sealed: Vec<u8>,
    },
    Update {
        id: u64,
        name: Option<String>,
        sealed: Option<Vec<u8>>,
    },
    Delete {
        id: u64,
    },
}

impl Services {
    fn secret_ops(&self, inputs: Vec<SecretInput>) -> Result<Vec<SecretOp>> {
        let mut ops = Vec::new();
        for s in inputs {
            let op = s.operation.clone().unwrap_or_default();
            let seal = |v: &str| {
                self.seal_secret(
                    KeyKind::String,
                    &KeySecret {
                        string: v.to_owned(),
                        ..KeySecret::default()
                    },
                )
            };
            let check_name = |kind: &str, name: &str| -> Result<()> {
                if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                    return invalid(format!("secret name {name:?} is not valid"));
                }
                if kind == "env" && !is_env_var_name(name) {
                    return invalid(format!(
                        "secret name {name:?} is not a valid environment variable name"
                    ));
                }
                Ok(())
            };
            match op.as_str() {
                "create" => {
                    let kind = match s.kind.as_deref().unwrap_or("var") {
                        "env" => "env",
                        "var" | "" => "var",
                        other => {
                            return invalid(format!(
                                "secret type must be var or env, not {other:?}"
                            ));
                        }
                    };
                    let name = s.name.clone().unwrap_or_default();
                    check_name(kind, &name)?;
                    let secret = s.secret.clone().unwrap_or_default();
                    ops.push(SecretOp::Create {
                        kind,
                        name,
                        sealed: seal(&secret),
                    });
                }
                "update" => {
                    let id =
                        s.id.ok_or_else(|| Error::Invalid("secret update needs an id".into()))?;
                    let name = s.name.clone().filter(|n| !n.is_empty());
                    let sealed = s.secret.as_deref().filter(|v| !v.is_empty()).map(seal);
                    ops.push(SecretOp::Update { id, name, sealed });
                }
                "delete" => {
                    let id =
                        s.id.ok_or_else(|| Error::Invalid("secret delete needs an id".into()))?;
                    ops.push(SecretOp::Delete { id });
                }
                // Entries without an operation are the listed secrets echoed back: unchanged.
                "" => {}
                other => return invalid(format!("unknown secret operation {other:?}")),
            }
        }
        Ok(ops)
    }

    /// The project's environments.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn environments(&self, access: &Access) -> Result<Vec<(Environment, Vec<SecretInfo>)>> {
        let view = self.store.view()?;
        let envs: Vec<Environment> = view.list(access.project_id())?;
        let keys: Vec<AccessKey> = view.list(access.project_id())?;
        Ok(envs
            .into_iter()
            .map(|e| {
                let secrets = secrets_of(&keys, e.id);
                (e, secrets)
            })
            .collect())
    }

    /// One environment with its secrets' names.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn environment(&self, access: &Access, id: u64) -> Result<(Environment, Vec<SecretInfo>)> {
        let view = self.store.view()?;
        let env: Environment = view.get(access.project_id(), id)?.ok_or(Error::NotFound)?;
        let keys: Vec<AccessKey> = view.list(access.project_id())?;
        let secrets = secrets_of(&keys, id);
        Ok((env, secrets))
    }

    /// Creates an environment with its secrets.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields or secret operations.
    pub async fn create_environment(
        &self,
        access: &Access,
        input: EnvironmentInput,
    ) -> Result<Environment> {
        check_project(input.project_id, access.project_id())?;
        let (name, json, env) = environment_fields(&input)?;
        let ops = self.secret_ops(input.secrets.clone().unwrap_or_default())?;
        let sealed_password = input
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| self.cipher.seal(p.as_bytes()))
            .unwrap_or_default();
        let access = access.clone();
        self.transact(move |tx| {
            let mut e = Environment {
                id: 0,
                project_id: access.project_id(),
                name: name.clone(),
                json: json.clone(),
                env: env.clone(),
                sealed_password: sealed_password.clone(),
            };
            let id = tx.insert(&mut e)?;
            apply_secret_ops(tx, access.project_id(), id, ops.clone())?;
            tx.record(access.event("environment", id, format!("Environment {} created", e.name)))?;
            Ok(e)
        })
        .await
    }

    /// Replaces an environment and applies its secret operations.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`].
    pub async fn update_environment(
        &self,
        access: &Access,
        id: u64,
        input: EnvironmentInput,
    ) -> Result<()> {
        check_ids(
            input.id,
            id,
            input.project_id,
            access.project_id(),
            "Environment",
        )?;
        let (name, json, env) = environment_fields(&input)?;
        let ops = self.secret_ops(input.secrets.clone().unwrap_or_default())?;
        let new_password = input
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| self.cipher.seal(p.as_bytes()));
        let access = access.clone();
        self.transact(move |tx| {
            let mut e: Environment = get_or_404(tx, access.project_id(), id)?;
            e.name.clone_from(&name);
            e.json.clone_from(&json);
            e.env.clone_from(&env);
            if let Some(p) = &new_password {
                e.sealed_password.clone_from(p);
            }
            tx.put(&e)?;
            apply_secret_ops(tx, access.project_id(), id, ops.clone())?;
            tx.record(access.event("environment", id, format!("Environment {} updated", e.name)))?;
            Ok(())
        })
        .await
    }

    /// Deletes an environment (with its secrets) unless a template uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InUse`].
    pub async fn delete_environment(&self, access: &Access, id: u64) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let e: Environment = get_or_404(tx, access.project_id(), id)?;
            if !environment_refs(tx, access.project_id(), id)?.is_empty() {
                return Err(Error::InUse(
                    "Environment is in use by one or more templates".into(),
                ));
            }
            for key in tx.list::<AccessKey>(access.project_id())? {
                if key.environment_id == Some(id) {
                    tx.remove::<AccessKey>(access.project_id(), key.id)?;
                }
            }
            tx.remove::<Environment>(access.project_id(), id)?;
            tx.record(access.event("environment", id, format!("Environment {} deleted", e.name)))?;
            Ok(())
        })
        .await
    }

    /// What uses environment `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn environment_refs(&self, access: &Access, id: u64) -> Result<Refs> {
        self.environment(access, id)?;
        let p = access.project_id();
        environment_refs(&self.store.view()?, p, id)
    }
}

fn secrets_of(keys: &[AccessKey], env: u64) -> Vec<SecretInfo> {
    keys.iter()
        .filter(|k| k.environment_id == Some(env))
        .map(|k| {
            let (kind, name) = secret_kind_name(&k.name);
            SecretInfo {
                id: k.id,
                kind,
                name: name.to_owned(),
            }
        })
        .collect()
}

fn apply_secret_ops(tx: &Tx<'_>, p: ProjectId, env: u64, ops: Vec<SecretOp>) -> Result<()> {
    for op in ops {
        match op {
            SecretOp::Create { kind, name, sealed } => {
                let taken = tx
                    .list::<AccessKey>(p)?
                    .into_iter()
                    .any(|k| k.environment_id == Some(env) && k.name == format!("{kind}.{name}"));
                if taken {
                    return invalid(format!(
                        "secret {name:?} already exists in this environment"
                    ));
                }
                let mut key = AccessKey {
                    id: 0,
                    project_id: p,
                    name: format!("{kind}.{name}"),
                    kind: KeyKind::String,
                    sealed_secret: sealed,
                    environment_id: Some(env),
                };
                tx.insert(&mut key)?;
            }
            SecretOp::Update { id, name, sealed } => {
                let mut key = owned_secret(tx, p, env, id)?;
                if let Some(name) = name {
                    let (kind, _) = secret_kind_name(&key.name);
                    if name.is_empty()
                        || name.chars().any(char::is_control)
                        || (kind == "env" && !is_env_var_name(&name))
                    {
                        return invalid(format!("secret name {name:?} is not valid"));
                    }
                    key.name = format!("{kind}.{name}");
                }
                if let Some(sealed) = sealed {
                    key.sealed_secret = sealed;
                }
                tx.put(&key)?;
            }
            SecretOp::Delete { id } => {
                owned_secret(tx, p, env, id)?;
                tx.remove::<AccessKey>(p, id)?;
            }
        }
    }
    Ok(())
}

/// A secret of environment `env`; anything else (another environment's secret, a plain key)
/// is refused — upstream's inverted check let any key of the project be deleted here.
fn owned_secret(tx: &Tx<'_>, p: ProjectId, env: u64, id: u64) -> Result<AccessKey> {
    tx.get::<AccessKey>(p, id)?
        .filter(|k| k.environment_id == Some(env))
        .ok_or_else(|| Error::Invalid(format!("secret {id} does not belong to this environment")))
}

fn environment_refs(tx: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
    let mut refs = Refs::default();
    for t in tx.list::<Template>(p)? {
        if t.environment_id == Some(id) {
            refs.templates.push((t.id, t.name));
        }
    }
    Ok(refs)
}

// ---------------------------------------------------------------------------------------------
// Templates

/// A survey variable in a template body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SurveyVarInput {
    /// Variable name.
    pub name: Option<String>,
    /// Label.
    pub title: Option<String>,
    /// Help text.
    pub description: Option<String>,
    /// `""`, `int`, `enum`, `secret`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Must be answered.
    pub required: Option<bool>,
    /// Choices.
    #[serde(deserialize_with = "super::input::objects")]
    pub values: Option<Vec<SurveyValueInput>>,
}

/// A choice of an enum survey variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SurveyValueInput {
    /// Label.
    pub name: Option<String>,
    /// Value.
    pub value: Option<String>,
}

/// A vault entry in a template body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VaultInput {
    /// The `login_password` key holding the password.
    pub vault_key_id: Option<u64>,
    /// Vault id name.
    pub name: Option<String>,
}

/// A template body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TemplateInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Inventory.
    pub inventory_id: Option<u64>,
    /// Repository.
    pub repository_id: Option<u64>,
    /// Environment.
    pub environment_id: Option<u64>,
    /// UI grouping.
    pub view_id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Playbook or script path.
    pub playbook: Option<String>,
    /// JSON array of strings, as text.
    pub arguments: Option<String>,
    /// Tasks may add arguments.
    pub allow_override_args_in_task: Option<bool>,
    /// Free text.
    pub description: Option<String>,
    /// `""`, `build`, `deploy`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// First build version.
    pub start_version: Option<String>,
    /// Build template of a deploy template.
    pub build_template_id: Option<u64>,
    /// Auto-run after builds.
    pub autorun: Option<bool>,
    /// Branch override.
    pub git_branch: Option<String>,
    /// Survey.
    #[serde(deserialize_with = "super::input::objects")]
    pub survey_vars: Option<Vec<SurveyVarInput>>,
    /// Vault passwords.
    #[serde(deserialize_with = "super::input::objects")]
    pub vaults: Option<Vec<VaultInput>>,
    /// No success alerts.
    pub suppress_success_alerts: Option<bool>,
    /// App id.
    pub app: Option<String>,
    /// Longest run in seconds (Forge extension; 0 = the server default).
    pub max_duration_secs: Option<u64>,
}

impl Services {
    fn template_from(&self, input: TemplateInput, id: u64, p: ProjectId) -> Result<Template> {
        let name = input.name.unwrap_or_default();
        if name.trim().is_empty() {
            return invalid("template name can not be empty");
        }
        validate::name(&name, "template name").map_err(Error::Invalid)?;
        let app = input
            .app
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "ansible".into());
        if !BUILTIN_APPS.contains(&app.as_str()) && !self.extra_apps.contains(&app) {
            return invalid(format!("Invalid app id: {app}"));
        }
        let playbook = input.playbook.unwrap_or_default().trim().to_owned();
        if playbook.is_empty() {
            return invalid("template playbook can not be empty");
        }
        validate::relative_path(&playbook, "playbook").map_err(Error::Invalid)?;
        let inventory_id = input.inventory_id.filter(|&i| i != 0);
        if app == "ansible" && inventory_id.is_none() {
            return invalid("template inventory can not be empty");
        }
        let repository_id = input
            .repository_id
            .filter(|&r| r != 0)
            .ok_or_else(|| Error::Invalid("template repository can not be empty".into()))?;
        let arguments = input.arguments.filter(|a| !a.trim().is_empty());
        if let Some(args) = &arguments
            && serde_json::from_str::<Vec<String>>(args).is_err()
        {
            return invalid("template arguments must be valid JSON (an array of strings)");
        }
        let kind = input.kind.unwrap_or_default();
        if !["", "build", "deploy"].contains(&kind.as_str()) {
            return invalid(format!(
                "template type must be \"\", build or deploy, not {kind:?}"
            ));
        }
        let git_branch = input.git_branch.filter(|b| !b.trim().is_empty());
        if let Some(b) = &git_branch {
            validate::git_branch(b.trim()).map_err(Error::Invalid)?;
        }
        let mut survey_vars = Vec::new();
        for v in input.survey_vars.unwrap_or_default() {
            let kind = v.kind.unwrap_or_default();
            if !["", "int", "enum", "secret"].contains(&kind.as_str()) {
                return invalid(format!(
                    "survey variable type must be \"\", int, enum or secret, not {kind:?}"
                ));
            }
            let name = v.name.unwrap_or_default();
            if name.trim().is_empty() {
                return invalid("survey variable name can not be empty");
            }
            survey_vars.push(SurveyVar {
                name,
                title: v.title.unwrap_or_default(),
                description: v.description.unwrap_or_default(),
                kind,
                required: v.required.unwrap_or_default(),
                values: v
                    .values
                    .unwrap_or_default()
                    .into_iter()
                    .map(|x| SurveyValue {
                        name: x.name.unwrap_or_default(),
                        value: x.value.unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        let vaults = input
            .vaults
            .unwrap_or_default()
            .into_iter()
            .zip(1..)
            .map(|(v, i)| TemplateVault {
                id: i,
                vault_key_id: v.vault_key_id.unwrap_or_default(),
                name: v.name.filter(|n| !n.is_empty()),
            })
            .collect();
        Ok(Template {
            id,
            project_id: p,
            inventory_id,
            repository_id,
            environment_id: input.environment_id.filter(|&e| e != 0),
            view_id: input.view_id.filter(|&v| v != 0),
            name: name.trim().to_owned(),
            playbook,
            arguments,
            allow_override_args_in_task: input.allow_override_args_in_task.unwrap_or_default(),
            description: input.description.filter(|d| !d.is_empty()),
            start_version: input
                .start_version
                .filter(|s| !s.is_empty() && kind == "build"),
            build_template_id: input
                .build_template_id
                .filter(|&b| b != 0 && kind == "deploy"),
            kind,
            autorun: input.autorun.unwrap_or_default(),
            git_branch,
            survey_vars,
            vaults,
            suppress_success_alerts: input.suppress_success_alerts.unwrap_or_default(),
            app,
            max_duration_secs: input.max_duration_secs.unwrap_or_default(),
        })
    }

    /// The project's templates.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn templates(&self, access: &Access) -> Result<Vec<Template>> {
        Ok(self.store.view()?.list(access.project_id())?)
    }

    /// One template.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn template(&self, access: &Access, id: u64) -> Result<Template> {
        self.store
            .view()?
            .get(access.project_id(), id)?
            .ok_or(Error::NotFound)
    }

    /// How many tasks template `id` has, and its newest.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn template_task_stats(
        &self,
        access: &Access,
        id: u64,
    ) -> Result<(u64, Option<crate::model::Task>)> {
        Ok(self.store.template_task_stats(access.project_id(), id)?)
    }

    /// Names of the objects templates refer to, for sorting lists by them.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn template_ref_names(&self, access: &Access) -> Result<TemplateRefNames> {
        let view = self.store.view()?;
        let p = access.project_id();
        let names = |items: Vec<(u64, String)>| items.into_iter().collect();
        Ok(TemplateRefNames {
            inventories: names(
                view.list::<Inventory>(p)?
                    .into_iter()
                    .map(|i| (i.id, i.name))
                    .collect(),
            ),
            repositories: names(
                view.list::<Repository>(p)?
                    .into_iter()
                    .map(|r| (r.id, r.name))
                    .collect(),
            ),
            environments: names(
                view.list::<Environment>(p)?
                    .into_iter()
                    .map(|e| (e.id, e.name))
                    .collect(),
            ),
        })
    }

    /// Creates a template.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields, an unknown app or foreign references (checked before
    /// anything is written).
    pub async fn create_template(&self, access: &Access, input: TemplateInput) -> Result<Template> {
        check_project(input.project_id, access.project_id())?;
        let t = self.template_from(input, 0, access.project_id())?;
        let access = access.clone();
        self.transact(move |tx| {
            let mut t = t.clone();
            check_template_refs(tx, access.project_id(), &t)?;
            let id = tx.insert(&mut t)?;
            tx.record(access.event("template", id, format!("Template {} created", t.name)))?;
            Ok(t)
        })
        .await
    }

    /// Replaces a template.
    ///
    /// # Errors
    /// [`Error::Invalid`] (including a move to another project); [`Error::NotFound`].
    pub async fn update_template(
        &self,
        access: &Access,
        id: u64,
        input: TemplateInput,
    ) -> Result<()> {
        if input.id != Some(id) {
            return invalid("template id in URL and in body must be the same");
        }
        if input
            .project_id
            .is_some_and(|p| p != 0 && p != access.project_id())
        {
            return invalid("You can not move template to other project");
        }
        let t = self.template_from(input, id, access.project_id())?;
        let access = access.clone();
        self.transact(move |tx| {
            get_or_404::<Template>(tx, access.project_id(), id)?;
            if t.build_template_id == Some(id) {
                return invalid("build_template_id: a template cannot build itself");
            }
            check_template_refs(tx, access.project_id(), &t)?;
            tx.put(&t)?;
            tx.record(access.event("template", id, format!("Template {} updated", t.name)))?;
            Ok(())
        })
        .await
    }

    /// Deletes a template unless another template deploys its builds.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Conflict`] when referenced as a build template.
    pub async fn delete_template(&self, access: &Access, id: u64) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let t: Template = get_or_404(tx, access.project_id(), id)?;
            if !template_refs(tx, access.project_id(), id)?
                .templates
                .is_empty()
            {
                return Err(Error::Conflict(
                    "Template is the build template of one or more deploy templates".into(),
                ));
            }
            // Its tasks and their output go with it (as upstream), but never a live one.
            let tasks = tx.template_tasks(access.project_id(), id)?;
            if tasks.iter().any(|task| !task.status.is_finished()) {
                return invalid("the template has queued or running tasks; stop them first");
            }
            for task in &tasks {
                tx.delete_task(task)?;
            }
            tx.remove::<Template>(access.project_id(), id)?;
            tx.record(access.event("template", id, format!("Template {} deleted", t.name)))?;
            Ok(())
        })
        .await
    }

    /// What uses template `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn template_refs(&self, access: &Access, id: u64) -> Result<Refs> {
        self.template(access, id)?;
        let p = access.project_id();
        template_refs(&self.store.view()?, p, id)
    }
}

/// Names of a project's inventories, repositories and environments by id.
#[derive(Debug, Default)]
pub struct TemplateRefNames {
    /// Inventory names.
    pub inventories: std::collections::HashMap<u64, String>,
    /// Repository names.
    pub repositories: std::collections::HashMap<u64, String>,
    /// Environment names.
    pub environments: std::collections::HashMap<u64, String>,
}

fn check_template_refs(tx: &Tx<'_>, p: ProjectId, t: &Template) -> Result<()> {
    require::<Repository>(tx, p, t.repository_id, "repository_id", "repository")?;
    if let Some(i) = t.inventory_id {
        require::<Inventory>(tx, p, i, "inventory_id", "inventory")?;
    }
    if let Some(e) = t.environment_id {
        require::<Environment>(tx, p, e, "environment_id", "environment")?;
    }
    if let Some(b) = t.build_template_id {
        let build: Template = require(tx, p, b, "build_template_id", "template")?;
        if build.kind != "build" {
            return invalid("build_template_id: that template is not a build template");
        }
    }
    for v in &t.vaults {
        let key = require_key(tx, p, v.vault_key_id, "vaults.vault_key_id")?;
        if key.kind != KeyKind::LoginPassword {
            return invalid("vaults.vault_key_id: a vault password must be a login_password key");
        }
    }
    Ok(())
}

fn template_refs(tx: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
    let mut refs = Refs::default();
    for t in tx.list::<Template>(p)? {
        if t.build_template_id == Some(id) {
            refs.templates.push((t.id, t.name));
        }
    }
    for i in tx.list::<Inventory>(p)? {
        if i.holder_id == Some(id) {
            refs.inventories.push((i.id, i.name));
        }
    }
    Ok(refs)
}
