//! A repository's branch head read without cloning it (`git ls-remote`), with the same
//! credential handling as a run's checkout: what repository-triggered schedules poll.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::model::{KeyKind, KeySecret};

/// The longest a poll may take (a hung remote must not hold its schedule forever).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The commit at the head of `branch` (empty: the remote's `HEAD`) of the repository at
/// `url`, authenticated with `secret`; key files live in `scratch` (created `0700`, removed
/// after).
///
/// # Errors
/// Why git could not tell (unreachable, refused, no such branch), for an event.
pub async fn branch_head(
    url: &str,
    branch: &str,
    secret: Option<(KeyKind, KeySecret)>,
    scratch: &Path,
) -> Result<String, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let result = ls_remote(url, branch, secret, scratch).await;
    let _ = std::fs::remove_dir_all(scratch);
    result
}

async fn ls_remote(
    url: &str,
    branch: &str,
    secret: Option<(KeyKind, KeySecret)>,
    scratch: &Path,
) -> Result<String, String> {
    let mut env = vec![
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".to_owned(), scratch.display().to_string()),
        ("LANG".to_owned(), "C".to_owned()),
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
    ];
    env.extend(super::launch::git_credentials(secret, scratch, url)?);
    let reference = if branch.is_empty() {
        "HEAD".to_owned()
    } else {
        format!("refs/heads/{branch}")
    };
    let mut cmd = Command::new("git");
    cmd.args(["ls-remote", "--", url, &reference])
        .current_dir(scratch)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("git ls-remote took longer than {TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "git ls-remote failed: {}",
            err.lines().last().unwrap_or("no message")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|h| (40..=64).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .ok_or_else(|| format!("no branch {reference} in the repository"))
}
