//! The current user and user administration.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;
use crate::http::body;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;
use crate::model::User;
use crate::service::{NewUserInput, UserUpdate};

/// A user as the API shows it (never the password hash).
#[derive(Serialize)]
pub struct UserView<'a> {
    id: u64,
    created: String,
    username: &'a str,
    name: &'a str,
    email: &'a str,
    admin: bool,
    external: bool,
    alert: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_create_project: Option<bool>,
    /// The caller's own two-factor enrolment (`GET /api/user` only, while `--totp on`).
    #[serde(skip_serializing_if = "Option::is_none")]
    totp: Option<TotpSummary>,
}

/// A TOTP enrolment as listed: never its secret or recovery codes.
#[derive(Serialize)]
struct TotpSummary {
    id: u64,
    user_id: u64,
    created: String,
}

impl<'a> UserView<'a> {
    /// The view of `u`.
    pub fn new(u: &'a User) -> Self {
        Self {
            id: u.id,
            created: rfc3339(u.created),
            username: &u.username,
            name: &u.name,
            email: &u.email,
            admin: u.admin,
            external: u.external,
            alert: u.alert,
            can_create_project: None,
            totp: None,
        }
    }
}

/// What non-admins see of other users.
#[derive(Serialize)]
struct UserSummary<'a> {
    id: u64,
    username: &'a str,
    name: &'a str,
}

/// `GET /api/user`: the caller, plus `can_create_project` and, when enabled, `totp`. The
/// answer is kept beside the caller while nothing it shows has changed
/// (`Services::own_view`).
pub async fn current(req: Req) -> HandlerResult {
    let services = &req.app.services;
    let view = services.own_view(req.caller()?, |user, totp| {
        let mut view = UserView::new(user);
        view.can_create_project = Some(user.admin || services.non_admin_can_create_project());
        view.totp = totp.map(|t| TotpSummary {
            id: t.id,
            user_id: t.user_id,
            created: rfc3339(t.created),
        });
        body::json_bytes(&view)
    })?;
    Ok(body::json_rendered(view))
}

/// `GET /api/users`: admins get full users, others `{id, username, name}` of everyone.
pub async fn list(req: Req) -> HandlerResult {
    let users = req.app.services.users()?;
    if req.user()?.admin {
        let views: Vec<UserView> = users.iter().map(UserView::new).collect();
        Ok(body::json(StatusCode::OK, &views))
    } else {
        let views: Vec<UserSummary> = users
            .iter()
            .map(|u| UserSummary {
                id: u.id,
                username: &u.username,
                name: &u.name,
            })
            .collect();
        Ok(body::json(StatusCode::OK, &views))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UserBody {
    name: Option<String>,
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
    admin: Option<bool>,
    alert: Option<bool>,
    external: Option<bool>,
}

/// `POST /api/users` (admin; others get 401 as upstream) → 201 with the user. Durable.
pub async fn create(req: Req) -> HandlerResult {
    let b: UserBody = req.json()?;
    let input = NewUserInput {
        name: b.name.unwrap_or_default(),
        username: b.username.unwrap_or_default(),
        email: b.email.unwrap_or_default(),
        password: b.password.unwrap_or_default(),
        admin: b.admin.unwrap_or_default(),
        alert: b.alert.unwrap_or_default(),
        external: b.external.unwrap_or_default(),
    };
    let user = req.app.services.create_user(req.user()?, input).await?;
    Ok(body::json(StatusCode::CREATED, &UserView::new(&user)))
}

/// `GET /api/users/{user_id}`: admin or self (else 401).
pub async fn get(req: Req) -> HandlerResult {
    let id = req.id("user_id", "user")?;
    let user = req.app.services.user(req.user()?, id)?;
    Ok(body::json(StatusCode::OK, &UserView::new(&user)))
}

/// `PUT /api/users/{user_id}` → 204: full replacement of the editable fields; a non-empty
/// `password` also resets the password. Admin or self; self may not change `admin`.
pub async fn update(req: Req) -> HandlerResult {
    let id = req.id("user_id", "user")?;
    let b: UserBody = req.json()?;
    let update = UserUpdate {
        name: b.name.unwrap_or_default(),
        username: b.username.unwrap_or_default(),
        email: b.email.unwrap_or_default(),
        alert: b.alert.unwrap_or_default(),
        admin: b.admin.unwrap_or_default(),
        password: b.password.unwrap_or_default(),
    };
    req.app
        .services
        .update_user(req.user()?, id, update, own_session(&req).as_deref())
        .await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// `DELETE /api/users/{user_id}` → 204: admin or self; removes the user's sessions and tokens.
/// The last administrator cannot be deleted.
pub async fn delete(req: Req) -> HandlerResult {
    let id = req.id("user_id", "user")?;
    req.app.services.delete_user(req.user()?, id).await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PasswordBody {
    password: Option<String>,
}

/// `POST /api/users/{user_id}/password` `{"password"}` → 204: admin or self.
pub async fn set_password(req: Req) -> HandlerResult {
    let id = req.id("user_id", "user")?;
    let b: PasswordBody = req.json()?;
    req.app
        .services
        .set_password(
            req.user()?,
            id,
            b.password.unwrap_or_default(),
            own_session(&req).as_deref(),
        )
        .await?;
    Ok(body::status(StatusCode::NO_CONTENT))
}

/// The session the request is authenticated by (none for a Bearer request): it survives a
/// password change it makes, while every other session of that user is revoked.
fn own_session(req: &Req) -> Option<String> {
    match crate::http::auth::Credentials::from_headers(&req.headers) {
        crate::http::auth::Credentials::Session(id) => Some(id),
        _ => None,
    }
}
