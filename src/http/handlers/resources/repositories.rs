//! Repositories: created and updated with 204; URL and branch validated, and the key must be
//! this project's.

use std::collections::HashMap;

use serde::Serialize;

use super::Routes;
use crate::http::error::ApiError;
use crate::http::handler::Req;
use crate::model::{AccessKey, Repository};

#[derive(Serialize)]
struct RepositoryView<'a> {
    id: u64,
    name: &'a str,
    project_id: u64,
    git_url: &'a str,
    git_branch: &'a str,
    ssh_key_id: u64,
}

impl Routes for Repository {
    const ID: (&'static str, &'static str) = ("repository_id", "repository");
    const COLUMNS: &'static [&'static str] = &["name", "git_url", "ssh_key"];
    type Extra = ();

    fn extra(_: &Req) -> Result<(), ApiError> {
        Ok(())
    }

    /// `ssh_key` sorts by the key's name.
    fn sort_key(req: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        let keys: HashMap<u64, String> = req
            .app
            .services
            .resources::<AccessKey>(req.access()?)?
            .into_iter()
            .map(|k| (k.id, k.name))
            .collect();
        Ok(move |r: &Self, column: &str| match column {
            "git_url" => r.git_url.clone(),
            "ssh_key" => keys.get(&r.ssh_key_id).cloned().unwrap_or_default(),
            _ => r.name.clone(),
        })
    }

    fn view<'a>(_: &'a Req, (): &'a (), r: &'a Self) -> Result<impl Serialize + 'a, ApiError> {
        Ok(RepositoryView {
            id: r.id,
            name: &r.name,
            project_id: r.project_id,
            git_url: &r.git_url,
            git_branch: &r.git_branch,
            ssh_key_id: r.ssh_key_id,
        })
    }
}
