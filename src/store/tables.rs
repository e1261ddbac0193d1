//! Every redb table Forge uses. A table's string name is permanent: renaming one orphans data.
//!
//! Key layout:
//! - ids are `u64` counters kept in `META` and bumped in the transaction that uses them;
//! - secrets (session ids, API tokens) are keyed by their SHA-256, never stored raw;
//! - composite keys are tuples, so "all X of user U" is an ordered range scan.

use redb::TableDefinition;

use crate::model::{SecretHash, UserId};

/// Named counters and settings: `"next_user_id"`, `"schema_version"`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// User id → encoded [`crate::model::User`].
pub const USERID_USER: TableDefinition<UserId, &[u8]> = TableDefinition::new("users");
/// Lower-cased username → user id.
pub const USERNAME_USERID: TableDefinition<&str, UserId> =
    TableDefinition::new("users_by_username");
/// Lower-cased email → user id.
pub const EMAIL_USERID: TableDefinition<&str, UserId> = TableDefinition::new("users_by_email");
/// The set of system administrators (value unused); guards "the last admin".
pub const ADMIN_USERID: TableDefinition<UserId, ()> = TableDefinition::new("admins");

/// SHA-256(session id) → encoded [`crate::model::Session`].
pub const SESSIONHASH_SESSION: TableDefinition<SecretHash, &[u8]> =
    TableDefinition::new("sessions");
/// (user id, SHA-256(session id)) → (): a user's sessions, to revoke them with the user.
pub const USERID_SESSIONHASH: TableDefinition<(UserId, SecretHash), ()> =
    TableDefinition::new("sessions_by_user");

/// SHA-256(API token) → encoded [`crate::model::ApiToken`].
pub const TOKENHASH_TOKEN: TableDefinition<SecretHash, &[u8]> = TableDefinition::new("tokens");
/// (user id, token handle) → SHA-256(API token): a user's tokens in handle order.
pub const USERID_TOKENHANDLE: TableDefinition<(UserId, &str), SecretHash> =
    TableDefinition::new("tokens_by_user");
