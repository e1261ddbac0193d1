//! The `forge` binary run as an operator runs it: `forge serve` in its own process on a
//! random port, with its whole log captured, to be stopped, killed with SIGKILL or inspected.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ADMIN, ADMIN_PASSWORD, Client};

/// The binary under test.
pub const FORGE: &str = env!("CARGO_BIN_EXE_forge");

/// `forge serve` on `db` and a random port, with the test admin, cheap scrypt, info logging
/// and no server key from the test's environment; `envs` come last and override.
pub fn forge_serve(db: &Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(FORGE);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("FORGE_DB", db)
        .env("FORGE_ADMIN", ADMIN)
        .env("FORGE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("FORGE_SCRYPT_LOG_N", "4")
        .env("FORGE_LOG", "info")
        .env("NO_COLOR", "1")
        // Templates may use ansible whether or not it is installed here.
        .env("FORGE_EXTRA_APPS", "ansible")
        .env(
            "FORGE_LOCAL_REPO_ROOTS",
            super::local_repo_roots()
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `forge ARGS --db DB` (an offline command: check, compact, key rotate, user) to its
/// end, with no database or key from the test's environment and nothing on stdin.
pub fn forge_offline(args: &[&str], db: &Path) -> std::process::Output {
    Command::new(FORGE)
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .env_remove("FORGE_DB")
        .stdin(Stdio::null())
        .output()
        .expect("run forge")
}

/// A running `forge serve` child process.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Reads a pipe to its end into `buf`, sending the listen address once it shows.
pub fn capture(
    pipe: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
    mut addr: Option<std::sync::mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            buf.lock().unwrap().extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            if let Some(found) = text.split("listening on http://").nth(1)
                && let Some(tx) = addr.take()
            {
                // Text logs end the line there; JSON logs close the string.
                let addr = found.split(['"', ' ', '\n', '\r']).next().unwrap_or("");
                let _ = tx.send(addr.to_owned());
            }
        }
    })
}

impl ServerProcess {
    /// Starts `forge serve` (see [`forge_serve`]) and waits until it says where it listens.
    pub fn start(db: &Path, envs: &[(&str, &str)]) -> Self {
        Self::spawn(forge_serve(db, envs))
    }

    /// Starts `cmd` (a [`forge_serve`] command, adjusted) and waits until it says where it
    /// listens.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("spawn forge serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let readers = vec![
            capture(child.stderr.take().expect("stderr"), log.clone(), Some(tx)),
            capture(child.stdout.take().expect("stdout"), log.clone(), None),
        ];
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not say where it listens:\n{}",
                String::from_utf8_lossy(&log.lock().unwrap())
            );
        };
        let addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("address {addr:?}: {e}"));
        Self {
            child,
            addr,
            log,
            readers,
        }
    }

    /// A client of this server.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> Vec<u8> {
        self.log.lock().unwrap().clone()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("server status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("reap")
    }

    /// Stops the server with SIGTERM, asserts a clean exit, and returns everything it logged.
    pub fn stop(mut self) -> Vec<u8> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exit = self.child.wait().expect("reap");
        assert!(exit.success(), "{exit:?}");
        for r in self.readers.drain(..) {
            r.join().expect("log reader");
        }
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
