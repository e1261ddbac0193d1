//! Inventories: static (INI or YAML) text, or a file in the template's checkout.

use serde::Deserialize;

use super::{Refs, check_ids, check_project, get_or_404, invalid, require, require_key};
use crate::model::{Inventory, ProjectId, Repository, Template};
use crate::service::projects::Access;
use crate::service::{Error, Result, Services, validate};
use crate::store::{Lists, Tx};

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
