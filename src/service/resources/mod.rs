//! Project resources: access keys, repositories, inventories, environments, templates and views,
//! one module each over one generic CRUD ([`ProjectResource`]).
//!
//! The generic part owns what every resource does alike: the lookup in the project (404
//! otherwise), the body's `id`/`project_id` checks, the in-use check before a delete and the
//! event. Every change runs in one transaction that re-reads what it references, so a
//! reference to another project's object (or to one deleted meanwhile) is refused and nothing
//! is written. A resource's module holds only its own rules: its body, validation and
//! references. Secrets are sealed before they reach the store and never come back out through
//! the API.
//!
//! Adding a resource: a model type with a [`Resource`] impl in the store, a module here
//! implementing [`ProjectResource`], and its routes (`http::handlers::resources`).

mod environments;
mod host_keys;
mod inventories;
mod keys;
mod repositories;
pub mod schedules;
mod templates;
mod views;

pub use environments::{EnvironmentInput, SecretInfo, SecretInput, secret_kind_name};
pub use host_keys::HostKeyInput;
pub use inventories::{INVENTORY_TYPES, InventoryInput};
pub use keys::{KeyFields, KeyInput, LoginPasswordInput, SshInput, needs_secret, restored_key};
pub use repositories::RepositoryInput;
pub use schedules::{CronInput, ScheduleInput};
pub use templates::{
    BUILTIN_APPS, SurveyValueInput, SurveyVarInput, TemplateInput, TemplateRefNames, VaultInput,
};
pub use views::ViewInput;

use serde::de::DeserializeOwned;

use super::projects::Access;
use super::{Error, Result, Services};
use crate::model::{AccessKey, ProjectId};
use crate::store::{Lists, Resource, Tx};

/// Ids of the objects that use a resource (`GET .../refs`).
#[derive(Debug, Default, Clone)]
pub struct Refs {
    /// Templates, as (id, name).
    pub templates: Vec<(u64, String)>,
    /// Inventories, as (id, name).
    pub inventories: Vec<(u64, String)>,
    /// Repositories, as (id, name).
    pub repositories: Vec<(u64, String)>,
}

impl Refs {
    fn is_empty(&self) -> bool {
        self.templates.is_empty() && self.inventories.is_empty() && self.repositories.is_empty()
    }
}

/// How a resource is named in events and messages.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// The events' `object_type` (`key`).
    pub object_type: &'static str,
    /// In event descriptions and the in-use message (`Access Key`).
    pub title: &'static str,
    /// In the update id-mismatch message, `<id_label> ID in body and URL must be the same`.
    pub id_label: &'static str,
    /// Replaces that whole message (templates word it their own way).
    pub wrong_id: Option<&'static str>,
    /// An update body naming another project.
    pub wrong_project: &'static str,
}

impl Names {
    /// A resource's names: its events' `object_type` and its title.
    #[must_use]
    pub const fn new(object_type: &'static str, title: &'static str) -> Self {
        Self {
            object_type,
            title,
            id_label: title,
            wrong_id: None,
            wrong_project: WRONG_PROJECT,
        }
    }

    /// Another name in the id-mismatch message.
    #[must_use]
    pub const fn id_label(self, id_label: &'static str) -> Self {
        Self { id_label, ..self }
    }

    /// Own messages for an update body with another id or another project.
    #[must_use]
    pub const fn update_messages(
        self,
        wrong_id: &'static str,
        wrong_project: &'static str,
    ) -> Self {
        Self {
            wrong_id: Some(wrong_id),
            wrong_project,
            ..self
        }
    }
}

const WRONG_PROJECT: &str = "Project ID in body and URL must be the same";

/// The plumbing every resource writes alike, inside its [`ProjectResource`] impl: its body is
/// `$input`, which carries `id` and `project_id`, and its name is its `name` field.
macro_rules! body {
    ($input:ty) => {
        type Input = $input;

        fn name(&self) -> &str {
            &self.name
        }

        fn body_ids(input: &Self::Input) -> (Option<u64>, Option<u64>) {
            (input.id, input.project_id)
        }
    };
}
use body;

/// Where a body goes: the URL's project and, on update, the object's id.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The project.
    pub project: ProjectId,
    /// `None` on create.
    pub id: Option<u64>,
}

/// A project resource: its own rules, for the generic CRUD on [`Services`]
/// ([`Services::create_resource`] and the rest).
pub trait ProjectResource: Resource + Sync {
    /// The create and update body.
    type Input: DeserializeOwned + Default + Send + 'static;
    /// A body validated (secrets sealed) before the transaction, applied inside it.
    type Fields: Send + Sync + 'static;
    /// How it is named in events and messages.
    const NAMES: Names;

    /// Its display name.
    fn name(&self) -> &str;

    /// The body's `id` and `project_id`.
    fn body_ids(input: &Self::Input) -> (Option<u64>, Option<u64>);

    /// Validates a body bound for `to`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the offending field.
    fn fields(services: &Services, input: Self::Input, to: Target) -> Result<Self::Fields>;

    /// Inside the transaction: checks the references and builds the record to store from the
    /// fields and, on update, the `current` record.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a reference outside the project.
    fn record(tx: &Tx<'_>, fields: &Self::Fields, current: Option<Self>) -> Result<Self>;

    /// What uses object `id`.
    ///
    /// # Errors
    /// Storage failures only.
    fn refs(lists: &impl Lists, project: ProjectId, id: u64) -> Result<Refs>;

    /// Whether the API shows it at all (access keys hide environment secrets).
    fn listed(&self) -> bool {
        true
    }

    /// After the record is written, inside the same transaction (environment secrets).
    ///
    /// # Errors
    /// [`Error::Invalid`]; storage failures.
    fn written(_tx: &Tx<'_>, _project: ProjectId, _id: u64, _fields: &Self::Fields) -> Result<()> {
        Ok(())
    }

    /// Why object `id`, used by `refs`, cannot be deleted; `None` when it can.
    #[must_use]
    fn in_use(refs: &Refs) -> Option<Error> {
        (!refs.is_empty()).then(|| {
            Error::InUse(format!(
                "{} is in use by one or more templates",
                Self::NAMES.title
            ))
        })
    }

    /// Removes what goes with it, just before it is removed.
    ///
    /// # Errors
    /// [`Error::Invalid`] when it cannot go yet; storage failures.
    fn removing(&self, _tx: &Tx<'_>) -> Result<()> {
        Ok(())
    }
}

impl Services {
    /// The project's objects of kind `R`, by id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn resources<R: ProjectResource>(&self, access: &Access) -> Result<Vec<R>> {
        let all: Vec<R> = self.store.view()?.list(access.project_id())?;
        Ok(all.into_iter().filter(R::listed).collect())
    }

    /// Object `id` of kind `R` in the project.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn resource<R: ProjectResource>(&self, access: &Access, id: u64) -> Result<R> {
        self.store
            .view()?
            .get::<R>(access.project_id(), id)?
            .filter(R::listed)
            .ok_or(Error::NotFound)
    }

    /// Creates an object from a body; records the event.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields, a foreign reference or another project's id in the
    /// body (checked before anything is written).
    pub async fn create_resource<R: ProjectResource>(
        &self,
        access: &Access,
        input: R::Input,
    ) -> Result<R> {
        check_project(R::body_ids(&input).1, access.project_id())?;
        let to = Target {
            project: access.project_id(),
            id: None,
        };
        let fields = R::fields(self, input, to)?;
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            let mut r = R::record(tx, &fields, None)?;
            let id = tx.insert(&mut r)?;
            R::written(tx, p, id, &fields)?;
            tx.record(event::<R>(&access, id, r.name(), "created"))?;
            Ok(r)
        })
        .await
    }

    /// Replaces object `id` from a body; records the event.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`].
    pub async fn update_resource<R: ProjectResource>(
        &self,
        access: &Access,
        id: u64,
        input: R::Input,
    ) -> Result<()> {
        check_update_ids(&R::NAMES, R::body_ids(&input), id, access.project_id())?;
        let to = Target {
            project: access.project_id(),
            id: Some(id),
        };
        let fields = R::fields(self, input, to)?;
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            let current = lookup::<R>(tx, p, id)?;
            let r = R::record(tx, &fields, Some(current))?;
            tx.put(&r)?;
            R::written(tx, p, id, &fields)?;
            tx.record(event::<R>(&access, id, r.name(), "updated"))?;
            Ok(())
        })
        .await
    }

    /// Deletes object `id` unless something uses it; records the event.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InUse`] (or the resource's own refusal).
    pub async fn delete_resource<R: ProjectResource>(
        &self,
        access: &Access,
        id: u64,
    ) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            let r = lookup::<R>(tx, p, id)?;
            if let Some(e) = R::in_use(&R::refs(tx, p, id)?) {
                return Err(e);
            }
            r.removing(tx)?;
            tx.remove::<R>(p, id)?;
            tx.record(event::<R>(&access, id, r.name(), "deleted"))?;
            Ok(())
        })
        .await
    }

    /// What uses object `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn resource_refs<R: ProjectResource>(&self, access: &Access, id: u64) -> Result<Refs> {
        self.resource::<R>(access, id)?;
        R::refs(&self.store.view()?, access.project_id(), id)
    }
}

/// Object `id` of the project as the API sees it; 404 otherwise.
fn lookup<R: ProjectResource>(tx: &Tx<'_>, project: ProjectId, id: u64) -> Result<R> {
    tx.get::<R>(project, id)?
        .filter(R::listed)
        .ok_or(Error::NotFound)
}

fn event<R: ProjectResource>(
    access: &Access,
    id: u64,
    name: &str,
    what: &str,
) -> crate::store::NewEvent {
    access.event(R::NAMES.object_type, id, description(&R::NAMES, name, what))
}

/// An event's description: `Access Key deploy created`.
fn description(names: &Names, name: &str, what: &str) -> String {
    format!("{} {name} {what}", names.title)
}

/// The objects of kind `U` in the project that `uses` picks, as (id, name): a part of [`Refs`].
fn users<U: ProjectResource>(
    lists: &impl Lists,
    project: ProjectId,
    uses: impl Fn(&U) -> bool,
) -> Result<Vec<(u64, String)>> {
    Ok(lists
        .list::<U>(project)?
        .into_iter()
        .filter(|u| uses(u))
        .map(|u| (u.id(), u.name().to_owned()))
        .collect())
}

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

/// An update body's `id` must be the URL's, and its `project_id` (when given) the URL's
/// project.
fn check_update_ids(
    names: &Names,
    (body_id, body_project): (Option<u64>, Option<u64>),
    id: u64,
    project: ProjectId,
) -> Result<()> {
    if body_id != Some(id) {
        return Err(Error::Invalid(names.wrong_id.map_or_else(
            || format!("{} ID in body and URL must be the same", names.id_label),
            str::to_owned,
        )));
    }
    match body_project {
        Some(p) if p != 0 && p != project => invalid(names.wrong_project),
        _ => Ok(()),
    }
}

/// A create body's `project_id`, when given, must be the URL's project.
fn check_project(body_project: Option<u64>, project: ProjectId) -> Result<()> {
    match body_project {
        Some(p) if p != 0 && p != project => invalid(WRONG_PROJECT),
        _ => Ok(()),
    }
}

/// A referenced object must exist in the same project; 400 otherwise (never another
/// project's object).
fn require<R: Resource>(
    tx: &Tx<'_>,
    project: ProjectId,
    id: u64,
    field: &str,
    what: &str,
) -> Result<R> {
    tx.get::<R>(project, id)?
        .ok_or_else(|| Error::Invalid(format!("{field}: no {what} with id {id} in this project")))
}

/// A referenced access key (never an environment's secret).
fn require_key(tx: &Tx<'_>, project: ProjectId, id: u64, field: &str) -> Result<AccessKey> {
    let key: AccessKey = require(tx, project, id, field, "access key")?;
    if key.environment_id.is_some() {
        return invalid(format!(
            "{field}: no access key with id {id} in this project"
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Environment, Inventory, Repository, Template};

    /// What a client sees for an update body with another id, one with another project, and a
    /// delete while a template uses the object; and the `created` event's description.
    fn messages<R: ProjectResource>() -> [String; 4] {
        let err = |r: Result<()>| r.map_or_else(|e| e.to_string(), |()| "accepted".into());
        let used = Refs {
            templates: vec![(1, "t".into())],
            ..Refs::default()
        };
        [
            err(check_update_ids(&R::NAMES, (Some(2), None), 1, 1)),
            err(check_update_ids(&R::NAMES, (Some(1), Some(9)), 1, 1)),
            R::in_use(&used).map_or_else(|| "deleted".into(), |e| e.to_string()),
            description(&R::NAMES, "x", "created"),
        ]
    }

    /// Upstream's messages word for word (the integration tests match fragments of them).
    #[test]
    fn messages_and_events_word_for_word() {
        let project = "Project ID in body and URL must be the same";
        let cases: [(&str, [String; 4], [&str; 4]); 5] = [
            (
                "key",
                messages::<AccessKey>(),
                [
                    "Access key ID in body and URL must be the same",
                    project,
                    "Access Key is in use by one or more templates",
                    "Access Key x created",
                ],
            ),
            (
                "repository",
                messages::<Repository>(),
                [
                    "Repository ID in body and URL must be the same",
                    project,
                    "Repository is in use by one or more templates",
                    "Repository x created",
                ],
            ),
            (
                "inventory",
                messages::<Inventory>(),
                [
                    "Inventory ID in body and URL must be the same",
                    project,
                    "Inventory is in use by one or more templates",
                    "Inventory x created",
                ],
            ),
            (
                "environment",
                messages::<Environment>(),
                [
                    "Environment ID in body and URL must be the same",
                    project,
                    "Environment is in use by one or more templates",
                    "Environment x created",
                ],
            ),
            (
                "template",
                messages::<Template>(),
                [
                    "template id in URL and in body must be the same",
                    "You can not move template to other project",
                    "Template is the build template of one or more deploy templates",
                    "Template x created",
                ],
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want.map(str::to_owned), "{what}");
        }
    }

    #[test]
    fn matching_or_absent_ids_pass() {
        let names = Names::new("key", "Access Key");
        for body_project in [None, Some(0), Some(1)] {
            assert!(check_update_ids(&names, (Some(5), body_project), 5, 1).is_ok());
            assert!(check_project(body_project, 1).is_ok());
        }
        assert!(check_update_ids(&names, (None, None), 5, 1).is_err());
        assert!(check_project(Some(2), 1).is_err());
    }

    /// A template is kept only by the deploy templates building from it, never by the
    /// inventories it holds; any use keeps the other resources.
    #[test]
    fn what_keeps_an_object() {
        let held = Refs {
            inventories: vec![(3, "held".into())],
            ..Refs::default()
        };
        assert!(Template::in_use(&held).is_none());
        assert!(Repository::in_use(&held).is_some());
        assert!(AccessKey::in_use(&Refs::default()).is_none());
    }
}
