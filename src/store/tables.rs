//! Every redb table Forge uses. A table's string name is permanent: renaming one orphans data.
//!
//! Key layout:
//! - ids are `u64` counters kept in `META` and bumped in the transaction that uses them;
//! - secrets (session ids, API tokens) are keyed by their SHA-256, never stored raw;
//! - composite keys are tuples, so "all X of user U" is an ordered range scan.

use redb::TableDefinition;

use crate::model::{ProjectId, SecretHash, TaskId, UserId};

/// Named counters and settings: `"next_user_id"`, `"schema_version"` (the file's format
/// version, written by `store::migrate`; absent in files of the first release = version 1).
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

/// Named byte values: `"secret_key_check"` (proves the server key is the one that sealed the
/// stored secrets).
pub const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

/// Project id → encoded [`crate::model::Project`].
pub const PROJECTID_PROJECT: TableDefinition<ProjectId, &[u8]> = TableDefinition::new("projects");
/// (project id, user id) → role (see `Role::to_u8`): the members of a project.
pub const PROJECTUSER_ROLE: TableDefinition<(ProjectId, UserId), u8> =
    TableDefinition::new("project_members");
/// (user id, project id) → (): the projects of a user (reverse of `PROJECTUSER_ROLE`).
pub const USERPROJECT: TableDefinition<(UserId, ProjectId), ()> =
    TableDefinition::new("user_projects");

/// (project id, key id) → encoded [`crate::model::AccessKey`].
pub const PROJECT_KEY: TableDefinition<(ProjectId, u64), &[u8]> = TableDefinition::new("keys");
/// (project id, repository id) → encoded [`crate::model::Repository`].
pub const PROJECT_REPOSITORY: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("repositories");
/// (project id, inventory id) → encoded [`crate::model::Inventory`].
pub const PROJECT_INVENTORY: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("inventories");
/// (project id, environment id) → encoded [`crate::model::Environment`].
pub const PROJECT_ENVIRONMENT: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("environments");
/// (project id, template id) → encoded [`crate::model::Template`].
pub const PROJECT_TEMPLATE: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("templates");

/// (project id, view id) → encoded [`crate::model::View`].
pub const PROJECT_VIEW: TableDefinition<(ProjectId, u64), &[u8]> = TableDefinition::new("views");

/// (project id, build template id) → encoded [`crate::model::BuildVersion`]: the version of
/// the template's newest successful build (see `store::builds`).
pub const PROJECT_BUILDVERSION: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("build_versions");

/// (project id, schedule id) → encoded [`crate::model::Schedule`].
pub const PROJECT_SCHEDULE: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("schedules");

/// Event id → encoded [`crate::model::Event`]; ids increase, so reverse order is newest first.
pub const EVENTID_EVENT: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (project id, event id) → (): a project's events.
pub const PROJECT_EVENTID: TableDefinition<(ProjectId, u64), ()> =
    TableDefinition::new("events_by_project");

/// (project id, task id) → encoded [`crate::model::Task`].
pub const PROJECT_TASK: TableDefinition<(ProjectId, TaskId), &[u8]> = TableDefinition::new("tasks");
/// Task id → project id: finds a task from its id alone.
pub const TASKID_PROJECT: TableDefinition<TaskId, ProjectId> =
    TableDefinition::new("task_projects");
/// Task id → (): the unfinished tasks (waiting/starting/running/stopping), so the queue and crash
/// recovery never scan all tasks.
pub const ACTIVE_TASK: TableDefinition<TaskId, ()> = TableDefinition::new("active_tasks");
/// (project id, template id, task id) → (): a template's tasks, newest last.
pub const TEMPLATE_TASK: TableDefinition<(ProjectId, u64, TaskId), ()> =
    TableDefinition::new("tasks_by_template");
/// (task id, number of the chunk's first line, from 0) → encoded `Vec<`[`crate::model::OutputLine`]`>`
/// of consecutive lines (see `store::output`). Format 4 and older stored one line per row in
/// `task_output`, a name never to be reused.
pub const OUTPUT_CHUNK: TableDefinition<(TaskId, u64), &[u8]> =
    TableDefinition::new("task_output_chunks");

/// Task id → (): tasks removed by retention whose output rows are still being deleted, a
/// bounded batch at a time (see `store::retention`). Ids are never reused.
pub const PURGE_TASK: TableDefinition<TaskId, ()> = TableDefinition::new("tasks_purging");

/// (project id, integration id) → encoded [`crate::model::Integration`].
pub const PROJECT_INTEGRATION: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("integrations");
/// (project id, matcher id) → encoded [`crate::model::IntegrationMatcher`].
pub const PROJECT_INTEGRATION_MATCHER: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("integration_matchers");
/// (project id, extract value id) → encoded [`crate::model::IntegrationValue`].
pub const PROJECT_INTEGRATION_VALUE: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("integration_values");
/// (project id, alias id) → encoded [`crate::model::IntegrationAlias`].
pub const PROJECT_INTEGRATION_ALIAS: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("integration_aliases");
/// SHA-256(alias) → (project id, alias id): the receiver finds an alias by its hash, so the
/// lookup's timing says nothing about how much of a guessed alias was right.
pub const ALIASHASH_ALIAS: TableDefinition<SecretHash, (ProjectId, u64)> =
    TableDefinition::new("integration_aliases_by_hash");
/// (project id, integration id, delivery id) → encoded [`crate::model::Delivery`]: the last
/// deliveries of an integration (`store::integrations::DELIVERIES_KEPT`), oldest first.
pub const INTEGRATION_DELIVERY: TableDefinition<(ProjectId, u64, u64), &[u8]> =
    TableDefinition::new("integration_deliveries");
/// (channel code, alert id) → encoded `store::outbox::Alert`: alerts not yet delivered, in
/// order per channel (see `store::outbox`); ids come from the `next_alert_id` counter.
pub const CHANNEL_ALERT: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("alert_outbox");

/// (project id, host key id) → encoded [`crate::model::HostKey`]: SSH host keys pinned for a
/// project on first use.
pub const PROJECT_HOSTKEY: TableDefinition<(ProjectId, u64), &[u8]> =
    TableDefinition::new("host_keys");
/// Remote runners by id (encoded [`crate::model::RemoteRunner`]).
pub const RUNNERID_RUNNER: TableDefinition<u64, &[u8]> = TableDefinition::new("runners");
/// Runner token hash → runner id: the `X-Runner-Token` lookup.
pub const TOKENHASH_RUNNERID: TableDefinition<SecretHash, u64> =
    TableDefinition::new("runners_by_token");
/// User id → encoded [`crate::model::UserTotp`]: a user's two-factor (TOTP) enrolment.
pub const USERID_TOTP: TableDefinition<UserId, &[u8]> = TableDefinition::new("user_totp");
/// SHA-256(session id) → user id: sessions that still await their second factor (the session
/// itself is in `SESSIONHASH_SESSION`; a row here limits it to the verify routes).
pub const SESSIONHASH_PENDING: TableDefinition<SecretHash, UserId> =
    TableDefinition::new("sessions_pending_totp");

/// Every table keyed by `(project id, object id)` with encoded records: deleting a project
/// clears its range in each. A new project-scoped table must be added here.
pub const PROJECT_SCOPED: &[TableDefinition<(ProjectId, u64), &[u8]>] = &[
    PROJECT_KEY,
    PROJECT_REPOSITORY,
    PROJECT_INVENTORY,
    PROJECT_ENVIRONMENT,
    PROJECT_TEMPLATE,
    PROJECT_TASK,
    PROJECT_VIEW,
    PROJECT_BUILDVERSION,
    PROJECT_SCHEDULE,
    PROJECT_INTEGRATION,
    PROJECT_INTEGRATION_MATCHER,
    PROJECT_INTEGRATION_VALUE,
    PROJECT_INTEGRATION_ALIAS,
    PROJECT_HOSTKEY,
];
