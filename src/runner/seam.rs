//! What `forge runner` (`crate::agent`) shares with the local executor without a store: the
//! same git credential handling and the same time limit.

use std::path::Path;

use crate::agent::protocol::Credentials;
use crate::model::{KeyKind, KeySecret};

/// When a run that may take `max_secs` (0 = no limit) and starts now must end.
#[must_use]
pub fn deadline(max_secs: u64) -> tokio::time::Instant {
    super::exec::deadline_after(max_secs)
}

/// The environment that gives git a job's repository credentials (key files in `dir`,
/// `0600`) for the repository at `url` only, as the server's own checkouts get them.
///
/// # Errors
/// When a key file cannot be written.
pub fn credentials_env(
    credentials: Option<&Credentials>,
    dir: &Path,
    url: &str,
) -> Result<Vec<(String, String)>, String> {
    let secret = credentials.and_then(|c| {
        let kind = match c.kind.as_str() {
            "ssh" => KeyKind::Ssh,
            "login_password" => KeyKind::LoginPassword,
            _ => return None,
        };
        Some((
            kind,
            KeySecret {
                login: c.login.clone(),
                password: c.password.clone(),
                private_key: c.private_key.clone(),
                ..KeySecret::default()
            },
        ))
    });
    super::exec::git_credentials(secret, dir, url)
}

/// The environment a job's submodules are checked out with: no key and no password (a
/// `.gitmodules` URL must not collect the repository's credentials), ssh without a prompt,
/// as the server's own checkouts do it.
#[must_use]
pub fn submodule_env(base: &[(String, String)], dir: &Path) -> Vec<(String, String)> {
    let mut env = base.to_vec();
    env.push((
        "GIT_SSH_COMMAND".into(),
        super::hostkeys::ssh_command(None, dir),
    ));
    env
}
