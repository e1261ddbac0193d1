//! The offline tools on a stopped server's database file: `forge check` (exit 0 on a sound
//! file, 1 with a report on a damaged one, 2 when the file is in use) and `forge compact`
//! (sizes before and after; refused while a server runs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::process::ServerProcess;

/// A copy of the v1 upgrade fixture (every record type) in a fresh temp dir.
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    for file in ["forge.redb", "forge.redb.key"] {
        std::fs::copy(from.join(file), dir.path().join(file)).expect("copy");
        // git keeps no mode bits but the executable one: the key must be private again.
        std::fs::set_permissions(
            dir.path().join(file),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod 600");
    }
    let db = dir.path().join("forge.redb");
    (dir, db)
}

fn forge(args: &[&str], db: &Path) -> Output {
    common::process::forge_offline(args, db)
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
        "task_output_chunks ",
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
            let line = forge::store::codec::encode(&vec![forge::model::OutputLine {
                time_us: 0,
                text: "left behind".into(),
            }]);
            tx.open_table(forge::store::tables::OUTPUT_CHUNK)
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
        let line = forge::model::OutputLine {
            time_us: 0,
            text: "x".repeat(500),
        };
        let chunk = forge::store::codec::encode(&vec![line; 10]);
        let tx = file.begin_write().expect("write");
        {
            let mut out = tx
                .open_table(forge::store::tables::OUTPUT_CHUNK)
                .expect("output");
            for n in (1000..11_000).step_by(10) {
                out.insert((1, n), chunk.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
        let tx = file.begin_write().expect("write");
        tx.open_table(forge::store::tables::OUTPUT_CHUNK)
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

/// Runs a bash template `script.sh` of project `p` once, to the end; returns the task id.
async fn run_once(a: &common::Client, p: u64, dir: &Path, name: &str) -> u64 {
    use common::{at, id_of};
    use serde_json::json;
    std::fs::write(dir.join("script.sh"), "echo one\necho two\n").expect("script");
    let keys = a.get(&at(p, "keys")).await.json();
    let none = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["type"] == "none"))
        .map(id_of)
        .expect("none key");
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": name, "project_id": p, "git_url": dir, "git_branch": "main",
                   "ssh_key_id": none}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repos = a.get(&at(p, "repositories")).await.json();
    let repo = repos
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .map(id_of)
        .expect("repo");
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": name, "project_id": p, "app": "bash", "playbook": "script.sh",
                   "repository_id": repo, "type": "build", "start_version": "1.0.0"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let tpl = id_of(&r.json());
    let r = a.post(&at(p, "tasks"), json!({ "template_id": tpl })).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let t = id_of(&r.json());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while a.get(&at(p, &format!("tasks/{t}"))).await.json()["status"] != "success" {
        assert!(
            std::time::Instant::now() < deadline,
            "task {t} did not succeed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    t
}

/// No false alarms: a file that went through every kind of deletion the server does is clean.
#[tokio::test]
async fn check_finds_nothing_wrong_after_deletions_through_the_api() {
    use common::{at, id_of, new_project};
    use serde_json::json;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("forge.redb");
    let scripts = tempfile::tempdir().expect("scripts");
    let server = ServerProcess::start(&db, &[]);
    let mut a = server.client();
    assert_eq!(
        a.login(common::ADMIN, common::ADMIN_PASSWORD).await.status,
        204
    );
    let r = a
        .post(
            "/api/users",
            json!({"name": "Gone", "username": "gone", "email": "gone@example.com",
                   "password": "pw-of-gone", "admin": false}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let gone = id_of(&r.json());
    let mut g = server.client();
    assert_eq!(g.login("gone", "pw-of-gone").await.status, 204);
    let _ = g.new_token().await;
    let token = a.new_token().await;
    assert_eq!(
        a.delete(&format!("/api/user/tokens/{token}")).await.status,
        204
    );

    let kept = new_project(&a, "kept").await;
    let r = a
        .post(
            &at(kept, "users"),
            json!({"user_id": gone, "role": "task_runner"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let t = run_once(&a, kept, scripts.path(), "first").await;
    run_once(&a, kept, scripts.path(), "second").await;
    assert_eq!(a.delete(&at(kept, &format!("tasks/{t}"))).await.status, 204);
    // A build template with a recorded build version, deleted.
    let t = run_once(&a, kept, scripts.path(), "fourth").await;
    let task = a.get(&at(kept, &format!("tasks/{t}"))).await.json();
    let tpl = task["template_id"].as_u64().expect("template id");
    assert_eq!(
        a.delete(&at(kept, &format!("templates/{tpl}")))
            .await
            .status,
        204
    );

    let doomed = new_project(&a, "doomed").await;
    run_once(&a, doomed, scripts.path(), "third").await;
    assert_eq!(
        a.delete(&format!("/api/project/{doomed}")).await.status,
        204
    );
    assert_eq!(a.delete(&format!("/api/users/{gone}")).await.status, 204);
    assert_eq!(
        a.raw("POST", "/api/auth/logout", None, &[]).await.status,
        204
    );
    drop(server.stop());

    let out = forge(&["check"], &db);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
