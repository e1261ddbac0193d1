//! Online backup of a big database (issue 11): how long does a snapshot take, and how big is
//! it, when the database holds 1 M task output lines? And does it hold the writer: how long
//! does a durable write wait while a snapshot runs?
//!
//! `cargo bench --bench backup` builds a database of 100 tasks × 10 000 output lines of ~90
//! bytes (kept in `target/`), then takes 3 snapshots with `Store::snapshot_to` (what `GET
//! /api/backup` and scheduled backups run; the API then only streams the file) while a thread
//! keeps committing durable writes, and prints the times, the sizes of the database and of the
//! backup, and the write latencies (p50/p99/max) during the snapshots and, as a baseline, for 2 s
//! before them with no snapshot running. Under `cargo test` (no `--bench`
//! argument) it runs once on 10 k lines as a smoke check. Figures are printed, never asserted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use forge::model::{OutputLine, Project, Task, TaskStatus};
use forge::store::Store;

/// Output lines per task.
const LINES_PER_TASK: u64 = 10_000;
/// Lines written per transaction while building the database.
const CHUNK: u64 = 50_000;

fn task() -> Task {
    Task {
        status: TaskStatus::Success,
        playbook: "site.yml".into(),
        user_id: Some(1),
        start: Some(1_747_794_913),
        end: Some(1_747_794_920),
        message: "bench".into(),
        ..Task::waiting(1, 1, 1_747_794_912)
    }
}

/// A typical ansible output line (~90 bytes).
fn line(n: u64) -> OutputLine {
    OutputLine {
        time_us: 1_747_794_913_000_000 + i64::try_from(n).unwrap_or(0),
        text: format!(
            "ok: [web-{:02}.example.internal] => (item=package-{n}) TASK [common : install] ****",
            n % 50
        ),
    }
}

/// Writes a database with `lines` output lines (in tasks of [`LINES_PER_TASK`]) at `path`.
fn build(path: &Path, lines: u64) {
    let store = Store::open(path).expect("open store");
    store
        .transact(0, |tx| {
            let mut project = Project {
                id: 0,
                name: "bench".into(),
                created: 0,
                alert: false,
                alert_chat: None,
                max_parallel_tasks: 0,
                kind: String::new(),
            };
            tx.insert_project(&mut project)?;
            Ok::<_, forge::store::Error>(())
        })
        .expect("project");
    let tasks = lines.div_ceil(LINES_PER_TASK);
    for _ in 0..tasks {
        let id = store
            .transact(0, |tx| {
                let mut t = task();
                tx.insert_task(&mut t)?;
                Ok::<_, forge::store::Error>(t.id)
            })
            .expect("task");
        let mut first = 0;
        while first < LINES_PER_TASK {
            let n = CHUNK.min(LINES_PER_TASK - first);
            let batch: Vec<OutputLine> = (first..first + n).map(line).collect();
            store
                .transact(0, move |tx| {
                    tx.append_output(id, first, &batch)?;
                    Ok::<_, forge::store::Error>(())
                })
                .expect("output");
            first += n;
        }
    }
}

fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / (1024.0 * 1024.0);
    format!("{m:.1} MiB")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (lines, runs) = if full { (1_000_000, 3) } else { (10_000, 1) };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("backup-bench-{lines}"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let db = dir.join("forge.redb");
    if !db.exists() {
        let started = Instant::now();
        let partial = dir.join("building.redb");
        let _ = std::fs::remove_file(&partial);
        build(&partial, lines);
        std::fs::rename(&partial, &db).expect("rename");
        println!(
            "built a database of {lines} output lines in {:?}",
            started.elapsed()
        );
    }
    let store = Store::open(&db).expect("open");
    let db_size = std::fs::metadata(&db).expect("db").len();

    // Baseline: the same writes with no snapshot running.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&store, &stop);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let baseline = writer.join().expect("writer");
    report("durable writes, no snapshot running", baseline);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&store, &stop);

    let mut times = Vec::new();
    let mut size = 0;
    for run in 0..runs {
        let out = dir.join(format!("backup-{run}.redb"));
        let _ = std::fs::remove_file(&out);
        let started = Instant::now();
        let snap = store
            .snapshot_to(&out, &AtomicBool::new(false))
            .expect("snapshot");
        times.push(started.elapsed());
        size = snap.bytes;
        println!(
            "snapshot {run}: {:?}, {} rows, {} tables, {}",
            started.elapsed(),
            snap.rows,
            snap.tables,
            mib(snap.bytes)
        );
        std::fs::remove_file(&out).expect("remove");
    }
    stop.store(true, Ordering::Relaxed);
    report(
        "durable writes during the snapshots",
        writer.join().expect("writer"),
    );
    times.sort_unstable();
    println!(
        "backup of {lines} output lines: median {:?} (of {runs}); database {}, backup {}",
        times[times.len() / 2],
        mib(db_size),
        mib(size)
    );
}

/// A thread that keeps committing durable writes until `stop`, timing each.
fn spawn_writer(store: &Store, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Duration>> {
    let (store, stop) = (store.clone(), Arc::clone(stop));
    std::thread::spawn(move || {
        let mut waits = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            store
                .set_setting(&format!("bench-{}", i % 100), &i.to_le_bytes())
                .expect("write");
            waits.push(started.elapsed());
            i += 1;
        }
        waits
    })
}

/// Prints the count and p50/p99/max of `waits`.
fn report(what: &str, mut waits: Vec<Duration>) {
    waits.sort_unstable();
    let pick = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((waits.len() as f64 - 1.0) * q) as usize;
        waits.get(i).copied().unwrap_or(Duration::ZERO)
    };
    println!(
        "{what}: {} — p50 {:?}, p99 {:?}, max {:?}",
        waits.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
}
