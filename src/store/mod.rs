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
    group: Arc<GroupCommit>,
}

/// Group commit. Each durable write commits its own transaction without an fsync (so a failed
/// write never disturbs another), then waits for a durable commit that began after it: one
/// caller at a time runs an empty `Durability::Immediate` commit, which makes every earlier
/// commit durable at once, and everyone it covered returns together. Under load, many writes
/// share one fsync; alone, a write costs one commit and one fsync as before.
#[derive(Debug, Default)]
struct GroupCommit {
    state: std::sync::Mutex<Flush>,
    flushed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Flush {
    /// Writes committed (without fsync) so far.
    committed: u64,
    /// Writes known to be durable.
    durable: u64,
    /// A durable commit is under way.
    flushing: bool,
    /// Write transactions begun or waiting to begin: a flush waits (briefly) for them, so
    /// that they share its fsync instead of each needing the next.
    writing: usize,
}

/// Longest a flush waits for writes under way to join it.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

impl Store {
    /// Opens (creating if needed) the database file and makes sure every table exists.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has the file open; [`Error::Db`] otherwise.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let store = Self {
            db: Arc::new(db),
            group: Arc::default(),
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
            tx.open_table(tables::TASK_OUTPUT)?;
            tx.open_table(tables::TEMPLATE_TASK)?;
            for table in tables::PROJECT_SCOPED {
                tx.open_table(*table)?;
            }
            Ok::<_, Error>(())
        })?;
        Ok(store)
    }

    /// Runs `f` in a write transaction and commits it when `f` succeeds (on error nothing is
    /// written). With `Durability::Immediate` it returns only once the write is on disk, through
    /// the group commit; with `Durability::None` it may be lost in a crash.
    fn write<T, E: From<Error>>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T, E>,
    ) -> Result<T, E> {
        self.lock_group().writing += 1;
        let result = (|| {
            let mut tx = self.db.begin_write().map_err(Error::from)?;
            tx.set_durability(Durability::None).map_err(Error::from)?;
            let out = f(&tx)?;
            tx.commit().map_err(Error::from)?;
            Ok(out)
        })();
        let seq = {
            let mut state = self.lock_group();
            state.writing -= 1;
            let durable = result.is_ok() && matches!(durability, Durability::Immediate);
            if durable {
                state.committed += 1;
            }
            self.group.flushed.notify_all();
            durable.then_some(state.committed)
        };
        if let Some(seq) = seq {
            self.make_durable(seq)?;
        }
        result
    }

    fn lock_group(&self) -> std::sync::MutexGuard<'_, Flush> {
        self.group
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns once write number `seq` is durable, running the fsync itself when no one else
    /// is.
    fn make_durable(&self, seq: u64) -> Result<()> {
        let mut state = self.lock_group();
        loop {
            if state.durable >= seq {
                return Ok(());
            }
            if state.flushing {
                state = self
                    .group
                    .flushed
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            state.flushing = true;
            let deadline = std::time::Instant::now() + GATHER;
            while state.writing > 0 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .group
                    .flushed
                    .wait_timeout(state, left)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            let target = state.committed;
            drop(state);
            let flushed = self.flush();
            state = self.lock_group();
            state.flushing = false;
            if flushed.is_ok() {
                state.durable = state.durable.max(target);
            }
            self.group.flushed.notify_all();
            flushed?;
        }
    }

    /// An empty durable commit: persists every commit before it.
    fn flush(&self) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
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
