//! Users with their username/email indexes and the admin set, kept consistent in one
//! transaction per change.

use redb::{Durability, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::tables::{
    ADMIN_USERID, EMAIL_USERID, PROJECTUSER_ROLE, SESSIONHASH_SESSION, TOKENHASH_TOKEN,
    USERID_SESSIONHASH, USERID_TOKENHANDLE, USERID_USER, USERNAME_USERID, USERPROJECT,
};
use super::{Error, Result, Store, codec, next_id};
use crate::model::{SecretHash, User, UserId};

/// The fields of a user to be created; the store assigns `id`.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Login name.
    pub username: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// System administrator.
    pub admin: bool,
    /// Authenticated elsewhere.
    pub external: bool,
    /// Wants email alerts.
    pub alert: bool,
    /// scrypt PHC string.
    pub password_hash: String,
}

impl Store {
    /// Creates a user; usernames and emails are unique case-insensitively, across each other.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the username or email is taken.
    pub fn create_user(&self, new: NewUser) -> Result<User> {
        self.write(Durability::Immediate, move |tx| {
            let id = next_id(tx, "next_user_id")?;
            let new = new.clone();
            let user = User {
                id,
                created: new.created,
                username: new.username,
                name: new.name,
                email: new.email,
                admin: new.admin,
                external: new.external,
                alert: new.alert,
                password_hash: new.password_hash,
            };
            check_unique(tx, &user)?;
            put_user(tx, &user)?;
            Ok(user)
        })
    }

    /// The user with `id`, if any.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn user(&self, id: UserId) -> Result<Option<User>> {
        let tx = self.read()?;
        let users = tx.open_table(USERID_USER)?;
        match users.get(id)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// The user whose username or email equals `login`, compared case-insensitively.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn user_by_login(&self, login: &str) -> Result<Option<User>> {
        let key = login.to_lowercase();
        let tx = self.read()?;
        let id = match tx.open_table(USERNAME_USERID)?.get(key.as_str())? {
            Some(id) => Some(id.value()),
            None => tx
                .open_table(EMAIL_USERID)?
                .get(key.as_str())?
                .map(|id| id.value()),
        };
        match id {
            Some(id) => {
                let users = tx.open_table(USERID_USER)?;
                let bytes = users.get(id)?.ok_or(Error::NotFound)?;
                Ok(Some(codec::decode(bytes.value())?))
            }
            None => Ok(None),
        }
    }

    /// Every user, in id order.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn users(&self) -> Result<Vec<User>> {
        let tx = self.read()?;
        let users = tx.open_table(USERID_USER)?;
        users
            .iter()?
            .map(|row| Ok(codec::decode(row?.1.value())?))
            .collect()
    }

    /// Whether any user exists (cheap: no scan).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn has_users(&self) -> Result<bool> {
        let tx = self.read()?;
        Ok(!tx.open_table(USERID_USER)?.is_empty()?)
    }

    /// Reads user `id`, lets `change` edit it, and stores the result, all in one transaction.
    /// `change` may refuse with its own error, and then nothing is written.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`], [`Error::LastAdmin`], or `change`'s error.
    pub fn update_user<E: From<Error> + Send + 'static>(
        &self,
        id: UserId,
        change: impl Fn(&mut User) -> Result<(), E> + Send + 'static,
    ) -> Result<User, E> {
        self.update_user_keeping(id, None, change)
    }

    /// [`Store::update_user`]; when the change sets a new password, every session of the user
    /// but `keep` (the one making the change) is deleted in the same transaction.
    ///
    /// # Errors
    /// As [`Store::update_user`].
    pub fn update_user_keeping<E: From<Error> + Send + 'static>(
        &self,
        id: UserId,
        keep: Option<SecretHash>,
        change: impl Fn(&mut User) -> Result<(), E> + Send + 'static,
    ) -> Result<User, E> {
        self.write(Durability::Immediate, move |tx| {
            let old = load(tx, id)?;
            let mut user = old.clone();
            change(&mut user)?;
            user.id = old.id;
            if old.admin && !user.admin {
                ensure_not_last_admin(tx)?;
            }
            remove_indexes(tx, &old)?;
            check_unique(tx, &user)?;
            put_user(tx, &user)?;
            if user.password_hash != old.password_hash {
                super::sessions::revoke_user_sessions(tx, id, keep.as_ref())?;
            }
            Ok(user)
        })
    }

    /// Deletes user `id` with its sessions, API tokens and TOTP enrolment.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::LastAdmin`] for the only administrator.
    pub fn delete_user(&self, id: UserId) -> Result<()> {
        self.write(Durability::Immediate, move |tx| {
            let user = load(tx, id)?;
            if user.admin {
                ensure_not_last_admin(tx)?;
            }
            remove_indexes(tx, &user)?;
            tx.open_table(USERID_USER)?.remove(id)?;

            let mut by_user = tx.open_table(USERID_SESSIONHASH)?;
            let mut sessions = tx.open_table(SESSIONHASH_SESSION)?;
            for row in by_user.extract_from_if((id, [0; 32])..=(id, [0xff; 32]), |_, ()| true)? {
                let hash = row?.0.value().1;
                sessions.remove(hash)?;
                super::totp::forget_pending(tx, &[hash])?;
            }
            super::totp::forget_user(tx, id)?;

            let mut members = tx.open_table(PROJECTUSER_ROLE)?;
            let range = (id, 0)..=(id, u64::MAX);
            for row in tx
                .open_table(USERPROJECT)?
                .extract_from_if(range, |_, ()| true)?
            {
                let (_, project) = row?.0.value();
                members.remove((project, id))?;
            }

            let mut handles = tx.open_table(USERID_TOKENHANDLE)?;
            let mut tokens = tx.open_table(TOKENHASH_TOKEN)?;
            for row in handles.extract_from_if((id, "")..(id + 1, ""), |_, _| true)? {
                let hash = row?.1.value();
                tokens.remove(hash)?;
            }
            Ok(())
        })
    }
}

fn load(tx: &WriteTransaction, id: UserId) -> Result<User> {
    let users = tx.open_table(USERID_USER)?;
    let bytes = users.get(id)?.ok_or(Error::NotFound)?;
    Ok(codec::decode(bytes.value())?)
}

fn put_user(tx: &WriteTransaction, user: &User) -> Result<()> {
    super::writer::access_written();
    tx.open_table(USERID_USER)?
        .insert(user.id, codec::encode(user).as_slice())?;
    tx.open_table(USERNAME_USERID)?
        .insert(user.username.to_lowercase().as_str(), user.id)?;
    tx.open_table(EMAIL_USERID)?
        .insert(user.email.to_lowercase().as_str(), user.id)?;
    if user.admin {
        tx.open_table(ADMIN_USERID)?.insert(user.id, ())?;
    }
    Ok(())
}

fn remove_indexes(tx: &WriteTransaction, user: &User) -> Result<()> {
    super::writer::access_written();
    tx.open_table(USERNAME_USERID)?
        .remove(user.username.to_lowercase().as_str())?;
    tx.open_table(EMAIL_USERID)?
        .remove(user.email.to_lowercase().as_str())?;
    tx.open_table(ADMIN_USERID)?.remove(user.id)?;
    Ok(())
}

/// A login (`username` or `email`) must not match any other user's username or email.
fn check_unique(tx: &WriteTransaction, user: &User) -> Result<()> {
    let names = tx.open_table(USERNAME_USERID)?;
    let emails = tx.open_table(EMAIL_USERID)?;
    for (value, what) in [(&user.username, "username"), (&user.email, "email")] {
        let key = value.to_lowercase();
        let taken = [names.get(key.as_str())?, emails.get(key.as_str())?]
            .into_iter()
            .flatten()
            .any(|owner| owner.value() != user.id);
        if taken {
            return Err(Error::Conflict(if what == "username" {
                "username is already taken"
            } else {
                "email is already taken"
            }));
        }
    }
    if user.username.to_lowercase() == user.email.to_lowercase() {
        return Err(Error::Conflict("username and email must differ"));
    }
    Ok(())
}

fn ensure_not_last_admin(tx: &WriteTransaction) -> Result<()> {
    if tx.open_table(ADMIN_USERID)?.len()? <= 1 {
        return Err(Error::LastAdmin);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    fn new(username: &str, email: &str, admin: bool) -> NewUser {
        NewUser {
            created: 1,
            username: username.into(),
            name: username.into(),
            email: email.into(),
            admin,
            external: false,
            alert: false,
            password_hash: String::new(),
        }
    }

    #[test]
    fn usernames_and_emails_are_unique_across_each_other() {
        let (_d, s) = temp_store();
        let a = s.create_user(new("ada", "ada@x", true)).unwrap();
        assert_eq!(a.id, 1);
        assert!(matches!(
            s.create_user(new("ADA", "b@x", false)),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            s.create_user(new("bob", "Ada@X", false)),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            s.create_user(new("ada@x", "c@x", false)),
            Err(Error::Conflict(_))
        ));
        let b = s.create_user(new("bob", "bob@x", false)).unwrap();
        assert_eq!(b.id, 2);
        assert_eq!(s.user_by_login("BOB@x").unwrap().unwrap().id, 2);
        assert_eq!(s.user_by_login("Ada").unwrap().unwrap().id, 1);
        assert!(s.user_by_login("nobody").unwrap().is_none());
    }

    #[test]
    fn rename_frees_the_old_name_and_keeps_own_name() {
        let (_d, s) = temp_store();
        s.create_user(new("ada", "ada@x", true)).unwrap();
        s.update_user::<Error>(1, |u| {
            u.name = "Ada L".into();
            Ok(())
        })
        .unwrap();
        s.update_user::<Error>(1, |u| {
            u.username = "lovelace".into();
            Ok(())
        })
        .unwrap();
        assert!(s.user_by_login("ada").unwrap().is_none());
        s.create_user(new("ada", "ada2@x", false)).unwrap();
    }

    #[test]
    fn last_admin_is_kept() {
        let (_d, s) = temp_store();
        s.create_user(new("ada", "ada@x", true)).unwrap();
        let demote = |u: &mut User| {
            u.admin = false;
            Ok::<_, Error>(())
        };
        assert!(matches!(s.update_user(1, demote), Err(Error::LastAdmin)));
        assert!(matches!(s.delete_user(1), Err(Error::LastAdmin)));
        s.create_user(new("bob", "bob@x", true)).unwrap();
        s.update_user(1, demote).unwrap();
        assert!(matches!(s.delete_user(2), Err(Error::LastAdmin)));
        s.delete_user(1).unwrap();
        assert!(s.user(1).unwrap().is_none());
        assert!(matches!(s.delete_user(1), Err(Error::NotFound)));
    }
}
