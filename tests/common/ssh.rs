//! A throwaway `sshd` for the SSH host key tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A throwaway `sshd` on a loopback port with its own host key, letting in one client key.
pub struct Sshd {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
}

impl Sshd {
    /// Starts `sshd` on a free port.
    #[must_use]
    pub fn start(sshd: &Path, dir: &Path, host_key: &Path, client_pub: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(sshd, dir, host_key, client_pub, port)
    }

    /// Starts `sshd` on `port`, with `host_key`, letting in `client_pub`.
    #[must_use]
    pub fn start_on(
        sshd: &Path,
        dir: &Path,
        host_key: &Path,
        client_pub: &Path,
        port: u16,
    ) -> Self {
        let _ = std::fs::create_dir_all("/run/sshd");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nPidFile none\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n",
                host_key.display(),
                client_pub.display()
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes an ed25519 key pair at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{}", super::tools::show(&out));
}

/// The `sshd` binary, if installed.
#[must_use]
pub fn sshd_program() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| super::tools::find("sshd"))
}

/// Asserts that a task's output ends with the line saying `host` showed another key than the
/// one pinned for the project.
pub fn assert_key_changed(out: &[String], host: &str) {
    let last = out.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "SSH host key changed: {host} did not show the key pinned for this project"
        )),
        "{out:#?}"
    );
}
