//! Repositories: a git URL (or local path), a branch and the key to fetch with.

use serde::Deserialize;

use super::{Names, ProjectResource, Refs, Target, body, invalid, require_key, users};
use crate::model::{Inventory, ProjectId, Repository, Template};
use crate::service::{Error, Result, Services, validate};
use crate::store::{Lists, Tx};

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

fn repository_from(input: &RepositoryInput, id: u64, project: ProjectId) -> Result<Repository> {
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
    Ok(Repository {
        id,
        project_id: project,
        name: name.trim().to_owned(),
        git_url: url,
        git_branch: branch,
        ssh_key_id: key,
    })
}

impl ProjectResource for Repository {
    body!(RepositoryInput);
    type Fields = Repository;
    const NAMES: Names = Names::new("repository", "Repository");

    fn fields(services: &Services, input: RepositoryInput, to: Target) -> Result<Repository> {
        let repo = repository_from(&input, to.id.unwrap_or_default(), to.project)?;
        // Only under `--local-repo-roots`, never over Forge's own files.
        if let Some(path) = crate::sandbox::local_path(&repo.git_url) {
            services.local_repos().check(path).map_err(Error::Invalid)?;
        }
        Ok(repo)
    }

    fn record(tx: &Tx<'_>, repo: &Repository, _current: Option<Self>) -> Result<Self> {
        require_key(tx, repo.project_id, repo.ssh_key_id, "ssh_key_id")?;
        Ok(repo.clone())
    }

    fn refs(lists: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
        Ok(Refs {
            templates: users(lists, p, |t: &Template| t.repository_id == id)?,
            inventories: users(lists, p, |i: &Inventory| i.repository_id == Some(id))?,
            ..Refs::default()
        })
    }
}
