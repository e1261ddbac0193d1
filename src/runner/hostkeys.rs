//! SSH host keys pinned per project on first use.
//!
//! Before a task's git runs, the project's pinned keys are written to the task's own
//! `known_hosts` and ssh runs with `StrictHostKeyChecking=accept-new`: a pinned host must show
//! its pinned key (ssh refuses any other), and a host not pinned yet is accepted and added to
//! the file. After git, the keys the file gained are stored for the project
//! ([`Pins::learn`]). ssh logs into the task's dir (`-E`), so a changed key is recognised and
//! the task fails with a line that says so ([`Pins::explain`]); the other log lines are
//! copied into the task's output.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::Inner;
use crate::model::{HostKey, ProjectId, TaskId};

/// The file ssh reads and extends, in the task's private dir.
const KNOWN_HOSTS: &str = "known_hosts";
/// Where ssh logs (`-E`), in the task's private dir.
const SSH_LOG: &str = "ssh.log";

/// What ssh says when a host shows another key than the one known for it.
const CHANGED: &str = "REMOTE HOST IDENTIFICATION HAS CHANGED";

/// Writes `text` (`known_hosts` lines) as the known hosts of task dir `dir` (`0600`).
fn write_known_hosts(dir: &Path, text: &str) -> Result<(), String> {
    super::launch::private_file(&dir.join(KNOWN_HOSTS), text.as_bytes())
}

/// The ssh command git runs (`GIT_SSH_COMMAND`), with `key` as the only identity when given,
/// the known hosts and log of `dir`, and never a prompt.
pub(super) fn ssh_command(key: Option<&Path>, dir: &Path) -> String {
    let identity = key.map_or_else(
        // No key of ours, and none of the (per-task) home's either.
        || "-o IdentityFile=none".to_owned(),
        |k| format!("-i '{}'", k.display()),
    );
    format!(
        "ssh {identity} -o IdentitiesOnly=yes -o BatchMode=yes \
         -o StrictHostKeyChecking=accept-new -o HashKnownHosts=no \
         -o UserKnownHostsFile='{}' -o GlobalKnownHostsFile=/dev/null -E '{}'",
        dir.join(KNOWN_HOSTS).display(),
        dir.join(SSH_LOG).display()
    )
}

/// The environment that makes ansible's ssh connections check host keys against the known
/// hosts and log of `dir` (the project's pinned keys, written by [`Pins::write`]): hosts not
/// pinned yet are accepted and recorded, a pinned host showing another key is refused.
/// (An inventory's own `ansible_ssh_common_args` still wins over it.)
pub(super) fn ansible_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        ("ANSIBLE_HOST_KEY_CHECKING".into(), "True".into()),
        (
            "ANSIBLE_SSH_COMMON_ARGS".into(),
            format!(
                "-o StrictHostKeyChecking=accept-new -o HashKnownHosts=no \
                 -o UserKnownHostsFile='{}' -o GlobalKnownHostsFile=/dev/null -E '{}'",
                dir.join(KNOWN_HOSTS).display(),
                dir.join(SSH_LOG).display()
            ),
        ),
    ]
}

/// One `known_hosts` entry: (host, key type, key).
pub(crate) type Entry = (String, String, String);

/// The `known_hosts` lines Forge writes and reads: `host[,host...] type key [comment]`;
/// hashed hosts, markers and malformed lines are skipped.
fn parse(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(kind), Some(key)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if hosts.starts_with(['#', '|', '@']) {
            continue;
        }
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            out.push((host.to_owned(), kind.to_owned(), key.to_owned()));
        }
    }
    out
}

/// The pinned keys of `project`, and as `known_hosts` text.
fn pinned(inner: &Inner, project: ProjectId) -> Result<(BTreeSet<Entry>, String), String> {
    let keys: Vec<HostKey> = inner
        .store
        .view()
        .and_then(|v| v.list(project))
        .map_err(|e| format!("cannot read the project's host keys: {e}"))?;
    let known: BTreeSet<Entry> = keys
        .into_iter()
        .map(|k| (k.host, k.key_type, k.key))
        .collect();
    let text = known
        .iter()
        .map(|(host, kind, key)| [host.as_str(), kind, key].join(" ") + "\n")
        .collect::<String>();
    Ok((known, text))
}

/// The pinned keys of `project` as `known_hosts` text (for a remote runner's job).
pub(super) fn known_hosts(inner: &Inner, project: ProjectId) -> Result<String, String> {
    pinned(inner, project).map(|(_, text)| text)
}

/// A project's pinned keys, as written for one task (on the server, or on a runner from its
/// job's `known_hosts`).
pub(crate) struct Pins {
    project: ProjectId,
    known: BTreeSet<Entry>,
    dir: PathBuf,
}

impl Pins {
    /// Writes the pinned keys of `project` into `dir/known_hosts` (`0600`).
    pub(super) fn write(inner: &Inner, project: ProjectId, dir: &Path) -> Result<Self, String> {
        let (_, text) = pinned(inner, project)?;
        Self::from_text(project, &text, dir)
    }

    /// Writes `text`, the pinned keys of `project` as `known_hosts` lines, into
    /// `dir/known_hosts` (`0600`).
    pub(crate) fn from_text(project: ProjectId, text: &str, dir: &Path) -> Result<Self, String> {
        write_known_hosts(dir, text)?;
        Ok(Self {
            project,
            known: parse(text).into_iter().collect(),
            dir: dir.to_owned(),
        })
    }

    /// The project whose keys these are.
    pub(crate) fn project(&self) -> ProjectId {
        self.project
    }

    /// The keys ssh added to the task's `known_hosts` so far (hosts met for the first time).
    pub(crate) fn met(&self) -> Vec<Entry> {
        let Ok(text) = std::fs::read_to_string(self.dir.join(KNOWN_HOSTS)) else {
            return Vec::new();
        };
        parse(&text)
            .into_iter()
            .filter(|e| !self.known.contains(e))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// ssh's log lines of the run so far (then the log is emptied), and the line that says
    /// why the task fails when a host showed another key than its pinned one.
    pub(crate) fn explain(&self) -> (Vec<String>, Option<String>) {
        let path = self.dir.join(SSH_LOG);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("ssh: {l}"))
            .collect();
        let changed = text.contains(CHANGED).then(|| {
            let host = text
                .lines()
                .find_map(|l| {
                    l.split_once("Host key for ")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "an SSH host".into());
            format!(
                "SSH host key changed: {host} did not show the key pinned for this project, \
                 so the task was stopped (if the change is expected, forget the old key: \
                 DELETE /api/project/{}/host_keys/{{id}})",
                self.project
            )
        });
        (lines, changed)
    }
}

/// Pins the keys `new` (hosts met for the first time by task `task`) for `project`, unless
/// a key of the same host and type is pinned already; returns the hosts it pinned.
pub(super) async fn learn(
    inner: &Inner,
    project: ProjectId,
    task: TaskId,
    new: Vec<Entry>,
) -> Vec<String> {
    if new.is_empty() {
        return Vec::new();
    }
    let result = inner
        .store
        .transact_async(inner.host.now(), move |tx| {
            let pinned: Vec<HostKey> = tx.list(project)?;
            let mut hosts = Vec::new();
            for (host, key_type, key) in &new {
                // Another task of the project may have pinned it meanwhile.
                if pinned
                    .iter()
                    .any(|k| &k.host == host && &k.key_type == key_type)
                    || hosts.contains(host)
                {
                    continue;
                }
                let mut k = HostKey {
                    id: 0,
                    project_id: project,
                    host: host.clone(),
                    key_type: key_type.clone(),
                    key: key.clone(),
                    created: tx.now(),
                    task_id: task,
                };
                tx.insert(&mut k)?;
                hosts.push(host.clone());
            }
            Ok::<_, crate::store::Error>(hosts)
        })
        .await;
    result.unwrap_or_else(|e| {
        tracing::error!(task, error = %e, "cannot store learned host keys");
        Vec::new()
    })
}

/// Whether `(host, key type, key)` as a runner reports it can be a `known_hosts` entry: each
/// part one word of printable ASCII (a space or newline would add another entry), a host
/// that is no marker, comment or hashed name.
pub(crate) fn well_formed(host: &str, kind: &str, key: &str) -> bool {
    let word = |w: &str, max: usize| {
        !w.is_empty() && w.len() <= max && w.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    };
    word(host, 300) && word(kind, 100) && word(key, 16 * 1024) && !host.starts_with(['#', '|', '@'])
}

#[cfg(test)]
mod tests {
    use super::{parse, well_formed};

    #[test]
    fn a_reported_key_is_one_known_hosts_entry_or_refused() {
        let ok = [
            ("[127.0.0.1]:2222", "ssh-ed25519", "AAAAC3Nza"),
            ("git.example.com", "ecdsa-sha2-nistp256", "AAAAE2/+="),
        ];
        for (h, t, k) in ok {
            assert!(well_formed(h, t, k), "{h} {t} {k}");
        }
        let bad = [
            ("", "ssh-ed25519", "AAAA"),
            ("h", "", "AAAA"),
            ("h", "ssh-ed25519", ""),
            ("a b", "ssh-ed25519", "AAAA"),
            ("a,b", "ssh-ed25519", "AAAA"),
            (
                "h",
                "ssh-ed25519",
                "AAAA\n@cert-authority * ssh-ed25519 AAAA",
            ),
            ("@revoked", "ssh-ed25519", "AAAA"),
            ("#h", "ssh-ed25519", "AAAA"),
            ("|1|hashed", "ssh-ed25519", "AAAA"),
            ("hé", "ssh-ed25519", "AAAA"),
        ];
        for (h, t, k) in bad {
            assert!(!well_formed(h, t, k), "{h:?} {t:?} {k:?}");
        }
        assert!(!well_formed(&"h".repeat(301), "t", "k"));
    }

    #[test]
    fn known_hosts_lines_give_host_type_and_key() {
        let text = "[127.0.0.1]:2222 ssh-ed25519 AAAAC3 comment\n\
                    a.example,b.example ecdsa-sha2-nistp256 AAAAE2\n\
                    |1|hashed= ssh-rsa AAAAB3\n\
                    @revoked x ssh-rsa AAAA\n\
                    # comment\n\
                    short line\n\n";
        let got = parse(text);
        let want = [
            ("[127.0.0.1]:2222", "ssh-ed25519", "AAAAC3"),
            ("a.example", "ecdsa-sha2-nistp256", "AAAAE2"),
            ("b.example", "ecdsa-sha2-nistp256", "AAAAE2"),
        ]
        .map(|(h, t, k)| (h.to_owned(), t.to_owned(), k.to_owned()));
        assert_eq!(got, want);
    }
}
