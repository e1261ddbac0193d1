//! Repositories: a git URL (or local path), a branch and the key to fetch with.

use serde::Deserialize;

use super::{Refs, check_ids, check_project, get_or_404, invalid, require_key};
use crate::model::{Inventory, ProjectId, Repository, Template};
use crate::service::projects::Access;
use crate::service::{Error, Result, Services, validate};
use crate::store::Lists;

/// A repository body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RepositoryInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Clone URL or absolute local path.
    pub git_url: Option<String>,
    /// Branch (optional for local paths).
    pub git_branch: Option<String>,
    /// Key for fetching.
    pub ssh_key_id: Option<u64>,
}

fn repository_fields(input: &RepositoryInput) -> Result<(String, String, String, u64)> {
    let name = input.name.clone().unwrap_or_default();
    if name.trim().is_empty() {
        return invalid("repository name can't be empty");
    }
    validate::name(&name, "repository name").map_err(Error::Invalid)?;
    let url = input.git_url.clone().unwrap_or_default().trim().to_owned();
    if url.is_empty() {
        return invalid("repository url can't be empty");
    }
    validate::git_url(&url).map_err(Error::Invalid)?;
    let branch = input
        .git_branch
        .clone()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if branch.is_empty() && !url.starts_with('/') {
        return invalid("repository branch can't be empty");
    }
    if !branch.is_empty() {
        validate::git_branch(&branch).map_err(Error::Invalid)?;
    }
    let key = input
        .ssh_key_id
        .ok_or_else(|| Error::Invalid("ssh_key_id: an access key is required".into()))?;
    Ok((name.trim().to_owned(), url, branch, key))
}

impl Services {
    /// The project's repositories.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn repositories(&self, access: &Access) -> Result<Vec<Repository>> {
        Ok(self.store.view()?.list(access.project_id())?)
    }

    /// One repository.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn repository(&self, access: &Access, id: u64) -> Result<Repository> {
        self.store
            .view()?
            .get(access.project_id(), id)?
            .ok_or(Error::NotFound)
    }

    /// Creates a repository.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields or a key of another project.
    pub async fn create_repository(
        &self,
        access: &Access,
        input: RepositoryInput,
    ) -> Result<Repository> {
        check_project(input.project_id, access.project_id())?;
        let (name, git_url, git_branch, ssh_key_id) = repository_fields(&input)?;
        let access = access.clone();
        self.transact(move |tx| {
            require_key(tx, access.project_id(), ssh_key_id, "ssh_key_id")?;
            let mut repo = Repository {
                id: 0,
                project_id: access.project_id(),
                name: name.clone(),
                git_url: git_url.clone(),
                git_branch: git_branch.clone(),
                ssh_key_id,
            };
            let id = tx.insert(&mut repo)?;
            tx.record(access.event(
                "repository",
                id,
                format!("Repository {} created", repo.name),
            ))?;
            Ok(repo)
        })
        .await
    }

    /// Replaces a repository.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`].
    pub async fn update_repository(
        &self,
        access: &Access,
        id: u64,
        input: RepositoryInput,
    ) -> Result<()> {
        check_ids(
            input.id,
            id,
            input.project_id,
            access.project_id(),
            "Repository",
        )?;
        let (name, git_url, git_branch, ssh_key_id) = repository_fields(&input)?;
        let access = access.clone();
        self.transact(move |tx| {
            get_or_404::<Repository>(tx, access.project_id(), id)?;
            require_key(tx, access.project_id(), ssh_key_id, "ssh_key_id")?;
            let repo = Repository {
                id,
                project_id: access.project_id(),
                name: name.clone(),
                git_url: git_url.clone(),
                git_branch: git_branch.clone(),
                ssh_key_id,
            };
            tx.put(&repo)?;
            tx.record(access.event(
                "repository",
                id,
                format!("Repository {} updated", repo.name),
            ))?;
            Ok(())
        })
        .await
    }

    /// Deletes a repository unless a template or inventory uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InUse`].
    pub async fn delete_repository(&self, access: &Access, id: u64) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let repo: Repository = get_or_404(tx, access.project_id(), id)?;
            if !repository_refs(tx, access.project_id(), id)?.is_empty() {
                return Err(Error::InUse(
                    "Repository is in use by one or more templates".into(),
                ));
            }
            tx.remove::<Repository>(access.project_id(), id)?;
            tx.record(access.event(
                "repository",
                id,
                format!("Repository {} deleted", repo.name),
            ))?;
            Ok(())
        })
        .await
    }

    /// What uses repository `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn repository_refs(&self, access: &Access, id: u64) -> Result<Refs> {
        self.repository(access, id)?;
        let p = access.project_id();
        repository_refs(&self.store.view()?, p, id)
    }
}

fn repository_refs(tx: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
    let mut refs = Refs::default();
    for t in tx.list::<Template>(p)? {
        if t.repository_id == id {
            refs.templates.push((t.id, t.name));
        }
    }
    for i in tx.list::<Inventory>(p)? {
        if i.repository_id == Some(id) {
            refs.inventories.push((i.id, i.name));
        }
    }
    Ok(refs)
}
