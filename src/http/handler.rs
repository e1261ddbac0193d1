//! What a handler is: the request it gets ([`Req`]) and what it returns. The route table
//! (`router`), the handlers and the pipeline all depend on this module, so the handlers never
//! depend on the route table that names them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{HeaderMap, Response};

use super::body::{self, Body};
use super::error::ApiError;
use crate::app::App;
use crate::model::User;
use crate::service::Caller;
use crate::service::projects::Access;

/// What a handler returns.
pub type HandlerResult = Result<Response<Body>, ApiError>;
/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
/// A route's handler.
pub type Handler = fn(Req) -> HandlerFuture;

/// A request as a handler sees it: authenticated, routed, body read.
#[derive(Debug)]
pub struct Req {
    /// The server's state.
    pub app: Arc<App>,
    /// The authenticated caller (always set on routes that need a user).
    pub caller: Option<Arc<Caller>>,
    /// Path parameters, raw (see [`Req::param`]).
    pub params: Vec<(String, String)>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The whole request body (bounded by the body limit).
    pub body: Bytes,
    /// The client's address.
    pub peer: SocketAddr,
    /// The query string, if any.
    pub query: Option<String>,
    /// What the caller may do in the route's project (project routes only).
    pub access: Option<Access>,
    /// The connection's upgrade, for `/api/ws`.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Req {
    /// The caller's access to the route's project.
    ///
    /// # Errors
    /// 404 when the route is not a project route (a programming error caught by tests).
    pub fn access(&self) -> Result<&Access, ApiError> {
        self.access.as_ref().ok_or(ApiError::NotFound)
    }

    /// Query parameter `name`, percent-decoded (`+` is a space).
    #[must_use]
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == name {
                percent_decode(&v.replace('+', " "))
            } else {
                None
            }
        })
    }

    /// The client's address: the peer's, or the one a trusted proxy forwarded
    /// (`--trusted-proxies`).
    #[must_use]
    pub fn client_ip(&self) -> std::net::IpAddr {
        super::forwarded::client_ip(
            self.peer.ip(),
            &self.headers,
            &self.app.config.trusted_proxies.0,
            self.app.config.proxy_header,
        )
    }

    /// The authenticated caller.
    ///
    /// # Errors
    /// 401 when the route let an anonymous caller through.
    pub fn user(&self) -> Result<&User, ApiError> {
        self.caller().map(Caller::user)
    }

    /// The authenticated caller, with what is kept beside them (see [`Caller`]).
    ///
    /// # Errors
    /// 401 when the route let an anonymous caller through.
    pub fn caller(&self) -> Result<&Caller, ApiError> {
        self.caller.as_deref().ok_or(ApiError::Unauthorized)
    }

    /// Path parameter `name`, percent-decoded.
    ///
    /// # Errors
    /// 400 when it is missing or does not decode to UTF-8.
    pub fn param(&self, name: &str) -> Result<String, ApiError> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| percent_decode(v))
            .ok_or_else(|| ApiError::BadRequest(format!("invalid path parameter {name}")))
    }

    /// Path parameter `name` as an object id.
    ///
    /// # Errors
    /// 400 `Invalid <what> ID` when it is not a positive integer.
    pub fn id(&self, name: &str, what: &str) -> Result<u64, ApiError> {
        self.param(name)?
            .parse::<u64>()
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| ApiError::BadRequest(format!("Invalid {what} ID")))
    }

    /// The body decoded as JSON (see [`body::decode`]).
    ///
    /// # Errors
    /// 400 naming the offending field.
    pub fn json<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        Ok(body::decode(&self.body)?)
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc%3D").as_deref(), Some("abc="));
        assert_eq!(percent_decode("%e2%9c%93").as_deref(), Some("✓"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    proptest! {
        #[test]
        fn percent_round_trip(s in "\\PC{0,40}") {
            let encoded: String = crate::service::auth::hex(s.as_bytes())
                .as_bytes()
                .chunks(2)
                .flat_map(|pair| [b'%', pair[0], pair[1]])
                .map(char::from)
                .collect();
            prop_assert_eq!(percent_decode(&encoded), Some(s));
        }
    }
}
