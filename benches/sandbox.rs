//! What the task sandbox costs per process: starting `true` directly against starting it
//! through `forge sandbox-exec` with the rules a task gets (the system, `PATH`, its workspace
//! and home). Every task process (the app, each git command) pays this once.
//!
//! `cargo bench --bench sandbox` measures; `cargo test --all-targets` runs each bench once.

use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use forge::config::Config;
use forge::sandbox::{Jail, SUBCOMMAND};

/// The binary whose `sandbox-exec` wraps task processes.
const FORGE: &str = env!("CARGO_BIN_EXE_forge");

fn run(cmd: &mut Command) {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the program");
    assert!(status.success(), "{cmd:?}: {status}");
}

fn launch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (workspace, home) = (dir.path().join("ws"), dir.path().join("home"));
    std::fs::create_dir_all(&workspace).expect("workspace");
    std::fs::create_dir_all(&home).expect("home");
    let mut config = Config::with_db(dir.path().join("forge.redb"));
    config.sandbox_exe = Some(FORGE.into());
    let jail = Jail::new(&config).expect("a jail");
    let mut group = c.benchmark_group("launch");
    group.bench_function("direct", |b| b.iter(|| run(&mut Command::new("true"))));
    if !jail.enforced() {
        eprintln!("SKIPPED: sandboxed launch: no Landlock on this kernel");
        return;
    }
    let wrapped = || {
        let mut cmd = Command::new(FORGE);
        cmd.arg(SUBCOMMAND);
        for rw in [&workspace, &home] {
            cmd.arg("--rw").arg(rw);
        }
        for ro in jail.read_only() {
            cmd.arg("--ro").arg(ro);
        }
        cmd.args(["--", "true"]);
        cmd
    };
    group.bench_function("sandboxed", |b| b.iter(|| run(&mut wrapped())));
    group.finish();
}

criterion_group!(benches, launch);
criterion_main!(benches);
