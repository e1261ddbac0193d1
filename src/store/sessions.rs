//! Login sessions, keyed by the SHA-256 of the session id.

use redb::{Durability, ReadableTable, WriteTransaction};

use super::tables::{SESSIONHASH_SESSION, USERID_SESSIONHASH};
use super::{NewEvent, Result, Store, codec};
use crate::model::{SecretHash, Session, UserId};

impl Store {
    /// Stores a new session durably, with the login's event in the same transaction.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn create_session(
        &self,
        hash: &SecretHash,
        session: &Session,
        event: Option<NewEvent>,
    ) -> Result<()> {
        let (hash, encoded, user_id, created) = (
            *hash,
            codec::encode(session),
            session.user_id,
            session.created,
        );
        self.write(Durability::Immediate, move |tx| {
            insert(tx, &hash, &encoded, user_id)?;
            if let Some(e) = &event {
                super::projects::record(tx, created, e.clone())?;
            }
            Ok(())
        })
    }

    /// The session stored under `hash`, if any.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn session(&self, hash: &SecretHash) -> Result<Option<Session>> {
        let tx = self.read()?;
        let sessions = tx.open_table(SESSIONHASH_SESSION)?;
        match sessions.get(hash)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Records activity on a session. Not durable on its own: losing the newest `last_active`
    /// in a crash only shortens the session's remaining idle time, and it spares every request
    /// an fsync. The next durable commit persists it.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn touch_session(&self, hash: &SecretHash, now: i64) -> Result<()> {
        let hash = *hash;
        self.write(Durability::None, move |tx| {
            let mut sessions = tx.open_table(SESSIONHASH_SESSION)?;
            let current = match sessions.get(&hash)? {
                Some(bytes) => codec::decode::<Session>(bytes.value())?,
                None => return Ok(()),
            };
            if current.last_active < now {
                let updated = Session {
                    last_active: now,
                    ..current
                };
                sessions.insert(&hash, codec::encode(&updated).as_slice())?;
            }
            Ok(())
        })
    }

    /// Deletes a session (logout, or expired by inactivity). Returns whether it existed.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn revoke_session(&self, hash: &SecretHash) -> Result<bool> {
        let hash = *hash;
        self.write(Durability::Immediate, move |tx| {
            let mut sessions = tx.open_table(SESSIONHASH_SESSION)?;
            let Some(bytes) = sessions.remove(&hash)? else {
                return Ok(false);
            };
            let session: Session = codec::decode(bytes.value())?;
            tx.open_table(USERID_SESSIONHASH)?
                .remove((session.user_id, hash))?;
            super::totp::forget_pending(tx, &[hash])?;
            Ok(true)
        })
    }

    /// Deletes every session idle since before `idle_before`; returns how many. A background
    /// sweep: it scans the whole session table.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn sweep_sessions(&self, idle_before: i64) -> Result<usize> {
        self.write(Durability::Immediate, move |tx| {
            let mut sessions = tx.open_table(SESSIONHASH_SESSION)?;
            let mut by_user = tx.open_table(USERID_SESSIONHASH)?;
            let mut gone = Vec::new();
            for row in sessions.extract_if(|_, bytes| {
                codec::decode::<Session>(bytes).is_ok_and(|s| s.last_active < idle_before)
            })? {
                let (hash, bytes) = row?;
                let session: Session = codec::decode(bytes.value())?;
                gone.push((session.user_id, hash.value()));
            }
            for key in &gone {
                by_user.remove(key)?;
            }
            let hashes: Vec<SecretHash> = gone.iter().map(|(_, h)| *h).collect();
            super::totp::forget_pending(tx, &hashes)?;
            Ok(gone.len())
        })
    }
}

/// Stores session `hash` of `user` (its encoded record) with its per-user index, inside `tx`.
pub(super) fn insert(
    tx: &WriteTransaction,
    hash: &SecretHash,
    encoded: &[u8],
    user: UserId,
) -> Result<()> {
    tx.open_table(SESSIONHASH_SESSION)?.insert(hash, encoded)?;
    tx.open_table(USERID_SESSIONHASH)?
        .insert((user, *hash), ())?;
    Ok(())
}

/// Deletes every session of `user` but `keep`, inside `tx`; returns how many.
pub(super) fn revoke_user_sessions(
    tx: &WriteTransaction,
    user: UserId,
    keep: Option<&SecretHash>,
) -> Result<usize> {
    let mut sessions = tx.open_table(SESSIONHASH_SESSION)?;
    let mut gone = 0;
    for row in tx
        .open_table(USERID_SESSIONHASH)?
        .extract_from_if((user, [0; 32])..=(user, [0xff; 32]), |(_, hash), ()| {
            Some(&hash) != keep
        })?
    {
        let hash = row?.0.value().1;
        sessions.remove(hash)?;
        super::totp::forget_pending(tx, &[hash])?;
        gone += 1;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use crate::model::Session;
    use crate::store::test_support::temp_store;

    fn session(user_id: u64, last_active: i64) -> Session {
        Session {
            user_id,
            created: last_active,
            last_active,
            ip: "127.0.0.1".into(),
            user_agent: "test".into(),
        }
    }

    #[test]
    fn create_touch_revoke() {
        let (_d, s) = temp_store();
        s.create_session(&[1; 32], &session(1, 100), None).unwrap();
        s.touch_session(&[1; 32], 150).unwrap();
        assert_eq!(s.session(&[1; 32]).unwrap().unwrap().last_active, 150);
        assert!(s.revoke_session(&[1; 32]).unwrap());
        assert!(s.session(&[1; 32]).unwrap().is_none());
        assert!(!s.revoke_session(&[1; 32]).unwrap());
    }

    #[test]
    fn sweep_removes_only_idle_sessions() {
        let (_d, s) = temp_store();
        s.create_session(&[1; 32], &session(1, 100), None).unwrap();
        s.create_session(&[2; 32], &session(1, 500), None).unwrap();
        assert_eq!(s.sweep_sessions(200).unwrap(), 1);
        assert!(s.session(&[1; 32]).unwrap().is_none());
        assert!(s.session(&[2; 32]).unwrap().is_some());
    }
}
