//! Consistent copies of the whole database, taken while the server runs.
//!
//! A snapshot is ONE redb read transaction: redb keeps what it sees stable however many writes
//! commit meanwhile, and a reader never holds the writer thread. Every table of [`tables`] is
//! copied from it, row by row, into a fresh redb file, in short non-durable write transactions
//! on that file (bounding memory) and one durable commit at the end. The copy is compact (no
//! free pages) and is an ordinary Forge database: restoring is replacing the file.
//!
//! A table added to `tables.rs` must be added to [`copy_tables`]: the unit test
//! `every_table_of_tables_rs_is_copied` fails until it is, and a snapshot of a database holding a
//! table it does not know fails instead of leaving the table out.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{
    Database, Durability, Key, MultimapTableHandle, ReadTransaction, ReadableTable,
    TableDefinition, TableHandle, Value,
};

use super::{Store, tables};

/// Rows copied per write transaction of the copy: bounds the copy's dirty pages in memory.
const ROWS_PER_COMMIT: u64 = 50_000;
/// Page cache of the copy's database handle (it is only written, never read back).
const COPY_CACHE_BYTES: usize = 16 << 20;

/// Why a snapshot failed. Nothing is left behind: the caller owns (and removes) the target.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the live database or writing the copy failed in redb.
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// The target file could not be created, written or synced.
    #[error("cannot write the backup file: {0}")]
    Io(#[from] std::io::Error),
    /// The live database holds a table the snapshot does not copy (a programming error).
    #[error("table {0:?} is not copied by backups (add it to store/backup.rs)")]
    UnknownTable(String),
    /// The caller asked the snapshot to stop (server shutdown).
    #[error("the backup was cancelled")]
    Cancelled,
    /// The live database could not be read (full disk, or being reopened).
    #[error(transparent)]
    Store(#[from] super::Error),
}

impl SnapshotError {
    /// Whether it failed for lack of disk space (ENOSPC, EDQUOT).
    #[must_use]
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            SnapshotError::Io(e) | SnapshotError::Db(redb::Error::Io(e)) => Some(e),
            SnapshotError::Store(super::Error::Full) => return true,
            _ => None,
        };
        io.is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        }) || self.to_string().contains("No space left on device")
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for SnapshotError {
            fn from(e: $t) -> Self {
                SnapshotError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// What a snapshot copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Tables copied (empty ones included).
    pub tables: usize,
    /// Rows copied, over all tables.
    pub rows: u64,
    /// Size of the copy, in bytes.
    pub bytes: u64,
}

impl Store {
    /// Writes a consistent copy of the whole database, as of this call, into a new redb file at
    /// `path` (which must not exist), synced to disk. Writes to the store go on meanwhile.
    /// `stop` is checked between chunks: set it to abandon the copy ([`SnapshotError::Cancelled`]).
    /// On error the caller removes `path`.
    ///
    /// # Errors
    /// [`SnapshotError`]: `path` exists or cannot be written, the disk is full, redb failed.
    pub fn snapshot_to(&self, path: &Path, stop: &AtomicBool) -> Result<Snapshot, SnapshotError> {
        let file = create_new(path)?;
        self.snapshot_into(file, stop)
    }

    /// Like [`Store::snapshot_to`], into an anonymous file in `dir`: its name is removed as soon
    /// as it is created, so the space goes back to the disk when the returned handle is dropped,
    /// whatever happens (client gone, server killed). The handle is positioned at the start.
    ///
    /// # Errors
    /// As [`Store::snapshot_to`].
    pub fn snapshot_temp(
        &self,
        dir: &Path,
        stop: &AtomicBool,
    ) -> Result<(File, Snapshot), SnapshotError> {
        let name: PathBuf = dir.join(format!(".forge-backup-{:016x}.tmp", rand::random::<u64>()));
        let file = create_new(&name)?;
        std::fs::remove_file(&name)?;
        let mut reader = file.try_clone()?;
        let snapshot = self.snapshot_into(file, stop)?;
        reader.seek(SeekFrom::Start(0))?;
        Ok((reader, snapshot))
    }

    fn snapshot_into(&self, file: File, stop: &AtomicBool) -> Result<Snapshot, SnapshotError> {
        let synced = file.try_clone()?;
        // The snapshot: every table is read from this one transaction.
        let src = self.read()?;
        let dst = Database::builder()
            .set_cache_size(COPY_CACHE_BYTES)
            .create_with_backend(FileBackend::new(file)?)?;
        let mut copy = Copy {
            src: &src,
            dst: &dst,
            stop,
            copied: BTreeSet::new(),
            rows: 0,
        };
        copy_tables(&mut copy)?;
        copy.check_complete()?;
        let (tables, rows) = (copy.copied.len(), copy.rows);
        // One durable commit makes every non-durable one before it durable.
        let mut tx = dst.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        drop(dst);
        drop(src);
        synced.sync_all()?;
        Ok(Snapshot {
            tables,
            rows,
            bytes: synced.metadata()?.len(),
        })
    }
}

/// Copies every table Forge has. One line per table of `tables.rs`.
fn copy_tables(c: &mut Copy<'_>) -> Result<(), SnapshotError> {
    c.table(tables::META)?;
    c.table(tables::USERID_USER)?;
    c.table(tables::USERNAME_USERID)?;
    c.table(tables::EMAIL_USERID)?;
    c.table(tables::ADMIN_USERID)?;
    c.table(tables::SESSIONHASH_SESSION)?;
    c.table(tables::USERID_SESSIONHASH)?;
    c.table(tables::TOKENHASH_TOKEN)?;
    c.table(tables::USERID_TOKENHANDLE)?;
    c.table(tables::SETTINGS)?;
    c.table(tables::PROJECTID_PROJECT)?;
    c.table(tables::PROJECTUSER_ROLE)?;
    c.table(tables::USERPROJECT)?;
    c.table(tables::EVENTID_EVENT)?;
    c.table(tables::PROJECT_EVENTID)?;
    c.table(tables::TASKID_PROJECT)?;
    c.table(tables::ACTIVE_TASK)?;
    c.table(tables::TEMPLATE_TASK)?;
    c.table(tables::OUTPUT_CHUNK)?;
    c.table(tables::PURGE_TASK)?;
    c.table(tables::ALIASHASH_ALIAS)?;
    c.table(tables::INTEGRATION_DELIVERY)?;
    c.table(tables::CHANNEL_ALERT)?;
    c.table(tables::RUNNERID_RUNNER)?;
    c.table(tables::TOKENHASH_RUNNERID)?;
    c.table(tables::USERID_TOTP)?;
    c.table(tables::SESSIONHASH_PENDING)?;
    for table in tables::PROJECT_SCOPED {
        c.table(*table)?;
    }
    Ok(())
}

/// One snapshot being copied.
struct Copy<'a> {
    /// The snapshot of the live database.
    src: &'a ReadTransaction,
    /// The new file.
    dst: &'a Database,
    /// Set by the caller to abandon the copy.
    stop: &'a AtomicBool,
    /// Names of the tables copied so far.
    copied: BTreeSet<String>,
    /// Rows copied so far.
    rows: u64,
}

impl Copy<'_> {
    /// Copies table `def` (creating it empty in the copy when the live database lacks it).
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<(), SnapshotError> {
        if !self.copied.insert(def.name().to_owned()) {
            return Ok(());
        }
        let src = match self.src.open_table(def) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut rows = src.as_ref().map(ReadableTable::iter).transpose()?;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(SnapshotError::Cancelled);
            }
            let mut tx = self.dst.begin_write()?;
            tx.set_durability(Durability::None)?;
            let mut n = 0;
            {
                let mut dst = tx.open_table(def)?;
                while n < ROWS_PER_COMMIT {
                    let Some(row) = rows.as_mut().and_then(Iterator::next) else {
                        break;
                    };
                    let (k, v) = row?;
                    dst.insert(k.value(), v.value())?;
                    n += 1;
                }
            }
            tx.commit()?;
            self.rows += n;
            if n < ROWS_PER_COMMIT {
                return Ok(());
            }
        }
    }

    /// Fails when the live database has a table that was not copied.
    fn check_complete(&self) -> Result<(), SnapshotError> {
        let live = self.src.list_tables()?.map(|t| t.name().to_owned()).chain(
            self.src
                .list_multimap_tables()?
                .map(|t| t.name().to_owned()),
        );
        for name in live {
            if !self.copied.contains(&name) {
                return Err(SnapshotError::UnknownTable(name));
            }
        }
        Ok(())
    }
}

/// Creates `path` for writing, failing if it exists; owner-only (a backup holds password hashes
/// and sealed secrets).
fn create_new(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use redb::{ReadOnlyDatabase, ReadableDatabase, TableHandle};

    /// Every `TableDefinition::new("name")` in `tables.rs`, read from its source.
    fn declared_tables() -> BTreeSet<String> {
        let source = include_str!("tables.rs");
        let mut names = BTreeSet::new();
        for marker in ["TableDefinition::new(\"", "TableDefinition::new(\n"] {
            for piece in source.split(marker).skip(1) {
                let piece = piece.trim_start().trim_start_matches('"');
                if let Some(end) = piece.find('"') {
                    names.insert(piece[..end].to_owned());
                }
            }
        }
        names
    }

    fn table_names(db: &ReadOnlyDatabase) -> BTreeSet<String> {
        let tx = db.begin_read().expect("read");
        tx.list_tables()
            .expect("list")
            .map(|t| t.name().to_owned())
            .collect()
    }

    #[test]
    fn every_table_of_tables_rs_is_copied() {
        let declared = declared_tables();
        assert!(declared.len() >= 25, "parsed tables.rs: {declared:?}");
        let (dir, store) = temp_store();
        let out = dir.path().join("copy.redb");
        let snap = store
            .snapshot_to(&out, &AtomicBool::new(false))
            .expect("snapshot");
        drop(store);
        let copy = ReadOnlyDatabase::open(&out).expect("the copy opens");
        let copied = table_names(&copy);
        let missing: Vec<_> = declared.difference(&copied).collect();
        assert!(
            missing.is_empty(),
            "tables of tables.rs that backups leave out (add them to copy_tables): {missing:?}"
        );
        assert_eq!(snap.tables, copied.len());
        // The live database has the same tables as the copy.
        let live = ReadOnlyDatabase::open(dir.path().join("forge.redb")).expect("live db");
        assert_eq!(table_names(&live), copied);
    }

    #[test]
    fn the_copy_is_the_snapshot_and_later_writes_are_not_in_it() {
        let (dir, store) = temp_store();
        for i in 0..10 {
            store
                .set_setting(&format!("k{i:06}"), format!("v{i}").as_bytes())
                .expect("write");
        }
        // Many rows in one write: the copy spans several commits of the target file.
        store
            .write(Durability::None, |tx| {
                let mut t = tx.open_table(tables::SETTINGS)?;
                for i in 0..(ROWS_PER_COMMIT + 7) {
                    t.insert(format!("bulk{i:06}").as_str(), b"x".as_slice())?;
                }
                Ok::<_, crate::store::Error>(())
            })
            .expect("bulk write");
        let out = dir.path().join("copy.redb");
        let snap = store
            .snapshot_to(&out, &AtomicBool::new(false))
            .expect("snapshot");
        store.set_setting("after", b"late").expect("write after");
        assert!(snap.rows > ROWS_PER_COMMIT, "{snap:?}");
        assert_eq!(snap.bytes, std::fs::metadata(&out).expect("copy").len());
        let copy = ReadOnlyDatabase::open(&out).expect("the copy opens");
        let tx = copy.begin_read().expect("read");
        let t = tx.open_table(tables::SETTINGS).expect("settings");
        assert_eq!(t.get("k000003").expect("get").expect("row").value(), b"v3");
        assert!(
            t.get(format!("bulk{:06}", ROWS_PER_COMMIT + 6).as_str())
                .expect("get")
                .is_some()
        );
        assert!(
            t.get("after").expect("get").is_none(),
            "a later write leaked in"
        );
        // Snapshots refuse to overwrite.
        assert!(matches!(
            store.snapshot_to(&out, &AtomicBool::new(false)),
            Err(SnapshotError::Io(_))
        ));
    }

    #[test]
    fn a_temp_snapshot_has_no_name_and_a_stopped_one_fails() {
        let (dir, store) = temp_store();
        store.set_setting("a", b"1").expect("write");
        let work = tempfile::tempdir().expect("dir");
        let (mut file, snap) = store
            .snapshot_temp(work.path(), &AtomicBool::new(false))
            .expect("snapshot");
        assert_eq!(
            std::fs::read_dir(work.path()).expect("ls").count(),
            0,
            "the temp file's name is gone"
        );
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).expect("read");
        assert_eq!(bytes.len() as u64, snap.bytes);
        let out = dir.path().join("streamed.redb");
        std::fs::write(&out, &bytes).expect("write");
        let copy = ReadOnlyDatabase::open(&out).expect("a redb file");
        let tx = copy.begin_read().expect("read");
        let t = tx.open_table(tables::SETTINGS).expect("settings");
        assert_eq!(t.get("a").expect("get").expect("row").value(), b"1");

        let stopped = store.snapshot_temp(work.path(), &AtomicBool::new(true));
        assert!(
            matches!(stopped, Err(SnapshotError::Cancelled)),
            "{stopped:?}"
        );
        assert_eq!(std::fs::read_dir(work.path()).expect("ls").count(), 0);
    }
}
