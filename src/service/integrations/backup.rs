//! Integrations in a project backup, in upstream's shape: each integration names its template
//! and secret key, and carries its matchers, extract values and aliases; the project-wide
//! aliases are a list of strings beside them. A restore recreates them through the API's own
//! rules; an alias already taken on this server gets a new random one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::IntegrationInput;
use super::parts::{MatcherInput, Part, ValueInput};
use crate::model::{
    Integration, IntegrationAlias, IntegrationMatcher, IntegrationValue, ProjectId,
};
use crate::service::auth::secret_hash;
use crate::service::resources::{ProjectResource, Target};
use crate::service::{Error, Result, Services};
use crate::store::{Tx, View};

/// An integration in a backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IntegrationEntry {
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The template it launches (by name; required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `""`, `github`, `hmac` or `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    /// The header of `hmac` and `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_header: Option<String>,
    /// The `login_password` key holding the secret (by name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_secret: Option<String>,
    /// Reached by project-wide aliases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searchable: Option<bool>,
    /// Task launch options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_params: Option<Value>,
    /// Its aliases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    /// Its matchers (upstream's fields; ids are ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matchers: Option<Vec<MatcherInput>>,
    /// Its extract values (upstream's fields; ids are ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extract_values: Option<Vec<ValueInput>>,
}

/// The project's integrations (sorted by name) and project-wide aliases (sorted), naming
/// templates and keys by their unique names in the backup.
///
/// # Errors
/// Storage failures only.
pub fn export(
    view: &View,
    p: ProjectId,
    template_name: impl Fn(u64) -> Option<String>,
    key_name: impl Fn(u64) -> Option<String>,
) -> Result<(Vec<IntegrationEntry>, Vec<Value>)> {
    let matchers: Vec<IntegrationMatcher> = view.list(p)?;
    let values: Vec<IntegrationValue> = view.list(p)?;
    let aliases: Vec<IntegrationAlias> = view.list(p)?;
    let alias_list = |i: Option<u64>| {
        let mut out: Vec<String> = aliases
            .iter()
            .filter(|a| a.integration_id == i)
            .map(|a| a.alias.clone())
            .collect();
        out.sort();
        out
    };
    let integrations: Vec<Integration> = view.list(p)?;
    let mut entries: Vec<IntegrationEntry> = integrations
        .iter()
        .map(|i| IntegrationEntry {
            name: Some(i.name.clone()),
            template: template_name(i.template_id),
            auth_method: Some(i.auth_method.clone()),
            auth_header: Some(i.auth_header.clone()),
            auth_secret: i.auth_secret_id.and_then(&key_name),
            searchable: Some(i.searchable),
            task_params: serde_json::from_str(&i.task_params).ok(),
            aliases: Some(alias_list(Some(i.id))),
            matchers: Some(
                matchers
                    .iter()
                    .filter(|m| m.integration_id == i.id)
                    .map(|m| MatcherInput {
                        id: None,
                        name: Some(m.name.clone()),
                        match_type: Some(m.match_type.clone()),
                        method: Some(m.method.clone()),
                        body_data_type: Some(m.body_data_type.clone()),
                        key: Some(m.key.clone()),
                        value: Some(m.value.clone()),
                    })
                    .collect(),
            ),
            extract_values: Some(
                values
                    .iter()
                    .filter(|v| v.integration_id == i.id)
                    .map(|v| ValueInput {
                        id: None,
                        name: Some(v.name.clone()),
                        value_source: Some(v.value_source.clone()),
                        body_data_type: Some(v.body_data_type.clone()),
                        key: Some(v.key.clone()),
                        variable: Some(v.variable.clone()),
                        variable_type: Some(v.variable_type.clone()),
                    })
                    .collect(),
            ),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let project_aliases = alias_list(None).into_iter().map(Value::String).collect();
    Ok((entries, project_aliases))
}

/// Recreates integration `e` of a restored project: its template and key are the new ids.
/// Refusals are the API's own messages (the caller labels them).
///
/// # Errors
/// [`Error::Invalid`]; storage failures.
pub fn restore(
    services: &Services,
    tx: &Tx<'_>,
    p: ProjectId,
    e: &IntegrationEntry,
    (template, key): (u64, Option<u64>),
) -> Result<()> {
    let input = IntegrationInput {
        name: e.name.clone(),
        template_id: Some(template),
        auth_method: e.auth_method.clone(),
        auth_secret_id: key,
        auth_header: e.auth_header.clone(),
        searchable: e.searchable,
        task_params: e.task_params.clone(),
        ..IntegrationInput::default()
    };
    let to = Target {
        project: p,
        id: None,
    };
    let fields = Integration::fields(services, input, to)?;
    let mut integration = Integration::record(tx, &fields, None)?;
    tx.insert(&mut integration)?;
    for (n, m) in e.matchers.iter().flatten().enumerate() {
        let mut part = IntegrationMatcher::build(m.clone(), &integration, 0)
            .map_err(|err| Error::Invalid(format!("matchers[{n}]: {err}")))?;
        tx.insert(&mut part)?;
    }
    for (n, v) in e.extract_values.iter().flatten().enumerate() {
        let mut part = IntegrationValue::build(v.clone(), &integration, 0)
            .map_err(|err| Error::Invalid(format!("extract_values[{n}]: {err}")))?;
        tx.insert(&mut part)?;
    }
    for alias in e.aliases.iter().flatten() {
        restore_alias(tx, p, Some(integration.id), alias)?;
    }
    Ok(())
}

/// Recreates an alias: the same text when it is free on this server (webhooks pointing at it
/// keep working), a new random one when it is taken.
///
/// # Errors
/// [`Error::Invalid`] for text that is no alias; storage failures.
pub fn restore_alias(
    tx: &Tx<'_>,
    p: ProjectId,
    integration: Option<u64>,
    alias: &str,
) -> Result<()> {
    let ok = (8..=128).contains(&alias.len())
        && alias
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if !ok {
        return Err(Error::Invalid(format!(
            "aliases: {alias:?} is not an alias (8 to 128 letters, digits, - and _)"
        )));
    }
    let alias = if tx.alias_taken(secret_hash(alias))? {
        super::parts::new_alias()
    } else {
        alias.to_owned()
    };
    super::parts::add_alias(tx, p, integration, alias)?;
    Ok(())
}
