//! User administration with upstream's permission rules (API.md §4), plus Forge's: a non-empty
//! password on create, validated fields on update, and never losing the last administrator.

use super::{Error, Result, Services, blocking};
use crate::model::{User, UserId};
use crate::store::NewUser;

/// Longest accepted name, username or email.
pub(crate) const MAX_FIELD_LEN: usize = 255;

/// The fields of a user to create.
#[derive(Debug, Clone, Default)]
pub struct NewUserInput {
    /// Display name (required).
    pub name: String,
    /// Login name (required).
    pub username: String,
    /// Email (required).
    pub email: String,
    /// Password (required unless `external`).
    pub password: String,
    /// System administrator.
    pub admin: bool,
    /// Wants email alerts.
    pub alert: bool,
    /// Authenticated elsewhere; has no password.
    pub external: bool,
}

/// A full replacement of a user's editable fields.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// Display name.
    pub name: String,
    /// Login name.
    pub username: String,
    /// Email.
    pub email: String,
    /// Wants email alerts.
    pub alert: bool,
    /// System administrator.
    pub admin: bool,
    /// A new password, when non-empty.
    pub password: String,
}

fn validate(name: &str, username: &str, email: &str) -> Result<()> {
    for (value, field) in [(name, "name"), (username, "username"), (email, "email")] {
        if value.trim().is_empty() {
            return Err(Error::Invalid(format!("{field} must not be empty")));
        }
        if value.len() > MAX_FIELD_LEN {
            return Err(Error::Invalid(format!(
                "{field} is longer than {MAX_FIELD_LEN} bytes"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "{field} must not contain control characters"
            )));
        }
    }
    if username.chars().any(char::is_whitespace) {
        return Err(Error::Invalid("username must not contain spaces".into()));
    }
    if !email.contains('@') {
        return Err(Error::Invalid("email must contain @".into()));
    }
    Ok(())
}

fn may_manage(caller: &User, target: UserId) -> Result<()> {
    if caller.admin || caller.id == target {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

impl Services {
    /// Every user, in id order (the HTTP layer shows non-admins a reduced view).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn users(&self) -> Result<Vec<User>> {
        Ok(self.store.users()?)
    }

    /// User `id`, as seen by `caller` (admins see anyone, others only themselves).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for another user's record; [`Error::NotFound`].
    pub fn user(&self, caller: &User, id: UserId) -> Result<User> {
        may_manage(caller, id)?;
        self.store.user(id)?.ok_or(Error::NotFound)
    }

    /// Creates a user on behalf of `caller`, who must be an administrator.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a non-admin (upstream's status); [`Error::Invalid`].
    pub async fn create_user(&self, caller: &User, input: NewUserInput) -> Result<User> {
        if !caller.admin {
            return Err(Error::Unauthorized);
        }
        self.add_user(input).await
    }

    /// Creates a user without a caller (command line, first administrator).
    ///
    /// # Errors
    /// [`Error::Invalid`] for empty or malformed fields, a missing password, a taken
    /// username or email.
    pub async fn add_user(&self, input: NewUserInput) -> Result<User> {
        validate(&input.name, &input.username, &input.email)?;
        let password_hash = if input.external {
            String::new()
        } else if input.password.is_empty() {
            return Err(Error::Invalid("password must not be empty".into()));
        } else {
            self.hasher.hash(input.password).await?
        };
        let new = NewUser {
            created: self.now(),
            username: input.username.trim().to_owned(),
            name: input.name.trim().to_owned(),
            email: input.email.trim().to_owned(),
            admin: input.admin,
            external: input.external,
            alert: input.alert,
            password_hash,
        };
        let store = self.store.clone();
        blocking(move || Ok(store.create_user(new)?)).await
    }

    /// Replaces user `id`'s fields on behalf of `caller`.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when `caller` is neither admin nor the target, or edits their own
    /// `admin` flag; [`Error::NotFound`]; [`Error::Invalid`] (bad fields, renaming an external
    /// user, taken username/email, demoting the last admin).
    ///
    /// A new password revokes every session of the user but `session` (the caller's own,
    /// which survives its own change).
    pub async fn update_user(
        &self,
        caller: &User,
        id: UserId,
        update: UserUpdate,
        session: Option<&str>,
    ) -> Result<()> {
        may_manage(caller, id)?;
        validate(&update.name, &update.username, &update.email)?;
        let new_hash = if update.password.is_empty() {
            None
        } else {
            Some(self.hasher.hash(update.password.clone()).await?)
        };
        let store = self.store.clone();
        let caller_id = caller.id;
        let keep = session.map(super::auth::secret_hash);
        blocking(move || {
            store.update_user_keeping(id, keep, move |user| {
                if caller_id == id && update.admin != user.admin {
                    return Err(Error::Unauthorized);
                }
                if user.external && update.username.trim() != user.username {
                    return Err(Error::Invalid(
                        "an external user's username cannot change".into(),
                    ));
                }
                if user.external && new_hash.is_some() {
                    return Err(Error::Invalid("an external user has no password".into()));
                }
                update.name.trim().clone_into(&mut user.name);
                update.username.trim().clone_into(&mut user.username);
                update.email.trim().clone_into(&mut user.email);
                user.alert = update.alert;
                user.admin = update.admin;
                if let Some(hash) = &new_hash {
                    user.password_hash.clone_from(hash);
                }
                Ok(())
            })
        })
        .await?;
        self.access_changed();
        Ok(())
    }

    /// Deletes user `id` (with their sessions and tokens) on behalf of `caller`.
    ///
    /// # Errors
    /// [`Error::Unauthorized`]; [`Error::NotFound`]; [`Error::Invalid`] for the last admin.
    pub async fn delete_user(&self, caller: &User, id: UserId) -> Result<()> {
        may_manage(caller, id)?;
        let store = self.store.clone();
        blocking(move || Ok(store.delete_user(id)?)).await?;
        self.access_changed();
        Ok(())
    }

    /// Sets user `id`'s password on behalf of `caller`.
    ///
    /// # Errors
    /// [`Error::Unauthorized`]; [`Error::NotFound`]; [`Error::Invalid`] for an empty password
    /// or an external user.
    ///
    /// Every session of the user but `session` (the caller's own) is revoked.
    pub async fn set_password(
        &self,
        caller: &User,
        id: UserId,
        password: String,
        session: Option<&str>,
    ) -> Result<()> {
        may_manage(caller, id)?;
        let target = self.store.user(id)?.ok_or(Error::NotFound)?;
        if target.external {
            return Err(Error::Invalid("an external user has no password".into()));
        }
        if password.is_empty() {
            return Err(Error::Invalid("password must not be empty".into()));
        }
        let hash = self.hasher.hash(password).await?;
        let store = self.store.clone();
        let keep = session.map(super::auth::secret_hash);
        blocking(move || {
            store.update_user_keeping(id, keep, move |user| {
                if user.external {
                    return Err(Error::Invalid("an external user has no password".into()));
                }
                user.password_hash.clone_from(&hash);
                Ok(())
            })
        })
        .await?;
        self.access_changed();
        Ok(())
    }
}
