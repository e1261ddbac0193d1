//! Secrets never linger (issue 16), through the real `forge` binary: a task's secrets stay out
//! of every process's command line (`/proc/*/cmdline`, what `ps` shows); its private `0700`
//! dir (keys) is gone after success, failure and stop, and after a `kill -9` of the server and
//! a restart; ansible's extra vars are never a file on disk while ansible runs; the git
//! credential helper gives the repository's password to its own host only, never to a
//! `.gitmodules` URL; SSH host keys are pinned per project on first use, a changed one fails
//! the task with a clear line, and forgetting it through the API lets the next task pin the new
//! one.
//!
//! Repositories are served over HTTP (git's "dumb" protocol) by a small server in this file
//! that records the `Authorization` headers it receives. The ansible test needs
//! `ansible-playbook` (`.ci/venv`), the SSH test `sshd` (`openssh-server`): both are installed
//! by `.ci/install-tools.sh`; without them the tests fail in CI and are skipped elsewhere.

mod common;

use common::git::git;
use common::id_by_name;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::process::ServerProcess;
use common::ssh::{Sshd, keygen, sshd_program};
use common::{ADMIN, ADMIN_PASSWORD, Client, at, id_of, ok_json};
use serde_json::{Value, json};
use tokio::time::sleep;

// ---------------------------------------------------------------------------------------------
// A dumb-HTTP git server
// ---------------------------------------------------------------------------------------------

/// Serves the files under `root` over HTTP, one request per connection; records every
/// `Authorization` header it receives.
struct GitServer {
    port: u16,
    auth: Arc<Mutex<Vec<String>>>,
}

/// Who a [`GitServer`] serves.
#[derive(Clone)]
enum Gate {
    /// Everyone.
    Open,
    /// Only requests with this `Authorization` value (401 asks for it).
    Basic(String),
    /// Nobody: every request gets 401, which asks the client for credentials.
    Collect,
}

impl GitServer {
    fn start(root: PathBuf, gate: Gate) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let auth = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&auth);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (root, gate, seen) = (root.clone(), gate.clone(), Arc::clone(&seen));
                std::thread::spawn(move || serve(conn, &root, &gate, &seen));
            }
        });
        Self { port, auth }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn auth_headers(&self) -> Vec<String> {
        self.auth.lock().unwrap().clone()
    }
}

fn serve(mut conn: std::net::TcpStream, root: &Path, gate: &Gate, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    if let Some(a) = &authorization {
        seen.lock().unwrap().push(a.clone());
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/');
    let allowed = match gate {
        Gate::Open => true,
        Gate::Basic(want) => authorization.as_ref() == Some(want),
        Gate::Collect => false,
    };
    let (status, body) = if !allowed {
        ("401 Unauthorized", Vec::new())
    } else if path.split('/').any(|s| s == "..") {
        ("404 Not Found", Vec::new())
    } else {
        match std::fs::read(root.join(path)) {
            Ok(b) => ("200 OK", b),
            Err(_) => ("404 Not Found", Vec::new()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\
         WWW-Authenticate: Basic realm=\"git\"\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
}

fn basic(login: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"));
    format!("Basic {token}")
}

/// A bare repository `<root>/<name>.git` (branch `main`) holding `files`, ready for dumb HTTP.
fn bare_repo(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q", "-b", "main"]);
    for (file, body) in files {
        std::fs::write(work.join(file), body).expect("write");
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "init"]);
    publish(root, name, &work)
}

/// (Re)makes `<root>/<name>.git` from the work tree `work`.
fn publish(root: &Path, name: &str, work: &Path) -> PathBuf {
    let bare = root.join(format!("{name}.git"));
    let _ = std::fs::remove_dir_all(&bare);
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(&bare, &["repack", "-a", "-d", "-q"]);
    git(&bare, &["update-server-info"]);
    bare
}

// ---------------------------------------------------------------------------------------------
// Forge helpers
// ---------------------------------------------------------------------------------------------

struct Lab {
    dir: tempfile::TempDir,
    server: ServerProcess,
    a: Client,
}

impl Lab {
    async fn start(envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = ServerProcess::start(&dir.path().join("forge.redb"), envs);
        let a = login(&server).await;
        Self { dir, server, a }
    }

    fn tasks_dir(&self) -> PathBuf {
        self.dir.path().join("forge.redb.work").join("tasks")
    }

    fn task_dir(&self, task: u64) -> PathBuf {
        self.tasks_dir().join(task.to_string())
    }
}

async fn login(server: &ServerProcess) -> Client {
    let mut a = server.client();
    assert_eq!(a.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    a
}

async fn add_key(a: &Client, p: u64, name: &str, body: Value) -> u64 {
    let mut body = body;
    body["name"] = json!(name);
    body["project_id"] = json!(p);
    let r = a.post(&at(p, "keys"), body).await;
    assert_eq!(r.status, 204, "POST keys: {}", r.text());
    id_by_name(a, &at(p, "keys"), name).await
}

async fn add_repo(a: &Client, p: u64, name: &str, url: &str, key: u64) -> u64 {
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": name, "project_id": p, "git_url": url, "git_branch": "main",
                   "ssh_key_id": key}),
        )
        .await;
    assert_eq!(r.status, 204, "POST repositories: {}", r.text());
    id_by_name(a, &at(p, "repositories"), name).await
}

async fn add_template(a: &Client, p: u64, body: Value) -> u64 {
    let mut body = body;
    body["project_id"] = json!(p);
    let r = a.post(&at(p, "templates"), body).await;
    assert_eq!(r.status, 201, "POST templates: {}", r.text());
    id_of(&r.json())
}

async fn launch(a: &Client, p: u64, template: u64) -> u64 {
    let r = a
        .post(&at(p, "tasks"), json!({"template_id": template}))
        .await;
    assert_eq!(r.status, 201, "POST tasks: {}", r.text());
    id_of(&r.json())
}

async fn output(a: &Client, p: u64, t: u64) -> Vec<String> {
    ok_json(a, &at(p, &format!("tasks/{t}/output")))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["output"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn finished(a: &Client, p: u64, t: u64) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let task = ok_json(a, &at(p, &format!("tasks/{t}"))).await;
        let status = task["status"].as_str().unwrap_or_default().to_owned();
        if ["success", "error", "stopped"].contains(&status.as_str()) {
            return (status, output(a, p, t).await);
        }
        assert!(
            Instant::now() < deadline,
            "task {t} still {status}: {:#?}",
            output(a, p, t).await
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until task `t` printed a line holding `line`.
async fn wait_line(a: &Client, p: u64, t: u64, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = output(a, p, t).await;
        if out.iter().any(|l| l.contains(line)) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in {out:#?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Every process's command line that holds one of `secrets` (what `ps` would show).
fn command_lines_with(secrets: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if secrets.iter().any(|s| line.contains(s)) {
            hits.push(format!("{}: {line}", entry.file_name().to_string_lossy()));
        }
    }
    hits
}

/// Regular files under `dir` whose bytes hold `secret` (FIFOs and sockets are not opened).
fn files_with(dir: &Path, secret: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            hits.extend(files_with(&entry.path(), secret));
        } else if kind.is_file()
            && let Ok(bytes) = std::fs::read(entry.path())
            && bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
        {
            hits.push(entry.path());
        }
    }
    hits
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

const SSH_KEY_MARKER: &str = "SSHKEYMARKER7f3a";

/// An SSH private key body that carries a marker (Forge only stores and writes it).
fn marked_private_key() -> String {
    format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{SSH_KEY_MARKER}b3BlbnNzaC1rZXktdjEAAAAA\n\
         -----END OPENSSH PRIVATE KEY-----\n"
    )
}

/// A bash task over HTTP with an SSH key on its repository (written to the task's dir), a
/// `var` and an `env` secret; `run.sh` prints, waits for `release` when it exists in the
/// repository's instructions, and exits with the code the task's `arguments` give.
struct ShellSetup {
    p: u64,
    ok: u64,
    fails: u64,
    waits: u64,
    _git: GitServer,
    _repos: tempfile::TempDir,
}

const VAR_SECRET: &str = "varsecret-7f3a-pw";
const ENV_SECRET: &str = "envsecret-7f3a-tok";

impl ShellSetup {
    async fn new(a: &Client, release: &Path) -> Self {
        let repos = tempfile::tempdir().expect("temp dir");
        let wait = format!(
            "echo waiting\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho released\n",
            release.display()
        );
        let show = "echo \"var:${PASSWD-unset}\"\necho \"env:${TOKEN-unset}\"\n\
                    for a in \"$@\"; do echo \"arg:$a\"; done\n";
        bare_repo(
            repos.path(),
            "scripts",
            &[
                ("ok.sh", show),
                ("fail.sh", "echo failing\nexit 3\n"),
                ("wait.sh", &format!("{show}{wait}")),
            ],
        );
        let git = GitServer::start(repos.path().to_owned(), Gate::Open);
        let p = common::new_project(a, "secrets").await;
        let key = add_key(
            a,
            p,
            "deploy key",
            json!({"type": "ssh",
                   "ssh": {"login": "git", "passphrase": "", "private_key": marked_private_key()}}),
        )
        .await;
        let repo = add_repo(a, p, "scripts", &git.url("scripts.git"), key).await;
        let r = a
            .post(
                &at(p, "environment"),
                json!({"name": "vars", "project_id": p, "json": "{}", "env": "{}",
                       "secrets": [
                           {"operation": "create", "type": "var", "name": "PASSWD",
                            "secret": VAR_SECRET},
                           {"operation": "create", "type": "env", "name": "TOKEN",
                            "secret": ENV_SECRET}]}),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        let env = id_by_name(a, &at(p, "environment"), "vars").await;
        let mut tpls = Vec::new();
        for (name, script) in [("ok", "ok.sh"), ("fails", "fail.sh"), ("waits", "wait.sh")] {
            tpls.push(
                add_template(
                    a,
                    p,
                    json!({"name": name, "app": "bash", "playbook": script,
                           "repository_id": repo, "environment_id": env}),
                )
                .await,
            );
        }
        Self {
            p,
            ok: tpls[0],
            fails: tpls[1],
            waits: tpls[2],
            _git: git,
            _repos: repos,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A task's secrets are in no command line while it runs, its `var` secrets reach it through
/// the environment, and its private dir (the SSH key file) is `0700`/`0600` while it runs and
/// gone after success, failure and stop.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_off_command_lines_and_the_task_dir_goes_on_every_exit() {
    let lab = Lab::start(&[]).await;
    let release = lab.dir.path().join("release");
    let s = ShellSetup::new(&lab.a, &release).await;
    let (a, p) = (&lab.a, s.p);

    // Success: the secrets arrive through the environment, never as arguments.
    let t = launch(a, p, s.ok).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(out.contains(&format!("var:{VAR_SECRET}")), "{out:#?}");
    assert!(out.contains(&format!("env:{ENV_SECRET}")), "{out:#?}");
    assert!(
        !out.iter()
            .any(|l| l.starts_with("arg:") && l.contains(VAR_SECRET)),
        "a secret came as an argument: {out:#?}"
    );
    assert!(
        !lab.task_dir(t).exists(),
        "the dir of a successful task stayed"
    );

    // Failure.
    let t = launch(a, p, s.fails).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "error", "{out:#?}");
    assert!(!lab.task_dir(t).exists(), "the dir of a failed task stayed");

    // While a task runs: its key file in a private dir, no secret on any command line.
    let t = launch(a, p, s.waits).await;
    wait_line(a, p, t, "waiting").await;
    let dir = lab.task_dir(t);
    let key = dir.join("git_ssh_key");
    assert_eq!(mode(&dir), 0o700, "the task's dir");
    assert_eq!(mode(&key), 0o600, "the key file");
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains(SSH_KEY_MARKER)
    );
    let seen = command_lines_with(&[VAR_SECRET, ENV_SECRET, SSH_KEY_MARKER]);
    assert!(seen.is_empty(), "secrets on command lines (ps): {seen:#?}");

    // Stop.
    let r = a.post(&at(p, &format!("tasks/{t}/stop")), json!({})).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "stopped", "{out:#?}");
    assert!(!dir.exists(), "the dir of a stopped task stayed");
    let left: Vec<_> = std::fs::read_dir(lab.tasks_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "task dirs left: {left:?}");
}

/// A server killed with SIGKILL mid-task leaves the task's dir (its key) behind; the next
/// start removes it before any task runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_mid_task_leaves_nothing_after_the_restart() {
    let lab = Lab::start(&[]).await;
    let release = lab.dir.path().join("release");
    let s = ShellSetup::new(&lab.a, &release).await;
    let t = launch(&lab.a, s.p, s.waits).await;
    wait_line(&lab.a, s.p, t, "waiting").await;
    let dir = lab.task_dir(t);
    assert!(dir.join("git_ssh_key").is_file());

    let Lab {
        dir: data, server, ..
    } = lab;
    server.kill_9();
    assert!(dir.join("git_ssh_key").is_file(), "the crash left the key");
    let server = ServerProcess::start(&data.path().join("forge.redb"), &[]);
    assert!(!dir.exists(), "the restart did not sweep {}", dir.display());
    let a = login(&server).await;
    let (status, out) = finished(&a, s.p, t).await;
    assert_eq!(status, "error", "{out:#?}");
}

/// A repository's password goes to its own host only: a submodule on another host (a
/// malicious `.gitmodules`) asks for credentials and gets none.
#[tokio::test(flavor = "multi_thread")]
async fn a_malicious_gitmodules_url_collects_no_password() {
    let repos = tempfile::tempdir().expect("temp dir");
    let evil = GitServer::start(repos.path().to_owned(), Gate::Collect);
    let home = GitServer::start(
        repos.path().to_owned(),
        Gate::Basic(basic("ops", "pw-7f3a-repo")),
    );
    // A repository whose .gitmodules points at the collecting server.
    let work = repos.path().join("main-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("run.sh"), "echo ran\n").unwrap();
    std::fs::write(
        work.join(".gitmodules"),
        format!(
            "[submodule \"lib\"]\n\tpath = lib\n\turl = {}\n",
            evil.url("lib.git")
        ),
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "init"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    git(
        &work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{head},lib"),
        ],
    );
    git(&work, &["commit", "-q", "-m", "submodule"]);
    publish(repos.path(), "main", &work);

    let lab = Lab::start(&[]).await;
    let a = &lab.a;
    let p = common::new_project(a, "submodules").await;
    let key = add_key(
        a,
        p,
        "repo login",
        json!({"type": "login_password",
               "login_password": {"login": "ops", "password": "pw-7f3a-repo"}}),
    )
    .await;
    let repo = add_repo(a, p, "main", &home.url("main.git"), key).await;
    let tpl = add_template(
        a,
        p,
        json!({"name": "run", "app": "bash", "playbook": "run.sh", "repository_id": repo}),
    )
    .await;
    let t = launch(a, p, tpl).await;
    let (_, out) = finished(a, p, t).await;
    // The repository itself was fetched with its credentials...
    assert!(
        home.auth_headers().contains(&basic("ops", "pw-7f3a-repo")),
        "the repository's own host got no credentials: {out:#?}"
    );
    // ...and the submodule's host was asked for them but got nothing.
    assert!(
        evil.auth_headers().is_empty(),
        "the .gitmodules host collected {:?}: {out:#?}",
        evil.auth_headers()
    );
    assert!(!lab.task_dir(t).exists());
}

const VAULT_PASSWORD: &str = "vaultpw-7f3a";
const EXTRA_SECRET: &str = "extravar-7f3a-secret";

/// ansible's extra vars (with a secret) and its vault password are never files on disk while
/// ansible runs, and no command line holds them; ansible still reads both.
#[tokio::test(flavor = "multi_thread")]
async fn ansible_extra_vars_and_vault_passwords_never_touch_the_disk() {
    let Some(ansible) = common::tools::require("ansible-playbook", "the extra vars test") else {
        return;
    };
    let bin = ansible.parent().expect("a dir holds ansible-playbook");
    let repos = tempfile::tempdir().expect("temp dir");
    // A vars file encrypted with the vault password, made with ansible-vault itself.
    let plain = repos.path().join("vaulted.yml");
    std::fs::write(&plain, "vaulted_value: opened-by-vault\n").unwrap();
    let pw_file = repos.path().join("vault-pw");
    std::fs::write(&pw_file, VAULT_PASSWORD).unwrap();
    let out = Command::new(bin.join("ansible-vault"))
        .args(["encrypt", "--vault-password-file"])
        .arg(&pw_file)
        .arg(&plain)
        .output()
        .expect("ansible-vault");
    assert!(out.status.success(), "{}", common::tools::show(&out));
    let vaulted = std::fs::read_to_string(&plain).unwrap();
    std::fs::remove_file(&pw_file).unwrap();
    let release = repos.path().join("release");
    // The playbook shows the secret upper-cased: it must not hold the secret itself.
    let playbook = format!(
        r#"- hosts: all
  gather_facts: false
  vars_files:
    - vaulted.yml
  tasks:
    - ansible.builtin.debug:
        msg: "secret arrived: {{{{ db_password | upper }}}}"
    - ansible.builtin.debug:
        msg: "vault says {{{{ vaulted_value }}}}"
    - ansible.builtin.debug:
        msg: waiting-for-release
    - ansible.builtin.wait_for:
        path: {}
        timeout: 120
"#,
        release.display()
    );
    bare_repo(
        repos.path(),
        "playbooks",
        &[("site.yml", &playbook), ("vaulted.yml", &vaulted)],
    );
    let git = GitServer::start(repos.path().to_owned(), Gate::Basic(basic("u", "p")));

    let path = std::env::var("PATH").unwrap_or_default();
    let path = format!("{}:{path}", bin.display());
    let lab = Lab::start(&[("PATH", path.as_str())]).await;
    let a = &lab.a;
    let p = common::new_project(a, "ansible").await;
    let login = add_key(
        a,
        p,
        "repo",
        json!({"type": "login_password", "login_password": {"login": "u", "password": "p"}}),
    )
    .await;
    let vault = add_key(
        a,
        p,
        "vault",
        json!({"type": "login_password",
               "login_password": {"login": "", "password": VAULT_PASSWORD}}),
    )
    .await;
    let repo = add_repo(a, p, "playbooks", &git.url("playbooks.git"), login).await;
    let r = a
        .post(
            &at(p, "inventory"),
            json!({"name": "local", "project_id": p, "type": "static",
                   "inventory": "localhost ansible_connection=local ansible_python_interpreter='{{ ansible_playbook_python }}'\n"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let inv = id_of(&r.json());
    let r = a
        .post(
            &at(p, "environment"),
            json!({"name": "vars", "project_id": p, "json": "{}", "env": "{}",
                   "secrets": [{"operation": "create", "type": "var", "name": "db_password",
                                "secret": EXTRA_SECRET}]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let env = id_by_name(a, &at(p, "environment"), "vars").await;
    let tpl = add_template(
        a,
        p,
        json!({"name": "site", "app": "ansible", "playbook": "site.yml", "inventory_id": inv,
               "repository_id": repo, "environment_id": env,
               "vaults": [{"vault_key_id": vault}]}),
    )
    .await;
    let t = launch(a, p, tpl).await;
    wait_line(a, p, t, "waiting-for-release").await;

    // ansible runs: nothing of the secrets on disk or on a command line.
    let data = lab.dir.path();
    for secret in [EXTRA_SECRET, VAULT_PASSWORD] {
        let files = files_with(data, secret);
        assert!(
            files.is_empty(),
            "{secret} on disk while ansible runs: {files:?}"
        );
    }
    let left: Vec<String> = std::fs::read_dir(lab.task_dir(t))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left
            .iter()
            .any(|n| n.starts_with("extra_vars") || n.starts_with("vault")),
        "handoffs still in the task dir: {left:?}"
    );
    let seen = command_lines_with(&[EXTRA_SECRET, VAULT_PASSWORD]);
    assert!(seen.is_empty(), "secrets on command lines (ps): {seen:#?}");

    std::fs::write(&release, "").unwrap();
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(
        out.iter()
            .any(|l| l.contains(&format!("secret arrived: {}", EXTRA_SECRET.to_uppercase()))),
        "{out:#?}"
    );
    assert!(
        out.iter().any(|l| l.contains("vault says opened-by-vault")),
        "{out:#?}"
    );
    assert!(!lab.task_dir(t).exists());
}

// ---------------------------------------------------------------------------------------------
// SSH host keys
// ---------------------------------------------------------------------------------------------

/// First run pins the host key, the second passes with it, a swapped host key fails the
/// task with a clear line (and is not pinned), and once the old key is forgotten through the
/// API the next run pins the new one.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_host_keys_are_pinned_on_first_use_and_a_changed_one_fails() {
    let Some(sshd) = sshd_program() else {
        let _ = common::tools::ready("the SSH host key test", &["sshd".to_owned()]);
        return;
    };
    let keys = tempfile::tempdir().expect("temp dir");
    let k = |name: &str| keys.path().join(name);
    keygen(&k("host_a"));
    keygen(&k("host_b"));
    keygen(&k("client"));
    let repos = tempfile::tempdir().expect("temp dir");
    let bare = bare_repo(repos.path(), "ssh", &[("run.sh", "echo over-ssh\n")]);
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();

    let lab = Lab::start(&[]).await;
    let a = &lab.a;
    let p = common::new_project(a, "ssh").await;
    let key = add_key(
        a,
        p,
        "deploy",
        json!({"type": "ssh", "ssh": {"login": user, "passphrase": "",
               "private_key": std::fs::read_to_string(k("client")).unwrap()}}),
    )
    .await;
    let mut server = Sshd::start(&sshd, keys.path(), &k("host_a"), &k("client.pub"));
    let port = server.port;
    let url = format!("ssh://{user}@127.0.0.1:{port}{}", bare.display());
    let repo = add_repo(a, p, "ssh", &url, key).await;
    let tpl = add_template(
        a,
        p,
        json!({"name": "run", "app": "bash", "playbook": "run.sh", "repository_id": repo}),
    )
    .await;
    let host = format!("[127.0.0.1]:{port}");
    let host_a = std::fs::read_to_string(k("host_a.pub")).unwrap();
    let host_b = std::fs::read_to_string(k("host_b.pub")).unwrap();
    let key_of = |public: &str| public.split_whitespace().nth(1).unwrap().to_owned();

    // First use: pinned.
    let t = launch(a, p, tpl).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(out.contains(&"over-ssh".to_owned()), "{out:#?}");
    assert!(
        out.contains(&format!(
            "Pinned the SSH host key of {host} for this project"
        )),
        "{out:#?}"
    );
    let pinned = ok_json(a, &at(p, "host_keys")).await;
    let pinned = pinned.as_array().unwrap();
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    assert_eq!(pinned[0]["host"], host.as_str());
    assert_eq!(pinned[0]["type"], "ssh-ed25519");
    assert_eq!(pinned[0]["key"], key_of(&host_a).as_str());
    assert_eq!(pinned[0]["task_id"], t);
    let pin_id = id_of(&pinned[0]);
    let one = ok_json(a, &at(p, &format!("host_keys/{pin_id}"))).await;
    assert_eq!(&one, &pinned[0]);

    // Second run: checked against the pin, nothing new learned.
    let t = launch(a, p, tpl).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(!out.iter().any(|l| l.starts_with("Pinned")), "{out:#?}");

    // The server's host key changes: the task fails with a clear line.
    drop(server);
    server = Sshd::start_on(&sshd, keys.path(), &k("host_b"), &k("client.pub"), port);
    let t = launch(a, p, tpl).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "error", "{out:#?}");
    common::ssh::assert_key_changed(&out, &host);
    let still = ok_json(a, &at(p, "host_keys")).await;
    assert_eq!(still.as_array().unwrap().len(), 1);
    assert_eq!(still[0]["key"], key_of(&host_a).as_str());

    // Forgotten (tests/authz.rs: managers and up), the next run pins the new key.
    let r = lab
        .server
        .client()
        .delete(&at(p, &format!("host_keys/{pin_id}")))
        .await;
    assert_eq!(r.status, 401);
    let r = a.delete(&at(p, &format!("host_keys/{pin_id}"))).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = a.get(&at(p, &format!("host_keys/{pin_id}"))).await;
    assert_eq!(r.status, 404);
    let t = launch(a, p, tpl).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "success", "{out:#?}");
    let pinned = ok_json(a, &at(p, "host_keys")).await;
    assert_eq!(pinned.as_array().unwrap().len(), 1);
    assert_eq!(pinned[0]["key"], key_of(&host_b).as_str());
    drop(server);
}

/// ansible's own ssh connections to inventory hosts use the same pins: the first run pins the
/// host's key, a swapped key fails the task with the clear line and is not pinned.
#[tokio::test(flavor = "multi_thread")]
async fn ansible_ssh_connections_pin_host_keys_too() {
    let Some(sshd) = sshd_program() else {
        let _ = common::tools::ready("the ansible host key test", &["sshd".to_owned()]);
        return;
    };
    let Some(ansible) = common::tools::require("ansible-playbook", "the ansible host key test")
    else {
        return;
    };
    let bin = ansible.parent().expect("a dir holds ansible-playbook");
    let keys = tempfile::tempdir().expect("temp dir");
    let k = |name: &str| keys.path().join(name);
    keygen(&k("host_a"));
    keygen(&k("host_b"));
    keygen(&k("client"));
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let repo_dir = tempfile::tempdir().expect("temp dir");
    // `raw` needs no python on the target: only ssh.
    std::fs::write(
        repo_dir.path().join("site.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.raw: echo over-ansible-ssh\n",
    )
    .unwrap();

    let path = std::env::var("PATH").unwrap_or_default();
    let path = format!("{}:{path}", bin.display());
    let lab = Lab::start(&[("PATH", path.as_str())]).await;
    let a = &lab.a;
    let p = common::new_project(a, "ansible-ssh").await;
    let key = add_key(
        a,
        p,
        "deploy",
        json!({"type": "ssh", "ssh": {"login": user, "passphrase": "",
               "private_key": std::fs::read_to_string(k("client")).unwrap()}}),
    )
    .await;
    let none = add_key(a, p, "none", json!({"type": "none"})).await;
    let repo = add_repo(
        a,
        p,
        "playbooks",
        &repo_dir.path().display().to_string(),
        none,
    )
    .await;
    let mut server = Sshd::start(&sshd, keys.path(), &k("host_a"), &k("client.pub"));
    let port = server.port;
    let r = a
        .post(
            &at(p, "inventory"),
            json!({"name": "target", "project_id": p, "type": "static", "ssh_key_id": key,
                   "inventory": format!("target ansible_host=127.0.0.1 ansible_port={port} \
                                         ansible_user={user}\n")}),
        )
        .await;
    assert_eq!(r.status, 201, "POST inventory: {}", r.text());
    let inv = id_of(&r.json());
    let tpl = add_template(
        a,
        p,
        json!({"name": "site", "app": "ansible", "playbook": "site.yml", "inventory_id": inv,
               "repository_id": repo}),
    )
    .await;
    let host = format!("[127.0.0.1]:{port}");

    let t = launch(a, p, tpl).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(out.contains(&"changed: [target]".to_owned()), "{out:#?}");
    assert!(
        out.contains(&format!(
            "Pinned the SSH host key of {host} for this project"
        )),
        "{out:#?}"
    );
    let pinned = ok_json(a, &at(p, "host_keys")).await;
    assert_eq!(pinned.as_array().unwrap().len(), 1, "{pinned}");

    drop(server);
    server = Sshd::start_on(&sshd, keys.path(), &k("host_b"), &k("client.pub"), port);
    let t = launch(a, p, tpl).await;
    let (status, out) = finished(a, p, t).await;
    assert_eq!(status, "error", "{out:#?}");
    assert!(
        out.iter().any(|l| l.starts_with(&format!(
            "SSH host key changed: {host} did not show the key pinned for this project"
        ))),
        "{out:#?}"
    );
    assert!(!out.contains(&"changed: [target]".to_owned()), "{out:#?}");
    let still = ok_json(a, &at(p, "host_keys")).await;
    assert_eq!(still.as_array().unwrap().len(), 1, "{still}");
    drop(server);
}

/// Bad requests on the host key routes: unknown ids and projects, bad ids, no session.
#[tokio::test(flavor = "multi_thread")]
async fn host_key_routes_refuse_bad_requests() {
    let lab = Lab::start(&[]).await;
    let a = &lab.a;
    let p = common::new_project(a, "keys").await;
    assert_eq!(ok_json(a, &at(p, "host_keys")).await, json!([]));
    for (method, path, status) in [
        ("GET", at(p, "host_keys/99"), 404),
        ("DELETE", at(p, "host_keys/99"), 404),
        ("GET", at(p, "host_keys/x"), 400),
        ("DELETE", at(p, "host_keys/0"), 400),
        ("GET", at(p + 100, "host_keys"), 404),
        ("POST", at(p, "host_keys"), 405),
        ("PUT", at(p, "host_keys/1"), 405),
    ] {
        let r = a.raw(method, &path, None, &[]).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
    }
    let anonymous = lab.server.client();
    let r = anonymous.get(&at(p, "host_keys")).await;
    assert_eq!(r.status, 401);
}
