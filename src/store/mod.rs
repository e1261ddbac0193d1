//! The store: one redb file holding every record, with typed tables (`tables`), one record
//! encoding (`codec`) and one module per entity. All calls block; callers on the async reactor
//! run writes on `spawn_blocking`.

pub mod codec;
pub mod projects;
mod sessions;
pub mod tables;
pub mod tasks;
mod tokens;
mod users;

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};

pub use projects::{NewEvent, Resource, Tx, View};
pub use users::NewUser;

/// What a store call can fail with. The first variants are outcomes callers handle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The record does not exist.
    #[error("not found")]
    NotFound,
    /// A unique field (username, email) is taken.
    #[error("{0}")]
    Conflict(&'static str),
    /// The change would leave the system without an administrator.
    #[error("the last administrator cannot be deleted or demoted")]
    LastAdmin,
    /// Another process (a running server) holds the database file.
    #[error("the database file is in use by another Forge process")]
    Locked,
    /// A stored record did not decode.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// redb failed (I/O, corruption, ...).
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<redb::DatabaseError> for Error {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked,
            other => Error::Db(other.into()),
        }
    }
}

/// Shorthand for store results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (creating if needed) the database file and makes sure every table exists.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has the file open; [`Error::Db`] otherwise.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let store = Self { db: Arc::new(db) };
        store.write(Durability::Immediate, |tx| {
            tx.open_table(tables::META)?;
            tx.open_table(tables::USERID_USER)?;
            tx.open_table(tables::USERNAME_USERID)?;
            tx.open_table(tables::EMAIL_USERID)?;
            tx.open_table(tables::ADMIN_USERID)?;
            tx.open_table(tables::SESSIONHASH_SESSION)?;
            tx.open_table(tables::USERID_SESSIONHASH)?;
            tx.open_table(tables::TOKENHASH_TOKEN)?;
            tx.open_table(tables::USERID_TOKENHANDLE)?;
            tx.open_table(tables::SETTINGS)?;
            tx.open_table(tables::PROJECTID_PROJECT)?;
            tx.open_table(tables::PROJECTUSER_ROLE)?;
            tx.open_table(tables::USERPROJECT)?;
            tx.open_table(tables::EVENTID_EVENT)?;
            tx.open_table(tables::PROJECT_EVENTID)?;
            tx.open_table(tables::TASKID_PROJECT)?;
            tx.open_table(tables::ACTIVE_TASK)?;
            tx.open_table(tables::TASK_OUTPUT)?;
            tx.open_table(tables::TEMPLATE_TASK)?;
            for table in tables::PROJECT_SCOPED {
                tx.open_table(*table)?;
            }
            Ok::<_, Error>(())
        })?;
        Ok(store)
    }

    /// Runs `f` in a write transaction and commits it with `durability` when `f` succeeds;
    /// on error nothing is written.
    fn write<T, E: From<Error>>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut tx = self.db.begin_write().map_err(Error::from)?;
        tx.set_durability(durability).map_err(Error::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(Error::from)?;
        Ok(out)
    }

    fn read(&self) -> Result<ReadTransaction> {
        Ok(self.db.begin_read()?)
    }
}

impl Store {
    /// The setting `name`, if set.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.read()?;
        let table = tx.open_table(tables::SETTINGS)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Sets `name` to `value`, durably.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn set_setting(&self, name: &str, value: &[u8]) -> Result<()> {
        self.write(Durability::Immediate, |tx| {
            tx.open_table(tables::SETTINGS)?.insert(name, value)?;
            Ok(())
        })
    }
}

/// Takes the next value of the named counter (starting at 1) inside `tx`.
fn next_id(tx: &WriteTransaction, counter: &str) -> Result<u64> {
    let mut meta = tx.open_table(tables::META)?;
    let next = meta.get(counter)?.map_or(1, |v| v.value());
    meta.insert(counter, next + 1)?;
    Ok(next)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Store;

    /// A store in a fresh temp dir (the dir lives as long as the returned guard).
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("forge.redb")).expect("open store");
        (dir, store)
    }
}
