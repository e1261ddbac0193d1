//! Two-factor login (API.md §12.8): a user's TOTP enrolment.

use serde::{Deserialize, Serialize};

use super::{SecretHash, UserId};

/// A user's TOTP enrolment (at most one per user), stored under the user's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTotp {
    /// Server-assigned id (the `{totp_id}` of the routes).
    pub id: u64,
    /// Whose enrolment.
    pub user_id: UserId,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The shared secret, sealed with the server key (never shown again after enabling).
    pub sealed_secret: Vec<u8>,
    /// SHA-256 of each recovery code not used yet (a code is removed when used).
    pub recovery_hashes: Vec<SecretHash>,
    /// A code has been verified since enabling: the QR code is no longer served.
    pub confirmed: bool,
    /// The newest time step whose code was accepted: a code of it or an older step is
    /// refused, so an observed code cannot be replayed.
    pub last_step: u64,
}
