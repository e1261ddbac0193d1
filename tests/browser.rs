//! The web page (`web/`, embedded in the binary) driven in a real headless Chromium against a
//! real `forge serve` process, by `tests/js/browser.mjs` (playwright-core): a wrong password
//! shows the server's error; logging in shows "Signed in as"; "Create token" shows the token
//! once and lists it by its handle; the token then works as Bearer for `curl` and for our own
//! client; "Expire" marks it expired and the server refuses it afterwards (401); "Log out"
//! brings the login form back. The page must run under the server's Content-Security-Policy
//! without a violation. A full-page screenshot of the token list is saved under
//! `target/test-artifacts/`.
//!
//! Needs `node`, `/usr/bin/chromium`, `tests/js/node_modules/playwright-core` and `curl`, all
//! installed by `.ci/install-tools.sh`. Without them the test fails in CI (`CI=true`) and is
//! skipped elsewhere.
#![warn(clippy::pedantic)]

mod common;

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
}

impl Script {
    fn start(base: &str, screenshot: &Path) -> Self {
        let mut child = Command::new("node")
            .arg("tests/js/browser.mjs")
            .arg("--pause")
            .args([base, ADMIN, ADMIN_PASSWORD])
            .arg(screenshot)
            .current_dir(root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node tests/js/browser.mjs");
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
            deadline: Instant::now() + RUN_TIMEOUT,
        }
    }

    /// The next stdout line; `None` at its end.
    fn next_line(&mut self) -> Option<String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.fail(&format!("no output within {RUN_TIMEOUT:?}"))
            }
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
                self.fail(&format!("did not finish within {RUN_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .expect("stderr reader");
        assert!(
            status.success(),
            "tests/js/browser.mjs exited with {status}:\n{log}"
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
        panic!("tests/js/browser.mjs: {why}\n{log}");
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
