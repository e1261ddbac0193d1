//! `forge key rotate` on a database holding every kind of secret: an ssh key, a
//! login_password key, environment secrets of both types, an environment vault password and a
//! task's secret extra vars. After the rotation the new key opens every one of them (a task
//! still sees its secrets; the library decrypts each key), the old key opens none, and the
//! refusals (wrong key, an `.old` left over, a running server) change nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::process::{FORGE, ServerProcess};
use common::{ADMIN, ADMIN_PASSWORD, at, id_of};
use forge::config::Config;
use forge::model::{AccessKey, Environment};
use forge::service::Services;
use forge::service::secrets::Cipher;
use forge::store::Store;
use serde_json::{Value, json};

const SSH_PRIVATE: &str =
    "-----BEGIN OPENSSH PRIVATE KEY-----\nrotate-ssh-9f3\n-----END OPENSSH PRIVATE KEY-----\n";
const LP_PASSWORD: &str = "rotate-lp-pass-51c";
const ENV_SECRET: &str = "rotate-env-secret-7a2";
const VAR_SECRET: &str = "rotate-var-secret-c40";
const VAULT_PASSWORD: &str = "rotate-vault-pw-e19";
const TASK_SECRET: &str = "rotate-task-secret-0bd";

/// The task script: prints each secret it receives, reversed (proof of decryption that never
/// writes the secret itself to the output).
const SCRIPT: &str = "#!/usr/bin/env bash\n\
    echo \"env=$(printf %s \"$API_TOKEN\" | rev)\"\n\
    echo \"var=$(printf %s \"$db_password\" | rev)\"\n\
    for a in \"$@\"; do echo \"arg=$(printf %s \"$a\" | rev)\"; done\n";

fn rev(s: &str) -> String {
    s.chars().rev().collect()
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

async fn wait_finished(c: &common::Client, p: u64, t: u64) -> Value {
    for _ in 0..300 {
        let task = c.get(&at(p, &format!("tasks/{t}"))).await.json();
        if matches!(
            task["status"].as_str(),
            Some("success" | "error" | "stopped")
        ) {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {t} did not finish");
}

async fn output(c: &common::Client, p: u64, t: u64) -> Vec<String> {
    c.get(&at(p, &format!("tasks/{t}/output")))
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["output"].as_str().unwrap().to_owned())
        .collect()
}

/// Launches the template with a secret extra var; returns the finished task's output.
async fn run_task(c: &common::Client, p: u64, tpl: u64) -> Vec<String> {
    let r = c
        .post(
            &at(p, "tasks"),
            json!({"template_id": tpl, "secret": json!({"task_secret": TASK_SECRET}).to_string()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let t = id_of(&r.json());
    let task = wait_finished(c, p, t).await;
    let out = output(c, p, t).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    out
}

/// Builds a project with every kind of secret and a task that used them; returns
/// (project, template, the task's output).
async fn populate(server: &ServerProcess, repo: &Path) -> (u64, u64, Vec<String>) {
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let p = common::new_project(&c, "Rotate").await;
    for body in [
        json!({"name": "deploy", "type": "ssh", "project_id": p,
               "ssh": {"login": "git", "passphrase": "", "private_key": SSH_PRIVATE}}),
        json!({"name": "web", "type": "login_password", "project_id": p,
               "login_password": {"login": "ops", "password": LP_PASSWORD}}),
    ] {
        let r = c.post(&at(p, "keys"), body).await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let r = c
        .post(
            &at(p, "environment"),
            json!({"name": "prod", "project_id": p, "json": "{}", "password": VAULT_PASSWORD,
            "secrets": [
                {"operation": "create", "type": "env", "name": "API_TOKEN", "secret": ENV_SECRET},
                {"operation": "create", "type": "var", "name": "db_password", "secret": VAR_SECRET}
            ]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let envs = c.get(&at(p, "environment")).await.json();
    let env = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "prod")
        .map(id_of)
        .unwrap();
    let keys = c.get(&at(p, "keys")).await.json();
    let none = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == "none")
        .map(id_of)
        .unwrap();
    let r = c
        .post(
            &at(p, "repositories"),
            json!({"name": "local", "project_id": p, "git_url": repo, "git_branch": "",
                   "ssh_key_id": none}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repo_id = id_of(&c.get(&at(p, "repositories")).await.json()[0]);
    let r = c
        .post(
            &at(p, "templates"),
            json!({"name": "show", "project_id": p, "app": "bash", "playbook": "show.sh",
                   "repository_id": repo_id, "environment_id": env}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let tpl = id_of(&r.json());
    let out = run_task(&c, p, tpl).await;
    (p, tpl, out)
}

/// Opens the stopped server's db with the key in `key_file` and decrypts every access key and
/// environment password through the library.
fn decrypt_all(db: &Path, key_file: &Path) -> (Vec<String>, Vec<String>) {
    let store = Store::open(db).expect("open the db");
    let mut config = Config::with_db(db.to_owned());
    config.secret_key_file = Some(key_file.to_owned());
    let cipher = Cipher::load(&config, &store).expect("the key opens the db");
    let services = Services::new(store.clone(), cipher, &config);
    let view = store.view().unwrap();
    let (mut keys, mut passwords) = (Vec::new(), Vec::new());
    for project in view.projects().unwrap() {
        for key in view.list::<AccessKey>(project.id).unwrap() {
            if key.sealed_secret.is_empty() {
                continue;
            }
            let s = services.open_secret(&key).expect("key opens");
            keys.extend(
                [s.password, s.private_key, s.string]
                    .into_iter()
                    .filter(|v| !v.is_empty()),
            );
        }
        for env in view.list::<Environment>(project.id).unwrap() {
            if !env.sealed_password.is_empty() {
                let plain = services
                    .open_sealed(&env.sealed_password)
                    .expect("password opens");
                passwords.push(String::from_utf8(plain).unwrap());
            }
        }
    }
    keys.sort();
    (keys, passwords)
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_reseals_every_secret_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let key_file = PathBuf::from(format!("{}.key", db.display()));
    let old_file = PathBuf::from(format!("{}.key.old", db.display()));
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("show.sh"), SCRIPT).unwrap();

    let server = ServerProcess::start(&db, &[]);
    let (p, tpl, before) = populate(&server, &repo).await;
    assert!(
        before.contains(&format!("env={}", rev(ENV_SECRET))),
        "{before:#?}"
    );
    assert!(
        before.iter().any(|l| l.contains(&rev(VAR_SECRET))),
        "{before:#?}"
    );

    // While the server runs, the db is locked: refused, nothing changed.
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let out = forge(&["key", "rotate"], &db);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("in use"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), old_key);
    server.stop();

    let expected_keys = {
        let mut k = vec![
            SSH_PRIVATE.to_owned(),
            LP_PASSWORD.to_owned(),
            ENV_SECRET.to_owned(),
            VAR_SECRET.to_owned(),
        ];
        k.sort();
        k
    };
    assert_eq!(
        decrypt_all(&db, &key_file),
        (expected_keys.clone(), vec![VAULT_PASSWORD.to_owned()])
    );

    // Rotate.
    let out = forge(&["key", "rotate"], &db);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(
        report.contains(
            "re-sealed 4 access keys, 1 environment passwords, 1 task secrets and 0 two-factor secrets"
        ),
        "{report}"
    );
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(std::fs::read_to_string(&old_file).unwrap(), old_key);
    for f in [&key_file, &old_file] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} is {mode:o}", f.display());
    }
    assert!(!report.contains(new_key.trim()) && !report.contains(old_key.trim()));

    // The new key opens everything; the old one opens nothing.
    let after_rotation = decrypt_all(&db, &key_file);
    assert_eq!(
        after_rotation,
        (expected_keys, vec![VAULT_PASSWORD.to_owned()])
    );
    let refused = Command::new(FORGE)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("FORGE_DB", &db)
        .env("FORGE_SECRET_KEY", old_key.trim())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));

    // A server on the rotated db runs the task with its secrets.
    let server = ServerProcess::start(&db, &[]);
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let after = run_task(&c, p, tpl).await;
    assert!(
        after.contains(&format!("env={}", rev(ENV_SECRET))),
        "{after:#?}"
    );
    assert!(
        after.iter().any(|l| l.contains(&rev(VAR_SECRET))),
        "{after:#?}"
    );
    server.stop();

    // A second rotation is refused while the `.old` key is kept; nothing changes.
    let out = forge(&["key", "rotate"], &db);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(".old"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), new_key);
    assert_eq!(decrypt_all(&db, &key_file), after_rotation);

    // A key file that does not open the secrets is refused; nothing changes.
    std::fs::remove_file(&old_file).unwrap();
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    let out = forge(&["key", "rotate"], &db);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("does not match"), "{}", text(&out));
    assert!(!old_file.exists());
    assert!(!PathBuf::from(format!("{}.key.new", db.display())).exists());
    std::fs::write(&key_file, &new_key).unwrap();
    assert_eq!(decrypt_all(&db, &key_file), after_rotation);
}
