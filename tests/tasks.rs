//! The task engine through a real server (issue 4; API.md §7, §8): tasks launched over HTTP run
//! as real child processes from real git checkouts (or local paths); their output, status,
//! limits, stops, timeouts, paging, live following and deletion are checked from the outside.
//! The million-line task runs against the `forge` binary so its memory can be read from /proc.

mod common;

use common::git::git;
use common::{at, id_of, new_project};

use common::process::ServerProcess;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ADMIN, ADMIN_PASSWORD, Client, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

/// The manual clock's start (every timestamp the server writes in these tests).
const T0_TEXT: &str = "2025-05-21T02:35:12Z";

// =============================================================================================
// Helpers
// =============================================================================================

/// The path of task `t` of project `p`.
fn task_path(p: u64, t: u64) -> String {
    at(p, &format!("tasks/{t}"))
}

fn is_finished(status: &str) -> bool {
    matches!(status, "success" | "error" | "stopped")
}

/// GET of a JSON array.
async fn list(a: &Client, path: &str) -> Vec<Value> {
    let r = a.get(path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    match r.json() {
        Value::Array(items) => items,
        other => panic!("GET {path}: not an array: {other}"),
    }
}

async fn id_by_name(a: &Client, path: &str, name: &str) -> u64 {
    let items = list(a, path).await;
    let hits: Vec<&Value> = items.iter().filter(|i| i["name"] == name).collect();
    assert_eq!(hits.len(), 1, "exactly one {name:?} in {path}: {items:?}");
    id_of(hits[0])
}

/// The `None` key every project starts with.
async fn none_key(a: &Client, p: u64) -> u64 {
    id_by_name(a, &at(p, "keys"), "None").await
}

async fn add_repo(a: &Client, p: u64, name: &str, url: &str, branch: &str) -> u64 {
    let key = none_key(a, p).await;
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": name, "project_id": p, "git_url": url, "git_branch": branch,
                   "ssh_key_id": key}),
        )
        .await;
    assert_eq!(r.status, 204, "POST repositories: {}", r.text());
    id_by_name(a, &at(p, "repositories"), name).await
}

fn write_script(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).expect("write script");
}

/// A project, a local-path repository holding `scripts` (name, body), and one bash template
/// per script named after it (without `.sh`).
struct Setup {
    p: u64,
    repo: u64,
    /// Template ids in the order of `scripts`.
    tpls: Vec<u64>,
    /// The repository directory (kept until the setup is dropped).
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(a: &Client, project: &str, scripts: &[(&str, &str)]) -> Self {
        let p = new_project(a, project).await;
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, body) in scripts {
            write_script(dir.path(), &format!("{name}.sh"), body);
        }
        let url = dir.path().to_str().expect("utf-8 path").to_owned();
        let repo = add_repo(a, p, "local", &url, "").await;
        let mut tpls = Vec::new();
        for (name, _) in scripts {
            tpls.push(
                common::bash_template(a, p, name, repo, &format!("{name}.sh"), json!({})).await,
            );
        }
        Self { p, repo, tpls, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// POST a task; asserts 201 and returns its JSON.
async fn launch_with(a: &Client, p: u64, body: Value) -> Value {
    let r = a.post(&at(p, "tasks"), body.clone()).await;
    assert_eq!(r.status, 201, "POST tasks {body}: {}", r.text());
    r.json()
}

async fn launch(a: &Client, p: u64, tpl: u64) -> u64 {
    id_of(&launch_with(a, p, json!({ "template_id": tpl })).await)
}

async fn get_task(a: &Client, p: u64, t: u64) -> Value {
    let r = a.get(&task_path(p, t)).await;
    assert_eq!(r.status, 200, "GET task {t}: {}", r.text());
    r.json()
}

/// Every output element of a task (`?offset=&limit=` appended when given).
async fn output_json(a: &Client, p: u64, t: u64, query: &str) -> Vec<Value> {
    list(a, &format!("{}/output{query}", task_path(p, t))).await
}

/// The output lines' text.
async fn lines(a: &Client, p: u64, t: u64) -> Vec<String> {
    texts(&output_json(a, p, t, "").await)
}

fn texts(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i["output"]
                .as_str()
                .unwrap_or_else(|| panic!("no output text in {i}"))
                .to_owned()
        })
        .collect()
}

/// Polls until the task has finished; panics (with its output) after `within`.
async fn wait_finished(a: &Client, p: u64, t: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let task = get_task(a, p, t).await;
        if is_finished(task["status"].as_str().unwrap_or_default()) {
            return task;
        }
        if Instant::now() > deadline {
            let out = lines(a, p, t).await;
            panic!("task {t} not finished within {within:?}: {task}\noutput: {out:#?}");
        }
        sleep(Duration::from_millis(40)).await;
    }
}

/// Polls the output until a line satisfies `pred`; returns all lines then.
async fn wait_line(
    a: &Client,
    p: u64,
    t: u64,
    within: Duration,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let out = lines(a, p, t).await;
        if out.iter().any(|l| pred(l)) {
            return out;
        }
        if Instant::now() > deadline {
            let task = get_task(a, p, t).await;
            panic!("task {t}: awaited line not seen within {within:?}: {task}\noutput: {out:#?}");
        }
        sleep(Duration::from_millis(40)).await;
    }
}

/// The four lines upstream's server writes before any preparation output (§7.6).
fn server_head(t: u64, template: &str) -> Vec<String> {
    vec![
        format!("Task {t} added to queue"),
        format!("Started: {t}"),
        format!("Run TaskRunner with template: {template}"),
        format!("Preparing: {t}"),
    ]
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Pids of the live (non-zombie) processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // state ppid pgrp ...
        let live = fields.first().is_some_and(|s| *s != "Z" && *s != "X");
        if live && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|c| stat[c + 1..].split_whitespace().next().map(str::to_owned))
            .is_some_and(|s| s != "Z" && s != "X")
    })
}

/// Waits (bounded) until neither the pids nor anything in group `pgid` is alive.
async fn assert_gone(pgid: u32, pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        let group = group_members(pgid);
        if left.is_empty() && group.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: processes still alive after the task ended: pids {left:?}, group {pgid}: {group:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// `pids <shell> <grandchild>` printed by the stop scripts.
fn pids_line(out: &[String]) -> (u32, u32) {
    let line = out
        .iter()
        .find(|l| l.starts_with("pids "))
        .unwrap_or_else(|| panic!("no pids line in {out:#?}"));
    let mut it = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse::<u32>().expect("pid"));
    (
        it.next().expect("shell pid"),
        it.next().expect("grandchild pid"),
    )
}

/// `start <ns>` / `end <ns>` printed by a span script.
fn span_of(out: &[String]) -> (u128, u128) {
    let find = |prefix: &str| -> u128 {
        out.iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {out:#?}"))
            .trim()
            .parse()
            .expect("nanoseconds")
    };
    (find("start "), find("end "))
}

/// Most intervals open at one instant (an end at the same instant as a start closes first).
fn max_overlap(spans: &[(u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for &(s, e) in spans {
        assert!(s <= e, "span ends before it starts: {s} {e}");
        events.push((s, 1));
        events.push((e, -1));
    }
    events.sort_unstable();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in events {
        open += d;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or_default()
}

const SPAN_SCRIPT: &str = "echo \"start $(date +%s%N)\"\nsleep 0.4\necho \"end $(date +%s%N)\"\n";

/// Unfinished tasks of a project by the API.
async fn active_count(a: &Client, p: u64) -> usize {
    list(a, &at(p, "tasks"))
        .await
        .iter()
        .filter(|t| {
            matches!(
                t["status"].as_str(),
                Some("starting" | "running" | "stopping")
            )
        })
        .count()
}

// =============================================================================================
// 1. Real git checkouts and local paths; server lines; order of stdout/stderr
// =============================================================================================

const GIT_SCRIPT: &str = "echo \"version: $(cat version.txt)\"
echo a; echo b >&2; echo c
for i in 1 2 3 4 5; do echo \"out $i\"; echo \"err $i\" >&2; done
";

fn git_script_lines(version: &str) -> Vec<String> {
    let mut v = vec![format!("version: {version}")];
    v.extend(owned(&["a", "b", "c"]));
    for i in 1..=5 {
        v.push(format!("out {i}"));
        v.push(format!("err {i}"));
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn git_repository_is_cloned_then_fetched_and_the_output_keeps_order() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Git").await;

    // An upstream repository made by the test, served through file://.
    let upstream = tempfile::tempdir().unwrap();
    let up = upstream.path();
    git(up, &["init", "-q", "-b", "main"]);
    write_script(up, "run.sh", GIT_SCRIPT);
    std::fs::write(up.join("version.txt"), "1\n").unwrap();
    git(up, &["add", "."]);
    git(up, &["commit", "-q", "-m", "first"]);
    let first_commit = git(up, &["rev-parse", "HEAD"]);
    let url = format!("file://{}", up.display());
    let repo = add_repo(&a, p, "upstream", &url, "main").await;
    let tpl = common::bash_template(&a, p, "from-git", repo, "run.sh", json!({})).await;

    let t1 = launch(&a, p, tpl).await;
    let task = wait_finished(&a, p, t1, Duration::from_secs(30)).await;
    let out = lines(&a, p, t1).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    assert_eq!(out[..4], server_head(t1, "from-git")[..], "{out:#?}");
    assert_eq!(out[4], format!("Cloning Repository {url}"), "{out:#?}");
    assert!(
        out.ends_with(&git_script_lines("1")),
        "script lines in order (stdout and stderr interleaved) at the end: {out:#?}"
    );

    // A new upstream commit: the next run reuses the clone (fetch, no new clone) and sees it.
    std::fs::write(up.join("version.txt"), "2\n").unwrap();
    git(up, &["commit", "-q", "-am", "second"]);
    let t2 = launch(&a, p, tpl).await;
    let task = wait_finished(&a, p, t2, Duration::from_secs(30)).await;
    let out = lines(&a, p, t2).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    assert_eq!(out[..4], server_head(t2, "from-git")[..], "{out:#?}");
    assert!(
        out.contains(&format!("Updating Repository {url}")),
        "{out:#?}"
    );
    assert!(
        !out.iter().any(|l| l.starts_with("Cloning Repository")),
        "the existing clone is fetched, not cloned again: {out:#?}"
    );
    assert!(out.ends_with(&git_script_lines("2")), "{out:#?}");

    // commit_hash moves the checkout to that commit.
    let t3 = id_of(
        &launch_with(
            &a,
            p,
            json!({"template_id": tpl, "commit_hash": first_commit.clone()}),
        )
        .await,
    );
    let task = wait_finished(&a, p, t3, Duration::from_secs(30)).await;
    let out = lines(&a, p, t3).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    assert_eq!(task["commit_hash"], first_commit.as_str());
    assert!(out.ends_with(&git_script_lines("1")), "{out:#?}");

    // The task's git_branch wins over the repository's.
    git(up, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(up.join("version.txt"), "feature\n").unwrap();
    git(up, &["commit", "-q", "-am", "feature"]);
    git(up, &["checkout", "-q", "main"]);
    let t4 = id_of(&launch_with(&a, p, json!({"template_id": tpl, "git_branch": "feature"})).await);
    let task = wait_finished(&a, p, t4, Duration::from_secs(30)).await;
    let out = lines(&a, p, t4).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    assert!(out.ends_with(&git_script_lines("feature")), "{out:#?}");

    // And back on main afterwards (the clone follows the branch asked for).
    let t5 = launch(&a, p, tpl).await;
    assert_eq!(
        wait_finished(&a, p, t5, Duration::from_secs(30)).await["status"],
        "success"
    );
    assert!(lines(&a, p, t5).await.ends_with(&git_script_lines("2")));
}

/// Regression: with the default `./forge.redb` git ran in a checkout's parent with the relative
/// work-dir path, so every clone failed (`./forge.redb.work/repos/...: No such file`).
#[tokio::test(flavor = "multi_thread")]
async fn a_relative_db_path_still_clones() {
    let cwd = tempfile::tempdir().unwrap();
    let upstream = tempfile::tempdir().unwrap();
    let up = upstream.path();
    git(up, &["init", "-q", "-b", "main"]);
    write_script(up, "run.sh", GIT_SCRIPT);
    std::fs::write(up.join("version.txt"), "rel\n").unwrap();
    git(up, &["add", "."]);
    git(up, &["commit", "-q", "-m", "first"]);

    let mut cmd = common::process::forge_serve(Path::new("./forge.redb"), &[]);
    cmd.current_dir(cwd.path());
    let server = ServerProcess::spawn(cmd);
    let mut a = server.client();
    assert_eq!(a.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let p = new_project(&a, "Relative").await;
    let url = format!("file://{}", up.display());
    let repo = add_repo(&a, p, "upstream", &url, "main").await;
    let tpl = common::bash_template(&a, p, "rel", repo, "run.sh", json!({})).await;
    let t = launch(&a, p, tpl).await;
    let task = wait_finished(&a, p, t, Duration::from_secs(30)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    assert!(out.ends_with(&git_script_lines("rel")), "{out:#?}");
    server.stop();
    // Everything landed beside the db, in the folder it was started from.
    let work = cwd.path().join("forge.redb.work");
    assert!(cwd.path().join("forge.redb").is_file());
    assert!(cwd.path().join("forge.redb.key").is_file());
    assert!(work.is_dir(), "no work dir in {}", cwd.path().display());
    assert!(
        !work.join("repos").join("forge.redb.work").exists(),
        "a clone nested the relative path"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_path_repository_runs_in_place() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let script = "echo \"cwd: $(pwd)\"\necho one; echo two >&2; echo three\n\
                  for i in $(seq 1 100); do echo \"o$i\"; echo \"e$i\" >&2; done\n";
    let setup = Setup::new(&a, "Local", &[("inplace", script)]).await;
    let (p, tpl) = (setup.p, setup.tpls[0]);
    let t = launch(&a, p, tpl).await;
    let task = wait_finished(&a, p, t, Duration::from_secs(30)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    let mut want = server_head(t, "inplace");
    let cwd = setup.path().canonicalize().unwrap();
    want.push(format!("cwd: {}", cwd.display()));
    want.extend(owned(&["one", "two", "three"]));
    for i in 1..=100 {
        want.push(format!("o{i}"));
        want.push(format!("e{i}"));
    }
    assert_eq!(out, want, "no clone for a local path; every line in order");
}

// =============================================================================================
// 2. Exit status, variables, arguments, environment, stdin
// =============================================================================================

const ARGS_SCRIPT: &str = r#"echo "script:$0"
for a in "$@"; do echo "arg:$a"; done
echo "env:MY_ENV=${MY_ENV-unset}"
echo "env:TOKEN=${TOKEN-unset}"
echo "env:PASSWD=${PASSWD-unset}"
echo "env:FORGE_TASK_ID=${FORGE_TASK_ID-unset}"
echo "env:HOME=${HOME-unset}"
if read -r x; then echo "stdin:got:$x"; else echo "stdin:eof"; fi
env | LC_ALL=C sort | sed 's/^/envdump:/'
"#;

fn args_of(out: &[String]) -> Vec<String> {
    out.iter()
        .filter_map(|l| l.strip_prefix("arg:"))
        .map(str::to_owned)
        .collect()
}

fn env_line<'a>(out: &'a [String], name: &str) -> &'a str {
    let prefix = format!("env:{name}=");
    out.iter()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} line in {out:#?}"))
}

/// Names of the child's environment variables (from `env` output).
fn env_names(out: &[String]) -> BTreeSet<String> {
    out.iter()
        .filter_map(|l| l.strip_prefix("envdump:"))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_status_variables_arguments_and_a_minimal_environment() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let fail = "echo \"before failing\"\nfor a in \"$@\"; do echo \"arg:$a\"; done\nexit 3\n";
    let setup = Setup::new(&a, "Vars", &[("args", ARGS_SCRIPT), ("fail", fail)]).await;
    let p = setup.p;

    // Non-zero exit → error with upstream's line. A task `environment` on a template without
    // an environment still works (upstream fails the launch), as KEY=VALUE arguments.
    let t = id_of(
        &launch_with(
            &a,
            p,
            json!({"template_id": setup.tpls[1], "environment": "{\"k\":\"v\"}"}),
        )
        .await,
    );
    let task = wait_finished(&a, p, t, Duration::from_secs(30)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "error", "{out:#?}");
    assert!(task["end"].is_string(), "{task}");
    assert_eq!(args_of(&out), ["k=v"], "{out:#?}");
    assert!(out.contains(&"before failing".to_owned()));
    assert!(
        out.contains(&"Running app failed: exit status 3".to_owned()),
        "{out:#?}"
    );

    // An environment with extra vars, env vars and both kinds of secrets.
    let r = a
        .post(
            &at(p, "environment"),
            json!({"name": "vars", "project_id": p,
                   "json": "{\"shared\":\"from env\",\"from_env\":\"e 1\"}",
                   "env": "{\"MY_ENV\":\"hello world\"}",
                   "secrets": [
                       {"operation": "create", "type": "env", "name": "TOKEN", "secret": "tok-7f3a"},
                       {"operation": "create", "type": "var", "name": "PASSWD", "secret": "pw 7f3a"},
                       {"operation": "create", "type": "var", "name": "APIKEY", "secret": "k-7f3a"}]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let env = id_by_name(&a, &at(p, "environment"), "vars").await;
    let with_args = common::bash_template(
        &a,
        p,
        "with-args",
        setup.repo,
        "args.sh",
        json!({"environment_id": env, "arguments": "[\"targ1\",\"t arg 2\"]",
               "allow_override_args_in_task": true}),
    )
    .await;
    let no_override = common::bash_template(
        &a,
        p,
        "no-override",
        setup.repo,
        "args.sh",
        json!({"environment_id": env, "arguments": "[\"targ1\"]",
               "allow_override_args_in_task": false}),
    )
    .await;

    let t = id_of(
        &launch_with(
            &a,
            p,
            json!({"template_id": with_args,
                   "environment": "{\"shared\":\"from task\",\"tk\":\"tv\",\"num\":5}",
                   "arguments": "[\"--flag\",\"x y\"]"}),
        )
        .await,
    );
    let task = wait_finished(&a, p, t, Duration::from_secs(30)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    assert_eq!(
        out.iter().find_map(|l| l.strip_prefix("script:")),
        Some("args.sh"),
        "{out:#?}"
    );
    // argv (§8.3): template args, KEY=VALUE extra vars (environment json merged with the
    // task's, task keys winning), task args. Upstream's map order is random, so each block is
    // compared as a set. Var secrets, which upstream puts first, are in the environment
    // instead (issue 16: `ps` shows argv).
    let args = args_of(&out);
    assert_eq!(args.len(), 2 + 4 + 2, "{args:#?}");
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(args[..2], owned(&["targ1", "t arg 2"])[..], "{args:#?}");
    assert_eq!(
        set(&args[2..6]),
        set(&owned(&[
            "from_env=e 1",
            "num=5",
            "shared=from task",
            "tk=tv"
        ])),
        "{args:#?}"
    );
    assert_eq!(args[6..], owned(&["--flag", "x y"])[..], "{args:#?}");
    // Env vars and both kinds of secrets as environment variables, never in argv.
    assert_eq!(env_line(&out, "MY_ENV"), "hello world");
    assert_eq!(env_line(&out, "TOKEN"), "tok-7f3a");
    assert_eq!(env_line(&out, "PASSWD"), "pw 7f3a");
    assert!(
        !args.iter().any(|a| a.contains("7f3a")),
        "a secret in argv: {args:#?}"
    );
    assert_eq!(env_line(&out, "FORGE_TASK_ID"), t.to_string());
    // Empty stdin.
    assert!(out.contains(&"stdin:eof".to_owned()), "{out:#?}");
    // A minimal environment: nothing of the server's (which here is this test process's).
    let names = env_names(&out);
    let allowed: BTreeSet<String> = owned(&[
        "PATH",
        "HOME",
        "LANG",
        "TMPDIR",
        "PWD",
        "FORGE_TASK_ID",
        "MY_ENV",
        "TOKEN",
        "PASSWD",
        "APIKEY",
        // set by bash itself / by `env`
        "SHLVL",
        "_",
        "OLDPWD",
    ])
    .into_iter()
    .collect();
    let extra: Vec<&String> = names.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "unexpected variables in the child: {extra:?}"
    );
    let base = ["PATH", "HOME", "PWD", "FORGE_TASK_ID"];
    for required in base.iter().chain(&["MY_ENV", "TOKEN", "PASSWD", "APIKEY"]) {
        assert!(names.contains(*required), "{required} missing: {names:?}");
    }
    let ours: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !allowed.contains(k))
        .collect();
    assert!(
        !ours.is_empty(),
        "this test process has variables of its own"
    );
    for k in &ours {
        assert!(
            !names.contains(k),
            "server variable {k} leaked into the child"
        );
    }
    if let Ok(home) = std::env::var("HOME") {
        assert_ne!(env_line(&out, "HOME"), home, "HOME is a per-task dir");
    }

    // Task arguments are ignored when the template does not allow them.
    let t = id_of(
        &launch_with(
            &a,
            p,
            json!({"template_id": no_override, "arguments": "[\"--ignored\"]"}),
        )
        .await,
    );
    let task = wait_finished(&a, p, t, Duration::from_secs(30)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    let args = args_of(&out);
    assert_eq!(args[0], "targ1");
    assert_eq!(
        set(&args[1..]),
        set(&owned(&["from_env=e 1", "shared=from env"])),
        "{args:#?}"
    );
}

// =============================================================================================
// 3. JSON shapes, lists, bad input
// =============================================================================================

const TASK_FIELDS: &[&str] = &[
    "id",
    "template_id",
    "project_id",
    "status",
    "debug",
    "dry_run",
    "diff",
    "playbook",
    "environment",
    "limit",
    "secret",
    "arguments",
    "git_branch",
    "user_id",
    "integration_id",
    "schedule_id",
    "created",
    "start",
    "end",
    "message",
    "commit_hash",
    "commit_message",
    "build_task_id",
    "version",
    "inventory_id",
];

const TPL_FIELDS: &[&str] = &[
    "tpl_playbook",
    "tpl_alias",
    "tpl_type",
    "tpl_app",
    "user_name",
    "build_task",
];

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn without(v: &Value, fields: &[&str]) -> Value {
    let mut out = v.clone();
    let obj = out.as_object_mut().expect("object");
    for f in fields {
        obj.remove(*f);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn task_json_lists_and_refused_launches() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let me = a.get("/api/user").await.json();
    let uid = id_of(&me);
    let setup = Setup::new(
        &a,
        "Shapes",
        &[("ok", "echo ok\n"), ("other", "echo other\n")],
    )
    .await;
    let (p, ok, other) = (setup.p, setup.tpls[0], setup.tpls[1]);

    // POST → 201, §7.1 exactly; the secret is never echoed.
    let r = a
        .post(
            &at(p, "tasks"),
            json!({"template_id": ok, "message": "deploy 1.2", "environment": "{\"x\":\"1\"}",
                   "secret": "{\"pw\":\"hidden-7f3a\"}", "git_branch": null, "debug": true,
                   "params": {"dry_run": true}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(!r.text().contains("hidden-7f3a"));
    let posted = r.json();
    let t1 = id_of(&posted);
    let expected = json!({
        "id": t1, "template_id": ok, "project_id": p, "status": "waiting",
        "debug": true, "dry_run": true, "diff": false, "playbook": "",
        "environment": "{\"x\":\"1\"}", "limit": "", "secret": "{}", "arguments": null,
        "git_branch": null, "user_id": uid, "integration_id": null, "schedule_id": null,
        "created": T0_TEXT, "start": null, "end": null, "message": "deploy 1.2",
        "commit_hash": null, "commit_message": "", "build_task_id": null, "version": null,
        "inventory_id": null});
    assert_eq!(posted, expected);

    // GET after it ran: same shape, secret "", start/end set.
    let done = wait_finished(&a, p, t1, Duration::from_secs(30)).await;
    let mut want = expected.clone();
    want["status"] = json!("success");
    want["secret"] = json!("");
    want["start"] = json!(T0_TEXT);
    want["end"] = json!(T0_TEXT);
    assert_eq!(done, want);
    let r = a.get(&task_path(p, t1)).await;
    assert!(!r.text().contains("hidden-7f3a"));

    let t2 = launch(&a, p, other).await;
    wait_finished(&a, p, t2, Duration::from_secs(30)).await;
    let t3 = id_of(
        &launch_with(
            &a,
            p,
            json!({"template_id": ok, "arguments": "[\"a\"]", "git_branch": "dev",
                   "commit_hash": "abc1234"}),
        )
        .await,
    );
    let t3_done = wait_finished(&a, p, t3, Duration::from_secs(30)).await;
    assert_eq!(t3_done["arguments"], "[\"a\"]");
    assert_eq!(t3_done["git_branch"], "dev");
    assert_eq!(t3_done["commit_hash"], "abc1234");
    assert!(t2 > t1 && t3 > t2, "increasing ids: {t1} {t2} {t3}");

    // Lists: TaskWithTpl, newest first.
    let all = list(&a, &at(p, "tasks")).await;
    let ids: Vec<u64> = all.iter().map(id_of).collect();
    assert_eq!(ids, [t3, t2, t1]);
    for item in &all {
        let want_keys: BTreeSet<String> = TASK_FIELDS
            .iter()
            .chain(TPL_FIELDS)
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(keys(item), want_keys, "{item}");
        let single = get_task(&a, p, id_of(item)).await;
        assert_eq!(
            without(item, TPL_FIELDS),
            single,
            "list element = task + tpl fields"
        );
        assert_eq!(item["tpl_app"], "bash");
        assert_eq!(item["tpl_type"], "");
        assert_eq!(item["user_name"], "Admin");
        assert_eq!(item["build_task"], Value::Null);
    }
    assert_eq!(all[0]["tpl_alias"], "ok");
    assert_eq!(all[0]["tpl_playbook"], "ok.sh");
    assert_eq!(all[1]["tpl_alias"], "other");
    assert_eq!(all[1]["tpl_playbook"], "other.sh");

    let last = list(&a, &at(p, "tasks/last?limit=2")).await;
    assert_eq!(last.iter().map(id_of).collect::<Vec<_>>(), [t3, t2]);
    assert_eq!(last[0], all[0]);
    let last = list(&a, &at(p, "tasks/last")).await;
    assert_eq!(last.len(), 3);
    // Bad launches: 400 and nothing stored.
    let q = new_project(&a, "Elsewhere").await;
    let q_repo = add_repo(&a, q, "local", setup.path().to_str().unwrap(), "").await;
    let foreign = common::bash_template(&a, q, "foreign", q_repo, "ok.sh", json!({})).await;
    let bad: Vec<(&str, Value)> = vec![
        ("no template_id", json!({})),
        ("template_id 0", json!({"template_id": 0})),
        ("unknown template", json!({"template_id": 999_999})),
        (
            "template of another project",
            json!({"template_id": foreign}),
        ),
        ("template_id not a number", json!({"template_id": "x"})),
        (
            "environment not JSON",
            json!({"template_id": ok, "environment": "not json"}),
        ),
        (
            "environment an array",
            json!({"template_id": ok, "environment": "[1,2]"}),
        ),
        (
            "arguments not JSON",
            json!({"template_id": ok, "arguments": "--flag"}),
        ),
        (
            "arguments not strings",
            json!({"template_id": ok, "arguments": "[1]"}),
        ),
        (
            "arguments an object",
            json!({"template_id": ok, "arguments": "{\"a\":\"b\"}"}),
        ),
        (
            "commit_hash not hex",
            json!({"template_id": ok, "commit_hash": "xyz!"}),
        ),
        (
            "commit_hash an option",
            json!({"template_id": ok, "commit_hash": "--upload-pack=touch /tmp/x"}),
        ),
        (
            "git_branch an option",
            json!({"template_id": ok, "git_branch": "--upload-pack=x"}),
        ),
        (
            "git_branch with ..",
            json!({"template_id": ok, "git_branch": "a..b"}),
        ),
        (
            "git_branch with a space",
            json!({"template_id": ok, "git_branch": "a b"}),
        ),
    ];
    for (what, body) in bad {
        let r = a.post(&at(p, "tasks"), body.clone()).await;
        assert_eq!(r.status, 400, "{what}: {body} → {}", r.text());
    }
    for raw in [&b"not json"[..], b"[1]", b""] {
        let r = a
            .raw("POST", &at(p, "tasks"), Some(raw.to_vec()), &[])
            .await;
        assert_eq!(
            r.status,
            400,
            "body {:?} → {}",
            String::from_utf8_lossy(raw),
            r.text()
        );
    }
    // Validation errors say why.
    let r = a
        .post(
            &at(p, "tasks"),
            json!({"template_id": ok, "arguments": "[1]"}),
        )
        .await;
    r.assert_error(400);
    let r = a
        .post(&at(p, "tasks"), json!({"template_id": foreign}))
        .await;
    r.assert_error(400);
    assert_eq!(
        list(&a, &at(p, "tasks"))
            .await
            .iter()
            .map(id_of)
            .collect::<Vec<_>>(),
        [t3, t2, t1],
        "nothing stored by refused launches"
    );
    assert_eq!(list(&a, &at(q, "tasks")).await.len(), 0);
    // A task of another project is not visible through this one.
    let r = a.get(&at(q, &format!("tasks/{t1}"))).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = a.get(&at(q, &format!("tasks/{t1}/output"))).await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Per-template lists.
    let of_ok = list(&a, &at(p, &format!("templates/{ok}/tasks"))).await;
    assert_eq!(of_ok.iter().map(id_of).collect::<Vec<_>>(), [t3, t1]);
    assert_eq!(of_ok[0], all[0]);
    let of_ok = list(&a, &at(p, &format!("templates/{ok}/tasks/last?limit=1"))).await;
    assert_eq!(of_ok.iter().map(id_of).collect::<Vec<_>>(), [t3]);
    let of_other = list(&a, &at(p, &format!("templates/{other}/tasks"))).await;
    assert_eq!(of_other.iter().map(id_of).collect::<Vec<_>>(), [t2]);
}

// =============================================================================================
// 4. Stop
// =============================================================================================

const TRAP_SCRIPT: &str =
    "trap 'echo \"got TERM\"; sleep 0.3; echo \"bye after TERM\"; exit 0' TERM
sleep 300 &
echo \"pids $$ $!\"
while :; do sleep 0.1; done
";

const STUBBORN_SCRIPT: &str = "trap '' TERM
sleep 300 &
echo \"pids $$ $!\"
while :; do sleep 0.1; done
";

#[tokio::test(flavor = "multi_thread")]
async fn stop_terminates_the_whole_process_group() {
    let s = TestServer::start_with(|c| c.stop_grace_secs = 2).await;
    let a = s.admin().await;
    let setup = Setup::new(
        &a,
        "Stop",
        &[
            ("trap", TRAP_SCRIPT),
            ("forced", TRAP_SCRIPT),
            ("stubborn", STUBBORN_SCRIPT),
        ],
    )
    .await;
    let p = setup.p;
    let (trap, forced, stubborn) = (setup.tpls[0], setup.tpls[1], setup.tpls[2]);

    // SIGTERM: the script's trap runs, the grandchild dies with the group.
    let t = launch(&a, p, trap).await;
    let out = wait_line(&a, p, t, Duration::from_secs(30), |l| {
        l.starts_with("pids ")
    })
    .await;
    let (shell, grandchild) = pids_line(&out);
    assert!(alive(shell) && alive(grandchild));
    let group = group_members(shell);
    assert!(
        group.contains(&shell) && group.contains(&grandchild),
        "the script leads its own process group, with the grandchild in it: {group:?}"
    );
    let r = a
        .raw("POST", &format!("{}/stop", task_path(p, t)), None, &[])
        .await;
    assert_eq!(r.status, 204, "stop with an empty body: {}", r.text());
    assert!(r.body.is_empty());
    let task = wait_finished(&a, p, t, Duration::from_secs(15)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "stopped", "{out:#?}");
    assert!(task["end"].is_string(), "{task}");
    assert!(
        out.contains(&"got TERM".to_owned()),
        "a non-forced stop sends SIGTERM first: {out:#?}"
    );
    assert_gone(shell, &[shell, grandchild], "SIGTERM stop").await;

    // force: SIGKILL at once, the trap never runs.
    let t = launch(&a, p, forced).await;
    let out = wait_line(&a, p, t, Duration::from_secs(30), |l| {
        l.starts_with("pids ")
    })
    .await;
    let (shell, grandchild) = pids_line(&out);
    let r = a
        .post(&format!("{}/stop", task_path(p, t)), json!({"force": true}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let task = wait_finished(&a, p, t, Duration::from_secs(15)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "stopped", "{out:#?}");
    assert!(task["end"].is_string());
    assert!(
        !out.contains(&"got TERM".to_owned()),
        "forced stop kills without SIGTERM: {out:#?}"
    );
    assert_gone(shell, &[shell, grandchild], "forced stop").await;

    // A script ignoring SIGTERM is killed after the grace period.
    let t = launch(&a, p, stubborn).await;
    let out = wait_line(&a, p, t, Duration::from_secs(30), |l| {
        l.starts_with("pids ")
    })
    .await;
    let (shell, grandchild) = pids_line(&out);
    let asked = Instant::now();
    let r = a
        .post(
            &format!("{}/stop", task_path(p, t)),
            json!({"force": false}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let task = wait_finished(&a, p, t, Duration::from_secs(15)).await;
    let took = asked.elapsed();
    assert_eq!(task["status"], "stopped");
    assert!(
        took >= Duration::from_millis(1500),
        "SIGKILL only after the 2 s grace period, took {took:?}"
    );
    assert_gone(shell, &[shell, grandchild], "stop after grace").await;

    // Stopping a finished task leaves it as it was (upstream rewrites it to `stopped`).
    let ok = launch(&a, p, trap).await;
    let out = wait_line(&a, p, ok, Duration::from_secs(30), |l| {
        l.starts_with("pids ")
    })
    .await;
    let (shell, _) = pids_line(&out);
    a.post(
        &format!("{}/stop", task_path(p, ok)),
        json!({"force": true}),
    )
    .await;
    let before = wait_finished(&a, p, ok, Duration::from_secs(15)).await;
    assert_gone(shell, &[shell], "forced stop").await;
    let r = a
        .post(&format!("{}/stop", task_path(p, ok)), json!({}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(get_task(&a, p, ok).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_queued_task_never_runs() {
    let s = TestServer::start_with(|c| c.max_parallel_tasks = 1).await;
    let a = s.admin().await;
    let setup = Setup::new(
        &a,
        "Queue",
        &[
            (
                "blocker",
                "echo blocking\nwhile [ ! -e release ]; do sleep 0.05; done\necho released\n",
            ),
            ("victim", "touch victim-ran\necho victim\n"),
            ("later", "touch later-ran\necho later\n"),
        ],
    )
    .await;
    let (p, dir) = (setup.p, setup.path().to_owned());
    let blocker = launch(&a, p, setup.tpls[0]).await;
    wait_line(&a, p, blocker, Duration::from_secs(30), |l| l == "blocking").await;
    let victim = launch(&a, p, setup.tpls[1]).await;
    let later = launch(&a, p, setup.tpls[2]).await;
    assert_eq!(get_task(&a, p, victim).await["status"], "waiting");

    let r = a
        .raw("POST", &format!("{}/stop", task_path(p, victim)), None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let task = wait_finished(&a, p, victim, Duration::from_secs(10)).await;
    assert_eq!(task["status"], "stopped");
    assert!(task["end"].is_string(), "{task}");
    assert!(
        task["start"].is_null(),
        "a queued task has no start: {task}"
    );

    // Free the slot: the later task runs; the stopped one, ahead of it in the queue, does not.
    std::fs::write(dir.join("release"), "").unwrap();
    assert_eq!(
        wait_finished(&a, p, blocker, Duration::from_secs(30)).await["status"],
        "success"
    );
    assert_eq!(
        wait_finished(&a, p, later, Duration::from_secs(30)).await["status"],
        "success"
    );
    assert!(dir.join("later-ran").exists());
    assert!(
        !dir.join("victim-ran").exists(),
        "the stopped task's script ran"
    );
    let task = get_task(&a, p, victim).await;
    assert_eq!(task["status"], "stopped");
    let out = lines(&a, p, victim).await;
    assert_eq!(out[0], format!("Task {victim} added to queue"));
    assert!(
        !out.iter()
            .any(|l| l.starts_with("Started:") || l == "victim"),
        "{out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_the_clone_is_honoured() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Clone").await;
    // A git server that accepts and never answers: the clone hangs in preparation.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
    let repo = add_repo(&a, p, "hanging", &url, "main").await;
    let tpl = common::bash_template(&a, p, "hangs", repo, "run.sh", json!({})).await;
    let t = launch(&a, p, tpl).await;
    let (mut conn, _) = timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("git connects")
        .unwrap();
    let out = lines(&a, p, t).await;
    assert!(
        out.contains(&format!("Cloning Repository {url}")),
        "{out:#?}"
    );
    assert_eq!(get_task(&a, p, t).await["status"], "running");

    let r = a
        .raw("POST", &format!("{}/stop", task_path(p, t)), None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let task = wait_finished(&a, p, t, Duration::from_secs(10)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "stopped", "{out:#?}");
    assert!(task["end"].is_string());
    // The git processes are gone: the connection they held is closed.
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!(
                "a git process of the stopped task still holds its connection 5 s after the \
                 task ended `stopped` (the clone's helper processes were not killed)"
            ),
        }
    }
}

// =============================================================================================
// 5. Limits
// =============================================================================================

#[tokio::test(flavor = "multi_thread")]
async fn parallel_limits_and_fifo() {
    let s = TestServer::start_with(|c| c.max_parallel_tasks = 2).await;
    let a = s.admin().await;
    let scripts: Vec<(String, &str)> = (0..5).map(|i| (format!("t{i}"), SPAN_SCRIPT)).collect();
    let refs: Vec<(&str, &str)> = scripts.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let setup = Setup::new(&a, "Limits", &refs).await;
    let p = setup.p;

    // Global limit 2: five tasks of five templates.
    let began = Instant::now();
    let mut ids = Vec::new();
    for &tpl in &setup.tpls {
        ids.push(launch(&a, p, tpl).await);
    }
    let mut most_seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        most_seen = most_seen.max(active_count(&a, p).await);
        let statuses = list(&a, &at(p, "tasks")).await;
        if statuses
            .iter()
            .all(|t| is_finished(t["status"].as_str().unwrap_or_default()))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks did not finish: {statuses:?}"
        );
        sleep(Duration::from_millis(30)).await;
    }
    let took = began.elapsed();
    let mut spans = Vec::new();
    for &t in &ids {
        let task = get_task(&a, p, t).await;
        let out = lines(&a, p, t).await;
        assert_eq!(task["status"], "success", "{out:#?}");
        spans.push(span_of(&out));
    }
    assert!(
        most_seen <= 2,
        "API showed {most_seen} tasks running at once"
    );
    assert_eq!(
        max_overlap(&spans),
        2,
        "at most (and, with free slots, exactly) two at once: {spans:?}"
    );
    // Dispatch is immediate: 3 rounds of 0.4 s, no 5 s tick per task.
    assert!(took < Duration::from_secs(10), "five tasks took {took:?}");

    // Two tasks of one template never overlap.
    let x = launch(&a, p, setup.tpls[0]).await;
    let y = launch(&a, p, setup.tpls[0]).await;
    wait_finished(&a, p, x, Duration::from_secs(30)).await;
    wait_finished(&a, p, y, Duration::from_secs(30)).await;
    let sx = span_of(&lines(&a, p, x).await);
    let sy = span_of(&lines(&a, p, y).await);
    assert!(sx.1 <= sy.0, "same template overlapped: {sx:?} {sy:?}");

    // Project limit 1 (PUT), global 2: three templates run one by one, in launch order.
    let r = a
        .put(
            &format!("/api/project/{p}"),
            json!({"id": p, "name": "Limits", "max_parallel_tasks": 1}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let mut ids = Vec::new();
    for &tpl in &setup.tpls[..3] {
        ids.push(launch(&a, p, tpl).await);
    }
    let mut spans = Vec::new();
    for &t in &ids {
        wait_finished(&a, p, t, Duration::from_secs(30)).await;
        spans.push(span_of(&lines(&a, p, t).await));
    }
    assert_eq!(max_overlap(&spans), 1, "project limit 1: {spans:?}");
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "FIFO within the project: {spans:?}"
    );
}

// =============================================================================================
// 6. Timeouts
// =============================================================================================

#[tokio::test(flavor = "multi_thread")]
async fn tasks_running_too_long_are_killed() {
    let s = TestServer::start_with(|c| c.max_task_duration_secs = 1).await;
    let a = s.admin().await;
    let sleeper = "echo \"before $$\"\nsleep 30\necho after\n";
    let setup = Setup::new(
        &a,
        "Timeouts",
        &[
            ("sleeper", sleeper),
            ("quick", "sleep 1.5\necho survived\n"),
        ],
    )
    .await;
    let p = setup.p;
    let own = common::bash_template(
        &a,
        p,
        "own-limit",
        setup.repo,
        "sleeper.sh",
        json!({"max_duration_secs": 1}),
    )
    .await;
    let longer = common::bash_template(
        &a,
        p,
        "longer-limit",
        setup.repo,
        "quick.sh",
        json!({"max_duration_secs": 4}),
    )
    .await;

    let began = Instant::now();
    let by_template = launch(&a, p, own).await;
    let by_default = launch(&a, p, setup.tpls[0]).await;
    let allowed = launch(&a, p, longer).await;
    for t in [by_template, by_default] {
        let task = wait_finished(&a, p, t, Duration::from_secs(20)).await;
        let out = lines(&a, p, t).await;
        assert_eq!(task["status"], "error", "{out:#?}");
        assert!(task["end"].is_string());
        assert!(
            out.iter().any(|l| l.contains("timed out")),
            "a line says why: {out:#?}"
        );
        assert!(!out.contains(&"after".to_owned()));
        let shell: u32 = out
            .iter()
            .find_map(|l| l.strip_prefix("before "))
            .expect("before line")
            .parse()
            .unwrap();
        assert_gone(shell, &[shell], "timed-out task").await;
    }
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "killed well before the 30 s sleep: {:?}",
        began.elapsed()
    );
    // The template's own (longer) limit wins over the server default.
    let task = wait_finished(&a, p, allowed, Duration::from_secs(20)).await;
    let out = lines(&a, p, allowed).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    assert!(out.contains(&"survived".to_owned()));
}

// =============================================================================================
// 7. Output: paging, cap, follow, a million lines
// =============================================================================================

/// A task printing `seq 1 N` in a new project, run to success; its whole output as JSON.
async fn many_lines(a: &Client, project: &str, n: u32) -> (u64, u64, common::Resp) {
    let setup = Setup::new(a, project, &[("many", &format!("seq 1 {n}\n"))]).await;
    let (p, t) = (setup.p, launch(a, setup.p, setup.tpls[0]).await);
    assert_eq!(
        wait_finished(a, p, t, Duration::from_secs(60)).await["status"],
        "success"
    );
    let r = a.get(&format!("{}/output", task_path(p, t))).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    (p, t, r)
}

#[tokio::test(flavor = "multi_thread")]
async fn output_pages_are_exact_slices() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, _) = many_lines(&a, "Paging", 200).await;
    let full = output_json(&a, p, t, "").await;
    assert_eq!(full.len(), 204, "{:#?}", texts(&full));
    for item in &full {
        assert_eq!(
            keys(item),
            owned(&["output", "task", "task_id", "time"])
                .into_iter()
                .collect()
        );
        assert_eq!(item["task_id"], t);
        assert_eq!(item["task"], "");
        assert!(item["time"].as_str().is_some_and(|s| s.ends_with('Z')));
    }
    let mut want = server_head(t, "many");
    want.extend((1..=200).map(|i| i.to_string()));
    assert_eq!(texts(&full), want);
    for (offset, limit) in [
        (0, 10),
        (3, 1),
        (100, 50),
        (150, 100),
        (203, 5),
        (204, 5),
        (500, 5),
    ] {
        let page = output_json(&a, p, t, &format!("?offset={offset}&limit={limit}")).await;
        let end = (offset + limit).min(full.len());
        let start = offset.min(full.len());
        assert_eq!(page, full[start..end], "offset={offset}&limit={limit}");
    }
    let page = output_json(&a, p, t, "?offset=200").await;
    assert_eq!(page, full[200..]);
    let page = output_json(&a, p, t, "?limit=7").await;
    assert_eq!(page, full[..7]);
}

/// Issue 16: one GET of a long output held it all in memory (1 M lines: +900 MB). Past one
/// read batch (1024 lines) the answer is streamed as it is read: chunked, no length, and the
/// same bytes as before (compact JSON, keys sorted, a newline), pages across batch edges
/// included.
#[tokio::test(flavor = "multi_thread")]
async fn long_output_is_streamed_with_the_same_bytes() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, r) = many_lines(&a, "Streamed", 5000).await;
    assert_eq!(r.header("content-length"), None, "not streamed");
    let full: Vec<Value> = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(full.len(), 5004);
    let mut canonical = serde_json::to_vec(&full).unwrap();
    canonical.push(b'\n');
    assert!(
        r.body[..] == canonical[..],
        "bytes differ from the whole-array form"
    );
    let mut want = server_head(t, "many");
    want.extend((1..=5000).map(|i| i.to_string()));
    assert_eq!(texts(&full), want);
    for (offset, limit) in [
        (0, 1024),
        (0, 1025),
        (1023, 2),
        (1000, 2048),
        (4000, 5000),
        (5003, 10),
        (0, 4096),
    ] {
        let r = a
            .get(&format!(
                "{}/output?offset={offset}&limit={limit}",
                task_path(p, t)
            ))
            .await;
        let page: Vec<Value> = serde_json::from_slice(&r.body).expect("JSON");
        let end = (offset + limit).min(full.len());
        assert_eq!(page, full[offset..end], "offset={offset}&limit={limit}");
        let mut canonical = serde_json::to_vec(&page).unwrap();
        canonical.push(b'\n');
        assert!(r.body[..] == canonical[..], "offset={offset}&limit={limit}");
    }
    let page = output_json(&a, p, t, "?offset=3000").await;
    assert_eq!(page, full[3000..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn output_beyond_the_cap_ends_with_one_marker_line() {
    let s = TestServer::start_with(|c| c.output_max_lines = 50).await;
    let a = s.admin().await;
    let setup = Setup::new(&a, "Cap", &[("chatty", "seq 1 200\n")]).await;
    let (p, t) = (setup.p, launch(&a, setup.p, setup.tpls[0]).await);
    let task = wait_finished(&a, p, t, Duration::from_secs(30)).await;
    let out = lines(&a, p, t).await;
    assert_eq!(task["status"], "success", "{out:#?}");
    // 4 server lines + 200 script lines were produced; 50 are kept, one marker says the rest.
    let (kept, marker) = out.split_at(out.len() - 1);
    let marker = &marker[0];
    assert!(
        marker.contains("dropped") || marker.contains("truncated"),
        "last line is the marker: {out:#?}"
    );
    assert_eq!(
        out.iter()
            .filter(|l| l.contains("dropped") || l.contains("truncated"))
            .count(),
        1,
        "one marker: {out:#?}"
    );
    let dropped = 204 - kept.len();
    assert!(
        marker.contains(&dropped.to_string()),
        "the marker mentions the {dropped} dropped lines: {marker:?}"
    );
    assert_eq!(kept[..4], server_head(t, "chatty")[..]);
    let numbers: Vec<String> = (1..=kept.len() - 4).map(|i| i.to_string()).collect();
    assert_eq!(kept[4..], numbers[..], "the first lines are kept");
    // The cap counts every stored line of the task, the launch's `Task N added to queue` too.
    assert_eq!(
        kept.len(),
        50,
        "exactly output_max_lines (50) lines stored before the marker, got {}: {out:#?}",
        kept.len()
    );
}

/// Reads a `?follow=true` response on a raw connection; calls `on_marker` the moment the
/// chunked body first contains `marker`; returns (status line + headers, de-chunked body).
async fn follow_raw(
    addr: SocketAddr,
    cookie: &str,
    path: &str,
    marker: &str,
    on_marker: impl AsyncFnOnce(),
) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut on_marker = Some(on_marker);
    loop {
        let n = timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the stream stalled")
            .expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if on_marker.is_some() && find(&raw, marker.as_bytes()).is_some() {
            (on_marker.take().unwrap())().await;
        }
    }
    assert!(on_marker.is_none(), "{marker:?} never arrived");
    let split = find(&raw, b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (head, String::from_utf8(body).expect("utf-8 body"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = find(b, b"\r\n").expect("chunk size line (stream ended without a last chunk)");
        let size_text = String::from_utf8_lossy(&b[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_streams_lines_while_the_task_runs() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let cookie = a.cookie.clone().expect("session cookie");
    let setup = Setup::new(
        &a,
        "Follow",
        &[("live", "echo line-one-7f3a\nsleep 2\necho line-two-7f3a\n")],
    )
    .await;
    let p = setup.p;
    let t = launch(&a, p, setup.tpls[0]).await;
    let path = format!("{}/output?follow=true", task_path(p, t));

    // curl -N, when available, alongside a raw connection.
    let curl = Command::new("curl").arg("--version").output().is_ok();
    let curl_task = curl.then(|| {
        let (a, url, cookie) = (a.clone(), format!("{}{path}", s.base()), cookie.clone());
        tokio::spawn(async move {
            let mut child = tokio::process::Command::new("curl")
                .args(["-sSN", "--max-time", "30", "-H"])
                .arg(format!("Cookie: {cookie}"))
                .arg(&url)
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn curl");
            let mut reader = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let mut got = Vec::new();
            let mut status_at_first = None;
            while let Some(line) = reader.next_line().await.unwrap() {
                if line == "line-one-7f3a" && status_at_first.is_none() {
                    status_at_first = Some(get_task(&a, p, t).await["status"].clone());
                }
                got.push(line);
            }
            let status = child.wait().await.unwrap();
            assert!(status.success(), "curl: {status}");
            (status_at_first, got)
        })
    });

    let mut status_at_first = Value::Null;
    let (head, body) = follow_raw(s.addr, &cookie, &path, "line-one-7f3a\n", async || {
        status_at_first = get_task(&a, p, t).await["status"].clone();
    })
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert_eq!(
        status_at_first, "running",
        "the first line arrived while the task still ran"
    );
    // The stream ended after the task did, holding every line.
    let task = get_task(&a, p, t).await;
    assert_eq!(
        task["status"], "success",
        "stream ended before the task: {task}"
    );
    let stored = lines(&a, p, t).await;
    let mut want = server_head(t, "live");
    want.extend(owned(&["line-one-7f3a", "line-two-7f3a"]));
    assert_eq!(stored, want);
    assert_eq!(body, format!("{}\n", stored.join("\n")));

    if let Some(curl_task) = curl_task {
        let (status_at_first, got) = curl_task.await.unwrap();
        assert_eq!(
            status_at_first,
            Some(json!("running")),
            "curl -N saw the first line live"
        );
        assert_eq!(got, stored);
    } else {
        eprintln!("curl not found: only the raw-connection follower ran");
    }

    // Following a finished task returns the rest from `offset` and ends.
    let r = a
        .get(&format!("{}/output?follow=true&offset=4", task_path(p, t)))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "line-one-7f3a\nline-two-7f3a\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_lines_with_bounded_server_memory() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &dir.path().join("forge.redb"),
        &[
            ("FORGE_OUTPUT_MAX_LINES", "2000000"),
            ("LEAK_MARKER_7F3A", "server-env-must-not-leak"),
        ],
    );
    let mut a = Client::new(server.addr);
    assert_eq!(a.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let setup = Setup::new(
        &a,
        "Million",
        &[
            ("million", "seq 1 1000000\n"),
            (
                "leak",
                "echo \"marker=${LEAK_MARKER_7F3A-unset}\"\nenv | grep -c LEAK_MARKER || true\n",
            ),
        ],
    )
    .await;
    let p = setup.p;

    // The server's own environment does not reach the child.
    let t = launch(&a, p, setup.tpls[1]).await;
    wait_finished(&a, p, t, Duration::from_secs(30)).await;
    let out = lines(&a, p, t).await;
    assert!(out.contains(&"marker=unset".to_owned()), "{out:#?}");
    assert!(out.ends_with(&owned(&["0"])), "{out:#?}");

    let hwm_before = server.status_kib("VmHWM");
    let began = Instant::now();
    let t = launch(&a, p, setup.tpls[0]).await;
    // Poll while it runs: the server keeps answering.
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(120);
    let task = loop {
        let asked = Instant::now();
        let task = get_task(&a, p, t).await;
        slowest = slowest.max(asked.elapsed());
        if is_finished(task["status"].as_str().unwrap_or_default()) {
            break task;
        }
        assert!(
            Instant::now() < deadline,
            "1M lines not done in 120 s: {task}"
        );
        sleep(Duration::from_millis(200)).await;
    };
    let took = began.elapsed();
    let hwm = server.status_kib("VmHWM");
    let rss = server.status_kib("VmRSS");
    #[allow(clippy::cast_precision_loss)]
    let rate = N as f64 / took.as_secs_f64();
    eprintln!(
        "1M lines: {took:?} ({rate:.0} lines/s); server VmHWM {hwm} KiB (before {hwm_before} \
         KiB), VmRSS {rss} KiB; slowest GET while running {slowest:?}"
    );
    assert_eq!(task["status"], "success", "{task}");
    assert!(
        hwm < 256 * 1024,
        "server peak memory {hwm} KiB exceeds 256 MiB"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "the server stalled for {slowest:?} while storing output"
    );

    // Every line stored: 4 server lines, then 1..=N.
    let page = |q: String| {
        let a = a.clone();
        async move { texts(&output_json(&a, p, t, &q).await) }
    };
    assert_eq!(page("?offset=0&limit=6".into()).await, {
        let mut v = server_head(t, "million");
        v.extend(owned(&["1", "2"]));
        v
    });
    assert_eq!(
        page("?offset=500003&limit=2".into()).await,
        ["500000", "500001"]
    );
    assert_eq!(
        page(format!("?offset={}&limit=5", N + 2)).await,
        ["999999", "1000000"]
    );
    assert!(page(format!("?offset={}", N + 4)).await.is_empty());
    // Every line stored, in order: spot checks across the log and one whole 10 000-line page
    // (a full paged read takes ~15 s against a debug build).
    for k in 0..10u64 {
        let offset = 4 + k * 100_000 + 777;
        let want: Vec<String> = (0..3).map(|i| (offset - 3 + i).to_string()).collect();
        assert_eq!(page(format!("?offset={offset}&limit=3")).await, want);
    }
    let got = page("?offset=700004&limit=10000".into()).await;
    let want: Vec<String> = (700_001..=710_000u64).map(|i| i.to_string()).collect();
    assert_eq!(got, want);

    // Regression (issue 16): one GET of the whole output raised the server's peak from
    // 139 MB to 1,066 MB. Streamed as it is read, the peak stays where it was.
    let before = server.status_kib("VmHWM");
    let began = Instant::now();
    let r = a.get(&format!("{}/output", task_path(p, t))).await;
    let after = server.status_kib("VmHWM");
    assert_eq!(r.status, 200);
    let body = &r.body[..];
    assert!(body.starts_with(b"[{") && body.ends_with(b"}]\n"));
    let count = body.windows(10).filter(|w| w == b"\"task_id\":").count();
    assert_eq!(count, 1_000_004);
    eprintln!(
        "GET of 1M lines: {} bytes in {:?}; server VmHWM {before} KiB before, {after} KiB after",
        body.len(),
        began.elapsed()
    );
    assert!(
        after < before + 64 * 1024,
        "one GET of the output raised the server's peak from {before} KiB to {after} KiB"
    );
}

// =============================================================================================
// 8. Delete
// =============================================================================================

#[tokio::test(flavor = "multi_thread")]
async fn delete_finished_tasks_only_as_admin() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let setup = Setup::new(
        &a,
        "Delete",
        &[(
            "waits",
            "echo waiting\nwhile [ ! -e release ]; do sleep 0.05; done\n",
        )],
    )
    .await;
    let p = setup.p;
    let (mgr_id, mgr) = s.user("mgr", false).await;
    let r = a
        .post(
            &at(p, "users"),
            json!({"user_id": mgr_id, "role": "manager"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let t = launch(&a, p, setup.tpls[0]).await;
    wait_line(&a, p, t, Duration::from_secs(30), |l| l == "waiting").await;
    let r = a.delete(&task_path(p, t)).await;
    assert_eq!(
        r.status,
        400,
        "a running task cannot be deleted: {}",
        r.text()
    );
    assert_eq!(get_task(&a, p, t).await["status"], "running");

    std::fs::write(setup.path().join("release"), "").unwrap();
    assert_eq!(
        wait_finished(&a, p, t, Duration::from_secs(30)).await["status"],
        "success"
    );
    let r = mgr.delete(&task_path(p, t)).await;
    assert_eq!(r.status, 401, "non-admin manager: {}", r.text());
    assert_eq!(get_task(&a, p, t).await["status"], "success");
    assert!(!lines(&a, p, t).await.is_empty());

    let r = a.delete(&task_path(p, t)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let r = a.get(&task_path(p, t)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = a.get(&format!("{}/output", task_path(p, t))).await;
    assert_eq!(r.status, 400, "output gone with the task: {}", r.text());
    assert!(list(&a, &at(p, "tasks")).await.is_empty());
    // A new task of the same template starts with a fresh log.
    std::fs::remove_file(setup.path().join("release")).unwrap();
    let t2 = launch(&a, p, setup.tpls[0]).await;
    assert_ne!(t2, t);
    let out = wait_line(&a, p, t2, Duration::from_secs(30), |l| l == "waiting").await;
    assert_eq!(out[0], format!("Task {t2} added to queue"));
    std::fs::write(setup.path().join("release"), "").unwrap();
    wait_finished(&a, p, t2, Duration::from_secs(30)).await;
}
