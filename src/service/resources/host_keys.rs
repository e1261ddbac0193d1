//! SSH host keys pinned per project (Forge extension): tasks learn them on first use (see
//! `runner::hostkeys`); the API only lists and forgets them, so a legitimately rotated key can
//! be learned again. Nothing refers to a host key and nothing blocks forgetting one.

use serde::Deserialize;

use super::{Names, ProjectResource, Refs, Target};
use crate::model::{HostKey, ProjectId};
use crate::service::{Error, Result, Services};
use crate::store::{Lists, Tx};

/// No body creates or changes a host key: the type the generic CRUD needs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostKeyInput {}

impl ProjectResource for HostKey {
    type Input = HostKeyInput;
    type Fields = ();
    const NAMES: Names = Names::new("host_key", "Host Key");

    fn name(&self) -> &str {
        &self.host
    }

    fn body_ids(_: &HostKeyInput) -> (Option<u64>, Option<u64>) {
        (None, None)
    }

    fn fields(_: &Services, _: HostKeyInput, _: Target) -> Result<()> {
        Err(Error::Invalid(
            "host keys are learned by tasks, not written".into(),
        ))
    }

    fn record(_: &Tx<'_>, (): &(), current: Option<Self>) -> Result<Self> {
        current.ok_or(Error::NotFound)
    }

    fn refs(_: &impl Lists, _: ProjectId, _: u64) -> Result<Refs> {
        Ok(Refs::default())
    }
}
