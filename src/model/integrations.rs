//! Integrations: incoming webhooks that launch a template (API.md §12.4), with their
//! matchers, extract values, aliases and the log of recent deliveries.

use serde::{Deserialize, Serialize};

use super::{ProjectId, TaskId};

/// An integration: a receiver that launches `template_id` when a delivery authenticates and
/// passes every matcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integration {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// Display name.
    pub name: String,
    /// The template a delivery launches.
    pub template_id: u64,
    /// `""` (none), `github`, `hmac` or `token`.
    pub auth_method: String,
    /// The `login_password` access key whose password is the shared secret (sealed there).
    pub auth_secret_id: Option<u64>,
    /// The header carrying the signature (`hmac`) or the token (`token`).
    pub auth_header: String,
    /// Whether a project-wide alias reaches it.
    pub searchable: bool,
    /// Task launch options, as a task body's JSON object text (empty = none).
    pub task_params: String,
}

/// A condition every delivery must meet to launch the integration's template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationMatcher {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// The integration it filters for.
    pub integration_id: u64,
    /// Display name (named in the deliveries log when it filters one out).
    pub name: String,
    /// `header` or `body`.
    pub match_type: String,
    /// `equals`, `unequals` or `contains`.
    pub method: String,
    /// `json` (then `key` is a path) or `string` (the whole body).
    pub body_data_type: String,
    /// Header name, or JSON path (`repository.full_name`, `commits.0.id`).
    pub key: String,
    /// The expected value.
    pub value: String,
}

/// A value taken from each delivery into the task it launches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationValue {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// The integration it belongs to.
    pub integration_id: u64,
    /// Display name.
    pub name: String,
    /// `header` or `body`.
    pub value_source: String,
    /// `json` (then `key` is a path) or `string` (the whole body).
    pub body_data_type: String,
    /// Header name, or JSON path.
    pub key: String,
    /// The environment variable, or the task field (`message`, `git_branch`, ...).
    pub variable: String,
    /// `environment` or `task`.
    pub variable_type: String,
}

/// A random name under `/api/integrations/{alias}`: of one integration, or of the project
/// (`integration_id` unset: it reaches every `searchable` integration of the project).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationAlias {
    /// Server-assigned id.
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// The integration, or `None` for a project-wide alias.
    pub integration_id: Option<u64>,
    /// The alias itself (URL-safe random text).
    pub alias: String,
}

/// What became of one delivery to one integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryOutcome {
    /// It launched this task.
    Launched(TaskId),
    /// The named matcher did not match.
    Filtered(String),
    /// Its signature or token was missing or wrong.
    BadSignature,
    /// It could not launch (the reason).
    Error(String),
}

/// One delivery to one integration, as the deliveries log keeps it (never the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Server-assigned id (increasing).
    pub id: u64,
    /// Owning project.
    pub project_id: ProjectId,
    /// The integration.
    pub integration_id: u64,
    /// When it arrived, Unix seconds.
    pub time: i64,
    /// The client's address.
    pub source: String,
    /// What became of it.
    pub outcome: DeliveryOutcome,
}
