//! The web page (`web/`, embedded in the binary) driven in a real headless Chromium against a
//! real `forge serve` process, by `tests/js/browser.mjs` (playwright-core): a wrong password
//! shows the server's error; logging in shows "Signed in as"; "Create token" shows the token
//! once and lists it by its handle; the token then works as Bearer for `curl` and for our own
//! client; "Expire" marks it expired and the server refuses it afterwards (401); "Log out"
//! brings the login form back. The page must run under the server's Content-Security-Policy
//! without a violation. A full-page screenshot of the token list is saved under
//! `target/test-artifacts/`.
//!
//! The console (`web/console.js`, `web/logview.js`) is driven by `tests/js/console.mjs` against a
//! project made here (bash templates in a local repository, one with a survey, a schedule, a
//! guest member): run through the survey form, output arriving while the task runs with ANSI
//! colours as spans and markup kept as text, Stop, a second tab's task list following without a
//! reload, a 100 000-line task (all lines arrive, few line nodes in the DOM), keyboard only, a
//! guest's disabled Run, a phone-sized screen. What the page showed is then checked against the
//! server (statuses, the survey values in the task's `environment`, the stored line count).
//! Screenshots: `target/test-artifacts/console-*.png`.
//!
//! Needs `node`, `/usr/bin/chromium`, `tests/js/node_modules/playwright-core` and `curl`, all
//! installed by `.ci/install-tools.sh`. Without them the test fails in CI (`CI=true`) and is
//! skipped elsewhere.
#![warn(clippy::pedantic)]

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::tools::{self, root};
use common::{ADMIN, ADMIN_PASSWORD};

/// How long the whole browser run may take (the script gives up after 30 s by itself).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The browser script's process; killed if the test ends early.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    deadline: Instant,
    /// The script, for messages.
    path: String,
}

impl Script {
    fn start(base: &str, screenshot: &Path) -> Self {
        let mut args = vec![OsString::from("--pause")];
        args.extend([base, ADMIN, ADMIN_PASSWORD].map(OsString::from));
        args.push(screenshot.into());
        Self::run("tests/js/browser.mjs", &args, RUN_TIMEOUT)
    }

    /// `node <script> <args>` in the repository root, given `timeout` in all.
    fn run(script: &str, args: &[OsString], timeout: Duration) -> Self {
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node {script}: {e}"));
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Self {
            child,
            stdin,
            stdout,
            stderr,
            deadline: Instant::now() + timeout,
            path: script.to_owned(),
        }
    }

    /// The next stdout line; `None` at its end.
    fn next_line(&mut self) -> Option<String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => self.fail("no output in the time given"),
        }
    }

    /// Reads stdout until a line starts with `prefix`; returns the rest of that line.
    fn value(&mut self, prefix: &str) -> String {
        loop {
            match self.next_line() {
                Some(line) => {
                    if let Some(v) = line.strip_prefix(prefix) {
                        return v.to_owned();
                    }
                }
                None => self.fail(&format!("the script ended without printing {prefix}")),
            }
        }
    }

    /// Lets the paused script go on (to expire the token).
    fn resume(&mut self) {
        let mut stdin = self.stdin.take().expect("stdin");
        stdin
            .write_all(b"continue\n")
            .unwrap_or_else(|e| self.fail(&format!("writing to the script's stdin: {e}")));
    }

    /// Waits for the exit, asserts success, and returns the script's progress log (stderr).
    fn finish(mut self) -> String {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                break status;
            }
            if Instant::now() > self.deadline {
                self.fail("did not finish in the time given");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .expect("stderr reader");
        assert!(
            status.success(),
            "{} exited with {status}:\n{log}",
            self.path
        );
        log
    }

    /// Kills the script and panics with `why` and what it logged.
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        panic!("{}: {why}\n{log}", self.path);
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -s -H "Authorization: Bearer <token>" <url>` → (HTTP status, body).
fn curl_bearer(url: &str, token: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(["-H", "Accept: application/json"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("curl output is UTF-8");
    let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
    (code.trim().parse().expect("HTTP status"), body.to_owned())
}

fn screenshot_path() -> PathBuf {
    let dir = root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir.join("browser-tokens.png")
}

#[tokio::test(flavor = "multi_thread")]
async fn web_page_logs_in_creates_and_expires_a_token() {
    let mut missing = tools::missing_for_browser();
    if tools::find("curl").is_none() {
        missing.push("curl".to_owned());
    }
    if !tools::ready("the browser test", &missing) {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("forge.redb"), &[]);
    let base = format!("http://{}", server.addr);
    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);

    let started = Instant::now();
    let mut script = Script::start(&base, &screenshot);

    // The script has logged in, created the token and paused: the token works as Bearer.
    let token = script.value("TOKEN=");
    assert!(
        token.len() == 44
            && token.ends_with('=')
            && token[..43]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'),
        "the page showed a token of an unexpected shape: {token:?}"
    );
    let (status, body) = curl_bearer(&format!("{base}/api/user"), &token);
    assert_eq!(status, 200, "curl with the page's token: {body}");
    let me: serde_json::Value = serde_json::from_str(&body).expect("GET /api/user is JSON");
    assert_eq!(me["username"], ADMIN, "{me}");
    let bearer = server.client().with_bearer(&token);
    let r = bearer.get("/api/user").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["username"], ADMIN);

    // Let it expire the token and log out.
    script.resume();
    let shot = script.value("SCREENSHOT=");
    let log = script.finish();
    let elapsed = started.elapsed();

    // The expired token is refused now.
    let (status, body) = curl_bearer(&format!("{base}/api/user"), &token);
    assert_eq!(status, 401, "curl with the expired token: {body}");
    bearer.get("/api/user").await.assert_error(401);

    assert_eq!(Path::new(&shot), screenshot, "screenshot path");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a real screenshot: {} bytes",
        png.len()
    );

    eprint!("{log}");
    println!(
        "browser run took {:.1} s; screenshot: {}",
        elapsed.as_secs_f64(),
        screenshot.display()
    );
    server.stop();
}

/// How long the console run may take (the script gives up after 150 s by itself).
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(180);

/// A project member whose role (guest) may not run tasks.
const GUEST: &str = "gail";
const GUEST_PASSWORD: &str = "pw-of-gail";

/// Lines the flood template prints (the 100 k).
const FLOOD_LINES: u64 = 100_000;

/// The scripts of the console's project, in a local-path repository.
const CONSOLE_SCRIPTS: &[(&str, &str)] = &[
    (
        "slow.sh",
        "printf 'survey: %s\\n' \"$*\"\n\
         printf '\\033[31mred text\\033[0m and \\033[1;32mbold green\\033[0m\\n'\n\
         echo '<img src=x data-bad=1>not <b>bold</b>'\n\
         for i in $(seq 1 12); do echo \"slow line $i\"; sleep 0.4; done\n\
         echo 'slow done'\n",
    ),
    (
        "long.sh",
        "echo 'long task started'\nfor i in $(seq 1 600); do echo \"tick $i\"; sleep 1; done\n",
    ),
    (
        "flood.sh",
        "seq 1 100000 | sed 's/^/flood line /'\necho 'flood done'\n",
    ),
    ("quick.sh", "echo 'quick ran'\n"),
];

/// A project with a local repository, the four bash templates (`slow` with a survey), a
/// schedule and an integration with one filtered delivery; returns the project id.
async fn console_project(a: &common::Client, repo: &Path) -> u64 {
    use common::{at, id_of};
    use serde_json::json;
    for (name, body) in CONSOLE_SCRIPTS {
        std::fs::write(repo.join(name), body).expect("write script");
    }
    let p = common::new_project(a, "Console demo").await;
    let repo_id = common::local_repository(a, p, repo).await;
    let mut quick = 0;
    for (name, _) in CONSOLE_SCRIPTS {
        let template = name.trim_end_matches(".sh");
        let mut body = json!({"name": template, "project_id": p, "app": "bash",
                              "playbook": name, "repository_id": repo_id});
        if template == "slow" {
            body["description"] = json!("prints a line every 0.4 s");
            body["survey_vars"] = json!([
                {"name": "greeting", "title": "Greeting", "description": "said first",
                 "type": "", "required": true, "values": []},
                {"name": "count", "title": "Count", "description": "", "type": "int",
                 "required": false, "values": []},
            ]);
        }
        let r = a.post(&at(p, "templates"), body).await;
        assert_eq!(r.status, 201, "{}", r.text());
        if template == "quick" {
            quick = id_of(&r.json());
        }
    }
    let r = a
        .post(
            &at(p, "schedules"),
            json!({"name": "nightly", "template_id": quick, "cron_format": "30 2 * * *",
                   "active": true, "project_id": p}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // An integration whose one delivery was filtered out (no task), for the integrations list.
    let (hook, alias) = common::open_webhook(a, p, "on-push", quick).await;
    let r = a
        .post(
            &at(p, &format!("integrations/{hook}/matchers")),
            json!({"name": "push only", "match_type": "header", "method": "equals",
                   "key": "X-Event", "value": "push"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = a
        .raw(
            "POST",
            &format!("/api/integrations/{alias}"),
            Some(b"{}".to_vec()),
            &[],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn console_runs_watches_and_stops_tasks() {
    use common::{at, ok_json};
    if !tools::ready("the console browser test", &tools::missing_for_browser()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let lines = (FLOOD_LINES * 2).to_string();
    let server = ServerProcess::start(
        &dir.path().join("forge.redb"),
        &[("FORGE_OUTPUT_MAX_LINES", lines.as_str())],
    );
    let base = format!("http://{}", server.addr);
    let mut admin = server.client();
    admin.login(ADMIN, ADMIN_PASSWORD).await;
    let p = console_project(&admin, repo.path()).await;
    let r = admin
        .post(
            "/api/users",
            serde_json::json!({"name": "Gail Guest", "username": GUEST, "email": "guest@example.com",
                               "password": GUEST_PASSWORD, "admin": false}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let guest = common::id_of(&r.json());
    let r = admin
        .post(
            &at(p, "users"),
            serde_json::json!({"user_id": guest, "role": "guest"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let args = [
        base.as_str(),
        ADMIN,
        ADMIN_PASSWORD,
        &p.to_string(),
        GUEST,
        GUEST_PASSWORD,
    ]
    .map(OsString::from)
    .into_iter()
    .chain([artifacts.clone().into_os_string()])
    .collect::<Vec<_>>();
    let mut script = Script::run("tests/js/console.mjs", &args, CONSOLE_TIMEOUT);
    let ids: serde_json::Value =
        serde_json::from_str(&script.value("TASKS=")).expect("TASKS= is JSON");
    let log = script.finish();
    eprint!("{log}");

    // What the browser saw is what the server stored.
    let task = |name: &str| {
        ids[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {ids}"))
    };
    let get = |t: u64| {
        let admin = &admin;
        async move { ok_json(admin, &at(p, &format!("tasks/{t}"))).await }
    };
    assert_eq!(get(task("slow")).await["status"], "success");
    assert_eq!(get(task("long")).await["status"], "stopped");
    assert_eq!(get(task("flood")).await["status"], "success");
    assert_eq!(get(task("quick")).await["status"], "success");
    let slow = get(task("slow")).await;
    let env: serde_json::Value =
        serde_json::from_str(slow["environment"].as_str().unwrap()).expect("environment JSON");
    assert_eq!(
        env,
        serde_json::json!({"greeting": "hello world", "count": 3})
    );
    let stored = ok_json(&admin, &at(p, &format!("tasks/{}/output", task("flood")))).await;
    let stored = stored.as_array().unwrap();
    let shown = ids["flood_lines"].as_u64().unwrap();
    assert_eq!(shown, stored.len() as u64, "lines in the page vs stored");
    assert!(shown > FLOOD_LINES, "{shown} lines");
    for name in [
        "console-project",
        "console-task",
        "console-flood",
        "console-phone",
    ] {
        let png = std::fs::read(artifacts.join(format!("{name}.png"))).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
            "{name}"
        );
    }
    server.stop();
}

/// The two-factor login on the page (`tests/js/totp.mjs`, issue 16): enabling with the QR code,
/// the recovery codes shown once, and the verify step of the next logins. The server then
/// confirms that the user's password alone no longer opens a full session.
#[tokio::test(flavor = "multi_thread")]
async fn web_page_enables_two_factor_login_and_asks_for_a_code() {
    if !tools::ready("the two-factor browser test", &tools::missing_for_browser()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("forge.redb"), &[]);
    let base = format!("http://{}", server.addr);
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let r = admin
        .post(
            "/api/users",
            serde_json::json!({"name": "Ada", "username": "ada", "email": "ada@example.com",
                               "password": "pw-of-ada", "admin": false}),
        )
        .await;
    assert_eq!(r.status, 201, "create user: {}", r.text());
    let screenshot = root().join("target/test-artifacts/browser-totp.png");
    let args: Vec<OsString> = [base.as_str(), "ada", "pw-of-ada"]
        .into_iter()
        .map(OsString::from)
        .chain([screenshot.into_os_string()])
        .collect();
    let script = Script::run("tests/js/totp.mjs", &args, RUN_TIMEOUT);
    let log = script.finish();
    eprintln!("{log}");

    let mut c = server.client();
    assert_eq!(c.login("ada", "pw-of-ada").await.status, 204);
    let r = c.get("/api/user").await;
    r.assert_error(401);
    assert_eq!(r.json()["verify"], "totp");
}
