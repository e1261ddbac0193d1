//! Remote runners (API.md §12.5): agents on other hosts that take jobs from the server.

use serde::{Deserialize, Serialize};

use super::SecretHash;

/// A registered remote runner as stored. Its token is stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRunner {
    /// Server-assigned id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// URL the runner gave to be called back at (kept and shown; Forge never calls it).
    pub webhook: String,
    /// Most tasks it runs at once (0 = no limit).
    pub max_parallel_tasks: u32,
    /// Whether it may poll: an inactive runner is refused (401) and gets no job.
    pub active: bool,
    /// Tags templates choose it by (`runner_tag`).
    pub tags: Vec<String>,
    /// SHA-256 of its token.
    pub token_hash: SecretHash,
    /// When it registered, Unix seconds.
    pub created: i64,
}
