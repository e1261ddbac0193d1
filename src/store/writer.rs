//! Group commit by one writer: every write request is a job sent to one writer thread, which
//! runs all the jobs waiting at that moment in one redb transaction and commits it once —
//! durably (one fsync) when any job asked for durability. Each request is answered only after
//! the commit that holds it. Under load the jobs that arrive during one commit's fsync form
//! the next batch; alone, a write costs one commit as before.
//!
//! A job that fails must leave no trace, and must not fail the others: the writer then aborts
//! the transaction, answers that job with its error and runs the rest again in a new one (so
//! jobs are `Fn`, run once per attempt). A job that panics is answered with an error the same
//! way; the writer lives on.
//!
//! A commit that fails on I/O (a full disk) fails its jobs with [`Error::Full`] or
//! [`Error::Unavailable`]; the writer then reopens the database and refuses writes until a
//! probe commits again (see [`super::disk`]).

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use redb::{Durability, WriteTransaction};

use super::disk::{Disk, PROBE_EVERY};
use super::{Error, Result, tables};
use crate::metrics::Histogram;

/// The `SETTINGS` entry the writer writes (and removes) to probe a failed disk.
const STORAGE_PROBE: &str = "storage_probe";
/// How much room a probe asks for.
const PROBE_BYTES: usize = 1024 * 1024;

/// Most jobs one transaction takes (bounds the work a failure makes the writer repeat).
const MAX_BATCH: usize = 256;

/// Where a job's answer goes: a thread blocked on a channel, or an awaiting task.
pub enum Reply<T> {
    /// A blocking caller.
    Sync(SyncSender<T>),
    /// An async caller.
    Async(tokio::sync::oneshot::Sender<T>),
}

impl<T> Reply<T> {
    fn send(self, value: T) {
        // A caller that has gone away (a dropped future) no longer wants the answer.
        match self {
            Reply::Sync(tx) => drop(tx.send(value)),
            Reply::Async(tx) => drop(tx.send(value)),
        }
    }
}

/// Why a commit failed, as each job in it is told.
#[derive(Debug, Clone)]
enum Failure {
    /// The disk is full ([`Error::Full`]).
    Full,
    /// The database is unusable until reopened ([`Error::Unavailable`]).
    Unavailable,
    /// Anything else, logged as an internal error.
    Other(String),
}

impl Failure {
    fn error(self) -> Error {
        match self {
            Failure::Full => Error::Full,
            Failure::Unavailable => Error::Unavailable,
            Failure::Other(e) => Error::Write(e),
        }
    }
}

/// A redb failure at the transaction level: what to answer, and whether it was I/O (redb
/// then refuses everything until the file is reopened).
fn classify(disk: &Disk, e: impl Into<redb::Error>) -> (Failure, bool) {
    let e: redb::Error = e.into();
    let io = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
    let failure = match Error::from(e) {
        Error::Full => Failure::Full,
        Error::Unavailable if disk.saw_full() => Failure::Full,
        Error::Unavailable => Failure::Unavailable,
        other => Failure::Other(other.to_string()),
    };
    (failure, io)
}

/// A write request as the writer sees it.
trait Job: Send {
    /// Runs the request in `tx`, keeping its result; `false` when it failed.
    fn run(&mut self, tx: &WriteTransaction) -> bool;
    /// Whether the request must be on disk before it is answered.
    fn durable(&self) -> bool;
    /// Answers the request: its result when `committed`, else the commit's error.
    fn answer(self: Box<Self>, committed: std::result::Result<(), Failure>);
}

struct Request<F, T, E> {
    f: F,
    durable: bool,
    out: Option<std::result::Result<T, E>>,
    reply: Reply<std::result::Result<T, E>>,
}

impl<F, T, E> Job for Request<F, T, E>
where
    F: Fn(&WriteTransaction) -> std::result::Result<T, E> + Send,
    T: Send,
    E: From<Error> + Send,
{
    fn run(&mut self, tx: &WriteTransaction) -> bool {
        let out = catch_unwind(AssertUnwindSafe(|| (self.f)(tx))).unwrap_or_else(|_| {
            Err(E::from(Error::Write(
                "a write panicked; nothing of it was stored".into(),
            )))
        });
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn answer(self: Box<Self>, committed: std::result::Result<(), Failure>) {
        let Request { f, out, reply, .. } = *self;
        // What the write captured goes before the caller hears back: data the caller shares
        // (a batch of output lines it publishes next) is then freed by the caller, off the
        // writer thread, instead of by whichever side happens to drop it last.
        drop(f);
        let out = match (committed, out) {
            (Ok(()), Some(out)) => out,
            (Ok(()), None) => Err(E::from(Error::Write("the write never ran".into()))),
            (Err(e), _) => Err(E::from(e.error())),
        };
        reply.send(out);
    }
}

/// The writer thread and the way to it. Dropping the last handle stops the thread and waits
/// for it, so the database file is closed when the store is.
#[derive(Debug)]
pub struct Writer {
    jobs: Option<Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
}

/// What the writer has done so far.
#[derive(Debug)]
pub struct Stats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Write requests answered with success.
    pub writes: AtomicU64,
    /// Write requests per committed transaction.
    pub batch_sizes: Histogram,
    /// How long each commit took (the fsync, when durable), in microseconds.
    pub commit_latency: Histogram,
    /// Bumped after every commit, before any of its writes is answered (see [`Generation`]).
    pub data: Generation,
    /// Bumped after every commit that changed who may do what (a user, token, membership
    /// or project; see [`access_written`]), before any of its writes is answered.
    pub access: Generation,
}

/// A counter of committed changes, for caches of values derived from the store: read it
/// BEFORE reading the store, and keep the derived value only while the counter still shows
/// that number. The writer bumps it after the commit and before answering, so a reader that
/// sees the new number reads the new data, and a value read from older data carries an older
/// number — exact invalidation, whichever way a read and a write interleave.
#[derive(Debug, Default)]
pub struct Generation(AtomicU64);

impl Generation {
    /// The current number.
    #[must_use]
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    /// Set by a write that changes access (on the writer thread, inside its transaction).
    static ACCESS_WRITTEN: Cell<bool> = const { Cell::new(false) };
}

/// Marks the running write as changing access (a user, an API token, a membership or a
/// project): once it commits, [`Stats::access`] moves before the write is answered. Store
/// functions call it next to the table writes themselves, so no caller can forget it.
pub(crate) fn access_written() {
    ACCESS_WRITTEN.set(true);
}

/// Batch-size buckets: powers of two up to [`MAX_BATCH`].
const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256];

impl Default for Stats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            batch_sizes: Histogram::new(BATCH_BOUNDS, 1.0),
            commit_latency: Histogram::new(crate::metrics::LATENCY_US, 1e6),
            data: Generation::default(),
            access: Generation::default(),
        }
    }
}

impl Writer {
    /// Starts the writer thread over `disk`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(disk: Arc<Disk>) -> Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(Stats::default());
        let counted = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("forge-writer".into())
            .spawn(move || run(&disk, &rx, &counted))
            .map_err(|e| Error::Write(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            stats,
        })
    }

    /// What the writer has done so far, for metrics.
    #[must_use]
    pub fn metrics(&self) -> &Stats {
        &self.stats
    }

    /// Counters of commits and writes (a batch is one commit of many writes).
    #[must_use]
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.writes.load(Ordering::Relaxed),
        )
    }

    /// Queues `f` to run in the next transaction; the answer goes to `reply`.
    pub fn submit<F, T, E>(&self, durable: bool, f: F, reply: Reply<std::result::Result<T, E>>)
    where
        F: Fn(&WriteTransaction) -> std::result::Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let job: Box<dyn Job> = Box::new(Request {
            f,
            durable,
            out: None,
            reply,
        });
        let unsent = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = unsent {
            job.answer(Err(Failure::Other("the writer has stopped".into())));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

/// The writer's memory of a failed disk: what to answer meanwhile, and when it last tried.
struct Failed {
    answer: Failure,
    tried: Instant,
}

fn run(disk: &Disk, rx: &Receiver<Box<dyn Job>>, stats: &Stats) {
    let mut failed: Option<Failed> = None;
    loop {
        let first = if failed.is_some() {
            // Unhealthy: wake up to probe the disk even when no write comes.
            match rx.recv_timeout(PROBE_EVERY) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        };
        let mut batch: Vec<_> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Some(f) = &mut failed {
            if f.tried.elapsed() < PROBE_EVERY {
                // Refused without a try: each try that fails costs a reopen.
                for job in batch {
                    job.answer(Err(f.answer.clone()));
                }
                continue;
            }
            if !disk.has_room(2 * PROBE_BYTES as u64) {
                f.tried = Instant::now();
                for job in batch {
                    job.answer(Err(f.answer.clone()));
                }
                continue;
            }
            if let Err(answer) = probe(disk) {
                // Reopened before anyone hears of it (see `commit`).
                failed = Some(fail(disk, answer.clone()));
                for job in batch {
                    job.answer(Err(answer.clone()));
                }
                continue;
            }
            disk.set_healthy(true);
            failed = None;
        }
        if batch.is_empty() {
            continue;
        }
        failed = match commit(disk, batch, stats) {
            Ok(()) => {
                disk.set_healthy(true);
                None
            }
            Err(failed) => Some(failed),
        };
    }
}

/// After a failed commit: unhealthy, and the handle reopened so that reads keep working. The
/// caller must hold no clone of the database (the reopen waits for the last one).
fn fail(disk: &Disk, answer: Failure) -> Failed {
    disk.set_healthy(false);
    if let Err(e) = disk.reopen() {
        tracing::error!(error = %e, "reopening the database failed; will retry");
    }
    Failed {
        answer,
        tried: Instant::now(),
    }
}

/// Whether the disk takes writes again, with room to spare: commits [`PROBE_BYTES`] durably,
/// then removes them. (A tiny write could fit in space the database file already has, and
/// make a disk that is still full look healthy.)
fn probe(disk: &Disk) -> std::result::Result<(), Failure> {
    if disk.current().is_err() {
        // The last reopen failed: try again first.
        disk.reopen().map_err(|_| Failure::Unavailable)?;
    }
    let db = disk.current().map_err(|_| Failure::Unavailable)?;
    let blob = vec![0u8; PROBE_BYTES];
    for put in [true, false] {
        let tx = db.begin_write().map_err(|e| classify(disk, e).0)?;
        {
            let mut settings = tx
                .open_table(tables::SETTINGS)
                .map_err(|e| classify(disk, e).0)?;
            let done = if put {
                settings.insert(STORAGE_PROBE, blob.as_slice()).map(drop)
            } else {
                settings.remove(STORAGE_PROBE).map(drop)
            };
            done.map_err(|e| classify(disk, e).0)?;
        }
        tx.commit().map_err(|e| classify(disk, e).0)?;
    }
    Ok(())
}

/// Runs `batch` in one transaction and commits it; a failed job is answered on its own and
/// the others run again without it. `Err` when the database failed on I/O: the handle has
/// been reopened (see [`fail`]) and only then every job not yet answered got that failure —
/// so that no request told of the failure finds health `ok`, and reads meanwhile wait for the
/// new handle rather than fail on the poisoned one.
fn commit(
    disk: &Disk,
    mut batch: Vec<Box<dyn Job>>,
    stats: &Stats,
) -> std::result::Result<(), Failed> {
    let Ok(db) = disk.current() else {
        // An earlier reopen failed: try it again.
        let failed = fail(disk, Failure::Unavailable);
        for job in batch {
            job.answer(Err(Failure::Unavailable));
        }
        return Err(failed);
    };
    while !batch.is_empty() {
        let durable = batch.iter().any(|j| j.durable());
        let tx = db
            .begin_write()
            .map_err(|e| classify(disk, e))
            .and_then(|mut tx| {
                let durability = if durable {
                    Durability::Immediate
                } else {
                    Durability::None
                };
                tx.set_durability(durability)
                    .map_err(|e| classify(disk, e))?;
                Ok(tx)
            });
        let tx = match tx {
            Ok(tx) => tx,
            Err((failure, io)) => {
                drop(db);
                let failed = io.then(|| fail(disk, failure.clone()));
                for job in batch {
                    job.answer(Err(failure.clone()));
                }
                return failed.map_or(Ok(()), Err);
            }
        };
        ACCESS_WRITTEN.set(false);
        if let Some(failed) = batch.iter_mut().position(|job| !job.run(&tx)) {
            drop(tx.abort());
            let failed = batch.remove(failed);
            // It may have failed on I/O inside its transaction (a page flush on a full disk),
            // which poisons the handle: know that before anyone hears of it.
            if let Err(e) = db.begin_write() {
                let (failure, io) = classify(disk, e);
                if io {
                    drop(db);
                    let reopened = fail(disk, failure.clone());
                    failed.answer(Ok(()));
                    for job in batch {
                        job.answer(Err(failure.clone()));
                    }
                    return Err(reopened);
                }
            }
            // Its own error is its answer; nothing of it (or of the others) was committed.
            failed.answer(Ok(()));
            continue;
        }
        let started = Instant::now();
        let (committed, io) = match tx.commit() {
            Ok(()) => (Ok(()), false),
            Err(e) => {
                let (failure, io) = classify(disk, e);
                (Err(failure), io)
            }
        };
        drop(db);
        let failed = match &committed {
            Err(failure) if io => Some(fail(disk, failure.clone())),
            _ => None,
        };
        // Before anyone hears of the commit (see `Generation`); after a failed one too, in
        // case the file kept it.
        stats.data.bump();
        if ACCESS_WRITTEN.take() {
            stats.access.bump();
        }
        if committed.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats.batch_sizes.observe(batch.len() as u64);
            stats
                .commit_latency
                .observe(crate::metrics::micros(started.elapsed()));
        }
        for job in batch {
            job.answer(committed.clone());
        }
        return failed.map_or(Ok(()), Err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::SETTINGS;
    use redb::{Database, ReadableDatabase, TableDefinition};

    fn db() -> (tempfile::TempDir, Arc<Database>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::create(dir.path().join("w.redb")).expect("db");
        (dir, Arc::new(db))
    }

    fn put(key: String, fail: bool) -> impl Fn(&WriteTransaction) -> Result<String> + Send {
        move |tx| {
            tx.open_table(SETTINGS)?
                .insert(key.as_str(), key.as_bytes())?;
            if fail {
                // Written first, then failed: the write must leave no trace.
                return Err(Error::Conflict("refused"));
            }
            Ok(key.clone())
        }
    }

    fn stored(db: &Database, key: &str) -> bool {
        let tx = db.begin_read().expect("read");
        let Ok(table) = tx.open_table(SETTINGS) else {
            return false;
        };
        table.get(key).expect("get").is_some()
    }

    /// A job that holds the writer until `release` is sent, so the next jobs queue up.
    fn hold(
        writer: &Writer,
    ) -> (
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<Result<()>>,
    ) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let (started_tx, started) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        writer.submit(
            true,
            move |_: &WriteTransaction| {
                let _ = started_tx.send(());
                let _ = wait.lock().expect("lock").recv();
                Ok(())
            },
            Reply::Sync(tx),
        );
        started.recv().expect("the writer runs the holding job");
        (release, rx)
    }

    #[test]
    fn queued_writes_share_one_commit_and_a_failure_only_fails_itself() {
        let (_dir, db) = db();
        let writer = Writer::start(Arc::new(Disk::fixed(Arc::clone(&db)))).expect("writer");
        let (release, held) = hold(&writer);
        let answers: Vec<_> = (0..64)
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                writer.submit(true, put(format!("k{i}"), i % 10 == 3), Reply::Sync(tx));
                rx
            })
            .collect();
        release.send(()).expect("release");
        held.recv().expect("answer").expect("holding job");
        for (i, rx) in answers.into_iter().enumerate() {
            let answer = rx.recv().expect("answered");
            let key = format!("k{i}");
            if i % 10 == 3 {
                assert!(
                    matches!(answer, Err(Error::Conflict("refused"))),
                    "{i}: {answer:?}"
                );
                assert!(!stored(&db, &key), "failed write {key} left a trace");
            } else {
                assert_eq!(answer.expect("write"), key);
                assert!(stored(&db, &key), "{key} lost");
            }
        }
        // The holding job alone, then the 64 queued behind it in one transaction (each of the
        // 7 failures costs a retry, but only one commit happens).
        assert_eq!(writer.stats(), (2, 58));
    }

    #[test]
    fn a_panicking_write_is_an_error_and_the_writer_lives_on() {
        let (_dir, db) = db();
        let writer = Writer::start(Arc::new(Disk::fixed(Arc::clone(&db)))).expect("writer");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        writer.submit(
            true,
            |tx: &WriteTransaction| -> Result<()> {
                tx.open_table(SETTINGS)?.insert("boom", b"x".as_slice())?;
                panic!("a bug in a write");
            },
            Reply::Sync(tx),
        );
        let answer = rx.recv().expect("answered");
        assert!(matches!(answer, Err(Error::Write(_))), "{answer:?}");
        assert!(!stored(&db, "boom"));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        writer.submit(true, put("after".into(), false), Reply::Sync(tx));
        assert_eq!(rx.recv().expect("answered").expect("write"), "after");
        assert!(stored(&db, "after"));
    }

    #[test]
    fn dropping_the_writer_closes_the_database() {
        let (dir, db) = db();
        let writer = Writer::start(Arc::new(Disk::fixed(db))).expect("writer");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        writer.submit(true, put("k".into(), false), Reply::Sync(tx));
        rx.recv().expect("answered").expect("write");
        drop(writer);
        // The thread held the last handle: the file opens again at once.
        let again = Database::create(dir.path().join("w.redb")).expect("reopen");
        let tx = again.begin_read().expect("read");
        let table: redb::ReadOnlyTable<&str, &[u8]> = tx
            .open_table(TableDefinition::new("settings"))
            .expect("table");
        assert!(table.get("k").expect("get").is_some());
    }

    #[test]
    fn a_full_disk_fails_the_write_and_the_writer_recovers_once_space_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let switch = crate::store::disk::FaultSwitch::new();
        let disk = Arc::new(
            Disk::open(
                &dir.path().join("w.redb"),
                &crate::store::migrate::Upgrade::default(),
                Some(switch.clone()),
            )
            .expect("open"),
        );
        let writer = Writer::start(Arc::clone(&disk)).expect("writer");
        let submit = |key: &str, len: usize| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let key = key.to_owned();
            writer.submit(
                true,
                move |tx: &WriteTransaction| -> Result<()> {
                    tx.open_table(SETTINGS)?
                        .insert(key.as_str(), vec![1u8; len].as_slice())?;
                    Ok(())
                },
                Reply::Sync(tx),
            );
            rx.recv().expect("answered")
        };
        submit("small", 10).expect("write");
        switch.fill();
        let refused = submit("big", 20_000_000);
        assert!(matches!(refused, Err(Error::Full)), "{refused:?}");
        assert!(!disk.healthy());
        // Refused without a try until a probe commits; reads work on the reopened file.
        let small = submit("small2", 10);
        assert!(matches!(small, Err(Error::Full)), "{small:?}");
        assert!(stored(&disk.current().expect("db"), "small"));
        assert!(!stored(&disk.current().expect("db"), "big"));
        switch.free();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !disk.healthy() {
            assert!(std::time::Instant::now() < deadline, "no recovery");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        submit("big", 20_000_000).expect("write after recovery");
        assert!(stored(&disk.current().expect("db"), "big"));
        // The probe left nothing behind.
        assert!(!stored(&disk.current().expect("db"), STORAGE_PROBE));
    }

    #[test]
    fn when_even_the_reopen_fails_reads_are_unavailable_until_space_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let switch = crate::store::disk::FaultSwitch::new();
        let disk = Arc::new(
            Disk::open(
                &dir.path().join("w.redb"),
                &crate::store::migrate::Upgrade::default(),
                Some(switch.clone()),
            )
            .expect("open"),
        );
        let writer = Writer::start(Arc::clone(&disk)).expect("writer");
        let submit = |key: &'static str| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            writer.submit(true, put(key.to_owned(), false), Reply::Sync(tx));
            rx.recv().expect("answered")
        };
        submit("before").expect("write");
        switch.fill_every_block();
        let refused = submit("refused");
        assert!(matches!(refused, Err(Error::Full)), "{refused:?}");
        assert!(!disk.healthy());
        // The writer reopens right after answering; the open cannot write, so fails.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while disk.current().is_ok() {
            assert!(std::time::Instant::now() < deadline, "never closed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(matches!(disk.current(), Err(Error::Unavailable)));
        assert!(!disk.healthy());
        switch.free();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !disk.healthy() {
            assert!(std::time::Instant::now() < deadline, "no recovery");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let db = disk.current().expect("reopened");
        assert!(stored(&db, "before"));
        assert!(!stored(&db, "refused"));
        assert_eq!(submit("after").expect("write"), "after");
    }
}
