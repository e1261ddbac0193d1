//! Remote runners: records by id, and an index from the SHA-256 of each runner's token to
//! its id (the `X-Runner-Token` lookup). Both are written in one transaction.

use redb::{Durability, ReadableTable, WriteTransaction};

use super::check::Report;
use super::tables::{META, RUNNERID_RUNNER, TOKENHASH_RUNNERID};
use super::{Error, Result, Store, codec, next_id};
use crate::model::{RemoteRunner, SecretHash};

/// The id counter of runners in `META`.
const COUNTER: &str = "next_runner_id";

impl Store {
    /// Stores a new runner (its `id` is assigned here; an empty name becomes `runner-{id}` in
    /// the same transaction) durably; returns it.
    ///
    /// # Errors
    /// [`Error::Conflict`] when its token hash is taken (astronomically unlikely); storage
    /// failures.
    pub async fn create_runner(&self, runner: RemoteRunner) -> Result<RemoteRunner> {
        self.write_async(Durability::Immediate, move |tx| {
            let mut by_token = tx.open_table(TOKENHASH_RUNNERID)?;
            if by_token.get(&runner.token_hash)?.is_some() {
                return Err(Error::Conflict("runner token collision"));
            }
            let id = next_id(tx, COUNTER)?;
            let name = if runner.name.is_empty() {
                format!("runner-{id}")
            } else {
                runner.name.clone()
            };
            let runner = RemoteRunner {
                id,
                name,
                ..runner.clone()
            };
            by_token.insert(&runner.token_hash, runner.id)?;
            tx.open_table(RUNNERID_RUNNER)?
                .insert(runner.id, codec::encode(&runner).as_slice())?;
            Ok(runner)
        })
        .await
    }

    /// Every runner, by id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn runners(&self) -> Result<Vec<RemoteRunner>> {
        let tx = self.read()?;
        let table = tx.open_table(RUNNERID_RUNNER)?;
        table
            .iter()?
            .map(|row| Ok(codec::decode(row?.1.value())?))
            .collect()
    }

    /// Runner `id`, if it exists.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn runner(&self, id: u64) -> Result<Option<RemoteRunner>> {
        let tx = self.read()?;
        let table = tx.open_table(RUNNERID_RUNNER)?;
        match table.get(id)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// The runner whose token hashes to `hash`, in one read transaction.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn runner_by_token(&self, hash: &SecretHash) -> Result<Option<RemoteRunner>> {
        let tx = self.read()?;
        let Some(id) = tx
            .open_table(TOKENHASH_RUNNERID)?
            .get(hash)?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        match tx.open_table(RUNNERID_RUNNER)?.get(id)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Replaces runner `runner.id` (its token stays), durably.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it does not exist; storage failures.
    pub async fn put_runner(&self, runner: RemoteRunner) -> Result<()> {
        self.write_async(Durability::Immediate, move |tx| {
            let mut table = tx.open_table(RUNNERID_RUNNER)?;
            let old: RemoteRunner = match table.get(runner.id)? {
                Some(bytes) => codec::decode(bytes.value())?,
                None => return Err(Error::NotFound),
            };
            let runner = RemoteRunner {
                token_hash: old.token_hash,
                ..runner.clone()
            };
            table.insert(runner.id, codec::encode(&runner).as_slice())?;
            Ok(())
        })
        .await
    }

    /// Deletes runner `id` and its token, durably.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it does not exist; storage failures.
    pub async fn delete_runner(&self, id: u64) -> Result<()> {
        self.write_async(Durability::Immediate, move |tx| delete(tx, id))
            .await
    }
}

fn delete(tx: &WriteTransaction, id: u64) -> Result<()> {
    let mut runners = tx.open_table(RUNNERID_RUNNER)?;
    let runner: RemoteRunner = match runners.remove(id)? {
        Some(bytes) => codec::decode(bytes.value())?,
        None => return Err(Error::NotFound),
    };
    tx.open_table(TOKENHASH_RUNNERID)?
        .remove(&runner.token_hash)?;
    Ok(())
}

/// `forge check`: every runner decodes and is indexed by its token, every index row names
/// its runner, and the id counter is past every id.
pub(super) fn check(tx: &WriteTransaction, report: &mut Report) -> Result<()> {
    let runners = tx.open_table(RUNNERID_RUNNER)?;
    let by_token = tx.open_table(TOKENHASH_RUNNERID)?;
    let mut n = 0;
    let mut largest = 0;
    for row in runners.iter()? {
        let (id, bytes) = row?;
        let id = id.value();
        n += 1;
        largest = largest.max(id);
        match codec::decode::<RemoteRunner>(bytes.value()) {
            Ok(r) if r.id != id => report
                .problems
                .push(format!("runners[{id}]: record says id {}", r.id)),
            Ok(r) => {
                if by_token.get(&r.token_hash)?.map(|v| v.value()) != Some(id) {
                    report
                        .problems
                        .push(format!("runners_by_token: runner {id} is not indexed"));
                }
            }
            Err(e) => report.problems.push(format!("runners[{id}]: {e}")),
        }
    }
    report.counts.push(("runners", n));
    let mut indexed = 0;
    for row in by_token.iter()? {
        let (_, id) = row?;
        indexed += 1;
        if runners.get(id.value())?.is_none() {
            report.problems.push(format!(
                "runners_by_token: a token of runner {}, which does not exist",
                id.value()
            ));
        }
    }
    report.counts.push(("runners_by_token", indexed));
    let next = tx.open_table(META)?.get(COUNTER)?.map_or(1, |v| v.value());
    if n > 0 && largest >= next {
        report.problems.push(format!(
            "meta: {COUNTER} is {next} but runners holds id {largest}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    fn runner(hash: u8) -> RemoteRunner {
        RemoteRunner {
            id: 0,
            name: format!("r{hash}"),
            webhook: String::new(),
            max_parallel_tasks: 2,
            active: true,
            tags: vec!["a".into()],
            token_hash: [hash; 32],
            created: 1,
        }
    }

    #[tokio::test]
    async fn an_unnamed_runner_is_named_after_its_id_in_one_write() {
        let (_d, s) = temp_store();
        s.create_runner(runner(1)).await.unwrap();
        let unnamed = RemoteRunner {
            name: String::new(),
            ..runner(2)
        };
        let made = s.create_runner(unnamed).await.unwrap();
        assert_eq!(made.name, "runner-2");
        assert_eq!(s.runner(2).unwrap().unwrap().name, "runner-2");
    }

    #[tokio::test]
    async fn create_find_by_token_update_delete() {
        let (_d, s) = temp_store();
        let a = s.create_runner(runner(1)).await.unwrap();
        let b = s.create_runner(runner(2)).await.unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert!(matches!(
            s.create_runner(runner(1)).await,
            Err(Error::Conflict(_))
        ));
        assert_eq!(s.runner_by_token(&[2; 32]).unwrap().unwrap().name, "r2");
        let renamed = RemoteRunner {
            name: "x".into(),
            token_hash: [9; 32],
            ..b.clone()
        };
        s.put_runner(renamed).await.unwrap();
        // The token cannot be changed through an update.
        assert_eq!(s.runner_by_token(&[2; 32]).unwrap().unwrap().name, "x");
        s.delete_runner(1).await.unwrap();
        assert!(s.runner_by_token(&[1; 32]).unwrap().is_none());
        assert!(matches!(s.delete_runner(1).await, Err(Error::NotFound)));
        assert_eq!(s.runners().unwrap().len(), 1);
    }
}
