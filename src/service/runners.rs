//! Remote runners: registration with the server's registration token, the `X-Runner-Token`
//! check, and the administrators' CRUD. Tokens are 256-bit random values stored only as their
//! SHA-256 (as API tokens are); a runner whose record is inactive or gone is refused at once,
//! because every request looks its record up.

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::auth::{new_token, secret_hash};
use super::{Error, Result, Services};
use crate::agent::protocol::Register;
use crate::model::RemoteRunner;

/// Most tags a runner carries.
const MAX_TAGS: usize = 32;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 64;
/// Longest name or webhook.
const MAX_TEXT: usize = 1000;
/// Highest `max_parallel_tasks`.
const MAX_PARALLEL: u32 = 10_000;

/// A `POST`/`PUT /api/runners[/{id}]` body; fields left out keep their value (or default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunnerInput {
    /// Display name.
    pub name: Option<String>,
    /// Callback URL (kept, shown).
    pub webhook: Option<String>,
    /// Most tasks at once (0 = no limit).
    pub max_parallel_tasks: Option<u32>,
    /// Whether it may poll.
    pub active: Option<bool>,
    /// Tags templates choose it by.
    pub tags: Option<Vec<String>>,
}

/// A `POST /api/runners/{id}/active` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunnerActive {
    /// The new state (required).
    pub active: Option<bool>,
}

/// Whether `tag` is a valid runner tag (also what a template's `runner_tag` must be):
/// 1 to [`MAX_TAG_LEN`] letters, digits, `-`, `_` or `.`.
#[must_use]
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_text(field: &str, value: &str) -> Result<()> {
    if value.chars().count() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{field}: at most {MAX_TEXT} characters, no control characters"
        )));
    }
    Ok(())
}

/// Applies `input` to `r`, checking every field.
fn apply(r: &mut RemoteRunner, input: RunnerInput) -> Result<()> {
    if let Some(name) = input.name {
        check_text("name", &name)?;
        name.trim().clone_into(&mut r.name);
    }
    if let Some(webhook) = input.webhook {
        check_text("webhook", &webhook)?;
        r.webhook = webhook;
    }
    if let Some(n) = input.max_parallel_tasks {
        if n > MAX_PARALLEL {
            return Err(Error::Invalid(format!(
                "max_parallel_tasks: at most {MAX_PARALLEL} (0 = no limit)"
            )));
        }
        r.max_parallel_tasks = n;
    }
    if let Some(active) = input.active {
        r.active = active;
    }
    if let Some(mut tags) = input.tags {
        if tags.len() > MAX_TAGS {
            return Err(Error::Invalid(format!("tags: at most {MAX_TAGS}")));
        }
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return Err(Error::Invalid(format!(
                "tags: {bad:?} is not a tag (1 to {MAX_TAG_LEN} letters, digits, '-', '_', '.')"
            )));
        }
        tags.sort();
        tags.dedup();
        r.tags = tags;
    }
    Ok(())
}

impl Services {
    /// Every runner, by id.
    ///
    /// # Errors
    /// Storage failures.
    pub fn runners(&self) -> Result<Vec<RemoteRunner>> {
        Ok(self.store.runners()?)
    }

    /// Runner `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; storage failures.
    pub fn runner(&self, id: u64) -> Result<RemoteRunner> {
        self.store.runner(id)?.ok_or(Error::NotFound)
    }

    /// The number of active runners.
    ///
    /// # Errors
    /// Storage failures.
    pub fn active_runners(&self) -> Result<usize> {
        Ok(self.store.runners()?.iter().filter(|r| r.active).count())
    }

    /// A new runner from an administrator's `input`; returns it and its token (shown once).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming a bad field; storage failures.
    pub async fn create_runner(&self, input: RunnerInput) -> Result<(RemoteRunner, String)> {
        let token = new_token();
        let mut r = RemoteRunner {
            id: 0,
            name: String::new(),
            webhook: String::new(),
            max_parallel_tasks: 0,
            active: true,
            tags: Vec::new(),
            token_hash: secret_hash(&token),
            created: self.now(),
        };
        apply(&mut r, input)?;
        let r = self.store.create_runner(r).await?;
        tracing::info!(runner = r.id, name = %r.name, "runner created");
        Ok((r, token))
    }

    /// Registers a runner that presents the server's registration token (`configured`;
    /// `None`: registration is closed).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a wrong token or closed registration; [`Error::Invalid`];
    /// storage failures.
    pub async fn register_runner(
        &self,
        configured: Option<&str>,
        input: Register,
    ) -> Result<(RemoteRunner, String)> {
        let Some(configured) = configured else {
            return Err(Error::Unauthorized);
        };
        // Equal-length digests compared in constant time: the timing says nothing of the token.
        let (want, got) = (
            secret_hash(configured),
            secret_hash(&input.registration_token),
        );
        if !bool::from(want.ct_eq(&got)) {
            return Err(Error::Unauthorized);
        }
        let fields = RunnerInput {
            name: Some(input.name),
            webhook: Some(input.webhook),
            max_parallel_tasks: Some(input.max_parallel_tasks),
            active: Some(true),
            tags: Some(input.tags),
        };
        self.create_runner(fields).await
    }

    /// The active runner whose token is `token`.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when no runner has it or its record is inactive; storage
    /// failures.
    pub fn runner_by_token(&self, token: &str) -> Result<RemoteRunner> {
        self.store
            .runner_by_token(&secret_hash(token))?
            .filter(|r| r.active)
            .ok_or(Error::Unauthorized)
    }

    /// Changes runner `id` with `input`; returns it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`]; storage failures.
    pub async fn update_runner(&self, id: u64, input: RunnerInput) -> Result<RemoteRunner> {
        let mut r = self.runner(id)?;
        apply(&mut r, input)?;
        if r.name.is_empty() {
            r.name = format!("runner-{id}");
        }
        self.store.put_runner(r.clone()).await?;
        Ok(r)
    }

    /// Deletes runner `id` (its token stops working at once).
    ///
    /// # Errors
    /// [`Error::NotFound`]; storage failures.
    pub async fn delete_runner(&self, id: u64) -> Result<()> {
        self.store.delete_runner(id).await?;
        tracing::info!(runner = id, "runner deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(valid_tag("linux-x86_64.eu"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("a b"));
        assert!(!valid_tag(&"a".repeat(MAX_TAG_LEN + 1)));
    }
}
