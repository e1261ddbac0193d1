//! Project resources: access keys, repositories, inventories, environments and templates.
//!
//! Every change runs in one transaction that re-reads what it references, so a reference to
//! another project's object (or to one deleted meanwhile) is refused and nothing is written.
//! Secrets are sealed before they reach the store and never come back out through the API.

mod environments;
mod inventories;
mod keys;
mod repositories;
mod templates;

pub use environments::{EnvironmentInput, SecretInfo, SecretInput};
pub use inventories::{INVENTORY_TYPES, InventoryInput};
pub use keys::{KeyInput, LoginPasswordInput, SshInput};
pub use repositories::RepositoryInput;
pub use templates::{
    BUILTIN_APPS, SurveyValueInput, SurveyVarInput, TemplateInput, TemplateRefNames, VaultInput,
};

use super::{Error, Result};
use crate::model::{AccessKey, ProjectId};
use crate::store::{Resource, Tx};

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
