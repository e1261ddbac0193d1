//! Projects, membership, the one access decision for project routes, and the event log.

use serde::Deserialize;

use super::{Error, Result, Services, validate};
use crate::model::{
    AccessKey, Environment, Event, KeyKind, Permissions, Project, ProjectId, Role, User, UserId,
};
use crate::store::{NewEvent, Tx};

/// Upper bound of `/events/last` lists.
pub const LAST_EVENTS: usize = 200;

/// What the caller may do in a project, decided once per request by [`Services::access`].
#[derive(Debug, Clone)]
pub struct Access {
    /// The project.
    pub project: Project,
    /// The caller.
    pub user: User,
    /// The caller's role, if a member (system admins may not be).
    pub role: Option<Role>,
    /// Effective permissions (all of them for system admins).
    pub permissions: Permissions,
}

impl Access {
    /// The project's id.
    #[must_use]
    pub fn project_id(&self) -> ProjectId {
        self.project.id
    }

    /// An event by the caller in this project.
    #[must_use]
    pub fn event(
        &self,
        object_type: &'static str,
        object_id: u64,
        description: String,
    ) -> NewEvent {
        NewEvent {
            user_id: Some(self.user.id),
            project_id: Some(self.project.id),
            object_id: Some(object_id),
            object_type,
            description,
        }
    }
}

/// The fields of a project on create and update (upstream's JSON).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProjectInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Alerts on.
    pub alert: Option<bool>,
    /// Chat for alerts.
    pub alert_chat: Option<String>,
    /// Parallel task limit (0 = none).
    pub max_parallel_tasks: Option<u32>,
    /// Project type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Upstream's demo-project flag; Forge creates the plain project.
    pub demo: Option<bool>,
}

/// A member as listed.
#[derive(Debug, Clone)]
pub struct Member {
    /// The user.
    pub user: User,
    /// Their role.
    pub role: Role,
}

impl Services {
    /// The one decision for project routes: may `caller` do what `need` names in `project`?
    /// Non-members never learn the project exists (404); members lacking a permission get 403;
    /// system admins may do everything.
    ///
    /// # Errors
    /// [`Error::NotFound`] or [`Error::Forbidden`].
    pub fn access(&self, caller: &User, project: ProjectId, need: Permissions) -> Result<Access> {
        // Read before the store (see `store::writer::Generation`).
        let generation = self.store.writer_stats().access.current();
        let known = self.access_cache.membership(caller.id, project, generation);
        let (project, role) = if let Some(known) = known {
            known
        } else {
            let view = self.store.view()?;
            let project = view.project(project)?.ok_or(Error::NotFound)?;
            let role = view.role(project.id, caller.id)?;
            self.access_cache
                .keep_membership(caller.id, generation, &project, role);
            (project, role)
        };
        let permissions = match (caller.admin, role) {
            (true, _) => Permissions::ALL,
            (false, Some(role)) => role.permissions(),
            (false, None) => return Err(Error::NotFound),
        };
        if !permissions.contains(need) {
            return Err(Error::Forbidden);
        }
        Ok(Access {
            project,
            user: caller.clone(),
            role,
            permissions,
        })
    }

    /// The projects `caller` may see (all for admins), by name.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn projects(&self, caller: &User) -> Result<Vec<Project>> {
        let view = self.store.view()?;
        let mut projects = if caller.admin {
            view.projects()?
        } else {
            let mut out = Vec::new();
            for id in view.projects_of(caller.id)? {
                out.extend(view.project(id)?);
            }
            out
        };
        projects.sort_by_key(|p| (p.name.to_lowercase(), p.id));
        Ok(projects)
    }

    /// Creates a project with `caller` as owner, its `None` key and `Empty` environment.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when `caller` may not create projects (upstream's 401);
    /// [`Error::Invalid`] for an empty name.
    pub async fn create_project(&self, caller: &User, input: ProjectInput) -> Result<Project> {
        if !(caller.admin || self.non_admin_can_create_project) {
            return Err(Error::Unauthorized);
        }
        let name = input.name.clone().unwrap_or_default();
        validate::name(&name, "project name").map_err(Error::Invalid)?;
        let caller = caller.clone();
        self.transact(move |tx| {
            let project = insert_project(tx, caller.id, &name, &input)?;
            let id = project.id;
            tx.insert(&mut none_key(id))?;
            tx.insert(&mut empty_environment(id))?;
            tx.record(NewEvent {
                user_id: Some(caller.id),
                project_id: Some(id),
                object_id: Some(id),
                object_type: "project",
                description: format!("Project {} created", project.name),
            })?;
            Ok(project)
        })
        .await
    }

    /// Replaces a project's fields; the body's `id` must equal the URL's.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a mismatched id or an empty name.
    pub async fn update_project(&self, access: &Access, input: ProjectInput) -> Result<()> {
        if input.id != Some(access.project_id()) {
            return Err(Error::Invalid(
                "Project ID in body and URL must be the same".into(),
            ));
        }
        let name = input.name.clone().unwrap_or_default();
        validate::name(&name, "project name").map_err(Error::Invalid)?;
        let access = access.clone();
        self.transact(move |tx| {
            let mut project = tx.project(access.project_id())?.ok_or(Error::NotFound)?;
            name.trim().clone_into(&mut project.name);
            project.alert = input.alert.unwrap_or_default();
            project.alert_chat = input.alert_chat.clone().filter(|c| !c.is_empty());
            project.max_parallel_tasks = input.max_parallel_tasks.unwrap_or_default();
            project.kind = input.kind.clone().unwrap_or_default();
            tx.put_project(&project)?;
            tx.record(access.event(
                "project",
                project.id,
                format!("Project {} updated", project.name),
            ))?;
            Ok(())
        })
        .await
    }

    /// Deletes a project and everything in it, in one transaction.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn delete_project(&self, access: &Access) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            tx.delete_project(access.project_id())?;
            // The project's own events go with it; this one outlives it.
            tx.record(NewEvent {
                project_id: None,
                ..access.event(
                    "project",
                    access.project_id(),
                    format!("Project {} deleted", access.project.name),
                )
            })?;
            Ok(())
        })
        .await?;
        self.access_changed();
        Ok(())
    }

    /// The members of a project with their users.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn members(&self, access: &Access) -> Result<Vec<Member>> {
        let view = self.store.view()?;
        let mut out = Vec::new();
        for (user_id, role) in view.members(access.project_id())? {
            if let Some(user) = view.user(user_id)? {
                out.push(Member { user, role });
            }
        }
        Ok(out)
    }

    /// A member's user record.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the user is not a member.
    pub fn member(&self, access: &Access, user: UserId) -> Result<User> {
        let view = self.store.view()?;
        view.role(access.project_id(), user)?
            .ok_or(Error::NotFound)?;
        view.user(user)?.ok_or(Error::NotFound)
    }

    /// Adds `user` with `role`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unknown role; [`Error::NotFound`] for an unknown user;
    /// [`Error::Conflict`] when already a member.
    pub async fn add_member(&self, access: &Access, user: UserId, role: &str) -> Result<()> {
        let role = parse_role(role)?;
        let access = access.clone();
        self.transact(move |tx| {
            let target = tx.user(user)?.ok_or(Error::NotFound)?;
            if tx.role(access.project_id(), user)?.is_some() {
                return Err(Error::Conflict(format!(
                    "{} is already a member",
                    target.username
                )));
            }
            tx.set_role(access.project_id(), user, role)?;
            tx.record(access.event(
                "user",
                user,
                format!(
                    "User {} added to the project as {}",
                    target.username,
                    role.as_str()
                ),
            ))?;
            Ok(())
        })
        .await
    }

    /// Changes a member's role. A non-admin owner may not change their own role.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`] when not a member.
    pub async fn set_member_role(&self, access: &Access, user: UserId, role: &str) -> Result<()> {
        let role = parse_role(role)?;
        if user == access.user.id && !access.user.admin {
            return Err(Error::Invalid("you cannot change your own role".into()));
        }
        let access = access.clone();
        self.transact(move |tx| {
            tx.role(access.project_id(), user)?.ok_or(Error::NotFound)?;
            let target = tx.user(user)?.ok_or(Error::NotFound)?;
            tx.set_role(access.project_id(), user, role)?;
            tx.record(access.event(
                "user",
                user,
                format!(
                    "User {} is now {} in the project",
                    target.username,
                    role.as_str()
                ),
            ))?;
            Ok(())
        })
        .await?;
        self.access_changed();
        Ok(())
    }

    /// Removes a member.
    ///
    /// # Errors
    /// [`Error::NotFound`] when not a member.
    pub async fn remove_member(&self, access: &Access, user: UserId) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            if !tx.remove_member(access.project_id(), user)? {
                return Err(Error::NotFound);
            }
            let name = tx.user(user)?.map(|u| u.username).unwrap_or_default();
            tx.record(access.event(
                "user",
                user,
                format!("User {name} removed from the project"),
            ))?;
            Ok(())
        })
        .await?;
        self.access_changed();
        Ok(())
    }

    /// The caller leaves the project; owners (who are not system admins) cannot.
    ///
    /// # Errors
    /// [`Error::NotFound`] when not a member; [`Error::Invalid`] for an owner.
    pub async fn leave_project(&self, access: &Access) -> Result<()> {
        match access.role {
            None => return Err(Error::NotFound),
            Some(Role::Owner) if !access.user.admin => {
                return Err(Error::Invalid("an owner cannot leave the project".into()));
            }
            Some(_) => {}
        }
        self.remove_member(access, access.user.id).await
    }

    /// Newest-first events the caller may see: admins all; others their projects' events and
    /// their own project-less events (logins).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn events(&self, caller: &User, limit: usize) -> Result<Vec<Event>> {
        let page = self.events_before(caller, u64::MAX, limit)?;
        Ok(page.into_iter().map(|(_, e)| e).collect())
    }

    /// One page of [`Services::events`]: ids below `before`, with their ids (the next page
    /// starts below the last).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn events_before(
        &self,
        caller: &User,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>> {
        let view = self.store.view()?;
        if caller.admin {
            return Ok(view.events_before(before, limit, |_| true)?);
        }
        let mine: std::collections::HashSet<ProjectId> =
            view.projects_of(caller.id)?.into_iter().collect();
        Ok(view.events_before(before, limit, |e| match e.project_id {
            Some(p) => mine.contains(&p),
            None => e.user_id == Some(caller.id),
        })?)
    }

    /// Newest-first events of a project.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn project_events(&self, access: &Access, limit: usize) -> Result<Vec<Event>> {
        Ok(self
            .store
            .view()?
            .project_events(access.project_id(), limit)?)
    }

    /// One page of [`Services::project_events`]: ids below `before`, with their ids.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn project_events_before(
        &self,
        access: &Access,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>> {
        Ok(self
            .store
            .view()?
            .project_events_before(access.project_id(), before, limit)?)
    }

    /// Names for an event list: project names and usernames by id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn event_names(&self, events: &[Event]) -> Result<EventNames> {
        let view = self.store.view()?;
        let mut names = EventNames::default();
        for e in events {
            if let Some(p) = e.project_id
                && let std::collections::hash_map::Entry::Vacant(v) = names.projects.entry(p)
            {
                v.insert(view.project(p)?.map(|p| p.name).unwrap_or_default());
            }
            if let Some(u) = e.user_id
                && let std::collections::hash_map::Entry::Vacant(v) = names.users.entry(u)
            {
                v.insert(view.user(u)?.map(|u| u.username).unwrap_or_default());
            }
            // A task's name is its playbook override (upstream's `object_name`); "" once gone.
            if e.object_type == "task"
                && let (Some(p), Some(t)) = (e.project_id, e.object_id)
                && let std::collections::hash_map::Entry::Vacant(v) = names.tasks.entry(t)
            {
                let task = view.get::<crate::model::Task>(p, t)?;
                v.insert(task.map(|t| t.playbook).unwrap_or_default());
            }
        }
        Ok(names)
    }

    /// Runs `f` in one durable transaction (through the store's writer), at the current time.
    pub(crate) async fn transact<T: Send + 'static>(
        &self,
        f: impl Fn(&Tx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.store.transact_async(self.now(), f).await
    }
}

/// Project names and usernames referenced by events.
#[derive(Debug, Default)]
pub struct EventNames {
    /// Project id → name.
    pub projects: std::collections::HashMap<ProjectId, String>,
    /// User id → username.
    pub users: std::collections::HashMap<UserId, String>,
    /// Task id → its `object_name` (the task's playbook override).
    pub tasks: std::collections::HashMap<u64, String>,
}

/// Inserts a project (`name` already validated) owned by `owner`, with nothing in it yet.
///
/// # Errors
/// Storage failures only.
pub fn insert_project(
    tx: &Tx<'_>,
    owner: UserId,
    name: &str,
    input: &ProjectInput,
) -> Result<Project> {
    let mut project = Project {
        id: 0,
        name: name.trim().to_owned(),
        created: tx.now(),
        alert: input.alert.unwrap_or_default(),
        alert_chat: input.alert_chat.clone().filter(|c| !c.is_empty()),
        max_parallel_tasks: input.max_parallel_tasks.unwrap_or_default(),
        kind: input.kind.clone().unwrap_or_default(),
    };
    let id = tx.insert_project(&mut project)?;
    tx.set_role(id, owner, Role::Owner)?;
    Ok(project)
}

/// The key every new project gets: `None`, of type `none`.
#[must_use]
pub fn none_key(project: ProjectId) -> AccessKey {
    AccessKey {
        id: 0,
        project_id: project,
        name: NONE_KEY.into(),
        kind: KeyKind::None,
        sealed_secret: Vec::new(),
        environment_id: None,
    }
}

/// The environment every new project gets: `Empty`, with no variables.
#[must_use]
pub fn empty_environment(project: ProjectId) -> Environment {
    Environment {
        id: 0,
        project_id: project,
        name: EMPTY_ENVIRONMENT.into(),
        json: "{}".into(),
        env: None,
        sealed_password: Vec::new(),
    }
}

/// The name of [`none_key`].
pub const NONE_KEY: &str = "None";
/// The name of [`empty_environment`].
pub const EMPTY_ENVIRONMENT: &str = "Empty";

fn parse_role(role: &str) -> Result<Role> {
    Role::parse(role).ok_or_else(|| Error::Invalid(format!("invalid role: {role:?}")))
}
