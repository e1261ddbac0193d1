//! Integrations (API.md §12.4): incoming webhooks that launch a template. An integration is a
//! project resource over the generic CRUD; its matchers and extract values are parts of it
//! ([`Part`]); aliases name the receiver URL, per integration or per project. The receiver
//! ([`Services::receive`]) authenticates a delivery over its raw body in constant time,
//! applies every matcher, launches the template with the extracted values and logs what
//! became of it (the last [`crate::store::integrations::DELIVERIES_KEPT`] per integration).

pub mod backup;
mod parts;
mod receive;

pub use parts::{MatcherInput, Part, ValueInput};
pub use receive::{Answer, FAILURE_WINDOW, Incoming, MAX_FAILURES};

use serde::Deserialize;
use serde_json::Value;

use super::resources::{Names, ProjectResource, Refs, Target};
use super::{Error, Result, Services, validate};
use crate::model::{AccessKey, Integration, KeyKind, ProjectId, Template};
use crate::store::{Lists, Tx};

/// `auth_method` values: none (`""`), GitHub's signature, an HMAC in a named header, a token.
pub const AUTH_METHODS: &[&str] = &["", "github", "hmac", "token"];

/// An integration body (create and update).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IntegrationInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Display name (required).
    pub name: Option<String>,
    /// The template to launch (required).
    pub template_id: Option<u64>,
    /// One of [`AUTH_METHODS`] (`none` is `""`).
    pub auth_method: Option<String>,
    /// A `login_password` key whose password is the secret (required unless no auth).
    pub auth_secret_id: Option<u64>,
    /// The header of `hmac` and `token` (required for them).
    pub auth_header: Option<String>,
    /// Whether project-wide aliases reach it.
    pub searchable: Option<bool>,
    /// Task launch options (an object, as a task launch body).
    pub task_params: Option<Value>,
}

/// A validated integration body.
pub struct IntegrationFields {
    project: ProjectId,
    name: String,
    template_id: u64,
    auth_method: String,
    auth_secret_id: Option<u64>,
    auth_header: String,
    searchable: bool,
    task_params: String,
}

impl ProjectResource for Integration {
    type Input = IntegrationInput;
    type Fields = IntegrationFields;
    const NAMES: Names = Names::new("integration", "Integration");

    fn name(&self) -> &str {
        &self.name
    }

    fn body_ids(input: &IntegrationInput) -> (Option<u64>, Option<u64>) {
        (input.id, input.project_id)
    }

    fn fields(_: &Services, input: IntegrationInput, to: Target) -> Result<IntegrationFields> {
        let name = input.name.unwrap_or_default();
        validate::name(&name, "name").map_err(Error::Invalid)?;
        let template_id = input
            .template_id
            .filter(|&t| t != 0)
            .ok_or_else(|| Error::Invalid("template_id is required".into()))?;
        let auth_method = match input.auth_method.as_deref().map(str::trim) {
            None | Some("none") => String::new(),
            Some(m) if AUTH_METHODS.contains(&m) => m.to_owned(),
            Some(m) => {
                return Err(Error::Invalid(format!(
                    "auth_method: {m:?} is not one of none, github, hmac, token"
                )));
            }
        };
        let auth_header = input.auth_header.unwrap_or_default().trim().to_owned();
        let header_ok = !auth_header.is_empty()
            && auth_header.len() <= 128
            && auth_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if matches!(auth_method.as_str(), "hmac" | "token") && !header_ok {
            return Err(Error::Invalid(
                "auth_header: a header name is required for hmac and token".into(),
            ));
        }
        let auth_secret_id = input.auth_secret_id.filter(|&k| k != 0);
        if !auth_method.is_empty() && auth_secret_id.is_none() {
            return Err(Error::Invalid(format!(
                "auth_secret_id: a login_password key is required for {auth_method}"
            )));
        }
        let task_params = match input.task_params {
            None | Some(Value::Null) => String::new(),
            Some(v @ Value::Object(_)) => {
                serde_json::from_value::<super::tasks::TaskInput>(v.clone())
                    .map_err(|e| Error::Invalid(format!("task_params: {e}")))?;
                v.to_string()
            }
            Some(_) => return Err(Error::Invalid("task_params must be an object".into())),
        };
        Ok(IntegrationFields {
            project: to.project,
            name: name.trim().to_owned(),
            template_id,
            auth_method,
            auth_secret_id,
            auth_header,
            searchable: input.searchable.unwrap_or_default(),
            task_params,
        })
    }

    fn record(tx: &Tx<'_>, f: &IntegrationFields, current: Option<Self>) -> Result<Self> {
        if tx.get::<Template>(f.project, f.template_id)?.is_none() {
            return Err(Error::Invalid(format!(
                "template_id: no template with id {} in this project",
                f.template_id
            )));
        }
        if let Some(k) = f.auth_secret_id {
            let key: Option<AccessKey> = tx.get(f.project, k)?;
            if !key.is_some_and(|k| k.environment_id.is_none() && k.kind == KeyKind::LoginPassword)
            {
                return Err(Error::Invalid(format!(
                    "auth_secret_id: no login_password access key with id {k} in this project"
                )));
            }
        }
        Ok(Integration {
            id: current.map_or(0, |c| c.id),
            project_id: f.project,
            name: f.name.clone(),
            template_id: f.template_id,
            auth_method: f.auth_method.clone(),
            auth_secret_id: f.auth_secret_id,
            auth_header: f.auth_header.clone(),
            searchable: f.searchable,
            task_params: f.task_params.clone(),
        })
    }

    /// Nothing refers to an integration.
    fn refs(_: &impl Lists, _: ProjectId, _: u64) -> Result<Refs> {
        Ok(Refs::default())
    }

    /// Its matchers, extract values, aliases and deliveries go with it.
    fn removing(&self, tx: &Tx<'_>) -> Result<()> {
        tx.forget_integration(self.project_id, self.id, super::auth::secret_hash)?;
        Ok(())
    }
}

/// For a template being deleted: its integrations go with it, as upstream's `ON DELETE
/// CASCADE` does (each with its parts, aliases and deliveries).
///
/// # Errors
/// Storage failures only.
pub fn remove_for_template(tx: &Tx<'_>, project: ProjectId, template: u64) -> Result<()> {
    for i in tx.list::<Integration>(project)? {
        if i.template_id == template {
            i.removing(tx)?;
            tx.remove::<Integration>(project, i.id)?;
        }
    }
    Ok(())
}

/// For an access key being deleted: integrations authenticating with it lose their secret
/// (upstream's `ON DELETE SET NULL`), so every delivery to them fails authentication until a
/// new key is set: they fail closed.
///
/// # Errors
/// Storage failures only.
pub fn forget_key(tx: &Tx<'_>, project: ProjectId, key: u64) -> Result<()> {
    for mut i in tx.list::<Integration>(project)? {
        if i.auth_secret_id == Some(key) {
            i.auth_secret_id = None;
            tx.put(&i)?;
        }
    }
    Ok(())
}

impl Services {
    /// The last deliveries to integration `id`, newest first.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the project has no such integration.
    pub fn integration_deliveries(
        &self,
        access: &super::projects::Access,
        id: u64,
    ) -> Result<Vec<crate::model::Delivery>> {
        let view = self.store.view()?;
        view.get::<Integration>(access.project_id(), id)?
            .ok_or(Error::NotFound)?;
        Ok(view.deliveries(access.project_id(), id)?)
    }
}
