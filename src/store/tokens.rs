//! API tokens, keyed by the SHA-256 of the token; a per-user index lists them by handle.

use redb::{Durability, ReadableTable, WriteTransaction};

use super::tables::{TOKENHASH_TOKEN, USERID_TOKENHANDLE};
use super::{Error, Result, Store, codec};
use crate::model::{ApiToken, SecretHash, UserId};

impl Store {
    /// Stores a new token durably.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the handle is already used by this user (a hash-prefix collision,
    /// astronomically unlikely); storage failures.
    pub fn create_token(&self, hash: &SecretHash, token: &ApiToken) -> Result<()> {
        let (hash, token) = (*hash, token.clone());
        self.write(Durability::Immediate, move |tx| {
            let mut handles = tx.open_table(USERID_TOKENHANDLE)?;
            if handles
                .get((token.user_id, token.handle.as_str()))?
                .is_some()
            {
                return Err(Error::Conflict("token handle collision"));
            }
            handles.insert((token.user_id, token.handle.as_str()), &hash)?;
            tx.open_table(TOKENHASH_TOKEN)?
                .insert(&hash, codec::encode(&token).as_slice())?;
            Ok(())
        })
    }

    /// The token stored under `hash`, if any (expired ones too).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn token(&self, hash: &SecretHash) -> Result<Option<ApiToken>> {
        let tx = self.read()?;
        let tokens = tx.open_table(TOKENHASH_TOKEN)?;
        match tokens.get(hash)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// The live (unexpired) token's user, in one read transaction: the Bearer hot path.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn token_user(&self, hash: &SecretHash) -> Result<Option<crate::model::User>> {
        let tx = self.read()?;
        let tokens = tx.open_table(TOKENHASH_TOKEN)?;
        let Some(bytes) = tokens.get(hash)? else {
            return Ok(None);
        };
        let token: ApiToken = codec::decode(bytes.value())?;
        if token.expired {
            return Ok(None);
        }
        let users = tx.open_table(super::tables::USERID_USER)?;
        match users.get(token.user_id)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every token of `user_id`, expired ones included, oldest first.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn tokens_of(&self, user_id: UserId) -> Result<Vec<ApiToken>> {
        let tx = self.read()?;
        let handles = tx.open_table(USERID_TOKENHANDLE)?;
        let tokens = tx.open_table(TOKENHASH_TOKEN)?;
        let mut out = Vec::new();
        for row in handles.range((user_id, "")..(user_id + 1, ""))? {
            let hash = row?.1.value();
            if let Some(bytes) = tokens.get(hash)? {
                out.push(codec::decode::<ApiToken>(bytes.value())?);
            }
        }
        out.sort_by(|a, b| (a.created, &a.handle).cmp(&(b.created, &b.handle)));
        Ok(out)
    }

    /// Expires `user_id`'s token named by its handle.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the user has no token with that handle.
    pub fn expire_token_by_handle(&self, user_id: UserId, handle: &str) -> Result<()> {
        let handle = handle.to_owned();
        self.write(Durability::Immediate, move |tx| {
            let hash = tx
                .open_table(USERID_TOKENHANDLE)?
                .get((user_id, handle.as_str()))?
                .map(|h| h.value())
                .ok_or(Error::NotFound)?;
            expire(tx, user_id, &hash)
        })
    }

    /// Expires `user_id`'s token stored under `hash`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no such token belongs to the user.
    pub fn expire_token_by_hash(&self, user_id: UserId, hash: &SecretHash) -> Result<()> {
        let hash = *hash;
        self.write(Durability::Immediate, move |tx| expire(tx, user_id, &hash))
    }
}

fn expire(tx: &WriteTransaction, user_id: UserId, hash: &SecretHash) -> Result<()> {
    let mut tokens = tx.open_table(TOKENHASH_TOKEN)?;
    let token: ApiToken = match tokens.get(hash)? {
        Some(bytes) => codec::decode(bytes.value())?,
        None => return Err(Error::NotFound),
    };
    if token.user_id != user_id {
        return Err(Error::NotFound);
    }
    if !token.expired {
        super::writer::access_written();
        let expired = ApiToken {
            expired: true,
            ..token
        };
        tokens.insert(hash, codec::encode(&expired).as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    fn token(user_id: u64, handle: &str, created: i64) -> ApiToken {
        ApiToken {
            user_id,
            handle: handle.into(),
            created,
            expired: false,
        }
    }

    #[test]
    fn list_expire_and_ownership() {
        let (_d, s) = temp_store();
        s.create_token(&[1; 32], &token(1, "aa", 10)).unwrap();
        s.create_token(&[2; 32], &token(1, "bb", 5)).unwrap();
        s.create_token(&[3; 32], &token(2, "cc", 1)).unwrap();
        let mine: Vec<_> = s
            .tokens_of(1)
            .unwrap()
            .into_iter()
            .map(|t| t.handle)
            .collect();
        assert_eq!(mine, ["bb", "aa"]);
        assert!(matches!(
            s.expire_token_by_handle(1, "cc"),
            Err(Error::NotFound)
        ));
        assert!(matches!(
            s.expire_token_by_hash(1, &[3; 32]),
            Err(Error::NotFound)
        ));
        s.expire_token_by_handle(1, "aa").unwrap();
        s.expire_token_by_hash(1, &[2; 32]).unwrap();
        assert!(s.tokens_of(1).unwrap().iter().all(|t| t.expired));
        assert!(!s.token(&[3; 32]).unwrap().unwrap().expired);
    }
}
