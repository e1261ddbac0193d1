//! How the runner starts a task's processes inside the task sandbox ([`crate::sandbox`]):
//! read-write in the task's workspace and private directory only, and a local-path repository
//! only where `--local-repo-roots` allows it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use super::Inner;
use crate::model::{Repository, Task, TaskId, Template};
use crate::sandbox::Jail;

/// The sandbox of one task: its private directory, and the jail every command goes through.
#[derive(Debug, Clone)]
pub(super) struct TaskJail {
    jail: Arc<Jail>,
    /// `work_dir/tasks/{id}`: home, temp dir, key files.
    task_dir: PathBuf,
    /// The folder of a `file://` repository, which git reads.
    source: Option<PathBuf>,
    /// The whole checkout the task runs in (its app may run in a folder of it).
    checkout: Option<PathBuf>,
}

impl TaskJail {
    pub(super) fn new(inner: &Inner, task: &Task) -> Self {
        let (source, checkout) = places(inner, task).unwrap_or_default();
        Self {
            jail: Arc::clone(&inner.settings.jail),
            task_dir: task_dir(inner, task.id),
            source,
            checkout,
        }
    }

    /// A command running `program` (the app, git) with read-write access to `workspace` and
    /// the task's private directory only (and read access to a `file://` repository).
    pub(super) fn command(&self, program: &str, workspace: &Path) -> Command {
        let read = self.source.as_deref().into_iter().collect::<Vec<_>>();
        // The whole checkout when the app runs in a folder of it (terraform's module dir).
        let workspace = match &self.checkout {
            Some(checkout) if workspace.starts_with(checkout) => checkout.as_path(),
            _ => workspace,
        };
        self.jail
            .command(program, &[workspace, self.task_dir.as_path()], &read)
    }
}

/// Where the task's repository is read from (a `file://` folder `--local-repo-roots`
/// allows: git reads it) and its checkout (the local path, or the clone in the work dir, as
/// `exec::prepare_repository` names it).
type Places = (Option<PathBuf>, Option<PathBuf>);

fn places(inner: &Inner, task: &Task) -> Option<Places> {
    let view = inner.store.view().ok()?;
    let template: Template = view.get(task.project_id, task.template_id).ok()??;
    let repo: Repository = view.get(task.project_id, template.repository_id).ok()??;
    if repo.git_url.starts_with('/') {
        return Some((None, inner.local_repository(&repo.git_url).ok()));
    }
    let clone = inner
        .settings
        .work_dir
        .join("repos")
        .join(format!("repository_{}_{}", repo.id, template.id));
    Some((inner.local_repository(&repo.git_url).ok(), Some(clone)))
}

/// Where task `id`'s private directory is.
pub(super) fn task_dir(inner: &Inner, id: TaskId) -> PathBuf {
    inner.settings.work_dir.join("tasks").join(id.to_string())
}

impl Inner {
    /// The resolved folder of local repository `url` (a path or a `file://` URL), when
    /// `--local-repo-roots` allows it. Checked again at every run: the path, the roots or the
    /// links on the way may have changed since it was saved.
    pub(super) fn local_repository(&self, url: &str) -> Result<PathBuf, String> {
        let path = crate::sandbox::local_path(url).unwrap_or(url);
        self.settings.local_repos.check(path)
    }

    /// `Ok` for a remote URL, or a `file://` one `--local-repo-roots` allows.
    pub(super) fn check_clone_source(&self, url: &str) -> Result<(), String> {
        match crate::sandbox::local_path(url) {
            Some(path) => self.settings.local_repos.check(path).map(drop),
            None => Ok(()),
        }
    }
}

/// Tells git to trust a `file://` clone source that `--local-repo-roots` allows although
/// another user owns it (git refuses to read a repository owned by someone else: with
/// `--task-user` the task user clones what root or a deploy user keeps). The administrator
/// chose the roots, so their repositories are trusted for reading. It goes into the global
/// config of the task's own home (`home/.gitconfig`): git drops `-c` settings and
/// `GIT_CONFIG_PARAMETERS` for the `upload-pack` it runs in the source repository.
///
/// # Errors
/// When the file cannot be written.
pub(super) fn trust_clone_source(url: &str, home: &Path) -> Result<(), String> {
    let Some(path) = crate::sandbox::local_path(url) else {
        return Ok(());
    };
    let mut paths = vec![path.to_owned()];
    if let Ok(real) = std::fs::canonicalize(path) {
        paths.push(real.display().to_string());
    }
    let mut config = String::from("[safe]\n");
    for p in paths {
        let quoted = p.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(config, "\tdirectory = \"{quoted}\"");
    }
    let file = home.join(".gitconfig");
    std::fs::write(&file, config).map_err(|e| format!("cannot write {}: {e}", file.display()))
}
