//! Inventories: static (INI or YAML) text, a file in the template's checkout, or a terraform
//! workspace name.

use serde::Deserialize;

use super::{Names, ProjectResource, Refs, Target, body, invalid, require, require_key, users};
use crate::model::{Inventory, ProjectId, Repository, Template};
use crate::service::{Error, Result, Services, validate};
use crate::store::{Lists, Tx};

/// Inventory types Forge accepts.
pub const INVENTORY_TYPES: &[&str] = &["static", "static-yaml", "file", "terraform-workspace"];

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
    /// `static`, `static-yaml`, `file` or `terraform-workspace`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Owning template.
    pub holder_id: Option<u64>,
    /// Repository of a `file` inventory.
    pub repository_id: Option<u64>,
}

fn check_refs(tx: &Tx<'_>, p: ProjectId, inv: &Inventory) -> Result<()> {
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
    if kind == "terraform-workspace" {
        workspace_name(inventory.trim())?;
    }
    Ok(Inventory {
        id,
        project_id: p,
        name: name.trim().to_owned(),
        inventory: if kind == "file" || kind == "terraform-workspace" {
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

/// A terraform workspace name: it reaches terraform's argv, so it may not look like an option.
fn workspace_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 90
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        invalid(
            "a terraform workspace name is 1 to 90 letters, digits, '-', '_' or '.', \
             not starting with '-'",
        )
    }
}

impl ProjectResource for Inventory {
    body!(InventoryInput);
    type Fields = Inventory;
    const NAMES: Names = Names::new("inventory", "Inventory");

    /// Upstream words an unknown type differently on create and on update.
    fn fields(_: &Services, input: InventoryInput, to: Target) -> Result<Inventory> {
        match to.id {
            None => inventory_from(input, 0, to.project, |_| {
                "Not supported inventory type".into()
            }),
            Some(id) => inventory_from(input, id, to.project, |k| {
                format!("unknown inventory type: {k}")
            }),
        }
    }

    fn record(tx: &Tx<'_>, inv: &Inventory, _current: Option<Self>) -> Result<Self> {
        check_refs(tx, inv.project_id, inv)?;
        Ok(inv.clone())
    }

    fn refs(lists: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
        Ok(Refs {
            templates: users(lists, p, |t: &Template| t.inventory_id == Some(id))?,
            ..Refs::default()
        })
    }
}
