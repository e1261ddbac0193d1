//! SSH host keys a project's tasks learned on first use (Forge extension).

use serde::{Deserialize, Serialize};

use super::ProjectId;

/// A host key pinned for a project: the key an SSH server showed the first time one of the
/// project's tasks connected to it. A later task that meets another key for that host fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// The host as `known_hosts` names it: `name` for port 22, `[name]:port` otherwise.
    pub host: String,
    /// The key's type (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, ...).
    pub key_type: String,
    /// The public key, base64 as in `known_hosts`.
    pub key: String,
    /// When it was learned (Unix seconds).
    pub created: i64,
    /// The task that learned it.
    pub task_id: u64,
}
