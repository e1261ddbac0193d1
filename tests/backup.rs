//! Online backup and restore (issue 11, point 2):
//! - `GET /api/backup` during a launch storm: the backup is a redb file, and a server started
//!   on it (with the same key file) has every task whose launch was acknowledged before the
//!   backup request began, and none launched after the download ended; without the key file
//!   it refuses to start;
//! - only system administrators may take one (401, 403);
//! - `forge backup --url ... --token-stdin OUT` and `forge backup --db PATH OUT` with the real
//!   binary: good token, wrong token, non-admin token, a db held by a running server (exit 2);
//!   `--db` on the file of a server killed with SIGKILL repairs it first;
//! - scheduled backups (`FORGE_BACKUP_DIR/EVERY/KEEP`): files appear, open as redb with the
//!   data, only the newest N stay, other files are left alone, no temp file remains; a failed
//!   one is logged and retried; bad flags stop the start with exit 2;
//! - one backup at a time (503 + `Retry-After` meanwhile);
//! - the temp snapshot: a client that leaves mid-download frees it; a full disk answers 507
//!   and leaves nothing (on a tiny tmpfs; needs root for `mount`).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{FORGE, ServerProcess};
use common::{ADMIN, ADMIN_PASSWORD, Client, TestServer, at, id_of, new_project, ok_json};
use forge::store::tables;
use redb::{ReadOnlyDatabase, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde_json::json;
use tokio::time::Instant;

/// A script printing many lines, so the database has bulk for the backup to copy.
const BULK_SCRIPT: &str = "#!/usr/bin/env bash\nseq 1 40000\n";
const QUICK_SCRIPT: &str = "#!/usr/bin/env bash\necho quick\n";

/// A project with a local repository and two bash templates: `bulk` and `quick`.
struct Setup {
    p: u64,
    bulk: u64,
    quick: u64,
    _repo: tempfile::TempDir,
}

async fn setup(a: &Client) -> Setup {
    let p = new_project(a, "backups").await;
    let repo = tempfile::tempdir().expect("dir");
    std::fs::write(repo.path().join("bulk.sh"), BULK_SCRIPT).expect("script");
    std::fs::write(repo.path().join("quick.sh"), QUICK_SCRIPT).expect("script");
    let key = id_of(&ok_json(a, &at(p, "keys")).await[0]);
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "local", "project_id": p, "ssh_key_id": key, "git_branch": "",
                   "git_url": repo.path().display().to_string()}),
        )
        .await;
    assert_eq!(r.status, 204, "POST repositories: {}", r.text());
    let repo_id = id_of(&ok_json(a, &at(p, "repositories")).await[0]);
    let mut ids = Vec::new();
    for name in ["bulk", "quick"] {
        let r = a
            .post(
                &at(p, "templates"),
                json!({"name": name, "project_id": p, "app": "bash",
                       "playbook": format!("{name}.sh"), "repository_id": repo_id}),
            )
            .await;
        assert_eq!(r.status, 201, "POST templates: {}", r.text());
        ids.push(id_of(&r.json()));
    }
    Setup {
        p,
        bulk: ids[0],
        quick: ids[1],
        _repo: repo,
    }
}

async fn wait_finished(a: &Client, p: u64, task: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = ok_json(a, &at(p, &format!("tasks/{task}"))).await;
        if matches!(t["status"].as_str(), Some("success" | "error" | "stopped")) {
            assert_eq!(t["status"], "success", "{t}");
            return;
        }
        assert!(Instant::now() < deadline, "task {task} did not finish: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One launch of the storm: when it was sent, when it was acknowledged, the task id.
#[derive(Clone, Copy, Debug)]
struct Launch {
    sent: Instant,
    acked: Instant,
    id: u64,
}

fn row_count(db: &ReadOnlyDatabase, table: redb::TableDefinition<(u64, u64), &[u8]>) -> u64 {
    let tx = db.begin_read().expect("read");
    tx.open_table(table).expect("table").len().expect("len")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_during_a_launch_storm_restores_every_acknowledged_task() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let s = setup(&admin).await;
    // Bulk: the backup takes long enough for launches to land while it runs.
    for _ in 0..3 {
        let r = admin
            .post(&at(s.p, "tasks"), json!({"template_id": s.bulk}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        wait_finished(&admin, s.p, id_of(&r.json())).await;
    }

    let launches = Arc::new(Mutex::new(Vec::<Launch>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut storm = Vec::new();
    for _ in 0..4 {
        let (c, launches, stop, p, quick) =
            (admin.clone(), launches.clone(), stop.clone(), s.p, s.quick);
        storm.push(tokio::spawn(async move {
            // Bounded: at most 600 launches a client, whatever the machine's speed.
            for _ in 0..600 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let sent = Instant::now();
                let r = c.post(&at(p, "tasks"), json!({"template_id": quick})).await;
                assert_eq!(r.status, 201, "launch during the storm: {}", r.text());
                let acked = Instant::now();
                let id = id_of(&r.json());
                launches.lock().unwrap().push(Launch { sent, acked, id });
            }
        }));
    }
    while launches.lock().unwrap().len() < 30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let began = Instant::now();
    let backup = admin.get("/api/backup").await;
    let ended = Instant::now();
    assert_eq!(backup.status, 200, "{}", backup.text());
    // The storm goes on a little after the download, then stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in storm {
        h.await.expect("storm client");
    }
    let launches = launches.lock().unwrap().clone();
    eprintln!(
        "backup: {} bytes in {:?}; launches acknowledged before/during/after it: {}/{}/{}",
        backup.body.len(),
        ended - began,
        launches.iter().filter(|l| l.acked < began).count(),
        launches
            .iter()
            .filter(|l| l.acked > began && l.acked < ended)
            .count(),
        launches.iter().filter(|l| l.sent > ended).count(),
    );

    assert_eq!(
        backup.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        backup.header("content-length"),
        Some(backup.body.len().to_string())
    );
    let disposition = backup.header("content-disposition").expect("disposition");
    assert!(
        disposition.starts_with("attachment; filename=\"forge-")
            && disposition.ends_with("Z.redb\""),
        "{disposition}"
    );
    let during = launches
        .iter()
        .filter(|l| l.acked > began && l.acked < ended)
        .count();
    assert!(
        during > 0,
        "no launch was acknowledged while the backup ran ({:?}): the writer was held",
        ended - began
    );
    // The temp snapshot left no file beside the database.
    let names: Vec<String> = std::fs::read_dir(server.dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("backup") || n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");

    // A valid redb file with the bulk output.
    let restore = tempfile::tempdir().expect("dir");
    let db = restore.path().join("forge.redb");
    std::fs::write(&db, &backup.body).expect("write backup");
    {
        let file = ReadOnlyDatabase::open(&db).expect("the backup is a redb file");
        assert!(row_count(&file, tables::PROJECT_TEMPLATE) >= 2);
        let tx = file.begin_read().expect("read");
        let output = tx.open_table(tables::OUTPUT_CHUNK).expect("output");
        let lines: usize = output
            .iter()
            .expect("chunks")
            .map(|row| {
                let chunk = row.expect("chunk").1;
                forge::store::output::decode_chunk(chunk.value())
                    .expect("a chunk")
                    .len()
            })
            .sum();
        assert!(lines >= 3 * 40_000, "{lines} lines");
    }

    // Without its key file the restored server refuses to start (secrets would not open).
    let mut config = forge::Config::with_db(db.clone());
    config.scrypt_log_n = 4;
    let refused = forge::App::start(config).await;
    assert!(refused.is_err(), "started without the key file");
    std::fs::remove_file(restore.path().join("forge.redb.key")).ok();
    std::fs::copy(
        server.dir.path().join("forge.redb.key"),
        restore.path().join("forge.redb.key"),
    )
    .expect("copy the key file");
    // The offline audit passes on it: every record decodes, every index matches its table and
    // the key opens every secret.
    let audit = Command::new(FORGE)
        .args(["check", "--db"])
        .arg(&db)
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .output()
        .expect("run forge check");
    assert!(
        audit.status.success(),
        "forge check on the backup: {}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    drop(admin);
    let _first = server.stop().await;

    let restored = TestServer::start_in(restore, |_| {}).await;
    let admin = restored.admin().await;
    let mut missing = Vec::new();
    let mut absent_checked = 0;
    for l in &launches {
        let r = admin.get(&at(s.p, &format!("tasks/{}", l.id))).await;
        if l.acked < began && r.status != 200 {
            missing.push((l.id, r.status));
        }
        if l.sent > ended {
            let why = r.assert_error(400);
            assert!(
                why.contains("not found"),
                "task {} was launched after the backup ended: {why}",
                l.id
            );
            absent_checked += 1;
        }
    }
    assert!(
        missing.is_empty(),
        "acknowledged before the backup began, missing from it: {missing:?}"
    );
    assert!(
        launches.iter().filter(|l| l.acked < began).count() >= 30,
        "precondition: launches before the backup"
    );
    assert!(
        absent_checked > 0,
        "precondition: launches after the backup"
    );
}

#[tokio::test]
async fn only_administrators_take_backups() {
    let server = TestServer::start().await;
    server.client().get("/api/backup").await.assert_error(401);
    let bad = server.client().with_bearer("not-a-token");
    bad.get("/api/backup").await.assert_error(401);
    let (_, user) = server.user("plain", false).await;
    user.get("/api/backup").await.assert_error(403);
    let admin = server.admin().await;
    admin.post("/api/backup", json!({})).await.assert_error(405);
    let ok = admin.get("/api/backup").await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.len() > 4096, "{} bytes", ok.body.len());
}

/// Runs `forge backup ARGS` with `stdin` on its standard input.
fn forge_backup(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(FORGE)
        .arg("backup")
        .args(args)
        .env("FORGE_LOG", "warn")
        .env_remove("FORGE_DB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn forge backup");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("forge backup")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every user login in a Forge database file.
fn logins(db: &Path) -> Vec<String> {
    let file = ReadOnlyDatabase::open(db).expect("a redb file");
    let tx = file.begin_read().expect("read");
    let t = tx.open_table(tables::USERNAME_USERID).expect("users");
    redb::ReadableTable::iter(&t)
        .expect("iter")
        .map(|r| r.expect("row").0.value().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backup_command_online_and_offline() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("forge.redb");
    let server = ServerProcess::start(&db, &[]);
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = admin.new_token().await;
    let r = admin
        .post(
            "/api/users",
            json!({"name": "op", "username": "op", "email": "op@example.com",
                   "password": "pw-of-user", "admin": false}),
        )
        .await;
    assert_eq!(r.status, 201);
    let mut op = server.client();
    assert_eq!(op.login("op", "pw-of-user").await.status, 204);
    let op_token = op.new_token().await;
    let url = format!("http://{}", server.addr);
    let out_dir = tempfile::tempdir().expect("dir");
    let out = out_dir.path().join("online.redb");
    let out_s = out.to_str().expect("utf-8");

    let good = forge_backup(
        &["--url", &url, "--token-stdin", out_s],
        &format!("{token}\n"),
    );
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(
        text(&good.stdout).contains("wrote"),
        "{}",
        text(&good.stdout)
    );
    assert_eq!(logins(&out), ["admin", "op"]);
    assert!(!out_dir.path().join("online.redb.tmp").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).expect("out").permissions().mode();
    assert_eq!(mode & 0o077, 0, "a backup is owner-only: {mode:o}");

    // Refusals: a clear message, a non-zero exit, nothing written.
    let cases: [(&[&str], String, i32, &[&str]); 6] = [
        (
            &["--url", &url, "--token-stdin"],
            "wrong-token\n".into(),
            1,
            &["401", "token"],
        ),
        (
            &["--url", &url, "--token-stdin"],
            format!("{op_token}\n"),
            1,
            &["403", "administrator"],
        ),
        (
            &["--url", &url, "--token-stdin"],
            "\n".into(),
            2,
            &["no API token"],
        ),
        (
            &["--url", "https://example.com", "--token-stdin"],
            format!("{token}\n"),
            2,
            &["https"],
        ),
        (
            &["--url", "http://127.0.0.1:1", "--token-stdin"],
            format!("{token}\n"),
            1,
            &["cannot reach"],
        ),
        (
            &["--db", db.to_str().expect("utf-8")],
            String::new(),
            2,
            &["in use"],
        ),
    ];
    for (args, stdin, code, words) in cases {
        let failed_out = out_dir.path().join("failed.redb");
        let mut all: Vec<&str> = args.to_vec();
        all.push(failed_out.to_str().expect("utf-8"));
        let r = forge_backup(&all, &stdin);
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err:?}");
        }
        assert!(!failed_out.exists(), "{args:?} wrote a file");
        assert!(
            !out_dir.path().join("failed.redb.tmp").exists(),
            "{args:?} left a temp file"
        );
    }

    // Offline: once the server is stopped, --db copies the file directly.
    let _ = server.terminate();
    let offline = out_dir.path().join("offline.redb");
    let r = forge_backup(
        &[
            "--db",
            db.to_str().expect("utf-8"),
            offline.to_str().expect("utf-8"),
        ],
        "",
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(logins(&offline), ["admin", "op"]);

    // Restore = the backup as the database file, with the key file beside it.
    let restore = tempfile::tempdir().expect("dir");
    let restored_db = restore.path().join("forge.redb");
    std::fs::copy(&out, &restored_db).expect("restore");
    std::fs::copy(
        dir.path().join("forge.redb.key"),
        restore.path().join("forge.redb.key"),
    )
    .expect("key");
    let server = ServerProcess::start(&restored_db, &[]);
    let c = server.client().with_bearer(&token);
    let me = ok_json(&c, "/api/user").await;
    assert_eq!(me["username"], ADMIN);
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_appear_and_only_the_newest_are_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("forge.redb");
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).expect("mkdir");
    std::fs::write(backups.join("notes.txt"), b"not ours").expect("write");
    let server = ServerProcess::start(
        &db,
        &[
            ("FORGE_BACKUP_DIR", backups.to_str().expect("utf-8")),
            ("FORGE_BACKUP_EVERY", "1s"),
            ("FORGE_BACKUP_KEEP", "2"),
        ],
    );
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let p = new_project(&admin, "scheduled").await;
    let written = |log: &[u8]| text(log).matches("backup written").count();
    let after_project = written(&server.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(&server.log()) < after_project + 4 {
        assert!(
            Instant::now() < deadline,
            "no scheduled backups: {}",
            text(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = server.stop();
    assert!(
        !text(&log).contains("scheduled backup failed"),
        "{}",
        text(&log)
    );

    let mut names: Vec<String> = std::fs::read_dir(&backups)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        3,
        "two backups and the foreign file: {names:?}"
    );
    assert_eq!(names[2], "notes.txt");
    for name in &names[..2] {
        assert!(
            name.starts_with("forge-") && name.ends_with("Z.redb") && name.len() == 27,
            "{name}"
        );
        let file = ReadOnlyDatabase::open(backups.join(name)).expect("a redb file");
        let tx = file.begin_read().expect("read");
        let projects = tx.open_table(tables::PROJECTID_PROJECT).expect("projects");
        assert!(
            projects.get(p).expect("get").is_some(),
            "{name} lacks the project"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_scheduled_backup_is_logged_and_retried() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("forge.redb");
    // The backup "directory" is a file: every backup fails until it is a directory.
    let backups = dir.path().join("backups");
    std::fs::write(&backups, b"in the way").expect("write");
    let server = ServerProcess::start(
        &db,
        &[
            ("FORGE_BACKUP_DIR", backups.to_str().expect("utf-8")),
            ("FORGE_BACKUP_EVERY", "1s"),
        ],
    );
    let wait_for = |what: &'static str| {
        let log = || text(&server.log());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !log().contains(what) {
                assert!(Instant::now() < deadline, "no {what:?} in:\n{}", log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for("scheduled backup failed").await;
    assert_eq!(server.client().get("/api/ping").await.status, 200);
    std::fs::remove_file(&backups).expect("rm");
    std::fs::create_dir(&backups).expect("mkdir");
    wait_for("backup written").await;
    assert_eq!(server.client().get("/api/ping").await.status, 200);
    let written = std::fs::read_dir(&backups).expect("ls").count();
    assert!(written >= 1, "{written}");
}

/// Unmounts a tmpfs when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_backup_without_disk_space_answers_507_and_leaves_nothing() {
    // The database's directory is a tiny tmpfs holding only a link to the database: the
    // snapshot goes there and cannot fit.
    let mnt = tempfile::tempdir().expect("dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(mnt.path())
        .output();
    let ok = matches!(&mounted, Ok(o) if o.status.success());
    if !common::tools::ready(
        "the full-disk backup test",
        &(if ok {
            vec![]
        } else {
            vec![format!("mount -t tmpfs (as root): {mounted:?}")]
        }),
    ) {
        return;
    }
    let _umount = Mounted(mnt.path().to_owned());
    let real = tempfile::tempdir().expect("dir");
    let server = TestServer::start_in(real, |_| {}).await;
    let admin = server.admin().await;
    let s = setup(&admin).await;
    let r = admin
        .post(&at(s.p, "tasks"), json!({"template_id": s.bulk}))
        .await;
    wait_finished(&admin, s.p, id_of(&r.json())).await;
    let dir = server.stop().await;
    let link = mnt.path().join("forge.redb");
    std::os::unix::fs::symlink(dir.path().join("forge.redb"), &link).expect("symlink");
    let (key, work) = (dir.path().join("forge.redb.key"), dir.path().join("work"));
    let server = TestServer::start_in(dir, |c| {
        c.db = link.clone();
        c.secret_key_file = Some(key.clone());
        c.work_dir = Some(work.clone());
    })
    .await;
    let admin = server.admin().await;
    let r = admin.get("/api/backup").await;
    let why = r.assert_error(507);
    assert!(why.contains("disk space"), "{why}");
    let left: Vec<_> = std::fs::read_dir(mnt.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("forge.redb")],
        "left behind"
    );
    // The server goes on.
    assert_eq!(ok_json(&admin, "/api/user").await["username"], ADMIN);
}

#[test]
fn scheduled_backup_flags_are_checked_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("forge.redb");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("FORGE_BACKUP_DIR", "/tmp/x")], "--backup-every"),
        (&[("FORGE_BACKUP_EVERY", "1h")], "--backup-dir"),
        (
            &[
                ("FORGE_BACKUP_DIR", "/tmp/x"),
                ("FORGE_BACKUP_EVERY", "soon"),
            ],
            "not a duration",
        ),
        (
            &[
                ("FORGE_BACKUP_DIR", "/tmp/x"),
                ("FORGE_BACKUP_EVERY", "1h"),
                ("FORGE_BACKUP_KEEP", "0"),
            ],
            "--backup-keep",
        ),
    ];
    for (envs, words) in cases {
        let out = common::process::forge_serve(&db, envs)
            .output()
            .expect("forge serve");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{envs:?}: {err}");
        assert!(err.contains(words), "{envs:?}: {words:?} not in {err}");
    }
    assert!(!db.exists(), "a refused start touched the database");
}

/// Open file handles of this process on a backup temp file in `dir` (they show as
/// `(deleted)`); other tests' servers in this process use other dirs.
fn open_temp_snapshots(dir: &Path) -> usize {
    let prefix = dir.join(".forge-backup-");
    let prefix = prefix.to_string_lossy();
    std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(&*prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_backup_at_a_time_and_a_download_cut_short_frees_the_temp_file() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let token = admin.new_token().await;
    let s = setup(&admin).await;
    // A database well larger than what the socket buffers (a few MiB on loopback) and the
    // stream's channel hold, so the download cannot finish while the client does not read.
    let db_len = || std::fs::metadata(server.db_path()).map_or(0, |m| m.len());
    for _ in 0..40 {
        if db_len() >= 12 << 20 {
            break;
        }
        let r = admin
            .post(&at(s.p, "tasks"), json!({"template_id": s.bulk}))
            .await;
        wait_finished(&admin, s.p, id_of(&r.json())).await;
    }
    assert!(
        db_len() >= 12 << 20,
        "the database did not grow: {}",
        db_len()
    );
    let dir = server.dir.path();
    // The server sends into the socket; this client reads the head and a little, then leaves.
    // A fixed small receive buffer: loopback would otherwise grow it to tens of MiB and take
    // the whole file before the check below.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let mut conn = socket.connect(server.addr).await.expect("connect");
    conn.write_all(
        format!("GET /api/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send");
    let mut head = vec![0; 4096];
    let n = conn.read(&mut head).await.expect("read");
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        open_temp_snapshots(dir),
        1,
        "precondition: the download is in flight while the client does not read"
    );
    // Another backup meanwhile is refused, with a hint when to retry.
    let busy = admin.get("/api/backup").await;
    let why = busy.assert_error(503);
    assert!(why.contains("another backup"), "{why}");
    assert_eq!(busy.header("retry-after").as_deref(), Some("10"));
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(15);
    while open_temp_snapshots(dir) > 0 {
        assert!(
            Instant::now() < deadline,
            "the temp snapshot is still open after the client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("backup"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The server goes on, and the next backup (the gate is free again) is whole.
    let r = admin.get("/api/backup").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offline_copy_of_a_crashed_server_s_file_is_repaired_first() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("forge.redb");
    let server = ServerProcess::start(&db, &[]);
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    new_project(&admin, "before the crash").await;
    server.kill_9();
    let out = dir.path().join("copy.redb");
    let r = forge_backup(
        &[
            "--db",
            db.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
        ],
        "",
    );
    let err = text(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("not shut down cleanly"), "{err}");
    let file = ReadOnlyDatabase::open(&out).expect("a clean redb file");
    let tx = file.begin_read().expect("read");
    let projects = tx.open_table(tables::PROJECTID_PROJECT).expect("projects");
    assert_eq!(projects.len().expect("len"), 1);
}
