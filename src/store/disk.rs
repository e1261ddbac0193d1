//! The database handle behind the store, and how it survives a full disk.
//!
//! redb latches the first I/O error of a write (a full disk, say): from then on every write,
//! and every read that misses its cache, fails with `PreviousIo` until the database is closed
//! and opened again. So the store does not hold a `Database` but a [`Disk`]: a slot readers
//! clone an `Arc<Database>` out of (one uncontended read lock and one refcount per read), and
//! that the writer thread empties and refills when it reopens the file.
//!
//! Who does what:
//! - the writer thread (the only writer) notices a failed commit, marks the disk unhealthy,
//!   and reopens the file at once, so reads keep working while writes are refused;
//! - while unhealthy it answers writes with [`Error::Full`] / [`Error::Unavailable`] without
//!   trying them (each failed try costs a reopen), and every [`PROBE_EVERY`] — once the
//!   filesystem shows room — commits and removes a 1 MiB probe record: the first probe that
//!   commits makes the disk healthy again;
//! - during a reopen the writer holds the slot's write lock, so new reads wait for it (a few
//!   milliseconds); a read that began on the old handle may end with [`Error::Unavailable`]
//!   (a 503), and so does every read while a reopen keeps failing (the slot stays empty);
//! - a watch channel tells the rest of the server (the runner) when health changes.
//!
//! A redb transaction commits whole or not at all, so a refused write leaves nothing behind.
//!
//! The file goes through a thin wrapper of redb's file backend that notes a full disk (redb
//! reports later failures as a bare `PreviousIo`) and, given a [`FaultSwitch`], fails like a
//! full disk on command, for tests of all this (`Config::disk_faults`).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, Database, StorageBackend};
use tokio::sync::watch;

use super::{Error, Result};

/// redb's page cache (reads and the write buffer). redb's default, 1 GiB, lets the cache grow
/// with the file: a flood of task output or a backlog of launches kept every written page in
/// memory (hundreds of MB). The hot pages (users, tokens, projects, the newest tasks) fit in
/// far less; a larger write is flushed to the file before its commit instead of buffered.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// How often an unhealthy disk is tried with a real write.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Whether an I/O error means the disk (or the user's quota) is full.
#[must_use]
pub fn is_full(e: &std::io::Error) -> bool {
    // ENOSPC (28) and EDQUOT (122 on Linux).
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}

/// The current database, reopened when a write failed.
#[derive(Debug)]
pub struct Disk {
    /// The open database; `None` when the last reopen failed.
    slot: RwLock<Option<Arc<Database>>>,
    /// How to open the file again; `None` for a database that cannot be reopened (tests).
    opener: Option<Opener>,
    /// `true` while writes commit; `false` from a failed write until a write commits again.
    healthy: watch::Sender<bool>,
}

/// What opening the file takes.
#[derive(Debug, Clone)]
struct Opener {
    path: PathBuf,
    faults: Option<FaultSwitch>,
    /// Set by the backend when the disk reported itself full (see [`Disk::saw_full`]).
    saw_full: Arc<AtomicBool>,
}

impl Opener {
    fn open(&self) -> Result<Database> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| Error::from(redb::Error::Io(e)))?;
        let backend = WatchedFile {
            inner: FileBackend::new(file)?,
            faults: self.faults.clone(),
            saw_full: Arc::clone(&self.saw_full),
        };
        Ok(Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)?)
    }
}

impl Disk {
    /// Opens (creating if needed) the database at `path` and brings it to the current format
    /// version (see [`super::migrate`]), through `faults` when given.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has the file open; [`Error::Db`] otherwise.
    pub fn open(
        path: &Path,
        upgrade: &super::migrate::Upgrade,
        faults: Option<FaultSwitch>,
    ) -> Result<Self> {
        let opener = Opener {
            path: path.to_owned(),
            faults,
            saw_full: Arc::new(AtomicBool::new(false)),
        };
        // The first open checks the format version and upgrades; a reopen finds it current.
        let db = super::migrate::open_through(path, upgrade, &|| opener.open())?;
        Ok(Self {
            slot: RwLock::new(Some(Arc::new(db))),
            opener: Some(opener),
            healthy: watch::Sender::new(true),
        })
    }

    /// A disk over an open database that is never reopened.
    #[cfg(test)]
    pub(crate) fn fixed(db: Arc<Database>) -> Self {
        Self {
            slot: RwLock::new(Some(db)),
            opener: None,
            healthy: watch::Sender::new(true),
        }
    }

    /// The open database.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while it is being reopened.
    pub fn current(&self) -> Result<Arc<Database>> {
        self.slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(Error::Unavailable)
    }

    /// Whether the filesystem holding the file shows `bytes` free (for an unprivileged
    /// writer). A probe on a disk that is still full would fail and cost a reopen, which
    /// repairs the file and holds reads meanwhile; this spares it. `true` when unknown.
    pub(super) fn has_room(&self, bytes: u64) -> bool {
        let Some(dir) = self.opener.as_ref().and_then(|o| o.path.parent()) else {
            return true;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        nix::sys::statvfs::statvfs(dir).map_or(true, |s| {
            s.blocks_available().saturating_mul(s.fragment_size()) >= bytes
        })
    }

    /// Whether writes commit.
    #[must_use]
    pub fn healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// A receiver of health changes.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Whether the file reported a full disk since the store was last healthy: redb answers
    /// later operations with a bare `PreviousIo`, and this says what it was.
    pub(super) fn saw_full(&self) -> bool {
        self.opener
            .as_ref()
            .is_some_and(|o| o.saw_full.load(Ordering::SeqCst))
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        if healthy && let Some(o) = &self.opener {
            o.saw_full.store(false, Ordering::SeqCst);
        }
        let changed = self
            .healthy
            .send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
        if changed && healthy {
            tracing::info!("storage writable again");
        } else if changed {
            tracing::error!("storage failed a write; refusing writes until one commits again");
        }
    }

    /// Closes the database and opens the file again (only the writer thread calls this, with
    /// no write transaction open). New reads wait meanwhile; reads already under way on the old
    /// handle end on their own (or with [`Error::Unavailable`]). When the open fails the slot
    /// stays empty and reads answer [`Error::Unavailable`] until a later reopen succeeds.
    ///
    /// # Errors
    /// When the file cannot be opened again (it stays closed; call again later).
    pub(super) fn reopen(&self) -> Result<()> {
        let Some(opener) = &self.opener else {
            return Err(Error::Unavailable);
        };
        // Held until the new handle is in: reads wait for the reopen (a few milliseconds, the
        // repair of a large file longer) instead of failing.
        let mut slot = self
            .slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut old) = slot.take() {
            // A reader holds a clone only while it begins its transaction: wait that out, so
            // the file lock is released before the new open takes it.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let db = loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break db,
                    Err(still) if std::time::Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still) => {
                        tracing::error!("the database is still referenced; cannot reopen it");
                        *slot = Some(still);
                        return Err(Error::Unavailable);
                    }
                }
            };
            if let Err(e) = db.close() {
                tracing::warn!(error = %e, "closing the failed database");
            }
        }
        let started = std::time::Instant::now();
        let db = opener.open()?;
        tracing::info!(took = ?started.elapsed(), "database reopened");
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

/// The switch of the store's file backend for tests: while on, the file fails as a full disk
/// does — growing it, or writing past its end, fails with `ENOSPC` (an overwrite of blocks the
/// file already has still succeeds, as on a full ext4 or xfs). Clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicU8>);

/// [`FaultSwitch`] states.
const SPACE: u8 = 0;
const FULL: u8 = 1;
const FULL_COW: u8 = 2;

impl FaultSwitch {
    /// A switch that is off.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the disk full.
    pub fn fill(&self) {
        self.0.store(FULL, Ordering::SeqCst);
    }

    /// Makes the disk full as a copy-on-write filesystem is: every write fails, overwrites
    /// included (a reopen then fails too).
    pub fn fill_every_block(&self) {
        self.0.store(FULL_COW, Ordering::SeqCst);
    }

    /// Gives the space back.
    pub fn free(&self) {
        self.0.store(SPACE, Ordering::SeqCst);
    }
}

/// redb's file backend, noting when the disk reports itself full, and failing as a full one
/// while its fault switch (if any) is on.
#[derive(Debug)]
struct WatchedFile {
    inner: FileBackend,
    faults: Option<FaultSwitch>,
    saw_full: Arc<AtomicBool>,
}

impl WatchedFile {
    /// `Err(ENOSPC)` when writing up to `end` must fail: the switch is on, and the write grows
    /// the file or the disk is full of every block.
    fn grow(&self, end: u64) -> Result<(), std::io::Error> {
        let full = match self.faults.as_ref().map(|f| f.0.load(Ordering::SeqCst)) {
            Some(FULL) => end > self.inner.len()?,
            Some(FULL_COW) => true,
            _ => false,
        };
        if full {
            Err(std::io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }

    fn watch<T>(&self, result: Result<T, std::io::Error>) -> Result<T, std::io::Error> {
        if let Err(e) = &result
            && is_full(e)
        {
            self.saw_full.store(true, Ordering::SeqCst);
        }
        result
    }
}

impl StorageBackend for WatchedFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.watch(self.grow(len).and_then(|()| self.inner.set_len(len)))
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.watch(self.inner.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let end = offset + data.len() as u64;
        self.watch(self.grow(end).and_then(|()| self.inner.write(offset, data)))
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn put(db: &Database, k: u64, len: usize) -> std::result::Result<(), redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(T)?.insert(k, vec![7u8; len].as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// What redb does on a full disk, which the store's design rests on: the failed commit
    /// poisons the handle; a reopen while the disk is still full succeeds and reads every
    /// committed record; once space returns, writes commit again.
    #[test]
    fn a_full_disk_poisons_the_handle_and_a_reopen_recovers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let switch = FaultSwitch::new();
        let disk = Disk::open(
            &dir.path().join("d.redb"),
            &crate::store::migrate::Upgrade::default(),
            Some(switch.clone()),
        )
        .expect("open");
        for k in 0..200 {
            put(&disk.current().expect("db"), k, 1000).expect("put");
        }
        switch.fill();
        let failed = put(&disk.current().expect("db"), 1000, 20_000_000).expect_err("disk full");
        assert!(
            matches!(&failed, redb::Error::Io(e) if is_full(e)),
            "{failed:?}"
        );
        assert!(matches!(
            put(&disk.current().expect("db"), 1001, 10),
            Err(redb::Error::PreviousIo)
        ));
        disk.reopen().expect("reopen while full");
        let db = disk.current().expect("db");
        let tx = db.begin_read().expect("read");
        let t = tx.open_table(T).expect("table");
        for k in 0..200 {
            assert_eq!(t.get(k).expect("get").expect("row").value().len(), 1000);
        }
        assert!(t.get(1000).expect("get").is_none(), "half-written");
        drop((t, tx));
        switch.free();
        put(&db, 1000, 100_000).expect("writes after space returns");
    }
}
