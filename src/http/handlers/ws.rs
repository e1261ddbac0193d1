//! `GET /api/ws`: live task updates and log lines over a WebSocket, upstream's message shapes,
//! sent only for projects the user may read. Cross-origin upgrades are refused (a page on
//! another site must not ride the user's cookie into their task logs).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::header::{
    CONNECTION, HOST, HeaderValue, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::clock::rfc3339;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;
use crate::http::live::{LiveCaller, Verdict};
use crate::model::{ProjectId, User};
use crate::runner::LiveEvent;
use crate::service::Services;

/// How often the server pings.
const PING_EVERY: Duration = Duration::from_secs(54);
/// How often a connection re-reads its credentials and the user's memberships while no
/// message goes out (idle expiry; announced changes are seen at once).
const REFRESH_EVERY: Duration = Duration::from_secs(5);

fn header<'a>(req: &'a Req, name: &hyper::header::HeaderName) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `Origin` (when sent) names the host the request was sent to.
fn same_origin(req: &Req) -> bool {
    let Some(origin) = header(req, &ORIGIN) else {
        return true;
    };
    let Some(host) = header(req, &HOST) else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    origin_host.trim_end_matches('/').eq_ignore_ascii_case(host)
}

/// `GET /api/ws` → 101 and a WebSocket of `update` and `log` messages.
pub async fn connect(mut req: Req) -> HandlerResult {
    let is_upgrade = header(&req, &UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header(&req, &CONNECTION).is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(key) = header(&req, &SEC_WEBSOCKET_KEY).map(str::to_owned) else {
        return Err(ApiError::BadRequest("expected a WebSocket upgrade".into()));
    };
    if !is_upgrade {
        return Err(ApiError::BadRequest("expected a WebSocket upgrade".into()));
    }
    if !same_origin(&req) {
        return Err(ApiError::Forbidden);
    }
    let user = req.user()?.clone();
    let Some(on_upgrade) = req.upgrade.take() else {
        return Err(ApiError::BadRequest(
            "this connection cannot be upgraded".into(),
        ));
    };
    let services = Arc::clone(&req.app.services);
    let live = req.app.runner.subscribe();
    let caller = LiveCaller::new(&req, None);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default().max_message_size(Some(512));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve(ws, &services, user, caller, live).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut res = Response::new(body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(res)
}

/// The projects whose events `user` may see (`None` = all, for admins).
fn readable(services: &Services, user: &User) -> Option<HashSet<ProjectId>> {
    if user.admin {
        return None;
    }
    let ids = services
        .store()
        .view()
        .and_then(|v| v.projects_of(user.id))
        .unwrap_or_default();
    Some(ids.into_iter().collect())
}

/// Sends the live events `user` may see until the client leaves or the caller loses access:
/// the credentials are checked again before each message goes out (see `http::live`) and at
/// once when a change is announced, so a revoked session, a deleted or demoted user or a
/// removed member is disconnected within the second.
async fn serve<S>(
    mut ws: WebSocketStream<S>,
    services: &Services,
    user: User,
    mut caller: LiveCaller,
    mut live: tokio::sync::broadcast::Receiver<Arc<LiveEvent>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut allowed = readable(services, &user);
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        let verdict = tokio::select! {
            event = live.recv() => {
                let event = match event {
                    Ok(e) => e,
                    // A consumer too slow for the stream is dropped, as upstream does.
                    Err(RecvError::Lagged(_) | RecvError::Closed) => break,
                };
                if !still_open(services, caller.check(services), &mut allowed) {
                    break;
                }
                for text in messages(&event, allowed.as_ref()) {
                    if ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                Verdict::Same
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => Verdict::Same,
            },
            () = caller.changed() => caller.recheck(services),
            _ = refresh.tick() => caller.recheck(services),
            _ = ping.tick() => {
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                Verdict::Same
            }
        };
        if !still_open(services, verdict, &mut allowed) {
            break;
        }
    }
    let _ = ws.close(None).await;
}

/// Applies a check of the caller: `false` when the connection must close (access gone or
/// narrowed), else `allowed` follows what the user may read now.
fn still_open(
    services: &Services,
    verdict: Verdict,
    allowed: &mut Option<HashSet<ProjectId>>,
) -> bool {
    match verdict {
        Verdict::Gone => false,
        Verdict::Same => true,
        Verdict::Allowed(user) => {
            let now = readable(services, &user);
            if narrowed(allowed.as_ref(), now.as_ref()) {
                return false;
            }
            *allowed = now;
            true
        }
    }
}

/// Whether the readable projects shrank (`None` = all): an admin demoted, or a project left.
/// The connection is then closed, as for a revoked session; the client reconnects with what
/// it may see now.
fn narrowed(before: Option<&HashSet<ProjectId>>, now: Option<&HashSet<ProjectId>>) -> bool {
    match (before, now) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(before), Some(now)) => !before.is_subset(now),
    }
}

/// Upstream's JSON messages for one event, if the user may see its project.
fn messages(event: &LiveEvent, allowed: Option<&HashSet<ProjectId>>) -> Vec<String> {
    let project = match event {
        LiveEvent::Update { project_id, .. } | LiveEvent::Log { project_id, .. } => *project_id,
    };
    if allowed.is_some_and(|set| !set.contains(&project)) {
        return Vec::new();
    }
    match event {
        LiveEvent::Update {
            task_id,
            project_id,
            template_id,
            status,
            start,
            end,
        } => vec![
            json!({
                "type": "update",
                "task_id": task_id,
                "template_id": template_id,
                "project_id": project_id,
                "status": status.as_str(),
                "start": start.map(rfc3339),
                "end": end.map(rfc3339),
                "version": null,
            })
            .to_string(),
        ],
        LiveEvent::Log {
            task_id,
            project_id,
            lines,
            ..
        } => lines
            .iter()
            .map(|l| {
                json!({
                    "type": "log",
                    "task_id": task_id,
                    "project_id": project_id,
                    "time": rfc3339(l.time_us.div_euclid(1_000_000)),
                    "output": l.text,
                })
                .to_string()
            })
            .collect(),
    }
}
