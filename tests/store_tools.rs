//! The offline tools on a stopped server's database file: `forge check` (exit 0 on a sound
//! file, 1 with a report on a damaged one, 2 when the file is in use) and `forge compact`
//! (sizes before and after; refused while a server runs).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::process::{FORGE, ServerProcess};

/// A copy of the v1 upgrade fixture (every record type) in a fresh temp dir.
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    for file in ["forge.redb", "forge.redb.key"] {
        std::fs::copy(from.join(file), dir.path().join(file)).expect("copy");
    }
    let db = dir.path().join("forge.redb");
    (dir, db)
}

fn forge(args: &[&str], db: &Path) -> Output {
    Command::new(FORGE)
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .env_remove("FORGE_DB")
        .output()
        .expect("run forge")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_passes_a_sound_file_and_reports_a_damaged_one() {
    let (_dir, db) = fixture_copy();
    let out = forge(&["check"], &db);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = text(&out);
    for line in [
        "users ",
        "task_output ",
        "sealed secrets opened",
        "no problems found",
    ] {
        assert!(report.contains(line), "{line:?} in {report}");
    }

    // Damage: drop a user's username index row and leave output of a task that is gone.
    {
        let file = redb::Database::create(&db).expect("open");
        let tx = file.begin_write().expect("write");
        {
            let mut names = tx
                .open_table(forge::store::tables::USERNAME_USERID)
                .expect("index");
            assert!(names.remove("manager").expect("remove").is_some());
            let line = forge::store::codec::encode(&forge::model::OutputLine {
                time_us: 0,
                text: "left behind".into(),
            });
            tx.open_table(forge::store::tables::TASK_OUTPUT)
                .expect("output")
                .insert((999, 0), line.as_slice())
                .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let out = forge(&["check"], &db);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("2 problem(s)"), "{report}");
    assert!(
        report.contains(r#"users_by_username: ("manager", "#)
            && report.contains("missing from the index"),
        "{report}"
    );
    assert!(report.contains("line(s) of task 999"), "{report}");

    // Without the key file, the secrets cannot be vouched for.
    let (_dir, db) = fixture_copy();
    std::fs::remove_file(db.with_extension("redb.key")).expect("remove key");
    let out = forge(&["check"], &db);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no server key given"), "{}", text(&out));
}

#[test]
fn check_and_compact_refuse_a_file_in_use_or_missing() {
    let (dir, db) = fixture_copy();
    let server = ServerProcess::start(&db, &[]);
    for tool in ["check", "compact"] {
        let out = forge(&[tool], &db);
        assert_eq!(out.status.code(), Some(2), "{tool}: {}", text(&out));
        assert!(text(&out).contains("in use"), "{tool}: {}", text(&out));
    }
    drop(server);
    for tool in ["check", "compact"] {
        let out = forge(&[tool], &dir.path().join("nope.redb"));
        assert_eq!(out.status.code(), Some(2), "{tool}: {}", text(&out));
        assert!(
            !dir.path().join("nope.redb").exists(),
            "{tool} created a file"
        );
    }
}

#[tokio::test]
async fn compact_shrinks_a_file_with_deleted_records_and_keeps_the_rest() {
    let (_dir, db) = fixture_copy();
    // Grow the file, then delete most of it (a stopped task's output, as retention would).
    let server = ServerProcess::start(&db, &[]);
    assert_eq!(server.client().get("/api/ping").await.status, 200);
    drop(server.stop());
    {
        let file = redb::Database::create(&db).expect("open");
        let line = forge::store::codec::encode(&forge::model::OutputLine {
            time_us: 0,
            text: "x".repeat(500),
        });
        let tx = file.begin_write().expect("write");
        {
            let mut out = tx
                .open_table(forge::store::tables::TASK_OUTPUT)
                .expect("output");
            for n in 1000..11_000 {
                out.insert((1, n), line.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
        let tx = file.begin_write().expect("write");
        tx.open_table(forge::store::tables::TASK_OUTPUT)
            .expect("output")
            .retain(|(_, n), _| n < 1000)
            .expect("delete");
        tx.commit().expect("commit");
    }
    let before = std::fs::metadata(&db).expect("size").len();
    let out = forge(&["compact"], &db);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let after = std::fs::metadata(&db).expect("size").len();
    assert!(after < before / 2, "{before} -> {after}");
    assert!(
        report.contains(&format!("{before} bytes before, {after} bytes after")),
        "{report}"
    );
    let out = forge(&["check"], &db);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
