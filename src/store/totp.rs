//! Two-factor enrolments (`USERID_TOTP`) and the sessions that still await their second
//! factor (`SESSIONHASH_PENDING`).
//!
//! A pending session is an ordinary session plus a pending row, written in one transaction, so
//! a crash can never leave a password-only session of a TOTP user with full rights. Whatever
//! removes a session removes its pending row too (`forget_pending`).

use redb::{Durability, ReadableTable, WriteTransaction};
use subtle::ConstantTimeEq;

use super::tables::{SESSIONHASH_PENDING, USERID_TOTP};
use super::{NewEvent, Result, Store, codec, next_id};
use crate::model::{SecretHash, Session, UserId, UserTotp};

/// Counter of TOTP enrolment ids in `META`.
const NEXT_TOTP_ID: &str = "next_totp_id";

/// How a second factor was checked against the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted: the session (if any) is no longer pending.
    Accepted,
    /// Refused: a replayed step, an unknown or already used recovery code.
    Refused,
    /// The user has no enrolment (any more).
    NotEnrolled,
}

/// The fields of a new enrolment; the store assigns `id`.
#[derive(Debug, Clone)]
pub struct NewTotp {
    /// Whose.
    pub user_id: UserId,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The sealed shared secret.
    pub sealed_secret: Vec<u8>,
    /// SHA-256 of each recovery code.
    pub recovery_hashes: Vec<SecretHash>,
}

impl Store {
    /// The TOTP enrolment of `user`, if any.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn totp(&self, user: UserId) -> Result<Option<UserTotp>> {
        let tx = self.read()?;
        let table = tx.open_table(USERID_TOTP)?;
        match table.get(user)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Stores a new enrolment durably, with its event; `None` (nothing written) when the user
    /// already has one.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn create_totp(&self, new: NewTotp, event: NewEvent) -> Result<Option<UserTotp>> {
        self.write(Durability::Immediate, move |tx| {
            let mut table = tx.open_table(USERID_TOTP)?;
            if table.get(new.user_id)?.is_some() {
                return Ok(None);
            }
            let totp = UserTotp {
                id: next_id(tx, NEXT_TOTP_ID)?,
                user_id: new.user_id,
                created: new.created,
                sealed_secret: new.sealed_secret.clone(),
                recovery_hashes: new.recovery_hashes.clone(),
                confirmed: false,
                last_step: 0,
            };
            table.insert(new.user_id, codec::encode(&totp).as_slice())?;
            drop(table);
            super::projects::record(tx, new.created, event.clone())?;
            Ok(Some(totp))
        })
    }

    /// Deletes enrolment `id` of `user`, durably, with its event. Returns whether it existed.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn delete_totp(&self, user: UserId, id: u64, now: i64, event: NewEvent) -> Result<bool> {
        self.write(Durability::Immediate, move |tx| {
            let mut table = tx.open_table(USERID_TOTP)?;
            let Some(bytes) = table.get(user)? else {
                return Ok(false);
            };
            let totp: UserTotp = codec::decode(bytes.value())?;
            drop(bytes);
            if totp.id != id {
                return Ok(false);
            }
            table.remove(user)?;
            drop(table);
            super::projects::record(tx, now, event.clone())?;
            Ok(true)
        })
    }

    /// Stores a session that awaits its second factor: the session and its pending row in one
    /// durable transaction, with the login's event.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn create_pending_session(
        &self,
        hash: &SecretHash,
        session: &Session,
        event: NewEvent,
    ) -> Result<()> {
        let (hash, encoded, user_id, created) = (
            *hash,
            codec::encode(session),
            session.user_id,
            session.created,
        );
        self.write(Durability::Immediate, move |tx| {
            super::sessions::insert(tx, &hash, &encoded, user_id)?;
            tx.open_table(SESSIONHASH_PENDING)?.insert(&hash, user_id)?;
            super::projects::record(tx, created, event.clone())?;
            Ok(())
        })
    }

    /// Whether session `hash` of `user` still awaits its second factor: it has a pending row
    /// and the user is still enrolled.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn session_pending(&self, hash: &SecretHash, user: UserId) -> Result<bool> {
        let tx = self.read()?;
        if tx.open_table(SESSIONHASH_PENDING)?.get(hash)?.is_none() {
            return Ok(false);
        }
        Ok(tx.open_table(USERID_TOTP)?.get(user)?.is_some())
    }

    /// Accepts time step `step` for `user` unless a code of it (or a newer step) was already
    /// accepted; on acceptance the enrolment is confirmed and session `session` (if given)
    /// stops pending, durably.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn accept_totp_step(
        &self,
        user: UserId,
        step: u64,
        session: Option<SecretHash>,
    ) -> Result<Outcome> {
        self.write(Durability::Immediate, move |tx| {
            let Some(mut totp) = load(tx, user)? else {
                return Ok(Outcome::NotEnrolled);
            };
            if step <= totp.last_step {
                return Ok(Outcome::Refused);
            }
            totp.last_step = step;
            totp.confirmed = true;
            save(tx, &totp)?;
            if let Some(hash) = &session {
                verified(tx, hash, user)?;
            }
            Ok(Outcome::Accepted)
        })
    }

    /// Uses the recovery code whose SHA-256 is `code` for `user`: removes it (each code works
    /// once) and session `session` (if given) stops pending, durably. Every stored hash is
    /// compared, in constant time.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn use_recovery_code(
        &self,
        user: UserId,
        code: SecretHash,
        session: Option<SecretHash>,
    ) -> Result<Outcome> {
        self.write(Durability::Immediate, move |tx| {
            let Some(mut totp) = load(tx, user)? else {
                return Ok(Outcome::NotEnrolled);
            };
            let mut found = None;
            for (i, stored) in totp.recovery_hashes.iter().enumerate() {
                if bool::from(stored.ct_eq(&code)) {
                    found = Some(i);
                }
            }
            let Some(i) = found else {
                return Ok(Outcome::Refused);
            };
            totp.recovery_hashes.remove(i);
            save(tx, &totp)?;
            if let Some(hash) = &session {
                verified(tx, hash, user)?;
            }
            Ok(Outcome::Accepted)
        })
    }
}

fn load(tx: &WriteTransaction, user: UserId) -> Result<Option<UserTotp>> {
    let table = tx.open_table(USERID_TOTP)?;
    let totp = match table.get(user)? {
        Some(bytes) => Some(codec::decode(bytes.value())?),
        None => None,
    };
    Ok(totp)
}

fn save(tx: &WriteTransaction, totp: &UserTotp) -> Result<()> {
    tx.open_table(USERID_TOTP)?
        .insert(totp.user_id, codec::encode(totp).as_slice())?;
    Ok(())
}

/// Lifts the restriction of session `hash` if it is a pending session of `user` (never of
/// another user's session, whatever cookie came along), inside `tx`.
fn verified(tx: &WriteTransaction, hash: &SecretHash, user: UserId) -> Result<()> {
    let mut pending = tx.open_table(SESSIONHASH_PENDING)?;
    let owner = pending.get(hash)?.map(|v| v.value());
    if owner == Some(user) {
        pending.remove(hash)?;
    }
    Ok(())
}

/// Removes the pending rows of the sessions `hashes` (sessions being deleted), inside `tx`.
pub(super) fn forget_pending(tx: &WriteTransaction, hashes: &[SecretHash]) -> Result<()> {
    let mut pending = tx.open_table(SESSIONHASH_PENDING)?;
    for hash in hashes {
        pending.remove(hash)?;
    }
    Ok(())
}

/// Removes `user`'s enrolment, inside `tx` (the user is being deleted).
pub(super) fn forget_user(tx: &WriteTransaction, user: UserId) -> Result<()> {
    tx.open_table(USERID_TOTP)?.remove(user)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    fn event() -> NewEvent {
        NewEvent {
            user_id: Some(1),
            project_id: None,
            object_id: Some(1),
            object_type: "user",
            description: "test".into(),
        }
    }

    fn session() -> Session {
        Session {
            user_id: 1,
            created: 100,
            last_active: 100,
            ip: "127.0.0.1".into(),
            user_agent: "test".into(),
        }
    }

    fn enrol(s: &Store) -> UserTotp {
        let new = NewTotp {
            user_id: 1,
            created: 100,
            sealed_secret: vec![1, 2, 3],
            recovery_hashes: vec![[1; 32], [2; 32]],
        };
        s.create_totp(new, event())
            .unwrap()
            .expect("first enrolment")
    }

    #[test]
    fn one_enrolment_per_user_and_delete_by_id() {
        let (_d, s) = temp_store();
        let t = enrol(&s);
        let again = NewTotp {
            user_id: 1,
            created: 200,
            sealed_secret: vec![9],
            recovery_hashes: vec![],
        };
        assert!(s.create_totp(again, event()).unwrap().is_none());
        assert!(!s.delete_totp(1, t.id + 1, 300, event()).unwrap());
        assert!(s.delete_totp(1, t.id, 300, event()).unwrap());
        assert!(s.totp(1).unwrap().is_none());
    }

    #[test]
    fn steps_are_accepted_once_and_clear_the_pending_row() {
        let (_d, s) = temp_store();
        enrol(&s);
        s.create_pending_session(&[7; 32], &session(), event())
            .unwrap();
        assert!(s.session_pending(&[7; 32], 1).unwrap());
        assert_eq!(s.accept_totp_step(1, 10, None).unwrap(), Outcome::Accepted);
        assert!(s.session_pending(&[7; 32], 1).unwrap());
        assert_eq!(
            s.accept_totp_step(1, 10, Some([7; 32])).unwrap(),
            Outcome::Refused
        );
        assert_eq!(
            s.accept_totp_step(1, 9, Some([7; 32])).unwrap(),
            Outcome::Refused
        );
        assert_eq!(
            s.accept_totp_step(1, 11, Some([7; 32])).unwrap(),
            Outcome::Accepted
        );
        assert!(!s.session_pending(&[7; 32], 1).unwrap());
        assert!(s.totp(1).unwrap().unwrap().confirmed);
        // Another user's code never lifts this user's pending session.
        s.create_pending_session(&[8; 32], &session(), event())
            .unwrap();
        let other = NewTotp {
            user_id: 2,
            created: 100,
            sealed_secret: vec![1],
            recovery_hashes: vec![],
        };
        s.create_totp(other, event()).unwrap().unwrap();
        assert_eq!(
            s.accept_totp_step(2, 50, Some([8; 32])).unwrap(),
            Outcome::Accepted
        );
        assert!(s.session_pending(&[8; 32], 1).unwrap());
        assert_eq!(
            s.accept_totp_step(3, 11, None).unwrap(),
            Outcome::NotEnrolled
        );
    }

    #[test]
    fn recovery_codes_work_once() {
        let (_d, s) = temp_store();
        enrol(&s);
        assert_eq!(
            s.use_recovery_code(1, [3; 32], None).unwrap(),
            Outcome::Refused
        );
        assert_eq!(
            s.use_recovery_code(1, [2; 32], None).unwrap(),
            Outcome::Accepted
        );
        assert_eq!(
            s.use_recovery_code(1, [2; 32], None).unwrap(),
            Outcome::Refused
        );
        assert_eq!(s.totp(1).unwrap().unwrap().recovery_hashes, vec![[1; 32]]);
    }

    #[test]
    fn a_revoked_session_leaves_no_pending_row() {
        let (_d, s) = temp_store();
        enrol(&s);
        s.create_pending_session(&[7; 32], &session(), event())
            .unwrap();
        assert!(s.revoke_session(&[7; 32]).unwrap());
        let tx = s.read().unwrap();
        assert!(
            tx.open_table(SESSIONHASH_PENDING)
                .unwrap()
                .get(&[7; 32])
                .unwrap()
                .is_none()
        );
    }
}
