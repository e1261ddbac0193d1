//! Our own auth middleware: sorts a request's credentials into [`Credentials`], resolves them to
//! an [`Auth`], and matches that against what the route [`Need`]s.

use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, COOKIE};

use super::error::ApiError;
use crate::model::Permissions;
use crate::service::{Caller, Services};

/// Name of the session cookie (upstream's, so existing clients keep working).
pub const SESSION_COOKIE: &str = "semaphore";

/// What a route requires of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone, authenticated or not.
    Anonymous,
    /// Any authenticated user.
    User,
    /// A system administrator.
    Admin,
    /// A system administrator, or a scraper with the `--metrics-token` (checked by the
    /// pipeline before the credentials are resolved; the token grants nothing else).
    Metrics,
    /// A user with these permissions in the route's `{project_id}` (members may always read;
    /// non-members get 404; system admins pass).
    Project(Permissions),
    /// Any authenticated user, including a session that still awaits its second factor (the
    /// two-factor verify routes; every other route refuses such a session).
    SecondFactor,
}

/// The credentials a request carries, before they are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// The session cookie's value.
    Session(String),
    /// No credentials.
    Missing,
    /// A malformed `Authorization: Bearer` header.
    Invalid,
}

/// Who the caller turned out to be.
#[derive(Debug)]
pub enum Auth {
    /// No credentials were sent.
    Anonymous,
    /// Credentials were sent but do not name a live session or token.
    Invalid,
    /// An authenticated user.
    User(Arc<Caller>),
    /// A password login of a user enrolled in two-factor login that has not verified a code
    /// yet: only [`Need::SecondFactor`] routes admit it.
    Pending(Arc<Caller>),
}

/// Parses an `Authorization` value: `Some(Ok(token))` for `Bearer <token>` (scheme in any case,
/// one or more spaces, one token without whitespace), `Some(Err(()))` for a malformed Bearer
/// value, `None` for another scheme.
#[must_use]
pub fn parse_authorization(value: &[u8]) -> Option<Result<&str, ()>> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    if !rest.is_empty() && rest[0] != b' ' {
        // "Bearerx ..." is another scheme, not a malformed Bearer.
        return if rest[0].is_ascii_alphanumeric() {
            None
        } else {
            Some(Err(()))
        };
    }
    let token = rest.trim_ascii_start();
    let valid = !token.is_empty() && token.iter().all(u8::is_ascii_graphic);
    if !valid || token.len() == rest.len() {
        return Some(Err(()));
    }
    Some(std::str::from_utf8(token).map_err(drop))
}

/// Finds cookie `name` in a `Cookie` header value (`a=1; b=2`); the first occurrence wins.
#[must_use]
pub fn parse_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a str> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (key, value) = (&pair[..eq], &pair[eq + 1..]);
        if key.trim_ascii() != name.as_bytes() {
            return None;
        }
        let value = value.trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        std::str::from_utf8(value).ok()
    })
}

impl Credentials {
    /// Sorts a request's headers: a Bearer header wins (and the cookie is then never read),
    /// otherwise the session cookie; other `Authorization` schemes are ignored.
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        if let Some(value) = headers.get(AUTHORIZATION) {
            match parse_authorization(value.as_bytes()) {
                Some(Ok(token)) => return Credentials::Bearer(token.to_owned()),
                Some(Err(())) => return Credentials::Invalid,
                None => {}
            }
        }
        session_cookie(headers).map_or(Credentials::Missing, Credentials::Session)
    }

    /// Checks the credentials against the store.
    ///
    /// # Errors
    /// Only on internal failures; bad credentials give [`Auth::Invalid`].
    pub async fn resolve(self, services: &Services) -> Result<Auth, ApiError> {
        let user = match self {
            Credentials::Missing => return Ok(Auth::Anonymous),
            Credentials::Invalid => None,
            Credentials::Bearer(token) => services.token_user(&token)?,
            Credentials::Session(id) => match services.session_user(&id).await? {
                Some((u, hash)) if services.session_awaits_totp(&hash, u.id)? => {
                    return Ok(Auth::Pending(Arc::new(Caller::new(u))));
                }
                other => other.map(|(u, _)| Arc::new(Caller::new(u))),
            },
        };
        Ok(user.map_or(Auth::Invalid, Auth::User))
    }
}

/// The session cookie's value, from any `Cookie` header.
#[must_use]
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|v| parse_cookie(v.as_bytes(), SESSION_COOKIE))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl Need {
    /// Matches the caller against the requirement: the user for authenticated routes.
    ///
    /// # Errors
    /// 401 when credentials are missing or invalid, or name a session awaiting its second
    /// factor (outside the verify routes); 403 when an admin is needed.
    pub fn admit(self, auth: Auth) -> Result<Option<Arc<Caller>>, ApiError> {
        match (self, auth) {
            (Need::Anonymous, Auth::User(u)) | (Need::SecondFactor, Auth::Pending(u)) => {
                Ok(Some(u))
            }
            (Need::Anonymous, _) => Ok(None),
            (_, Auth::Anonymous | Auth::Invalid) => Err(ApiError::Unauthorized),
            (_, Auth::Pending(_)) => Err(ApiError::SecondFactorRequired),
            (Need::Admin | Need::Metrics, Auth::User(u)) if !u.user().admin => {
                Err(ApiError::Forbidden)
            }
            (_, Auth::User(u)) => Ok(Some(u)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;
    use proptest::prelude::*;

    #[test]
    fn authorization_cases() {
        fn ok(v: &str) -> Option<Result<&str, ()>> {
            parse_authorization(v.as_bytes())
        }
        assert_eq!(ok("Bearer abc="), Some(Ok("abc=")));
        assert_eq!(ok("bearer abc"), Some(Ok("abc")));
        assert_eq!(ok("BEARER   abc"), Some(Ok("abc")));
        assert_eq!(ok("Bearer"), Some(Err(())));
        assert_eq!(ok("Bearer "), Some(Err(())));
        assert_eq!(ok("Bearer a b"), Some(Err(())));
        assert_eq!(ok("Bearer\tabc"), Some(Err(())));
        assert_eq!(ok("Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(ok("Bearerish abc"), None);
        assert_eq!(ok("x bearer abc"), None);
    }

    #[test]
    fn cookie_cases() {
        fn c(h: &str) -> Option<&str> {
            parse_cookie(h.as_bytes(), "semaphore")
        }
        assert_eq!(c("semaphore=abc"), Some("abc"));
        assert_eq!(c("a=1; semaphore=abc; b=2"), Some("abc"));
        assert_eq!(c("a=1;semaphore=\"abc\""), Some("abc"));
        assert_eq!(c("semaphorex=abc"), None);
        assert_eq!(c("xsemaphore=abc"), None);
        assert_eq!(c("semaphore"), None);
        assert_eq!(c("semaphore=a=b"), Some("a=b"));
        assert_eq!(c("semaphore=first; semaphore=second"), Some("first"));
        assert_eq!(c(""), None);
    }

    fn user(admin: bool) -> Arc<Caller> {
        Arc::new(Caller::new(User {
            id: 1,
            created: 0,
            username: "u".into(),
            name: "u".into(),
            email: "u@x".into(),
            admin,
            external: false,
            alert: false,
            password_hash: String::new(),
        }))
    }

    #[test]
    fn requirements_against_callers() {
        assert!(matches!(Need::Anonymous.admit(Auth::Anonymous), Ok(None)));
        assert!(matches!(Need::Anonymous.admit(Auth::Invalid), Ok(None)));
        assert!(matches!(
            Need::Anonymous.admit(Auth::User(user(false))),
            Ok(Some(_))
        ));
        assert!(matches!(
            Need::User.admit(Auth::Anonymous),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            Need::User.admit(Auth::Invalid),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            Need::User.admit(Auth::User(user(false))),
            Ok(Some(_))
        ));
        assert!(matches!(
            Need::Admin.admit(Auth::Anonymous),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            Need::Admin.admit(Auth::User(user(false))),
            Err(ApiError::Forbidden)
        ));
        assert!(matches!(
            Need::Admin.admit(Auth::User(user(true))),
            Ok(Some(_))
        ));
    }

    #[test]
    fn a_pending_session_only_reaches_the_verify_routes() {
        for need in [
            Need::User,
            Need::Admin,
            Need::Metrics,
            Need::Project(Permissions::NONE),
        ] {
            assert!(matches!(
                need.admit(Auth::Pending(user(true))),
                Err(ApiError::SecondFactorRequired)
            ));
        }
        assert!(matches!(
            Need::SecondFactor.admit(Auth::Pending(user(false))),
            Ok(Some(_))
        ));
        assert!(matches!(
            Need::SecondFactor.admit(Auth::User(user(false))),
            Ok(Some(_))
        ));
        assert!(matches!(
            Need::SecondFactor.admit(Auth::Anonymous),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            Need::Anonymous.admit(Auth::Pending(user(false))),
            Ok(None)
        ));
    }

    #[test]
    fn credentials_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(Credentials::from_headers(&h), Credentials::Missing);
        h.insert(COOKIE, "x=1; semaphore=sid".parse().unwrap());
        assert_eq!(
            Credentials::from_headers(&h),
            Credentials::Session("sid".into())
        );
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(
            Credentials::from_headers(&h),
            Credentials::Session("sid".into())
        );
        h.insert(AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(
            Credentials::from_headers(&h),
            Credentials::Bearer("tok".into())
        );
        h.insert(AUTHORIZATION, "Bearer a b".parse().unwrap());
        assert_eq!(Credentials::from_headers(&h), Credentials::Invalid);
    }

    proptest! {
        #[test]
        fn bearer_round_trips(token in "[A-Za-z0-9_=.~+/-]{1,64}", spaces in 1usize..4) {
            let header = format!("Bearer{}{token}", " ".repeat(spaces));
            prop_assert_eq!(parse_authorization(header.as_bytes()), Some(Ok(token.as_str())));
        }

        #[test]
        fn cookie_found_among_others(
            value in "[A-Za-z0-9_-]{1,50}",
            others in proptest::collection::vec(("[a-z]{1,8}", "[a-z0-9]{0,8}"), 0..5),
        ) {
            let mut pairs: Vec<String> = others
                .iter()
                .filter(|(k, _)| k != "semaphore")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let at = pairs.len() / 2;
            pairs.insert(at, format!("semaphore={value}"));
            let header = pairs.join("; ");
            prop_assert_eq!(parse_cookie(header.as_bytes(), "semaphore"), Some(value.as_str()));
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_authorization(&bytes);
            let _ = parse_cookie(&bytes, "semaphore");
        }
    }
}
