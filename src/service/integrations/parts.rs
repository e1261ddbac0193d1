//! The parts of an integration: matchers and extract values (one generic CRUD over [`Part`]),
//! and aliases (random names of the receiver URL, per integration or per project).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{Integration, IntegrationAlias, IntegrationMatcher, IntegrationValue};
use crate::service::auth::secret_hash;
use crate::service::projects::Access;
use crate::service::{Error, Result, Services};
use crate::store::{NewEvent, Resource, Tx};

/// `match_type` / `value_source` values.
const SOURCES: &[&str] = &["header", "body"];
/// Matcher `method` values.
const METHODS: &[&str] = &["equals", "unequals", "contains"];
/// `body_data_type` values.
const BODY_TYPES: &[&str] = &["json", "string"];
/// `variable_type` values.
const VARIABLE_TYPES: &[&str] = &["environment", "task"];
/// Task fields an extract value may set (`variable_type: task`).
pub const TASK_FIELDS: &[&str] = &["message", "git_branch", "commit_hash", "limit"];
/// Longest text field of a part.
const TEXT_MAX: usize = 1024;

/// A part of an integration, stored per project with its integration's id.
pub trait Part: Resource + Sync {
    /// The create and update body.
    type Input: DeserializeOwned + Default + Send + 'static;
    /// Its events' `object_type` and title.
    const NAMES: (&'static str, &'static str);

    /// The integration it belongs to.
    fn integration(&self) -> u64;

    /// Its display name.
    fn name(&self) -> &str;

    /// The body's `id`, which must be the URL's on update.
    fn body_id(input: &Self::Input) -> Option<u64>;

    /// Builds it from a validated body (`id` 0 on create).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the offending field.
    fn build(input: Self::Input, integration: &Integration, id: u64) -> Result<Self>;
}

/// A matcher body (also a matcher in a project backup).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct MatcherInput {
    /// Must equal the URL on update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `header` or `body` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_type: Option<String>,
    /// `equals`, `unequals` or `contains` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `json` or `string` (body matchers; default `json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_data_type: Option<String>,
    /// Header name or JSON path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Expected value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// An extract value body (also an extract value in a project backup).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ValueInput {
    /// Must equal the URL on update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `header` or `body` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_source: Option<String>,
    /// `json` or `string` (default `json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_data_type: Option<String>,
    /// Header name or JSON path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Variable name, or task field for `task`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// `environment` (default) or `task`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variable_type: Option<String>,
}

/// `value` when it is one of `allowed` (else `default` when absent).
fn one_of(
    value: Option<&str>,
    field: &str,
    allowed: &[&str],
    default: Option<&str>,
) -> Result<String> {
    match (value.map(str::trim), default) {
        (None | Some(""), Some(d)) => Ok(d.to_owned()),
        (Some(v), _) if allowed.contains(&v) => Ok(v.to_owned()),
        (v, _) => Err(Error::Invalid(format!(
            "{field}: {:?} is not one of {}",
            v.unwrap_or_default(),
            allowed.join(", ")
        ))),
    }
}

/// `body_data_type`: `json` unless `string`.
fn body_type(value: Option<&str>) -> Result<String> {
    one_of(value, "body_data_type", BODY_TYPES, Some("json"))
}

/// A free text field, bounded and without control characters.
fn text(value: Option<String>, field: &str) -> Result<String> {
    let v = value.unwrap_or_default();
    if v.len() > TEXT_MAX || v.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{field}: at most {TEXT_MAX} bytes without control characters"
        )));
    }
    Ok(v)
}

/// A header name or JSON path: required for headers and JSON bodies.
fn key(value: Option<String>, source: &str, body_type: &str) -> Result<String> {
    let k = text(value, "key")?.trim().to_owned();
    if k.is_empty() && (source == "header" || body_type == "json") {
        return Err(Error::Invalid(
            "key: a header name or JSON path is required".into(),
        ));
    }
    Ok(k)
}

/// A part's accessors over its `integration_id`, `name` and its body's `id`.
macro_rules! accessors {
    () => {
        fn integration(&self) -> u64 {
            self.integration_id
        }
        fn name(&self) -> &str {
            &self.name
        }
        fn body_id(input: &Self::Input) -> Option<u64> {
            input.id
        }
    };
}

impl Part for IntegrationMatcher {
    type Input = MatcherInput;
    const NAMES: (&'static str, &'static str) = ("integration_matcher", "Integration Matcher");

    accessors!();

    fn build(input: MatcherInput, i: &Integration, id: u64) -> Result<Self> {
        let match_type = one_of(input.match_type.as_deref(), "match_type", SOURCES, None)?;
        let body_data_type = body_type(input.body_data_type.as_deref())?;
        Ok(Self {
            id,
            project_id: i.project_id,
            integration_id: i.id,
            name: text(input.name, "name")?.trim().to_owned(),
            method: one_of(input.method.as_deref(), "method", METHODS, None)?,
            key: key(input.key, &match_type, &body_data_type)?,
            value: text(input.value, "value")?,
            match_type,
            body_data_type,
        })
    }
}

impl Part for IntegrationValue {
    type Input = ValueInput;
    const NAMES: (&'static str, &'static str) = ("integration_value", "Integration Value");

    accessors!();

    fn build(input: ValueInput, i: &Integration, id: u64) -> Result<Self> {
        let value_source = one_of(input.value_source.as_deref(), "value_source", SOURCES, None)?;
        let body_data_type = body_type(input.body_data_type.as_deref())?;
        let variable_type = one_of(
            input.variable_type.as_deref(),
            "variable_type",
            VARIABLE_TYPES,
            Some("environment"),
        )?;
        let variable = text(input.variable, "variable")?.trim().to_owned();
        let ok = if variable_type == "task" {
            TASK_FIELDS.contains(&variable.as_str())
        } else {
            !variable.is_empty()
                && variable.len() <= 128
                && variable
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !ok {
            return Err(Error::Invalid(if variable_type == "task" {
                format!("variable: a task field, one of {}", TASK_FIELDS.join(", "))
            } else {
                "variable: a name of letters, digits and _".into()
            }));
        }
        Ok(Self {
            id,
            project_id: i.project_id,
            integration_id: i.id,
            name: text(input.name, "name")?.trim().to_owned(),
            key: key(input.key, &value_source, &body_data_type)?,
            value_source,
            body_data_type,
            variable,
            variable_type,
        })
    }
}

/// Integration `id` of the project; 404 otherwise.
fn integration(tx_get: Option<Integration>) -> Result<Integration> {
    tx_get.ok_or(Error::NotFound)
}

fn part_event<P: Part>(access: &Access, p: &P, what: &str) -> NewEvent {
    access.event(
        P::NAMES.0,
        p.id(),
        format!("{} {} {what}", P::NAMES.1, p.name()),
    )
}

impl Services {
    /// The parts of kind `P` of integration `integration`, by id.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the project has no such integration.
    pub fn integration_parts<P: Part>(&self, access: &Access, integration: u64) -> Result<Vec<P>> {
        let view = self.store.view()?;
        let p = access.project_id();
        self::integration(view.get(p, integration)?)?;
        let all: Vec<P> = view.list(p)?;
        Ok(all
            .into_iter()
            .filter(|x| x.integration() == integration)
            .collect())
    }

    /// Part `id` of integration `integration`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn integration_part<P: Part>(
        &self,
        access: &Access,
        integration: u64,
        id: u64,
    ) -> Result<P> {
        self.store
            .view()?
            .get::<P>(access.project_id(), id)?
            .filter(|x| x.integration() == integration)
            .ok_or(Error::NotFound)
    }

    /// Adds a part to integration `integration`; records the event.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`].
    pub async fn create_integration_part<P: Part>(
        &self,
        access: &Access,
        integration: u64,
        input: P::Input,
    ) -> Result<P> {
        let i = self::integration(self.store.view()?.get(access.project_id(), integration)?)?;
        let built = P::build(input, &i, 0)?;
        let access = access.clone();
        self.transact(move |tx| {
            self::integration(tx.get::<Integration>(access.project_id(), integration)?)?;
            let mut part = built.clone();
            tx.insert(&mut part)?;
            tx.record(part_event(&access, &part, "created"))?;
            Ok(part)
        })
        .await
    }

    /// Replaces part `id` of integration `integration`; records the event.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`] (also for a body naming another id).
    pub async fn update_integration_part<P: Part>(
        &self,
        access: &Access,
        integration: u64,
        id: u64,
        input: P::Input,
    ) -> Result<()> {
        if P::body_id(&input).is_some_and(|b| b != id) {
            return Err(Error::Invalid(format!(
                "{} ID in body and URL must be the same",
                P::NAMES.1
            )));
        }
        let i = self::integration(self.store.view()?.get(access.project_id(), integration)?)?;
        let built = P::build(input, &i, id)?;
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            self::integration(tx.get::<Integration>(p, integration)?)?;
            tx.get::<P>(p, id)?
                .filter(|x| x.integration() == integration)
                .ok_or(Error::NotFound)?;
            tx.put(&built)?;
            tx.record(part_event(&access, &built, "updated"))?;
            Ok(())
        })
        .await
    }

    /// Deletes part `id` of integration `integration`; records the event.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn delete_integration_part<P: Part>(
        &self,
        access: &Access,
        integration: u64,
        id: u64,
    ) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            let part = tx
                .get::<P>(p, id)?
                .filter(|x| x.integration() == integration)
                .ok_or(Error::NotFound)?;
            tx.remove::<P>(p, id)?;
            tx.record(part_event(&access, &part, "deleted"))?;
            Ok(())
        })
        .await
    }

    /// The aliases of integration `integration`, or the project-wide ones (`None`), by id.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an integration the project does not have.
    pub fn integration_aliases(
        &self,
        access: &Access,
        integration: Option<u64>,
    ) -> Result<Vec<IntegrationAlias>> {
        let view = self.store.view()?;
        let p = access.project_id();
        if let Some(i) = integration {
            self::integration(view.get(p, i)?)?;
        }
        let all: Vec<IntegrationAlias> = view.list(p)?;
        Ok(all
            .into_iter()
            .filter(|a| a.integration_id == integration)
            .collect())
    }

    /// A new random alias of integration `integration`, or of the project (`None`).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an integration the project does not have.
    pub async fn create_integration_alias(
        &self,
        access: &Access,
        integration: Option<u64>,
    ) -> Result<IntegrationAlias> {
        let alias = new_alias();
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            if let Some(i) = integration {
                self::integration(tx.get::<Integration>(p, i)?)?;
            }
            let a = add_alias(tx, p, integration, alias.clone())?;
            tx.record(alias_event(
                &access,
                integration,
                format!("Integration alias {} created", a.id),
            ))?;
            Ok(a)
        })
        .await
    }

    /// Deletes alias `id` of integration `integration` (or the project-wide one).
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn delete_integration_alias(
        &self,
        access: &Access,
        integration: Option<u64>,
        id: u64,
    ) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let a = alias_in(tx, access.project_id(), integration, id)?;
            tx.remove_alias(&a, secret_hash(&a.alias))?;
            tx.record(alias_event(
                &access,
                integration,
                format!("Integration alias {id} deleted"),
            ))?;
            Ok(())
        })
        .await
    }
}

/// An alias event: on its integration, or on no object for a project-wide alias.
fn alias_event(access: &Access, integration: Option<u64>, description: String) -> NewEvent {
    NewEvent {
        object_id: integration,
        ..access.event("integration", 0, description)
    }
}

/// Stores alias `alias` of integration `integration` (or of project `p`) with its index entry.
pub(super) fn add_alias(
    tx: &Tx<'_>,
    p: u64,
    integration: Option<u64>,
    alias: String,
) -> Result<IntegrationAlias> {
    let hash = secret_hash(&alias);
    let mut a = IntegrationAlias {
        id: 0,
        project_id: p,
        integration_id: integration,
        alias,
    };
    tx.insert_alias(&mut a, hash)?;
    Ok(a)
}

/// A new random alias: 192 bits, URL-safe.
pub(super) fn new_alias() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
}

fn alias_in(
    tx: &Tx<'_>,
    project: u64,
    integration: Option<u64>,
    id: u64,
) -> Result<IntegrationAlias> {
    tx.get::<IntegrationAlias>(project, id)?
        .filter(|a| a.integration_id == integration)
        .ok_or(Error::NotFound)
}
