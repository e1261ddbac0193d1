//! Backups around the store's snapshots ([`crate::store::backup`]):
//! - scheduled backups owned by the server ([`Scheduler`]: `--backup-dir`, `--backup-every`,
//!   `--backup-keep`), written to a temp name, synced, renamed, the oldest beyond N deleted;
//! - the `forge backup` command ([`BackupArgs`], [`command`]): download `GET /api/backup` from
//!   a running server (`--url`), or copy the file of a stopped one (`--db`).
//!
//! Every file is written as `NAME.tmp` (owner-only), synced, checked to be a redb file and
//! renamed, and the directory synced: a backup either exists whole or not at all.

use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use redb::ReadOnlyDatabase;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::app::App;
use crate::store::Store;
use crate::store::backup::SnapshotError;

/// Prefix and suffix of scheduled backup files: `forge-20261201T150720Z.redb`.
const PREFIX: &str = "forge-";
const SUFFIX: &str = ".redb";

/// The backup file name for `at`: `forge-<UTC time, ISO 8601 basic>.redb` (sorts by time).
#[must_use]
pub fn file_name(at: OffsetDateTime) -> String {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = at
        .to_offset(time::UtcOffset::UTC)
        .format(format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string());
    format!("{PREFIX}{stamp}{SUFFIX}")
}

/// Whether `name` is a scheduled backup's file name (only those are ever pruned).
fn is_backup_name(name: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(PREFIX)
        .and_then(|n| n.strip_suffix(SUFFIX))
    else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// Where the API's temporary snapshot goes: the database's own directory (the disk that must
/// hold the database anyway; `/tmp` is often a small tmpfs).
#[must_use]
pub fn temp_dir(db: &Path) -> PathBuf {
    match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Parses a duration: a number and a unit (`90s`, `30m`, `6h`, `1d`), or several (`1h30m`).
///
/// # Errors
/// A message for clap when the text is not such a duration, or is under a second.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 30m, 6h, 1d or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Why a scheduled backup failed (it is retried at the next tick).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The backup directory could not be created, listed or synced.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Takes one scheduled backup into `dir` as [`file_name`]`(now)`, then deletes the oldest
/// backups beyond `keep`. Blocking. Returns the new file.
///
/// # Errors
/// [`Error`]; the temp file is removed and older backups are left alone.
pub fn take(
    store: &Store,
    dir: &Path,
    keep: usize,
    stop: &AtomicBool,
    now: OffsetDateTime,
) -> Result<PathBuf, Error> {
    create_private_dir(dir)?;
    let name = file_name(now);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = store.snapshot_to(&tmp, stop) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let path = dir.join(&name);
    if let Err(e) = std::fs::rename(&tmp, &path).and_then(|()| sync_dir(dir)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    // The backup is written: failing to delete old ones is worth a warning, not a retry.
    if let Err(e) = prune(dir, keep) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot delete old backups");
    }
    Ok(path)
}

/// Deletes the oldest scheduled backups in `dir` beyond the newest `keep`, and temp files a
/// crash left behind. Other files are never touched.
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut backups = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_backup_name(&name) {
            backups.push(name);
        }
    }
    backups.sort_unstable();
    let excess = backups.len().saturating_sub(keep);
    for name in &backups[..excess] {
        std::fs::remove_file(dir.join(name))?;
        tracing::info!(file = %name, "deleted an old backup");
    }
    Ok(())
}

/// Removes `.forge-*.redb.tmp` files a crashed backup left in `dir`.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp"))
            && is_backup_name(inner)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How long since the newest scheduled backup in `dir` was written (`None`: there is none).
fn newest_age(dir: &Path) -> Option<Duration> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| is_backup_name(&e.file_name().to_string_lossy()))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Syncs a directory, making a rename in it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Lets one backup run at a time, API or scheduled: each holds a copy of the database on disk
/// until it is sent or renamed, so concurrent ones could fill the disk.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

impl Gate {
    /// The right to take a backup now, if no other is running.
    #[must_use]
    pub fn try_enter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }

    /// The right to take a backup, once the one running (if any) is done.
    pub async fn enter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.0).acquire_owned().await.ok()
    }
}

/// The scheduled-backup loop, owned by the server: [`Scheduler::stop`] ends it (abandoning a
/// snapshot in progress) and waits until it has let go of the store.
#[derive(Debug)]
pub struct Scheduler {
    /// Tells a snapshot in progress to stop.
    stop: Arc<AtomicBool>,
    /// Wakes the loop when it waits for the next tick.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The loop.
    task: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    /// Starts the loop when `--backup-dir` and `--backup-every` are set. The first backup is
    /// due one period after the newest one already in the directory (at once if there is
    /// none), so restarts do not skip backups.
    #[must_use]
    pub fn start(app: &App) -> Option<Self> {
        let dir = app.config.backup_dir.clone()?;
        let every = app.config.backup_every?;
        let keep = usize::try_from(app.config.backup_keep)
            .unwrap_or(usize::MAX)
            .max(1);
        let store = app.services.store().clone();
        let gate = app.backups.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (shutdown, mut closed) = tokio::sync::watch::channel(false);
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            remove_stale_temps(&dir);
            let first = every.saturating_sub(newest_age(&dir).unwrap_or(every));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tracing::info!(dir = %dir.display(), ?every, keep, "scheduled backups on");
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = closed.wait_for(|c| *c) => return,
                }
                // Waits for a download in progress; shutdown still ends the wait.
                let permit = tokio::select! {
                    permit = gate.enter() => permit,
                    _ = closed.wait_for(|c| *c) => return,
                };
                let (store, dir, flag) = (store.clone(), dir.clone(), Arc::clone(&flag));
                let started = std::time::Instant::now();
                let taken = tokio::task::spawn_blocking(move || {
                    take(&store, &dir, keep, &flag, OffsetDateTime::now_utc())
                })
                .await;
                drop(permit);
                match taken {
                    Ok(Ok(path)) => tracing::info!(
                        file = %path.display(), elapsed = ?started.elapsed(), "backup written"
                    ),
                    Ok(Err(Error::Snapshot(SnapshotError::Cancelled))) => return,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "scheduled backup failed; retrying at the next tick");
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled backup panicked"),
                }
            }
        });
        Some(Self {
            stop,
            shutdown,
            task,
        })
    }

    /// Stops the loop and waits for it (a snapshot in progress is abandoned, its temp file
    /// removed).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.shutdown.send_replace(true);
        let _ = self.task.await;
    }
}

/// `forge backup`: a backup of a running server over HTTP, or of a stopped server's file.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Base URL of the running server, e.g. `http://127.0.0.1:3000` (plain HTTP).
    #[arg(
        long,
        required_unless_present = "db",
        conflicts_with = "db",
        requires = "token_stdin"
    )]
    pub url: Option<String>,
    /// Read an API token of a system administrator from the first line of standard input.
    #[arg(long)]
    pub token_stdin: bool,
    /// Copy this database file directly instead; the server using it must be stopped.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The backup file to write (written as OUT.tmp, renamed when complete and checked).
    pub out: PathBuf,
}

/// Why `forge backup` failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input; nothing was attempted (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The database file is held by a running server (exit 2).
    #[error(
        "the database {0} is in use by a running Forge server; stop it, or back it up with --url"
    )]
    Locked(String),
    /// The backup could not be taken or written (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code for this failure.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Locked(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

/// Runs `forge backup`: prints what it wrote, or the error; returns the exit code.
pub async fn command(args: BackupArgs) -> ExitCode {
    match run(args).await {
        Ok((out, bytes)) => {
            println!("wrote {} ({bytes} bytes)", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("forge backup: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// [`command`] without the printing: the file written and its size.
///
/// # Errors
/// [`CliError`].
pub async fn run(args: BackupArgs) -> Result<(PathBuf, u64), CliError> {
    let tmp = tmp_path(&args.out);
    let result = match (&args.url, &args.db) {
        (Some(url), None) => {
            let token = read_token()?;
            download(url, &token, &tmp).await
        }
        (None, Some(db)) => {
            let (db, tmp) = (db.clone(), tmp.clone());
            tokio::task::spawn_blocking(move || copy_stopped(&db, &tmp))
                .await
                .map_err(|e| CliError::Failed(e.to_string()))?
        }
        _ => Err(CliError::Usage("give exactly one of --url and --db".into())),
    };
    let finish = |bytes| -> Result<u64, CliError> {
        check_redb(&tmp)?;
        std::fs::rename(&tmp, &args.out)
            .and_then(|()| sync_dir(&temp_dir(&args.out)))
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", args.out.display())))?;
        Ok(bytes)
    };
    match result.and_then(finish) {
        Ok(bytes) => Ok((args.out, bytes)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `OUT.tmp`.
fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn read_token() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("cannot read the token from standard input: {e}")))?;
    let token = line.trim().to_owned();
    if token.is_empty() {
        return Err(CliError::Usage(
            "no API token on standard input (--token-stdin reads its first line)".into(),
        ));
    }
    Ok(token)
}

/// Creates (or truncates) the owner-only temp file.
fn create_tmp(tmp: &Path) -> Result<File, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", tmp.display())))
}

async fn download(url: &str, token: &str, tmp: &Path) -> Result<u64, CliError> {
    let mut file = create_tmp(tmp)?;
    let bytes = crate::http::client::download_backup(url, token, &mut file)
        .await
        .map_err(|e| match e {
            crate::http::client::DownloadError::BadUrl(m) => CliError::Usage(m),
            other => CliError::Failed(other.to_string()),
        })?;
    file.flush()
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", tmp.display())))?;
    Ok(bytes)
}

/// Copies the database file of a stopped server, holding redb's lock meanwhile so that no
/// server can start on it during the copy.
fn copy_stopped(db: &Path, tmp: &Path) -> Result<u64, CliError> {
    let shown = db.display().to_string();
    let lock = match ReadOnlyDatabase::open(db) {
        Ok(lock) => lock,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(CliError::Locked(shown)),
        Err(redb::DatabaseError::RepairAborted) => {
            // Not shut down cleanly: repair it as the server's next start would, then copy.
            tracing::warn!(db = %shown, "the database was not shut down cleanly; repairing it first");
            match redb::Database::open(db) {
                Ok(repaired) => drop(repaired),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(CliError::Locked(shown));
                }
                Err(e) => return Err(CliError::Failed(format!("cannot open {shown}: {e}"))),
            }
            ReadOnlyDatabase::open(db).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => CliError::Locked(shown.clone()),
                e => CliError::Failed(format!("cannot open {shown}: {e}")),
            })?
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if e.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(CliError::Usage(format!("no database file at {shown}")));
        }
        Err(e) => return Err(CliError::Failed(format!("cannot open {shown}: {e}"))),
    };
    let mut out = create_tmp(tmp)?;
    let copied = File::open(db)
        .and_then(|mut src| std::io::copy(&mut src, &mut out))
        .and_then(|n| out.sync_all().map(|()| n))
        .map_err(|e| CliError::Failed(format!("cannot copy {shown}: {e}")))?;
    drop(lock);
    Ok(copied)
}

/// Checks that `path` opens as a redb database with Forge's tables (catches a truncated or
/// foreign file before it replaces a good backup).
fn check_redb(path: &Path) -> Result<(), CliError> {
    let bad = |e: &dyn std::fmt::Display| {
        CliError::Failed(format!("the backup is not a valid Forge database: {e}"))
    };
    let db = ReadOnlyDatabase::open(path).map_err(|e| bad(&e))?;
    let tx = redb::ReadableDatabase::begin_read(&db).map_err(|e| bad(&e))?;
    tx.open_table(crate::store::tables::META)
        .map_err(|e| bad(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, secs) in [
            ("90s", 90),
            ("30m", 1800),
            ("6h", 21_600),
            ("1d", 86_400),
            ("1h30m", 5400),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "6",
            "h",
            "0s",
            "1x",
            "-1s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn names_sort_by_time_and_only_ours_are_pruned() {
        let at = OffsetDateTime::from_unix_timestamp(1_764_601_640).expect("time");
        assert_eq!(file_name(at), "forge-20251201T150720Z.redb");
        assert!(is_backup_name(&file_name(at)));
        for other in [
            "forge.redb",
            "forge-20251201T150720Z.redb.tmp",
            "forge-2025120xT150720Z.redb",
            "my-forge-20251201T150720Z.redb",
        ] {
            assert!(!is_backup_name(other), "{other}");
        }
        let dir = tempfile::tempdir().expect("dir");
        for i in 0..5 {
            let name = file_name(at + Duration::from_secs(i * 3600));
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::write(dir.path().join("notes.txt"), b"keep me").expect("write");
        std::fs::write(
            dir.path().join(".forge-20251201T150720Z.redb.tmp"),
            b"crash",
        )
        .expect("write");
        prune(dir.path(), 2).expect("prune");
        remove_stale_temps(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "forge-20251201T180720Z.redb",
                "forge-20251201T190720Z.redb",
                "notes.txt"
            ]
        );
    }

    #[test]
    fn temp_dir_of_a_bare_file_name_is_the_current_dir() {
        assert_eq!(temp_dir(Path::new("forge.redb")), PathBuf::from("."));
        assert_eq!(
            temp_dir(Path::new("/var/lib/forge/forge.redb")),
            PathBuf::from("/var/lib/forge")
        );
    }
}
