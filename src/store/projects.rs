//! Projects, their members, their resources and the event log, through typed transactions.
//!
//! Services compose several reads and writes into one [`Tx`] (validate references, write the
//! object, record the event) so that each change is atomic and durable as a whole. Sibling
//! modules (`tasks`) add their own methods to [`Tx`]; this module depends on none of them.

use redb::{Durability, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tables::{
    ACTIVE_TASK, EVENTID_EVENT, OUTPUT_CHUNK, PROJECT_ENVIRONMENT, PROJECT_EVENTID,
    PROJECT_INVENTORY, PROJECT_KEY, PROJECT_REPOSITORY, PROJECT_SCOPED, PROJECT_TASK,
    PROJECT_TEMPLATE, PROJECT_VIEW, PROJECTID_PROJECT, PROJECTUSER_ROLE, TASKID_PROJECT,
    TEMPLATE_TASK, USERID_USER, USERPROJECT,
};
use super::{Error, Result, Store, codec, next_id};
use crate::model::{
    AccessKey, Environment, Event, Inventory, Project, ProjectId, Repository, Role, Task, TaskId,
    Template, User, UserId,
};

/// A record stored per project under `(project id, id)`.
pub trait Resource: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Its table.
    const TABLE: TableDefinition<'static, (ProjectId, u64), &'static [u8]>;
    /// The `META` counter its ids come from.
    const COUNTER: &'static str;
    /// Its id.
    fn id(&self) -> u64;
    /// Sets its id (on insert).
    fn set_id(&mut self, id: u64);
    /// Its project.
    fn project_id(&self) -> ProjectId;
}

/// Implements [`Resource`] for a model type with `id` and `project_id` fields.
macro_rules! resource {
    ($t:ty, $table:expr, $counter:literal) => {
        impl Resource for $t {
            const TABLE: TableDefinition<'static, (ProjectId, u64), &'static [u8]> = $table;
            const COUNTER: &'static str = $counter;
            fn id(&self) -> u64 {
                self.id
            }
            fn set_id(&mut self, id: u64) {
                self.id = id;
            }
            fn project_id(&self) -> ProjectId {
                self.project_id
            }
        }
    };
}
pub(super) use resource;

resource!(AccessKey, PROJECT_KEY, "next_key_id");
resource!(Repository, PROJECT_REPOSITORY, "next_repository_id");
resource!(Inventory, PROJECT_INVENTORY, "next_inventory_id");
resource!(Environment, PROJECT_ENVIRONMENT, "next_environment_id");
resource!(Template, PROJECT_TEMPLATE, "next_template_id");
resource!(Task, PROJECT_TASK, "next_task_id");
resource!(crate::model::View, PROJECT_VIEW, "next_view_id");
resource!(
    crate::model::HostKey,
    super::tables::PROJECT_HOSTKEY,
    "next_host_key_id"
);
resource!(
    crate::model::Schedule,
    super::tables::PROJECT_SCHEDULE,
    "next_schedule_id"
);

/// An event to record; the transaction assigns its id and time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Who did it.
    pub user_id: Option<UserId>,
    /// In which project.
    pub project_id: Option<ProjectId>,
    /// The object.
    pub object_id: Option<u64>,
    /// The object's type (`project`, `key`, ...).
    pub object_type: &'static str,
    /// What happened.
    pub description: String,
}

fn get_in<R: Resource>(
    table: &impl ReadableTable<(ProjectId, u64), &'static [u8]>,
    project: ProjectId,
    id: u64,
) -> Result<Option<R>> {
    match table.get((project, id))? {
        Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
        None => Ok(None),
    }
}

fn list_in<R: Resource>(
    table: &impl ReadableTable<(ProjectId, u64), &'static [u8]>,
    project: ProjectId,
) -> Result<Vec<R>> {
    table
        .range((project, 0)..=(project, u64::MAX))?
        .map(|row| Ok(codec::decode(row?.1.value())?))
        .collect()
}

fn decode_opt<T: DeserializeOwned>(
    bytes: Option<redb::AccessGuard<'_, &[u8]>>,
) -> Result<Option<T>> {
    match bytes {
        Some(b) => Ok(Some(codec::decode(b.value())?)),
        None => Ok(None),
    }
}

/// A write transaction over projects and their resources, committed durably as a whole.
pub struct Tx<'t> {
    tx: &'t WriteTransaction,
    now: i64,
}

impl Tx<'_> {
    /// The underlying redb transaction (for sibling store modules).
    pub(super) fn raw(&self) -> &WriteTransaction {
        self.tx
    }

    /// The transaction's time (Unix seconds), used for `created` fields and events.
    #[must_use]
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Resource `id` of `project`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn get<R: Resource>(&self, project: ProjectId, id: u64) -> Result<Option<R>> {
        get_in(&self.tx.open_table(R::TABLE)?, project, id)
    }

    /// Every resource of this type in `project`, by id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn list<R: Resource>(&self, project: ProjectId) -> Result<Vec<R>> {
        list_in(&self.tx.open_table(R::TABLE)?, project)
    }

    /// Stores a new resource, assigning its id; returns the id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn insert<R: Resource>(&self, r: &mut R) -> Result<u64> {
        let id = next_id(self.tx, R::COUNTER)?;
        r.set_id(id);
        self.put(r)?;
        Ok(id)
    }

    /// Stores (replaces) a resource under its project and id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn put<R: Resource>(&self, r: &R) -> Result<()> {
        self.tx
            .open_table(R::TABLE)?
            .insert((r.project_id(), r.id()), codec::encode(r).as_slice())?;
        Ok(())
    }

    /// Removes resource `id` of `project`; returns whether it existed.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn remove<R: Resource>(&self, project: ProjectId, id: u64) -> Result<bool> {
        Ok(self
            .tx
            .open_table(R::TABLE)?
            .remove((project, id))?
            .is_some())
    }

    /// Project `id`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn project(&self, id: ProjectId) -> Result<Option<Project>> {
        decode_opt(self.tx.open_table(PROJECTID_PROJECT)?.get(id)?)
    }

    /// Stores a new project, assigning its id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn insert_project(&self, p: &mut Project) -> Result<ProjectId> {
        p.id = next_id(self.tx, "next_project_id")?;
        self.put_project(p)?;
        Ok(p.id)
    }

    /// Replaces a project.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn put_project(&self, p: &Project) -> Result<()> {
        super::writer::access_written();
        self.tx
            .open_table(PROJECTID_PROJECT)?
            .insert(p.id, codec::encode(p).as_slice())?;
        Ok(())
    }

    /// Deletes a project with every resource, task (with its output and index entries),
    /// membership and event in it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; storage failures.
    pub fn delete_project(&self, id: ProjectId) -> Result<()> {
        super::writer::access_written();
        if self.tx.open_table(PROJECTID_PROJECT)?.remove(id)?.is_none() {
            return Err(Error::NotFound);
        }
        let range = (id, 0)..=(id, u64::MAX);
        forget_project_tasks(self.tx, id)?;
        super::integrations::forget_project(self.tx, id)?;
        for table in PROJECT_SCOPED {
            self.tx
                .open_table(*table)?
                .retain_in(range.clone(), |_, _| false)?;
        }
        let mut events = self.tx.open_table(EVENTID_EVENT)?;
        for row in self
            .tx
            .open_table(PROJECT_EVENTID)?
            .extract_from_if(range.clone(), |_, ()| true)?
        {
            events.remove(row?.0.value().1)?;
        }
        let mut by_user = self.tx.open_table(USERPROJECT)?;
        for row in self
            .tx
            .open_table(PROJECTUSER_ROLE)?
            .extract_from_if(range, |_, _| true)?
        {
            let (_, user) = row?.0.value();
            by_user.remove((user, id))?;
        }
        Ok(())
    }

    /// `user`'s role in `project`, if a member.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn role(&self, project: ProjectId, user: UserId) -> Result<Option<Role>> {
        Ok(self
            .tx
            .open_table(PROJECTUSER_ROLE)?
            .get((project, user))?
            .map(|r| Role::from_u8(r.value())))
    }

    /// Makes `user` a member with `role` (or changes their role).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn set_role(&self, project: ProjectId, user: UserId, role: Role) -> Result<()> {
        super::writer::access_written();
        self.tx
            .open_table(PROJECTUSER_ROLE)?
            .insert((project, user), role.to_u8())?;
        self.tx
            .open_table(USERPROJECT)?
            .insert((user, project), ())?;
        Ok(())
    }

    /// Removes `user` from `project`; returns whether they were a member.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn remove_member(&self, project: ProjectId, user: UserId) -> Result<bool> {
        super::writer::access_written();
        self.tx.open_table(USERPROJECT)?.remove((user, project))?;
        Ok(self
            .tx
            .open_table(PROJECTUSER_ROLE)?
            .remove((project, user))?
            .is_some())
    }

    /// User `id`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn user(&self, id: UserId) -> Result<Option<User>> {
        decode_opt(self.tx.open_table(USERID_USER)?.get(id)?)
    }

    /// Appends an event to the log (same transaction as the change it describes).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn record(&self, e: NewEvent) -> Result<()> {
        record(self.tx, self.now, e)
    }
}

/// Removes every task of `project` from the global indexes and drops their output (the task
/// rows themselves go with the project's range).
fn forget_project_tasks(tx: &WriteTransaction, project: ProjectId) -> Result<()> {
    let ids: Vec<TaskId> = tx
        .open_table(PROJECT_TASK)?
        .range((project, 0)..=(project, u64::MAX))?
        .map(|row| Ok::<_, Error>(row?.0.value().1))
        .collect::<Result<_>>()?;
    let mut index = tx.open_table(TASKID_PROJECT)?;
    let mut active = tx.open_table(ACTIVE_TASK)?;
    let mut output = tx.open_table(OUTPUT_CHUNK)?;
    tx.open_table(TEMPLATE_TASK)?
        .retain_in((project, 0, 0)..=(project, u64::MAX, u64::MAX), |_, ()| {
            false
        })?;
    for id in ids {
        index.remove(id)?;
        active.remove(id)?;
        super::output::delete(&mut output, id)?;
    }
    Ok(())
}

pub(super) fn record(tx: &WriteTransaction, now: i64, e: NewEvent) -> Result<()> {
    let id = next_id(tx, "next_event_id")?;
    let event = Event {
        id,
        user_id: e.user_id,
        project_id: e.project_id,
        object_id: e.object_id,
        object_type: e.object_type.to_owned(),
        description: e.description,
        created: now,
    };
    tx.open_table(EVENTID_EVENT)?
        .insert(id, codec::encode(&event).as_slice())?;
    if let Some(p) = e.project_id {
        tx.open_table(PROJECT_EVENTID)?.insert((p, id), ())?;
    }
    Ok(())
}

/// A consistent read-only view.
pub struct View {
    tx: ReadTransaction,
}

impl View {
    /// The underlying read transaction (for sibling store modules).
    pub(super) fn raw(&self) -> &ReadTransaction {
        &self.tx
    }

    /// Resource `id` of `project`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn get<R: Resource>(&self, project: ProjectId, id: u64) -> Result<Option<R>> {
        get_in(&self.tx.open_table(R::TABLE)?, project, id)
    }

    /// Every resource of this type in `project`, by id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn list<R: Resource>(&self, project: ProjectId) -> Result<Vec<R>> {
        list_in(&self.tx.open_table(R::TABLE)?, project)
    }

    /// Project `id`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn project(&self, id: ProjectId) -> Result<Option<Project>> {
        decode_opt(self.tx.open_table(PROJECTID_PROJECT)?.get(id)?)
    }

    /// Every project, by id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn projects(&self) -> Result<Vec<Project>> {
        let table = self.tx.open_table(PROJECTID_PROJECT)?;
        table
            .iter()?
            .map(|row| Ok(codec::decode(row?.1.value())?))
            .collect()
    }

    /// The projects `user` is a member of, by id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn projects_of(&self, user: UserId) -> Result<Vec<ProjectId>> {
        let table = self.tx.open_table(USERPROJECT)?;
        table
            .range((user, 0)..=(user, u64::MAX))?
            .map(|row| Ok(row?.0.value().1))
            .collect()
    }

    /// `user`'s role in `project`, if a member.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn role(&self, project: ProjectId, user: UserId) -> Result<Option<Role>> {
        Ok(self
            .tx
            .open_table(PROJECTUSER_ROLE)?
            .get((project, user))?
            .map(|r| Role::from_u8(r.value())))
    }

    /// The members of `project` with their roles, by user id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn members(&self, project: ProjectId) -> Result<Vec<(UserId, Role)>> {
        let table = self.tx.open_table(PROJECTUSER_ROLE)?;
        table
            .range((project, 0)..=(project, u64::MAX))?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().1, Role::from_u8(v.value())))
            })
            .collect()
    }

    /// User `id`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn user(&self, id: UserId) -> Result<Option<User>> {
        decode_opt(self.tx.open_table(USERID_USER)?.get(id)?)
    }

    /// Newest-first events of `project`, at most `limit`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn project_events(&self, project: ProjectId, limit: usize) -> Result<Vec<Event>> {
        Ok(without_ids(self.project_events_before(
            project,
            u64::MAX,
            limit,
        )?))
    }

    /// Newest-first events of `project` with ids below `before`, at most `limit`, with their
    /// ids (the next page starts below the last one).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn project_events_before(
        &self,
        project: ProjectId,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>> {
        let index = self.tx.open_table(PROJECT_EVENTID)?;
        let events = self.tx.open_table(EVENTID_EVENT)?;
        let mut out = Vec::new();
        if before == 0 {
            return Ok(out);
        }
        for row in index
            .range((project, 0)..=(project, before - 1))?
            .rev()
            .take(limit)
        {
            let id = row?.0.value().1;
            if let Some(e) = decode_opt(events.get(id)?)? {
                out.push((id, e));
            }
        }
        Ok(out)
    }

    /// Newest-first events that `keep` accepts, at most `limit`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn events(&self, limit: usize, keep: impl Fn(&Event) -> bool) -> Result<Vec<Event>> {
        Ok(without_ids(self.events_before(u64::MAX, limit, keep)?))
    }

    /// Newest-first events with ids below `before` that `keep` accepts, at most `limit`, with
    /// their ids.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn events_before(
        &self,
        before: u64,
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Vec<(u64, Event)>> {
        let events = self.tx.open_table(EVENTID_EVENT)?;
        let mut out = Vec::new();
        if before == 0 || limit == 0 {
            return Ok(out);
        }
        for row in events.range(..before)?.rev() {
            let (id, bytes) = row?;
            let e: Event = codec::decode(bytes.value())?;
            if keep(&e) {
                out.push((id.value(), e));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

fn without_ids(events: Vec<(u64, Event)>) -> Vec<Event> {
    events.into_iter().map(|(_, e)| e).collect()
}

/// What lists a project's resources: a write transaction ([`Tx`]) or a read view ([`View`]).
/// Checks that writers run inside their transaction (what still uses this key?) can then
/// answer plain reads on a view, without a write transaction.
pub trait Lists {
    /// Every resource of this type in `project`, by id.
    ///
    /// # Errors
    /// Storage failures only.
    fn list<R: Resource>(&self, project: ProjectId) -> Result<Vec<R>>;
}

impl Lists for Tx<'_> {
    fn list<R: Resource>(&self, project: ProjectId) -> Result<Vec<R>> {
        Tx::list(self, project)
    }
}

impl Lists for View {
    fn list<R: Resource>(&self, project: ProjectId) -> Result<Vec<R>> {
        View::list(self, project)
    }
}

impl Store {
    /// Runs `f` in one durable write transaction at time `now`; nothing is written if it fails.
    /// `f` runs on the writer thread, possibly more than once (see [`super::writer`]).
    ///
    /// # Errors
    /// `f`'s error, or a storage failure.
    pub fn transact<T, E, F>(&self, now: i64, f: F) -> std::result::Result<T, E>
    where
        F: Fn(&Tx<'_>) -> std::result::Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.write(Durability::Immediate, move |tx| f(&Tx { tx, now }))
    }

    /// [`Store::transact`] for async callers: awaits the group commit without blocking a
    /// thread.
    ///
    /// # Errors
    /// `f`'s error, or a storage failure.
    pub async fn transact_async<T, E, F>(&self, now: i64, f: F) -> std::result::Result<T, E>
    where
        F: Fn(&Tx<'_>) -> std::result::Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.write_async(Durability::Immediate, move |tx| f(&Tx { tx, now }))
            .await
    }

    /// A consistent read-only view of the store.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn view(&self) -> Result<View> {
        Ok(View { tx: self.read()? })
    }

    /// Records one event on its own (e.g. a failed login), durably.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn record_event(&self, now: i64, e: NewEvent) -> Result<()> {
        self.write(Durability::Immediate, move |tx| record(tx, now, e.clone()))
    }
}
