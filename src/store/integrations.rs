//! Integrations, their matchers, extract values and aliases (project resources), the alias
//! index the receiver looks aliases up in, and the bounded log of deliveries.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::projects::{Resource, Tx, View, resource};
use super::tables::{
    ALIASHASH_ALIAS, INTEGRATION_DELIVERY, PROJECT_INTEGRATION, PROJECT_INTEGRATION_ALIAS,
    PROJECT_INTEGRATION_MATCHER, PROJECT_INTEGRATION_VALUE,
};
use super::{Result, codec, next_id};
use crate::model::{
    Delivery, Integration, IntegrationAlias, IntegrationMatcher, IntegrationValue, ProjectId,
    SecretHash,
};

/// Deliveries kept per integration; older ones are dropped as new ones arrive.
pub const DELIVERIES_KEPT: usize = 100;

resource!(Integration, PROJECT_INTEGRATION, "next_integration_id");
resource!(
    IntegrationMatcher,
    PROJECT_INTEGRATION_MATCHER,
    "next_integration_matcher_id"
);
resource!(
    IntegrationValue,
    PROJECT_INTEGRATION_VALUE,
    "next_integration_value_id"
);
resource!(
    IntegrationAlias,
    PROJECT_INTEGRATION_ALIAS,
    "next_integration_alias_id"
);

impl Tx<'_> {
    /// Stores a new alias (assigning its id) with its entry in the hash index.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn insert_alias(&self, alias: &mut IntegrationAlias, hash: SecretHash) -> Result<u64> {
        let id = self.insert(alias)?;
        self.raw()
            .open_table(ALIASHASH_ALIAS)?
            .insert(hash, (alias.project_id, id))?;
        Ok(id)
    }

    /// Whether an alias with SHA-256 `hash` exists (in any project).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn alias_taken(&self, hash: SecretHash) -> Result<bool> {
        Ok(self.raw().open_table(ALIASHASH_ALIAS)?.get(hash)?.is_some())
    }

    /// Removes an alias with its entry in the hash index.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn remove_alias(&self, alias: &IntegrationAlias, hash: SecretHash) -> Result<()> {
        self.remove::<IntegrationAlias>(alias.project_id, alias.id)?;
        self.raw().open_table(ALIASHASH_ALIAS)?.remove(hash)?;
        Ok(())
    }

    /// Appends a delivery (assigning its id), dropping the integration's oldest beyond
    /// [`DELIVERIES_KEPT`].
    ///
    /// # Errors
    /// Storage failures only.
    pub fn add_delivery(&self, d: &mut Delivery) -> Result<()> {
        d.id = next_id(self.raw(), "next_delivery_id")?;
        let mut table = self.raw().open_table(INTEGRATION_DELIVERY)?;
        let (p, i) = (d.project_id, d.integration_id);
        table.insert((p, i, d.id), codec::encode(d).as_slice())?;
        let range = (p, i, 0)..=(p, i, u64::MAX);
        let extra = table
            .range(range.clone())?
            .count()
            .saturating_sub(DELIVERIES_KEPT);
        if extra > 0 {
            let mut dropped = 0;
            table.retain_in(range, |_, _| {
                dropped += 1;
                dropped > extra
            })?;
        }
        Ok(())
    }

    /// Removes what belongs to integration `id` (matchers, extract values, aliases and
    /// deliveries); `hash` names each alias's index entry.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn forget_integration(
        &self,
        project: ProjectId,
        id: u64,
        hash: impl Fn(&str) -> SecretHash,
    ) -> Result<()> {
        for m in self.list::<IntegrationMatcher>(project)? {
            if m.integration_id == id {
                self.remove::<IntegrationMatcher>(project, m.id)?;
            }
        }
        for v in self.list::<IntegrationValue>(project)? {
            if v.integration_id == id {
                self.remove::<IntegrationValue>(project, v.id)?;
            }
        }
        for a in self.list::<IntegrationAlias>(project)? {
            if a.integration_id == Some(id) {
                self.remove_alias(&a, hash(&a.alias))?;
            }
        }
        self.raw()
            .open_table(INTEGRATION_DELIVERY)?
            .retain_in((project, id, 0)..=(project, id, u64::MAX), |_, _| false)?;
        Ok(())
    }
}

/// For a project being deleted: the entries of its aliases in the hash index and its
/// deliveries (its records go with the project-scoped tables).
pub(super) fn forget_project(tx: &WriteTransaction, project: ProjectId) -> Result<()> {
    let mut index = tx.open_table(ALIASHASH_ALIAS)?;
    let hashes: Vec<SecretHash> = index
        .iter()?
        .filter_map(|row| {
            let (k, v) = row.ok()?;
            (v.value().0 == project).then(|| k.value())
        })
        .collect();
    for h in hashes {
        index.remove(h)?;
    }
    tx.open_table(INTEGRATION_DELIVERY)?
        .retain_in((project, 0, 0)..=(project, u64::MAX, u64::MAX), |_, _| {
            false
        })?;
    Ok(())
}

impl View {
    /// Where the alias with SHA-256 `hash` lives: (project id, alias id).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn alias_by_hash(&self, hash: SecretHash) -> Result<Option<(ProjectId, u64)>> {
        Ok(self
            .raw()
            .open_table(ALIASHASH_ALIAS)?
            .get(hash)?
            .map(|v| v.value()))
    }

    /// The deliveries of integration `id`, newest first.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn deliveries(&self, project: ProjectId, id: u64) -> Result<Vec<Delivery>> {
        self.raw()
            .open_table(INTEGRATION_DELIVERY)?
            .range((project, id, 0)..=(project, id, u64::MAX))?
            .rev()
            .map(|row| Ok(codec::decode(row?.1.value())?))
            .collect()
    }
}
