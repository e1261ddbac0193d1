//! The caller of a long-lived response (a WebSocket, a followed task output), checked again
//! while it lasts: a logout, a password change, a deleted user, a demotion or a removal from
//! the project ends it at once instead of when the client goes away.
//!
//! The services announce every change that may take access away
//! (`Services::watch_access`); a long-lived response waits on that beside its own work and
//! re-reads its credentials when it fires. Before each message it sends, it re-reads them
//! when anything changed or a second has passed (idle expiry), so no message goes out on a
//! credential older than that.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::auth::Credentials;
use super::handler::Req;
use crate::model::{Permissions, ProjectId, User};
use crate::service::Services;

/// How long a check holds when nothing announced a change.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// A long-lived response's caller.
#[derive(Debug)]
pub struct LiveCaller {
    /// The credentials of the request that opened it (a session cookie or an API token).
    credentials: Credentials,
    /// The project and permission it needs, for project routes.
    project: Option<(ProjectId, Permissions)>,
    /// Wakes when access may have changed.
    changes: watch::Receiver<u64>,
    /// When the credentials were last checked (never yet: the first check is a full one, so
    /// a change between the request's own check and this caller's start is not missed).
    checked: Option<Instant>,
}

/// What a check found.
#[derive(Debug)]
pub enum Verdict {
    /// Nothing changed since the last check.
    Same,
    /// Still allowed; this is the user as stored now (its admin flag may have changed).
    Allowed(User),
    /// No longer allowed: end the response.
    Gone,
}

impl LiveCaller {
    /// The caller of `req`, needing `project` (with a permission) when given.
    #[must_use]
    pub fn new(req: &Req, project: Option<(ProjectId, Permissions)>) -> Self {
        Self {
            credentials: Credentials::from_headers(&req.headers),
            project,
            changes: req.app.services.watch_access(),
            checked: None,
        }
    }

    /// Resolves when access may have changed (never, once the services are gone).
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Checks the credentials against the store now.
    pub fn recheck(&mut self, services: &Services) -> Verdict {
        self.changes.mark_unchanged();
        self.checked = Some(Instant::now());
        let user = match &self.credentials {
            Credentials::Session(id) => services.session_user_now(id),
            Credentials::Bearer(token) => services
                .token_user(token)
                .map(|c| c.map(|c| c.user().clone())),
            Credentials::Missing | Credentials::Invalid => Ok(None),
        };
        let Ok(Some(user)) = user else {
            return Verdict::Gone;
        };
        if let Some((project, need)) = self.project
            && services.access(&user, project, need).is_err()
        {
            return Verdict::Gone;
        }
        Verdict::Allowed(user)
    }

    /// The check before each message: a full one when a change was announced or a second
    /// has passed, else [`Verdict::Same`].
    pub fn check(&mut self, services: &Services) -> Verdict {
        let due = self.checked.is_none_or(|t| t.elapsed() >= RECHECK_EVERY);
        if due || self.changes.has_changed().unwrap_or(false) {
            self.recheck(services)
        } else {
            Verdict::Same
        }
    }
}
