//! `GET /api/ws` through a real server and a real WebSocket client (issue 4; API.md §9): a
//! member of a project receives upstream's `update` and `log` messages for its tasks, a user
//! who is not a member receives none of them (but does receive its own project's), admins
//! receive everything; unauthenticated upgrades → 401, cross-origin ones → 403, and a plain
//! GET → 400.

mod common;

use common::{at, id_of, ok_json};

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, TestServer};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

/// Opens `/api/ws` with extra request headers: the socket, or the refusal's status code.
async fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("ws://{addr}/api/ws")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    match tokio::time::timeout(Duration::from_secs(10), client_async(req, stream)).await {
        Ok(Ok((ws, resp))) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Ok(Err(WsError::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("websocket handshake failed: {e}"),
        Err(_) => panic!("websocket handshake timed out"),
    }
}

/// The session cookie header of a logged-in client.
fn cookie(c: &Client) -> (&'static str, String) {
    ("cookie", c.cookie.clone().expect("logged in"))
}

/// Reads JSON text messages until one satisfies `last` (included); every message on the way is
/// returned. Panics after `secs` without it.
async fn read_until(ws: &mut Ws, secs: u64, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no awaited message within {secs} s; received: {:#?}",
                    got.iter().map(Value::to_string).collect::<Vec<_>>()
                )
            });
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => panic!("websocket error: {e}"),
            None => panic!("websocket closed; received: {got:#?}"),
        };
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        };
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        let done = last(&v);
        got.push(v);
        if done {
            return got;
        }
    }
}

fn finished(task: u64) -> impl Fn(&Value) -> bool {
    move |m| m["type"] == "update" && m["task_id"] == task && m["status"] == "success"
}

/// A project with a local-path repository and a bash template running `run.sh`; returns the
/// project and template ids.
async fn project(admin: &Client, name: &str, repo: &std::path::Path) -> (u64, u64) {
    let p = common::new_project(admin, name).await;
    let repo_id = common::local_repository(admin, p, repo).await;
    let r = admin
        .post(
            &at(p, "templates"),
            json!({"name": "run", "project_id": p, "app": "bash", "playbook": "run.sh",
                   "repository_id": repo_id}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    (p, id_of(&r.json()))
}

async fn add_member(admin: &Client, p: u64, user: u64, role: &str) {
    let r = admin
        .post(&at(p, "users"), json!({"user_id": user, "role": role}))
        .await;
    assert_eq!(r.status, 204, "add member: {}", r.text());
}

async fn launch(admin: &Client, p: u64, template: u64) -> u64 {
    let r = admin
        .post(&at(p, "tasks"), json!({ "template_id": template }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    id_of(&r.json())
}

fn of_task(msgs: &[Value], task: u64, kind: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m["task_id"] == task && m["type"] == kind)
        .cloned()
        .collect()
}

fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() >= 20 && s.as_bytes()[4] == b'-' && s.contains('T'))
}

const SCRIPT: &str = "echo alpha\necho beta >&2\necho gamma\n";

/// The messages of one task seen by a member: every status from `waiting` to `success` in
/// order, upstream's shapes, and one `log` message per stored output line, in order.
async fn assert_task_messages(c: &Client, msgs: &[Value], p: u64, template: u64, task: u64) {
    let updates = of_task(msgs, task, "update");
    for u in &updates {
        let keys: Vec<&str> = u.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys.clone();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "end",
                "project_id",
                "start",
                "status",
                "task_id",
                "template_id",
                "type",
                "version"
            ],
            "update message fields: {u}"
        );
        assert_eq!(u["project_id"], p, "{u}");
        assert_eq!(u["template_id"], template, "{u}");
    }
    let mut statuses: Vec<&str> = updates
        .iter()
        .map(|u| u["status"].as_str().unwrap())
        .collect();
    statuses.dedup();
    assert_eq!(
        statuses,
        ["waiting", "starting", "running", "success"],
        "status updates of task {task}: {updates:#?}"
    );
    let first = &updates[0];
    assert!(
        first["start"].is_null() && first["end"].is_null(),
        "{first}"
    );
    let last = updates.last().unwrap();
    assert!(is_time(&last["start"]) && is_time(&last["end"]), "{last}");

    let logs = of_task(msgs, task, "log");
    for l in &logs {
        let mut keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["output", "project_id", "task_id", "time", "type"],
            "log message fields: {l}"
        );
        assert_eq!(l["project_id"], p, "{l}");
        assert!(is_time(&l["time"]), "{l}");
    }
    let logged: Vec<&str> = logs.iter().map(|l| l["output"].as_str().unwrap()).collect();
    let stored = ok_json(c, &at(p, &format!("tasks/{task}/output"))).await;
    let stored: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["output"].as_str().unwrap())
        .collect();
    for want in ["alpha", "beta", "gamma"] {
        assert!(stored.contains(&want), "stored output: {stored:#?}");
    }
    assert_eq!(
        logged, stored,
        "one `log` message per output line of task {task}, in order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn members_get_their_projects_task_messages_and_no_others() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("run.sh"), SCRIPT).unwrap();
    let (p1, tpl1) = project(&admin, "one", repo.path()).await;
    let (p2, tpl2) = project(&admin, "two", repo.path()).await;
    let (alice_id, alice) = s.user("alice", false).await;
    let (bob_id, bob) = s.user("bob", false).await;
    add_member(&admin, p1, alice_id, "task_runner").await;
    add_member(&admin, p2, bob_id, "guest").await;

    // Alice with her session cookie, Bob with a bearer token, the admin with a cookie.
    let mut alice_ws = connect(s.addr, &[(cookie(&alice).0, &cookie(&alice).1)])
        .await
        .expect("alice connects");
    let bob_token = bob.new_token().await;
    let mut bob_ws = connect(s.addr, &[("authorization", &format!("Bearer {bob_token}"))])
        .await
        .expect("bob connects");
    let mut admin_ws = connect(s.addr, &[(cookie(&admin).0, &cookie(&admin).1)])
        .await
        .expect("admin connects");

    // A task of project one: Alice sees all of it.
    let t1 = launch(&admin, p1, tpl1).await;
    let alice_1 = read_until(&mut alice_ws, 30, finished(t1)).await;
    assert_task_messages(&admin, &alice_1, p1, tpl1, t1).await;

    // A task of project two: Bob sees it, and saw nothing of project one before it.
    let t2 = launch(&admin, p2, tpl2).await;
    let bob_msgs = read_until(&mut bob_ws, 30, finished(t2)).await;
    let foreign: Vec<&Value> = bob_msgs.iter().filter(|m| m["project_id"] != p2).collect();
    assert!(
        foreign.is_empty(),
        "bob (member of project {p2} only) received messages of other projects: {foreign:#?}"
    );
    assert_task_messages(&admin, &bob_msgs, p2, tpl2, t2).await;

    // Another task of project one: Alice saw nothing of project two in between.
    let t3 = launch(&admin, p1, tpl1).await;
    let alice_2 = read_until(&mut alice_ws, 30, finished(t3)).await;
    let foreign: Vec<&Value> = alice_2.iter().filter(|m| m["project_id"] != p1).collect();
    assert!(
        foreign.is_empty(),
        "alice (member of project {p1} only) received messages of other projects: {foreign:#?}"
    );
    assert_task_messages(&admin, &alice_2, p1, tpl1, t3).await;

    // The admin is a member of neither but sees every project's tasks.
    let all = read_until(&mut admin_ws, 30, finished(t3)).await;
    for (task, p, tpl) in [(t1, p1, tpl1), (t2, p2, tpl2), (t3, p1, tpl1)] {
        assert_task_messages(&admin, &all, p, tpl, task).await;
    }

    // Client messages are read and discarded; the connection stays usable.
    use futures_util::SinkExt;
    alice_ws
        .send(Message::text("hello"))
        .await
        .expect("send a client message");
    let t4 = launch(&admin, p1, tpl1).await;
    let alice_3 = read_until(&mut alice_ws, 30, finished(t4)).await;
    assert_task_messages(&admin, &alice_3, p1, tpl1, t4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_upgrades() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (_, alice) = s.user("alice", false).await;

    // No credentials, or bad ones: 401 before any upgrade.
    assert_eq!(connect(s.addr, &[]).await.err(), Some(401));
    assert_eq!(
        connect(s.addr, &[("authorization", "Bearer not-a-token")])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        connect(s.addr, &[("cookie", "semaphore=forged")])
            .await
            .err(),
        Some(401)
    );

    // Another site's page riding the user's cookie: 403.
    for c in [&admin, &alice] {
        let (name, value) = cookie(c);
        assert_eq!(
            connect(s.addr, &[(name, &value), ("origin", "http://evil.example")])
                .await
                .err(),
            Some(403),
            "cross-origin upgrade"
        );
        assert_eq!(
            connect(
                s.addr,
                &[
                    (name, &value),
                    ("origin", &format!("http://evil.example:{}", s.addr.port()))
                ]
            )
            .await
            .err(),
            Some(403),
            "cross-origin upgrade, same port"
        );
        // The server's own origin (what a browser on the UI sends) is accepted.
        let own = format!("http://{}", s.addr);
        let ws = connect(s.addr, &[(name, &value), ("origin", &own)]).await;
        assert!(ws.is_ok(), "same-origin upgrade: {:?}", ws.err());
    }

    // A plain GET (no upgrade) of the WebSocket route: 400.
    let r = alice.get("/api/ws").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = admin.get("/api/ws").await;
    assert_eq!(r.status, 400, "{}", r.text());
    // ...but an anonymous one is still 401 first.
    assert_eq!(s.client().get("/api/ws").await.status, 401);
}

/// A task that runs for a minute, one line every 100 ms.
const LONG_SCRIPT: &str = "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done\n";

/// What takes the victim's access away.
#[derive(Debug, Clone, Copy)]
enum Revocation {
    /// The victim logs out (the same session, from another request).
    Logout,
    /// The victim changes their password from another session.
    PasswordChange,
    /// An admin deletes the victim.
    Deleted,
    /// An admin removes the victim from the project.
    RemovedFromProject,
    /// An admin demotes the victim (an admin who is not a member of the project).
    Demoted,
    /// The victim, connected with an API token, expires it.
    TokenExpired,
}

/// Waits until the server closes the WebSocket (text messages on the way are skipped).
async fn closed_within(ws: &mut Ws, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_) | Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Regression (issue 16): a WebSocket kept the user it had at connect time, and a followed
/// output ran to the task's end, so a logged-out, deleted, demoted or removed user kept
/// receiving live output. Now both end within a second or so of the change, while the task
/// still runs.
#[tokio::test(flavor = "multi_thread")]
async fn websockets_and_followed_output_end_when_access_goes() {
    for case in [
        Revocation::Logout,
        Revocation::PasswordChange,
        Revocation::Deleted,
        Revocation::RemovedFromProject,
        Revocation::Demoted,
        Revocation::TokenExpired,
    ] {
        access_goes(case).await;
    }
}

async fn access_goes(case: Revocation) {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("run.sh"), LONG_SCRIPT).unwrap();
    let (p, tpl) = project(&admin, "long", repo.path()).await;
    let is_admin = matches!(case, Revocation::Demoted);
    let (victim_id, mut victim) = s.user("victim", is_admin).await;
    if !is_admin {
        add_member(&admin, p, victim_id, "task_runner").await;
    }
    if matches!(case, Revocation::TokenExpired) {
        victim = victim.with_bearer(&victim.new_token().await);
    }
    let auth = match &victim.bearer {
        Some(t) => ("authorization", format!("Bearer {t}")),
        None => cookie(&victim),
    };
    let mut ws = connect(s.addr, &[(auth.0, &auth.1)])
        .await
        .unwrap_or_else(|code| panic!("{case:?}: the victim connects: {code}"));
    let task = launch(&admin, p, tpl).await;
    read_until(&mut ws, 30, |m| m["type"] == "log" && m["task_id"] == task).await;
    let follower = {
        let victim = victim.clone();
        let path = at(p, &format!("tasks/{task}/output?follow=true"));
        tokio::spawn(async move { victim.get(&path).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!follower.is_finished(), "{case:?}: the follow ended early");

    let r = match case {
        Revocation::Logout => victim.raw("POST", "/api/auth/logout", None, &[]).await,
        Revocation::PasswordChange => {
            let mut other = s.client();
            assert_eq!(other.login("victim", "pw-of-user").await.status, 204);
            other
                .post(
                    &format!("/api/users/{victim_id}/password"),
                    json!({"password": "a new one"}),
                )
                .await
        }
        Revocation::Deleted => admin.delete(&format!("/api/users/{victim_id}")).await,
        Revocation::RemovedFromProject => admin.delete(&at(p, &format!("users/{victim_id}"))).await,
        Revocation::Demoted => {
            admin
                .put(
                    &format!("/api/users/{victim_id}"),
                    json!({"name": "victim", "username": "victim",
                           "email": "victim@example.com", "admin": false}),
                )
                .await
        }
        Revocation::TokenExpired => {
            let token = victim.bearer.clone().unwrap();
            victim.delete(&format!("/api/user/tokens/{token}")).await
        }
    };
    assert_eq!(r.status, 204, "{case:?}: {}", r.text());

    assert!(
        closed_within(&mut ws, 3).await,
        "{case:?}: the WebSocket stayed open"
    );
    let followed = tokio::time::timeout(Duration::from_secs(3), follower)
        .await
        .unwrap_or_else(|_| panic!("{case:?}: the followed output went on"))
        .expect("follower");
    assert_eq!(followed.status, 200, "{case:?}: {}", followed.text());
    assert!(followed.text().contains("tick 1\n"), "{case:?}");
    let status = ok_json(&admin, &at(p, &format!("tasks/{task}"))).await["status"].clone();
    assert_eq!(status, "running", "{case:?}: the task ended first");
    let r = admin
        .raw("POST", &at(p, &format!("tasks/{task}/stop")), None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
}

/// The admin's own WebSocket and followed output survive the changes it makes to others.
#[tokio::test(flavor = "multi_thread")]
async fn unrelated_changes_leave_connections_open() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("run.sh"), LONG_SCRIPT).unwrap();
    let (p, tpl) = project(&admin, "long", repo.path()).await;
    let (other_id, _) = s.user("other", false).await;
    let mut ws = connect(s.addr, &[(cookie(&admin).0, &cookie(&admin).1)])
        .await
        .expect("connects");
    let task = launch(&admin, p, tpl).await;
    read_until(&mut ws, 30, |m| m["type"] == "log" && m["task_id"] == task).await;
    let r = admin.delete(&format!("/api/users/{other_id}")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Messages keep coming for more than the re-check interval.
    let start = tokio::time::Instant::now();
    let seen = read_until(&mut ws, 10, |_| start.elapsed() > Duration::from_secs(2)).await;
    assert!(seen.len() > 5, "{seen:?}");
    let r = admin
        .raw("POST", &at(p, &format!("tasks/{task}/stop")), None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
}
