//! Re-sealing every stored secret in one transaction, for `forge key rotate`.

use redb::{Durability, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Error, Result, Store, codec, tables};
use crate::model::{AccessKey, Environment, ProjectId, Task, UserTotp};

/// How many sealed values of each kind a re-seal rewrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Access keys (including environment secrets, which are keys of type `string`).
    pub keys: usize,
    /// Environments' vault passwords.
    pub environments: usize,
    /// Tasks' secret extra vars (sealed at launch).
    pub tasks: usize,
    /// Users' TOTP secrets.
    pub totp: usize,
}

/// Why a re-seal stopped; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    /// The old key did not open this value.
    #[error("the {0} could not be decrypted with the current key")]
    Open(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl From<redb::TableError> for ResealError {
    fn from(e: redb::TableError) -> Self {
        Self::Store(e.into())
    }
}

impl From<redb::StorageError> for ResealError {
    fn from(e: redb::StorageError) -> Self {
        Self::Store(e.into())
    }
}

impl From<codec::CodecError> for ResealError {
    fn from(e: codec::CodecError) -> Self {
        Self::Store(e.into())
    }
}

/// Rewrites `field` of every record in `table` whose sealed bytes are not empty.
fn reseal_table<T, F>(
    tx: &WriteTransaction,
    table: TableDefinition<(ProjectId, u64), &[u8]>,
    what: &str,
    field: impl Fn(&mut T) -> &mut Vec<u8>,
    reseal: &F,
) -> Result<usize, ResealError>
where
    T: Serialize + DeserializeOwned,
    F: Fn(&[u8]) -> Option<Vec<u8>>,
{
    let mut table = tx.open_table(table)?;
    let mut rewritten = Vec::new();
    for row in table.iter()? {
        let (key, value) = row?;
        let mut record: T = codec::decode(value.value())?;
        let sealed = field(&mut record);
        if sealed.is_empty() {
            continue;
        }
        let (project, id) = key.value();
        *sealed = reseal(sealed).ok_or_else(|| ResealError::Open(format!("{what} {id}")))?;
        rewritten.push(((project, id), codec::encode(&record)));
    }
    for (key, bytes) in &rewritten {
        table.insert(*key, bytes.as_slice())?;
    }
    Ok(rewritten.len())
}

/// Rewrites the sealed secret of every TOTP enrolment.
fn reseal_totp<F>(tx: &WriteTransaction, reseal: &F) -> Result<usize, ResealError>
where
    F: Fn(&[u8]) -> Option<Vec<u8>>,
{
    let mut table = tx.open_table(tables::USERID_TOTP)?;
    let mut rewritten = Vec::new();
    for row in table.iter()? {
        let (user, value) = row?;
        let mut totp: UserTotp = codec::decode(value.value())?;
        totp.sealed_secret = reseal(&totp.sealed_secret)
            .ok_or_else(|| ResealError::Open(format!("TOTP secret of user {}", user.value())))?;
        rewritten.push((user.value(), codec::encode(&totp)));
    }
    for (user, bytes) in &rewritten {
        table.insert(*user, bytes.as_slice())?;
    }
    Ok(rewritten.len())
}

impl Store {
    /// Replaces every sealed value (access keys, environment passwords, tasks' secret
    /// extra vars, TOTP secrets, and the settings named in `settings`) by `reseal(old)`, durably, in one
    /// transaction. `reseal` answers `None` when it cannot open a value; then nothing is
    /// written.
    ///
    /// # Errors
    /// [`ResealError::Open`] naming the first value that did not open; storage failures.
    pub fn reseal_all<F>(
        &self,
        settings: &'static [&'static str],
        reseal: F,
    ) -> Result<Resealed, ResealError>
    where
        F: Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static,
    {
        self.write(Durability::Immediate, move |tx| {
            let mut table = tx.open_table(tables::SETTINGS)?;
            for name in settings {
                let old = table.get(*name)?.map(|v| v.value().to_vec());
                if let Some(old) = old {
                    let new =
                        reseal(&old).ok_or_else(|| ResealError::Open(format!("setting {name}")))?;
                    table.insert(*name, new.as_slice())?;
                }
            }
            drop(table);
            Ok(Resealed {
                keys: reseal_table(
                    tx,
                    tables::PROJECT_KEY,
                    "access key",
                    |k: &mut AccessKey| &mut k.sealed_secret,
                    &reseal,
                )?,
                environments: reseal_table(
                    tx,
                    tables::PROJECT_ENVIRONMENT,
                    "environment password",
                    |e: &mut Environment| &mut e.sealed_password,
                    &reseal,
                )?,
                tasks: reseal_table(
                    tx,
                    tables::PROJECT_TASK,
                    "task secret",
                    |t: &mut Task| &mut t.sealed_secret,
                    &reseal,
                )?,
                totp: reseal_totp(tx, &reseal)?,
            })
        })
    }
}
