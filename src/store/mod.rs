//! The store: one redb file holding every record, with typed tables (`tables`), one record
//! encoding (`codec`) and one module per entity. Reads block the caller briefly; writes are
//! committed in groups by one writer thread (`writer`), with a blocking and an async entry.
//!
//! # Versions and shape changes
//! The file records its format version (`meta.schema_version`, see [`migrate`]); opening it
//! runs the pending migrations in one transaction, after a backup copy, and refuses a file
//! from a newer Forge. Records are positional bincode: a field added, renamed, dropped or
//! reordered makes old bytes undecodable, so every change to a stored shape follows this
//! checklist (the rest of the store only ever decodes the current shapes):
//! 1. Copy the type's current definition, frozen, into `migrate.rs` (e.g. `v3::TaskV2`).
//! 2. Change the type in `model.rs`.
//! 3. Add migration N to [`migrate::MIGRATIONS`] that rewrites the table with
//!    [`migrate::rewrite`] (old shape → new shape); splitting a table = read the old one,
//!    write the new ones, `delete_table` the old. Bump [`migrate::CURRENT`] to N.
//! 4. A new table needs no migration unless it must be filled from existing rows (then N
//!    fills it); add it to `tables.rs`, to [`Store::open`], to the copy list of [`backup`]
//!    and to [`check`].
//! 5. Make a fixture with the previous release: `tests/fixtures/make-fixture.sh <commit>
//!    tests/fixtures/v<N-1>` (extend the script first if the new shape needs data), add one
//!    line for it in `tests/upgrade.rs`, and keep every older fixture passing.
//! 6. Never renumber, edit or delete a migration that has shipped; a table's name is
//!    permanent. The encoding itself (bincode) changes only through `codec`'s format byte.

pub mod backup;
pub mod builds;
pub mod check;
pub mod codec;
pub mod compact;
pub mod disk;
pub mod integrations;
pub mod migrate;
pub mod options;
pub mod outbox;
pub mod output;
pub mod projects;
pub mod reseal;
pub mod retention;
mod runners;
mod sessions;
pub mod tables;
pub mod tasks;
mod tokens;
pub mod totp;
mod users;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{Durability, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};

pub use projects::{Lists, NewEvent, Resource, Tx, View};
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
    Db(redb::Error),
    /// A write could not be committed (the commit failed, or the write panicked).
    #[error("database write failed: {0}")]
    Write(String),
    /// The file was written by a newer Forge; it was not changed.
    #[error(
        "the database was written by a newer Forge (format version {found}; this binary \
         supports up to {supported}); it was not changed: run the newer Forge, or restore a \
         backup made by this version"
    )]
    TooNew {
        /// The file's format version.
        found: u64,
        /// The newest this binary knows.
        supported: u64,
    },
    /// Upgrading the file failed; nothing of the upgrade was written.
    #[error("cannot upgrade the database: {0}")]
    Migration(String),
    /// The disk is full: nothing of the write was stored; retry once space is freed.
    #[error("the disk is full")]
    Full,
    /// The database is being reopened after a failed write; retry shortly.
    #[error("storage is temporarily unavailable")]
    Unavailable,
}

impl Error {
    /// Whether the error is the disk's state, not the request's: a full disk, or a database
    /// being reopened. Such writes are worth retrying once the store is healthy again.
    #[must_use]
    pub fn is_storage(&self) -> bool {
        matches!(self, Error::Full | Error::Unavailable)
    }
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) if disk::is_full(&io) => Error::Full,
            // The handle failed an earlier write, or was closed for a reopen.
            redb::Error::PreviousIo | redb::Error::DatabaseClosed => Error::Unavailable,
            other => Error::Db(other),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::from(redb::Error::from(e))
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
            other => Error::from(redb::Error::from(other)),
        }
    }
}

/// Shorthand for store results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A handle to the database; cheap to clone. Reads run on the caller's thread; writes go to
/// the one writer thread (see [`writer`]), which commits them in groups.
#[derive(Clone, Debug)]
pub struct Store {
    disk: Arc<disk::Disk>,
    writer: Arc<writer::Writer>,
}

impl Store {
    /// Opens (creating if needed) the database file, upgrades it (see [`migrate`]; with a
    /// backup copy when there is something to upgrade) and makes sure every table exists.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has the file open; [`Error::TooNew`],
    /// [`Error::Migration`]; [`Error::Db`] otherwise.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &migrate::Upgrade::default(), None)
    }

    /// [`Store::open`] with explicit upgrade options, through a [`disk::FaultSwitch`] that can
    /// make the disk fail as a full one (for tests; `None` is the plain file).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with(
        path: &Path,
        upgrade: &migrate::Upgrade,
        faults: Option<disk::FaultSwitch>,
    ) -> Result<Self> {
        let disk = Arc::new(disk::Disk::open(path, upgrade, faults)?);
        let store = Self {
            writer: Arc::new(writer::Writer::start(Arc::clone(&disk))?),
            disk,
        };
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
            tx.open_table(tables::OUTPUT_CHUNK)?;
            tx.open_table(tables::TEMPLATE_TASK)?;
            tx.open_table(tables::PURGE_TASK)?;
            tx.open_table(tables::ALIASHASH_ALIAS)?;
            tx.open_table(tables::INTEGRATION_DELIVERY)?;
            tx.open_table(tables::CHANNEL_ALERT)?;
            tx.open_table(tables::RUNNERID_RUNNER)?;
            tx.open_table(tables::TOKENHASH_RUNNERID)?;
            tx.open_table(tables::USERID_TOTP)?;
            tx.open_table(tables::SESSIONHASH_PENDING)?;
            for table in tables::PROJECT_SCOPED {
                tx.open_table(*table)?;
            }
            Ok::<_, Error>(())
        })?;
        Ok(store)
    }

    /// Runs `f` in a write transaction and commits it when `f` succeeds (on error nothing of
    /// it is written). With `Durability::Immediate` it returns only once the write is on disk;
    /// with `Durability::None` it may be lost in a crash. `f` runs on the writer thread, in a
    /// transaction shared with other writes, and may run more than once (see [`writer`]): it
    /// must only act through the transaction.
    fn write<T, E, F>(&self, durability: Durability, f: F) -> Result<T, E>
    where
        F: Fn(&WriteTransaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let durable = matches!(durability, Durability::Immediate);
        self.writer.submit(durable, f, writer::Reply::Sync(tx));
        rx.recv()
            .unwrap_or_else(|_| Err(E::from(Error::Write("the writer has stopped".into()))))
    }

    /// [`Store::write`] for async callers: awaits the commit instead of blocking a thread.
    async fn write_async<T, E, F>(&self, durability: Durability, f: F) -> Result<T, E>
    where
        F: Fn(&WriteTransaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let durable = matches!(durability, Durability::Immediate);
        self.writer.submit(durable, f, writer::Reply::Async(tx));
        rx.await
            .unwrap_or_else(|_| Err(E::from(Error::Write("the writer has stopped".into()))))
    }

    fn read(&self) -> Result<ReadTransaction> {
        Ok(self.disk.current()?.begin_read()?)
    }

    /// Whether writes commit (`false` from a failed write, e.g. a full disk, until one
    /// commits again).
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.disk.healthy()
    }

    /// The writer's commit counters and histograms, for metrics.
    #[must_use]
    pub fn writer_stats(&self) -> &writer::Stats {
        self.writer.metrics()
    }

    /// A receiver of health changes (see [`Store::healthy`]).
    #[must_use]
    pub fn watch_health(&self) -> tokio::sync::watch::Receiver<bool> {
        self.disk.watch()
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
        let (name, value) = (name.to_owned(), value.to_vec());
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(tables::SETTINGS)?
                .insert(name.as_str(), value.as_slice())?;
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
