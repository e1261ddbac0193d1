//! The task sandbox through a real server (issue 16): a task cannot read the database, the
//! server key or another task's workspace, nor write outside its own directories, nor signal
//! the server; a git clone from a `file://` repository and an ansible playbook still work inside
//! it; `--sandbox off` turns it off; `--task-user` runs tasks as another user; local-path
//! repositories only under `--local-repo-roots`; `ansible_*` task variables only where the
//! template allows them.

mod common;

use common::git::git;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::ServerProcess;
use common::tools::landlock as landlock_here;
use common::{ADMIN, ADMIN_PASSWORD, Client, TestServer, at, id_of, new_project, ok_json};
use forge::sandbox::Mode;
use serde_json::json;
use tokio::time::{Instant, sleep};

/// The project's `None` key.
async fn none_key(a: &Client, p: u64) -> u64 {
    let keys = ok_json(a, &at(p, "keys")).await;
    keys.as_array()
        .and_then(|k| k.iter().find(|k| k["name"] == "None"))
        .map_or_else(|| panic!("no None key in {keys}"), id_of)
}

/// POSTs a repository; the response (204 when saved).
async fn post_repo(a: &Client, p: u64, name: &str, url: &str, branch: &str) -> common::Resp {
    let key = none_key(a, p).await;
    a.post(
        &at(p, "repositories"),
        json!({"name": name, "project_id": p, "git_url": url, "git_branch": branch,
               "ssh_key_id": key}),
    )
    .await
}

/// Adds a repository (asserting 204); returns its id.
async fn add_repo(a: &Client, p: u64, name: &str, url: &str, branch: &str) -> u64 {
    let r = post_repo(a, p, name, url, branch).await;
    assert_eq!(r.status, 204, "POST repositories {url}: {}", r.text());
    let list = ok_json(a, &at(p, "repositories")).await;
    list.as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == name))
        .map_or_else(|| panic!("no repository {name} in {list}"), id_of)
}

/// Launches `template`, waits until it ends; returns its status and output lines.
async fn run(a: &Client, p: u64, template: u64) -> (String, Vec<String>) {
    let r = a
        .post(&at(p, "tasks"), json!({"template_id": template}))
        .await;
    assert_eq!(r.status, 201, "POST tasks: {}", r.text());
    let t = id_of(&r.json());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let task = ok_json(a, &at(p, &format!("tasks/{t}"))).await;
        let status = task["status"].as_str().unwrap_or_default().to_owned();
        if matches!(status.as_str(), "success" | "error" | "stopped") {
            let out = ok_json(a, &at(p, &format!("tasks/{t}/output"))).await;
            let lines = out
                .as_array()
                .expect("output array")
                .iter()
                .map(|l| l["output"].as_str().unwrap_or_default().to_owned())
                .collect();
            return (status, lines);
        }
        assert!(Instant::now() < deadline, "task {t} never ended: {task}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// A bare repository at `<top>/origin.git` whose `main` holds `files`; its `file://` URL.
fn bare_repo(top: &Path, files: &[(&str, &str)]) -> String {
    let work = top.join("origin-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    for (name, body) in files {
        std::fs::write(work.join(name), body).unwrap();
    }
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(top, &["clone", "-q", "--bare", "origin-work", "origin.git"]);
    format!("file://{}", top.join("origin.git").display())
}

/// Whether `lines` hold one that contains every part of `parts`.
fn has(lines: &[String], parts: &[&str]) -> bool {
    lines.iter().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// The probe a task runs: tries to read each of `secrets` and to write `outside`, writes into
/// its own workspace and home, and tries to signal the server (`server_pid`).
fn probe_script(secrets: &[&Path], outside: &Path, server_pid: u32) -> String {
    let mut s = String::from("set -u\n");
    for f in secrets {
        let f = f.display();
        s.push_str(&format!(
            "if cat '{f}' > /dev/null 2>&1; then echo \"READ {f}\"; \
             else echo \"DENIED {f}: $(cat '{f}' 2>&1 | head -c 300)\"; fi\n"
        ));
    }
    let o = outside.display();
    s.push_str(&format!(
        "if echo escaped > '{o}' 2>/dev/null; then echo \"WROTE {o}\"; else echo \"DENIED write {o}\"; fi\n\
         echo mine > own.txt && echo \"OWN $(cat own.txt)\"\n\
         echo home > \"$HOME/h.txt\" && echo \"HOME $(cat \"$HOME/h.txt\")\"\n\
         if kill -0 {server_pid} 2>/dev/null; then echo SIGNALLED; else echo \"DENIED signal: $(kill -0 {server_pid} 2>&1)\"; fi\n"
    ));
    s
}

/// A server whose tasks may use local repositories under `root`.
async fn server_with(root: &Path, tweak: impl FnOnce(&mut forge::Config)) -> TestServer {
    let root = root.to_path_buf();
    TestServer::start_with(move |c| {
        c.local_repo_roots = vec![root];
        tweak(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_cannot_read_the_db_the_key_or_another_tasks_workspace() {
    if !landlock_here("the sandbox test") {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let top_path = top.path().canonicalize().unwrap();
    let s = server_with(&top_path, |_| {}).await;
    let a = s.admin().await;
    let p = new_project(&a, "sandbox").await;

    // Task A: cloned from a bare repository (file://), leaves a secret in its workspace.
    let url = bare_repo(
        &top_path,
        &[("leave.sh", "echo secret-of-a > marker.txt\necho left\n")],
    );
    let clone = add_repo(&a, p, "bare", &url, "main").await;
    let leave = common::bash_template(&a, p, "leave", clone, "leave.sh", json!({})).await;
    let (status, out) = run(&a, p, leave).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(
        has(&out, &["Cloning Repository"]) && has(&out, &["left"]),
        "{out:#?}"
    );
    let work = PathBuf::from(format!("{}.work", s.db_path().display()));
    let other = work.join(format!("repos/repository_{clone}_{leave}/marker.txt"));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "secret-of-a\n");

    // Task B, from a local path: the db, the key and A's workspace are out of reach.
    let db = s.db_path();
    let key = PathBuf::from(format!("{}.key", db.display()));
    assert!(key.is_file(), "the server made its key file");
    let outside = top_path.join("outside.txt");
    let local = top_path.join("local");
    std::fs::create_dir(&local).unwrap();
    let script = probe_script(&[&db, &key, &other], &outside, std::process::id());
    std::fs::write(local.join("probe.sh"), script).unwrap();
    let repo = add_repo(&a, p, "local", local.to_str().unwrap(), "").await;
    let probe = common::bash_template(&a, p, "probe", repo, "probe.sh", json!({})).await;
    let (status, out) = run(&a, p, probe).await;
    assert_eq!(status, "success", "{out:#?}");
    for f in [&db, &key, &other] {
        let f = f.display().to_string();
        assert!(
            has(&out, &["DENIED", &f, "Permission denied"]),
            "{f} must be denied: {out:#?}"
        );
        assert!(!has(&out, &["READ", &f]), "{out:#?}");
    }
    assert!(has(&out, &["DENIED write"]), "{out:#?}");
    assert!(!outside.exists(), "the task wrote outside its directories");
    assert!(
        has(&out, &["OWN mine"]) && has(&out, &["HOME home"]),
        "{out:#?}"
    );
    assert!(has(&out, &["DENIED signal", "not permitted"]), "{out:#?}");
    assert!(!has(&out, &["SIGNALLED"]), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_off_lets_a_task_read_what_the_server_can() {
    let top = tempfile::tempdir().unwrap();
    let top_path = top.path().canonicalize().unwrap();
    let s = server_with(&top_path, |c| c.sandbox = Mode::Off).await;
    let a = s.admin().await;
    let p = new_project(&a, "open").await;
    let local = top_path.join("local");
    std::fs::create_dir(&local).unwrap();
    let outside = top_path.join("outside.txt");
    let db = s.db_path();
    std::fs::write(local.join("probe.sh"), probe_script(&[&db], &outside, 1)).unwrap();
    let repo = add_repo(&a, p, "local", local.to_str().unwrap(), "").await;
    let probe = common::bash_template(&a, p, "probe", repo, "probe.sh", json!({})).await;
    let (status, out) = run(&a, p, probe).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(has(&out, &["READ", &db.display().to_string()]), "{out:#?}");
    assert!(outside.is_file(), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_repositories_only_under_the_allowed_roots() {
    let top = tempfile::tempdir().unwrap();
    let top_path = top.path().canonicalize().unwrap();
    let root = top_path.join("repos");
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join("app/run.sh"), "echo ran-locally\n").unwrap();
    let elsewhere = top_path.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("link")).unwrap();

    // By default none is allowed.
    let s = TestServer::start_with(|c| c.local_repo_roots = Vec::new()).await;
    let a = s.admin().await;
    let p = new_project(&a, "none").await;
    let r = post_repo(&a, p, "app", root.join("app").to_str().unwrap(), "").await;
    assert!(
        r.assert_error(400).contains("--local-repo-roots"),
        "{}",
        r.text()
    );
    // Remote URLs are unaffected.
    let r = post_repo(&a, p, "remote", "https://example.com/x.git", "main").await;
    assert_eq!(r.status, 204, "{}", r.text());
    s.stop().await;

    let s = server_with(&root, |_| {}).await;
    let a = s.admin().await;
    let p = new_project(&a, "roots").await;
    let data = s.dir.path().canonicalize().unwrap();
    let cases: &[(&str, String, &str)] = &[
        (
            "outside the roots",
            elsewhere.display().to_string(),
            "not under an allowed root",
        ),
        (
            "a file:// URL outside",
            format!("file://{}", elsewhere.display()),
            "not under",
        ),
        (
            "a link out of the root",
            root.join("link").display().to_string(),
            "not under",
        ),
        ("the data dir", data.display().to_string(), "Forge's own"),
        (
            "the work dir",
            format!("{}.work/repos", s.db_path().display()),
            "Forge's own",
        ),
        ("the root filesystem", "/".into(), "Forge's own"),
    ];
    for (what, url, message) in cases {
        let r = post_repo(&a, p, "bad", url, "main").await;
        let text = r.assert_error(400);
        assert!(text.contains(message), "{what}: {url}: {text}");
    }
    let repo = add_repo(&a, p, "app", root.join("app").to_str().unwrap(), "").await;
    let tpl = common::bash_template(&a, p, "app", repo, "run.sh", json!({})).await;
    let (status, out) = run(&a, p, tpl).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(has(&out, &["ran-locally"]), "{out:#?}");
    let dir = s.stop().await;

    // Checked again at run time: the same repository under a server that no longer allows it.
    let s = TestServer::start_in(dir, move |c| c.local_repo_roots = vec![elsewhere]).await;
    let a = s.admin().await;
    let (status, out) = run(&a, p, tpl).await;
    assert_eq!(status, "error", "{out:#?}");
    assert!(
        has(&out, &["refused", "not under an allowed root"]),
        "{out:#?}"
    );
    assert!(!has(&out, &["ran-locally"]), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ansible_variables_in_a_task_only_where_the_template_allows_them() {
    let top = tempfile::tempdir().unwrap();
    let top_path = top.path().canonicalize().unwrap();
    std::fs::write(top_path.join("run.sh"), "echo \"args: $*\"\n").unwrap();
    let s = server_with(&top_path, |_| {}).await;
    let a = s.admin().await;
    let p = new_project(&a, "vars").await;
    let repo = add_repo(&a, p, "local", top_path.to_str().unwrap(), "").await;
    let strict = common::bash_template(&a, p, "strict", repo, "run.sh", json!({})).await;
    let open = common::bash_template(
        &a,
        p,
        "open",
        repo,
        "run.sh",
        json!({"allow_ansible_vars_in_task": true}),
    )
    .await;
    let tpl = |t: u64| at(p, &format!("templates/{t}"));
    assert_eq!(
        ok_json(&a, &tpl(strict)).await["allow_ansible_vars_in_task"],
        false
    );
    assert_eq!(
        ok_json(&a, &tpl(open)).await["allow_ansible_vars_in_task"],
        true
    );

    for env in [
        json!({"ansible_connection": "local"}),
        json!({"x": 1, "ansible_ssh_common_args": "-o ProxyCommand=sh -c 'id'"}),
        json!({"ANSIBLE_become_exe": "sh"}),
    ] {
        let r = a
            .post(
                &at(p, "tasks"),
                json!({"template_id": strict, "environment": env.to_string()}),
            )
            .await;
        let text = r.assert_error(400);
        assert!(text.contains("allow_ansible_vars_in_task"), "{env}: {text}");
    }
    let r = a
        .post(
            &at(p, "tasks"),
            json!({"template_id": strict, "environment": "{\"greeting\": \"hi\"}"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = a
        .post(
            &at(p, "tasks"),
            json!({"template_id": open, "environment": "{\"ansible_connection\": \"local\"}"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// `localhost` over the local connection with the Python that runs ansible-playbook.
const INVENTORY: &str = "localhost ansible_connection=local ansible_python_interpreter='{{ ansible_playbook_python }}'\n";

#[tokio::test(flavor = "multi_thread")]
async fn an_ansible_playbook_runs_inside_the_sandbox() {
    let Some(ansible) = common::tools::require("ansible-playbook", "the sandboxed ansible test")
    else {
        return;
    };
    if !landlock_here("the sandboxed ansible test") {
        return;
    }
    let bin = ansible
        .parent()
        .expect("a directory holds ansible-playbook");
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let playbook = format!(
        r#"- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.command: echo ran-in-the-sandbox
      register: echoed
      changed_when: false
    - ansible.builtin.debug:
        msg: "said {{{{ echoed.stdout }}}}"
    - ansible.builtin.copy:
        dest: "{{{{ playbook_dir }}}}/written.txt"
        content: "written by ansible\n"
    - ansible.builtin.command: cat {db}
      register: stolen
      failed_when: false
    - ansible.builtin.debug:
        msg: "db read rc={{{{ stolen.rc }}}} {{{{ stolen.stderr }}}}"
"#,
        db = db.display()
    );
    std::fs::write(repo.path().join("site.yml"), playbook).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .unwrap();
    let server = ServerProcess::start(&db, &[("PATH", path.to_str().unwrap())]);
    let mut a = Client::new(server.addr);
    assert_eq!(a.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let p = new_project(&a, "ansible").await;
    let repo_id = add_repo(&a, p, "playbooks", repo.path().to_str().unwrap(), "").await;
    let r = a
        .post(
            &at(p, "inventory"),
            json!({"name": "local", "project_id": p, "type": "static", "inventory": INVENTORY}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let inv = id_of(&r.json());
    let tpl = common::bash_template(
        &a,
        p,
        "play",
        repo_id,
        "site.yml",
        json!({"app": "ansible", "inventory_id": inv}),
    )
    .await;
    let (status, out) = run(&a, p, tpl).await;
    let log = String::from_utf8_lossy(&server.log()).into_owned();
    assert_eq!(status, "success", "{out:#?}\n{log}");
    assert!(has(&out, &["said ran-in-the-sandbox"]), "{out:#?}");
    assert!(
        has(&out, &["db read rc=1", "Permission denied"]),
        "{out:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(repo.path().join("written.txt")).unwrap(),
        "written by ansible\n"
    );
}

/// The user `--task-user` tests run tasks as: made with `useradd` in CI, used when it exists
/// elsewhere, else a visible skip.
fn task_user() -> Option<String> {
    const NAME: &str = "forge-task";
    let exists = || {
        Command::new("id")
            .arg(NAME)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if exists() {
        return Some(NAME.into());
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                NAME,
            ])
            .output()
            .expect("run useradd");
        assert!(
            out.status.success() || exists(),
            "useradd: {}",
            common::tools::show(&out)
        );
        return Some(NAME.into());
    }
    eprintln!("SKIPPED: --task-user test: no user {NAME} (made only under CI=true)");
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_run_as_the_task_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: --task-user test: not running as root");
        return;
    }
    let Some(user) = task_user() else {
        return;
    };
    let uid = nix::unistd::User::from_name(&user)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let top = tempfile::tempdir().unwrap();
    let top_path = top.path().canonicalize().unwrap();
    // The data dir must let the task user pass through to its directories.
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&top_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = bare_repo(
        &top_path,
        &[(
            "who.sh",
            "echo \"uid=$(id -u)\"\necho made > made.txt\necho home > \"$HOME/h\" && echo home-ok\n",
        )],
    );
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&top_path)
        .status()
        .unwrap();
    let root = top_path.clone();
    let name = user.clone();
    let s = TestServer::start_in(data, move |c| {
        c.local_repo_roots = vec![root];
        c.task_user = Some(name);
    })
    .await;
    let a = s.admin().await;
    let p = new_project(&a, "as-user").await;
    let repo = add_repo(&a, p, "bare", &url, "main").await;
    let tpl = common::bash_template(&a, p, "who", repo, "who.sh", json!({})).await;
    let (status, out) = run(&a, p, tpl).await;
    assert_eq!(status, "success", "{out:#?}");
    assert!(has(&out, &[&format!("uid={uid}")]), "{out:#?}");
    assert!(has(&out, &["home-ok"]), "{out:#?}");
    let made = PathBuf::from(format!(
        "{}.work/repos/repository_{repo}_{tpl}/made.txt",
        s.db_path().display()
    ));
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap());
    assert_eq!(owner, uid, "the task's files belong to the task user");

    // A server not running as that user's superior, or a user that does not exist: refused.
    let mut config = forge::Config::with_db(top_path.join("x.redb"));
    config.task_user = Some("no-such-user-forge".into());
    let Err(err) = forge::App::start(config).await else {
        panic!("a task user that does not exist is refused");
    };
    assert!(err.to_string().contains("no user named"), "{err}");
}
