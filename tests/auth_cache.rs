//! The Bearer token cache (token → user, user × project → role) through a real server, under
//! concurrency: once a change that takes access away has been answered, no request sent
//! afterwards gets through — a revoked token, a deleted user, a demoted admin, a removed or
//! downgraded member — and a changed user or enrolment shows at once in `GET /api/user`,
//! whose answer is kept beside the remembered user.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::{Client, TestServer, at, new_project};
use serde_json::{Value, json};

/// The request a test repeats.
#[derive(Clone)]
enum Request {
    Get(String),
    Put(String, Value),
}

impl Request {
    /// The status and the body (`null` when not JSON).
    async fn send(&self, client: &Client) -> (u16, Value) {
        let r = match self {
            Request::Get(path) => client.get(path).await,
            Request::Put(path, body) => client.put(path, body.clone()).await,
        };
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }
}

/// What one request sent by [`hammer`] got: when it was sent, its status and body.
type Seen = (Instant, (u16, Value));

/// Sends `request` from `workers` concurrent loops until `stop`; returns each request's send
/// time, status and body.
fn hammer(
    client: &Client,
    request: &Request,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    (0..workers)
        .map(|_| {
            let (client, request, stop) = (client.clone(), request.clone(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    seen.push((sent, request.send(&client).await));
                }
                seen
            })
        })
        .collect()
}

/// Runs [`hammer`] with `request` while `change` runs (after some requests have passed), then keeps
/// hammering a while; asserts that requests sent before the change's answer got `before` at
/// least once (so the cache was warm), and every request sent after it got `after`.
async fn across_change<F: std::future::Future<Output = ()>>(
    client: &Client,
    request: Request,
    before: u16,
    after: u16,
    change: F,
) {
    let path = match &request {
        Request::Get(p) | Request::Put(p, _) => p.clone(),
    };
    let (early, late) = split_at_change(client, request, change).await;
    assert!(
        early.iter().any(|(_, (s, _))| *s == before),
        "{path}: no {before} before the change ({} requests)",
        early.len()
    );
    let leaked: Vec<u16> = late
        .iter()
        .map(|(_, (s, _))| *s)
        .filter(|s| *s != after)
        .collect();
    assert!(
        leaked.is_empty(),
        "{path}: {} of {} requests sent after the change got {leaked:?}, not {after}",
        leaked.len(),
        late.len()
    );
}

/// Runs [`hammer`] with `request` while `change` runs (after some requests have passed), then
/// keeps hammering a while; returns what the requests sent before the change's answer got,
/// and (never empty) what those sent after it got.
async fn split_at_change<F: std::future::Future<Output = ()>>(
    client: &Client,
    request: Request,
    change: F,
) -> (Vec<Seen>, Vec<Seen>) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = hammer(client, &request, 8, &stop);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    change.await;
    let answered = Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    let (early, late): (Vec<_>, Vec<_>) = seen.into_iter().partition(|(t, _)| *t < answered);
    assert!(!late.is_empty(), "no request after the change");
    (early, late)
}

/// `GET /api/user` as a Bearer client sees it, across `change`: asserts that some answer
/// before the change's answer passes `before` (the kept answer was warm) and that every
/// answer after it is 200 and passes `after`.
async fn own_answer_across_change<F: std::future::Future<Output = ()>>(
    bearer: &Client,
    before: impl Fn(&Value) -> bool,
    after: impl Fn(&Value) -> bool,
    change: F,
) {
    let (early, late) = split_at_change(bearer, Request::Get("/api/user".into()), change).await;
    assert!(
        early.iter().any(|(_, (s, v))| *s == 200 && before(v)),
        "no expected answer before the change ({} requests)",
        early.len()
    );
    let stale: Vec<&Value> = late
        .iter()
        .filter(|(_, (s, v))| *s != 200 || !after(v))
        .map(|(_, (_, v))| v)
        .collect();
    assert!(
        stale.is_empty(),
        "{} of {} answers after the change are stale, first: {}",
        stale.len(),
        late.len(),
        stale[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_refused_by_the_next_request() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let token = admin.new_token().await;
    let bearer = s.client().with_bearer(&token);
    across_change(&bearer, Request::Get("/api/user".into()), 200, 401, async {
        let r = admin.delete(&format!("/api/user/tokens/{token}")).await;
        assert_eq!(r.status, 204, "{}", r.text());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_user_is_refused_by_the_next_request() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (id, user) = s.user("dora", false).await;
    let bearer = s.client().with_bearer(&user.new_token().await);
    across_change(&bearer, Request::Get("/api/user".into()), 200, 401, async {
        assert_eq!(admin.delete(&format!("/api/users/{id}")).await.status, 204);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_demoted_admin_is_refused_by_the_next_request() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (id, user) = s.user("ada", true).await;
    let bearer = s.client().with_bearer(&user.new_token().await);
    across_change(
        &bearer,
        Request::Get("/api/tasks".into()),
        200,
        403,
        async {
            let r = admin
                .put(
                    &format!("/api/users/{id}"),
                    json!({"name": "ada", "username": "ada", "email": "ada@example.com",
                    "admin": false}),
                )
                .await;
            assert_eq!(r.status, 204, "{}", r.text());
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_member_is_refused_by_the_next_request() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let p = new_project(&admin, "cached").await;
    let (id, user) = s.user("mia", false).await;
    let members = at(p, "users");
    let add = admin
        .post(&members, json!({"user_id": id, "role": "guest"}))
        .await;
    assert_eq!(add.status, 204, "{}", add.text());
    let bearer = s.client().with_bearer(&user.new_token().await);
    across_change(
        &bearer,
        Request::Get(at(p, "tasks/last")),
        200,
        404,
        async {
            let r = admin.delete(&format!("{members}/{id}")).await;
            assert_eq!(r.status, 204, "{}", r.text());
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_downgraded_member_is_refused_by_the_next_request() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let p = new_project(&admin, "roles").await;
    let members = at(p, "users");
    let (id, user) = s.user("rui", false).await;
    let (other, _) = s.user("ola", false).await;
    for (who, role) in [(id, "owner"), (other, "guest")] {
        let add = admin
            .post(&members, json!({"user_id": who, "role": role}))
            .await;
        assert_eq!(add.status, 204, "{}", add.text());
    }
    let bearer = s.client().with_bearer(&user.new_token().await);
    // An owner may set another member's role (an idempotent write); a guest may not.
    let set_other = Request::Put(format!("{members}/{other}"), json!({"role": "guest"}));
    across_change(&bearer, set_other, 204, 403, async {
        let r = admin
            .put(&format!("{members}/{id}"), json!({"role": "guest"}))
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_user_shows_in_the_next_request() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (id, user) = s.user("ned", false).await;
    let bearer = s.client().with_bearer(&user.new_token().await);
    assert_eq!(bearer.get("/api/user").await.json()["name"], "ned");
    assert_eq!(bearer.get("/api/user").await.json()["name"], "ned");
    let r = admin
        .put(
            &format!("/api/users/{id}"),
            json!({"name": "Ned Two", "username": "ned", "email": "ned@example.com"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(bearer.get("/api/user").await.json()["name"], "Ned Two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renamed_user_shows_in_the_next_answer_under_concurrency() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (id, user) = s.user("nina", false).await;
    let bearer = s.client().with_bearer(&user.new_token().await);
    own_answer_across_change(
        &bearer,
        |v| v["name"] == "nina",
        |v| v["name"] == "Nina Two" && v["can_create_project"] == false,
        async {
            let r = admin
                .put(
                    &format!("/api/users/{id}"),
                    json!({"name": "Nina Two", "username": "nina", "email": "nina@example.com"}),
                )
                .await;
            assert_eq!(r.status, 204, "{}", r.text());
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enrolment_shows_in_the_next_answer_under_concurrency() {
    let s = TestServer::start().await;
    let (id, user) = s.user("otto", false).await;
    let bearer = s.client().with_bearer(&user.new_token().await);
    let enabled = std::sync::Mutex::new(Value::Null);
    own_answer_across_change(
        &bearer,
        |v| v.get("totp").is_none(),
        |v| v["totp"]["user_id"] == id,
        async {
            let r = user
                .post(&format!("/api/users/{id}/2fas/totp"), json!({}))
                .await;
            assert_eq!(r.status, 201, "{}", r.text());
            *enabled.lock().unwrap() = r.json()["id"].clone();
        },
    )
    .await;
    let totp = enabled.lock().unwrap().clone();
    own_answer_across_change(
        &bearer,
        |v| v["totp"]["id"] == totp,
        |v| v.get("totp").is_none(),
        async {
            let r = user
                .delete(&format!("/api/users/{id}/2fas/totp/{totp}"))
                .await;
            assert_eq!(r.status, 204, "{}", r.text());
        },
    )
    .await;
}
