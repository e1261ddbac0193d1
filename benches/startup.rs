//! Start-up with a big database (issue 6): how long from starting `forge serve` to the first
//! answered `GET /api/ping` when the database holds 1 M tasks, a few of them left `running`
//! by a crash? Start-up must not scan the task table: crash recovery reads the index of active
//! tasks only, so the time should not grow with the number of tasks.
//!
//! `cargo bench --bench startup` builds a 1 M-task database once (kept in `target/`, copied
//! fresh for each start so every start has tasks to recover) and times 5 starts of the real
//! binary. Under `cargo test` (no `--bench` argument) it runs once on 10 k tasks as a smoke
//! check. Times are printed, never asserted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use forge::model::{Project, Task, TaskStatus};
use forge::store::Store;

/// Tasks written per transaction while building the database.
const CHUNK: u64 = 20_000;
/// Tasks left `running` (recovered at each start).
const INTERRUPTED: u64 = 5;

fn task(status: TaskStatus) -> Task {
    Task {
        status,
        playbook: "site.yml".into(),
        user_id: Some(1),
        start: Some(1_747_794_913),
        end: Some(1_747_794_920),
        message: "bench".into(),
        ..Task::waiting(1, 1, 1_747_794_912)
    }
}

/// Writes a database of `tasks` finished tasks (plus [`INTERRUPTED`] running ones) at `path`.
fn build(path: &Path, tasks: u64) {
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
    let mut written = 0;
    while written < tasks {
        let n = CHUNK.min(tasks - written);
        store
            .transact(0, move |tx| {
                for _ in 0..n {
                    tx.insert_task(&mut task(TaskStatus::Success))?;
                }
                Ok::<_, forge::store::Error>(())
            })
            .expect("tasks");
        written += n;
    }
    store
        .transact(0, |tx| {
            for _ in 0..INTERRUPTED {
                tx.insert_task(&mut task(TaskStatus::Running))?;
            }
            Ok::<_, forge::store::Error>(())
        })
        .expect("running tasks");
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Whether `GET /api/ping` answers 200 at `addr`.
fn pong(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /api/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Starts the binary on `db` and returns the time to the first answered ping.
fn time_start(db: &Path) -> Duration {
    let addr = free_port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["serve", "--listen", &addr.to_string()])
        .env("FORGE_DB", db)
        .env("FORGE_LOG", "warn")
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_ADMIN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn forge serve");
    while !pong(addr) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "forge serve did not answer within 30 s"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("forge serve exited: {status}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let tasks: u64 = if full { 1_000_000 } else { 10_000 };
    let runs = if full { 5 } else { 1 };
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        // Named by format too: a file of an older format would be upgraded (copied and
        // migrated) at every start, which is not what a restart costs.
        .join(format!(
            "startup-bench-{tasks}-v{}.redb",
            forge::store::migrate::CURRENT
        ));
    if !cache.exists() {
        let building = cache.with_extension("building");
        let _ = std::fs::remove_file(&building);
        let t = Instant::now();
        build(&building, tasks);
        std::fs::rename(&building, &cache).expect("keep the database");
        println!(
            "startup: built {tasks} tasks ({} MB) in {:.1} s",
            std::fs::metadata(&cache).map_or(0, |m| m.len() >> 20),
            t.elapsed().as_secs_f64()
        );
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("forge.redb");
        std::fs::copy(&cache, &db).expect("copy the database");
        // On disk before the clock starts: redb's first fdatasync would otherwise flush the
        // whole fresh copy from the page cache (~45 ms for 136 MB), which a restarted server
        // on an existing file never pays.
        std::fs::File::open(&db)
            .and_then(|f| f.sync_all())
            .expect("sync the copy");
        times.push(time_start(&db));
    }
    times.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    println!(
        "startup: first /api/ping with {tasks} tasks ({INTERRUPTED} recovered): min {:.1} ms, median {:.1} ms, max {:.1} ms over {runs} starts",
        ms(&times[0]),
        ms(&times[times.len() / 2]),
        ms(&times[times.len() - 1])
    );
}
