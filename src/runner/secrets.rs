//! Where a task's secrets live while it runs, and for how long.
//!
//! - Every file a task's secrets need (SSH keys, `known_hosts`, an inventory) lives in its own
//!   `0700` directory `work_dir/tasks/{id}`, which a [`TaskDir`] guard removes on every exit
//!   path (an early return, a stop, a timeout, a panic); the runner's start-up sweep removes
//!   what a crash or `kill -9` left.
//! - Secrets a program reads once (ansible's extra vars, vault passwords) never touch the disk:
//!   they are [`handoff`]s, a FIFO in that directory that a thread of the server writes when the
//!   program opens it, after removing it, so nothing is left to read on disk while the program
//!   runs. (`#![forbid(unsafe_code)]` rules out handing a pipe over as an inherited fd, which
//!   needs `pre_exec`.)
//! - git's credential helper answers only for the repository's own protocol and host
//!   ([`credential_helper`]).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;

/// Removes a task's private directory when dropped (releasing any handoff no program opened).
pub(crate) struct TaskDir(PathBuf);

impl TaskDir {
    /// Guards `path` (which may not exist yet).
    pub(crate) fn guard(path: PathBuf) -> Self {
        Self(path)
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

/// Releases the handoffs left in `dir`, then removes it and everything in it; logs a failure.
pub(crate) fn remove(dir: &Path) {
    release_handoffs(dir);
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(dir = %dir.display(), error = %e, "cannot remove a task's private dir");
    }
}

/// Makes `dir/name` a FIFO only we can open, and starts a thread that, once a program opens
/// it for reading, removes it and writes `contents` into it, once. Returns its path, to give
/// the program in place of a file.
pub(super) fn handoff(dir: &Path, name: &str, contents: Vec<u8>) -> Result<PathBuf, String> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let fifo = path.clone();
    std::thread::Builder::new()
        .name("forge-secret-handoff".into())
        .spawn(move || feed(&fifo, &contents))
        .map_err(|e| format!("cannot start the handoff of {name}: {e}"))?;
    Ok(path)
}

/// Blocks until a reader opens `fifo`, removes it, writes `contents` and closes it.
fn feed(fifo: &Path, contents: &[u8]) {
    let mut pipe = match std::fs::OpenOptions::new().write(true).open(fifo) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(path = %fifo.display(), error = %e, "secret handoff not opened");
            return;
        }
    };
    let _ = std::fs::remove_file(fifo);
    // A reader that went away (the task dir's release) is not an error worth more.
    let _ = pipe.write_all(contents);
}

/// Opens every FIFO left in `dir` for reading (without blocking) and closes it, so a
/// [`handoff`] thread no program released ends, and removes the FIFO.
fn release_handoffs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_fifo()) {
            continue;
        }
        let path = entry.path();
        // A FIFO's open for reading with O_NONBLOCK succeeds at once and wakes the writer,
        // whose write then goes to a pipe nobody reads.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&path);
        let _ = std::fs::remove_file(&path);
        drop(reader);
    }
}

/// The `protocol` and `host` (with `:port` when the URL has one) git's credential protocol
/// names for `url` (`scheme://[user@]host[:port]/...`), or `None` for other forms (scp-like
/// `user@host:path` and local paths take no password).
pub(super) fn credential_scope(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() || host.is_empty() {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host.to_owned()))
}

/// git's `credential.helper` for a login and password in the child's environment
/// (`FORGE_GIT_USER`, `FORGE_GIT_PASSWORD`): it answers a `get` only when git asks for
/// `FORGE_GIT_PROTOCOL` and `FORGE_GIT_HOST`, the repository's own; for any other host (a
/// submodule, a redirect) it says nothing, so the password goes nowhere else.
pub(super) const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || exit 0; p=; h=; \
     while IFS= read -r line; do case \"$line\" in protocol=*) p=\"${line#protocol=}\";; \
     host=*) h=\"${line#host=}\";; esac; done; \
     if test \"$p\" = \"$FORGE_GIT_PROTOCOL\" && test \"$h\" = \"$FORGE_GIT_HOST\"; then \
     echo \"username=$FORGE_GIT_USER\"; echo \"password=$FORGE_GIT_PASSWORD\"; fi; }; f";

/// The environment that configures [`CREDENTIAL_HELPER`] for `url` with `login`/`password`;
/// empty for a URL without a protocol and host (nothing to answer for).
pub(super) fn credential_env(url: &str, login: String, password: String) -> Vec<(String, String)> {
    let Some((protocol, host)) = credential_scope(url) else {
        return Vec::new();
    };
    vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        ("GIT_CONFIG_KEY_0".into(), "credential.helper".into()),
        ("GIT_CONFIG_VALUE_0".into(), CREDENTIAL_HELPER.into()),
        ("FORGE_GIT_PROTOCOL".into(), protocol),
        ("FORGE_GIT_HOST".into(), host),
        ("FORGE_GIT_USER".into(), login),
        ("FORGE_GIT_PASSWORD".into(), password),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_scope_is_the_protocol_and_host_with_port() {
        let cases = [
            (
                "https://git.example.com/a/b.git",
                Some(("https", "git.example.com")),
            ),
            ("HTTP://u:p@h:8080/x", Some(("http", "h:8080"))),
            ("http://127.0.0.1:9/r.git?x", Some(("http", "127.0.0.1:9"))),
            ("ssh://git@host/r.git", Some(("ssh", "host"))),
            ("git@host:r.git", None),
            ("/srv/repo", None),
            ("https:///nohost", None),
        ];
        for (url, want) in cases {
            let got = credential_scope(url);
            let want = want.map(|(p, h)| (p.to_owned(), h.to_owned()));
            assert_eq!(got, want, "{url}");
        }
    }

    /// Runs the helper as git would (`sh -c '<helper> "$@"' get`) with `asked` on stdin.
    fn ask(asked: &str) -> String {
        let script = format!("{} \"$@\"", CREDENTIAL_HELPER.trim_start_matches('!'));
        let mut child = std::process::Command::new("sh")
            .args(["-c", script.as_str(), "helper", "get"])
            .env_clear()
            .envs(credential_env(
                "https://git.example.com:8443/r.git",
                "me".into(),
                "pw".into(),
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(asked.as_bytes())
            .expect("write");
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        assert!(child.wait().expect("wait").success());
        out
    }

    #[test]
    fn the_helper_answers_only_for_the_repositorys_own_host() {
        let own = "protocol=https\nhost=git.example.com:8443\npath=r.git\n\n";
        assert_eq!(ask(own), "username=me\npassword=pw\n");
        for other in [
            "protocol=https\nhost=evil.example.com\n\n",
            "protocol=https\nhost=git.example.com\n\n",
            "protocol=http\nhost=git.example.com:8443\n\n",
            "host=git.example.com:8443\n\n",
            "",
        ] {
            assert_eq!(ask(other), "", "answered {other:?}");
        }
    }

    #[test]
    fn a_handoff_is_read_once_and_gone_from_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let path = handoff(dir.path(), "vars", b"{\"pw\":1}".to_vec()).expect("handoff");
        assert!(
            std::fs::metadata(&path)
                .expect("fifo")
                .file_type()
                .is_fifo()
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"pw\":1}");
        assert!(!path.exists(), "the FIFO is removed once opened");
    }

    #[test]
    fn dropping_the_guard_releases_unread_handoffs_and_removes_the_dir() {
        let base = tempfile::tempdir().expect("dir");
        let dir = base.path().join("7");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("key"), "secret").expect("write");
        handoff(&dir, "unread", b"secret".to_vec()).expect("handoff");
        drop(TaskDir::guard(dir.clone()));
        assert!(!dir.exists());
    }
}
