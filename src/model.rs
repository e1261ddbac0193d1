//! Plain data types stored by Forge. No behaviour beyond small helpers; serde only.

use serde::{Deserialize, Serialize};

/// A user id (JSON integer, increasing from 1).
pub type UserId = u64;

/// A SHA-256 digest of a secret (session id or API token); what the store keys secrets by.
pub type SecretHash = [u8; 32];

/// A user account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Server-assigned id.
    pub id: UserId,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Login name, unique case-insensitively across usernames and emails.
    pub username: String,
    /// Display name.
    pub name: String,
    /// Email address, unique case-insensitively.
    pub email: String,
    /// System administrator.
    pub admin: bool,
    /// Authenticated elsewhere (LDAP/OIDC); cannot log in with or change a password.
    pub external: bool,
    /// Wants email alerts.
    pub alert: bool,
    /// scrypt PHC string; empty for external users.
    pub password_hash: String,
}

/// A login session; stored under the hash of its random id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Whose session.
    pub user_id: UserId,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Last request seen, Unix seconds (sliding inactivity expiry).
    pub last_active: i64,
    /// Client address at login.
    pub ip: String,
    /// `User-Agent` at login.
    pub user_agent: String,
}

/// An API token; stored under the hash of the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Owner.
    pub user_id: UserId,
    /// Stable, non-secret handle listed as the token's `id` after creation.
    pub handle: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Revoked; an expired token never authenticates.
    pub expired: bool,
}
