//! Login throttling that cannot be turned against users (issue 16): failures count per
//! (account, address), so bad tries from one place lock nobody out elsewhere; the client's
//! address comes from `X-Forwarded-For` only when a trusted proxy sent it; check and count are
//! one step, so a burst gets no more than the limit through; and bogus logins cannot grow the
//! server's memory.

mod common;

use common::process::ServerProcess;
use common::{ADMIN, ADMIN_PASSWORD, Client, Resp, TestServer};
use serde_json::json;

/// A login through a proxy that names the client in `header` (`x-forwarded-for` or
/// `forwarded`), with a spoofed address on the left as a client would add.
async fn login_via(c: &Client, header: &str, address: &str, auth: &str, pw: &str) -> Resp {
    let value = if header == "forwarded" {
        format!("for=6.6.6.6, for={address}")
    } else {
        format!("6.6.6.6, {address}")
    };
    let body = json!({"auth": auth, "password": pw}).to_string();
    c.raw(
        "POST",
        "/api/auth/login",
        Some(body.into_bytes()),
        &[("content-type", "application/json"), (header, &value)],
    )
    .await
}

/// A login from `address` as reported in `X-Forwarded-For`.
async fn login_from(c: &Client, address: &str, auth: &str, password: &str) -> Resp {
    login_via(c, "x-forwarded-for", address, auth, password).await
}

/// Asserts that the failed-login events are five, each from `address`.
async fn assert_five_failures_from(s: &TestServer, address: &str) {
    let failed = failed_login_events(s).await;
    let suffix = format!("from {address}");
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert!(failed.iter().all(|d| d.ends_with(&suffix)), "{failed:?}");
}

/// The descriptions of the failed-login events.
async fn failed_login_events(s: &TestServer) -> Vec<String> {
    let events = s.admin().await.get("/api/events").await.json();
    events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["description"].as_str())
        .filter(|d| d.starts_with("Failed login"))
        .map(str::to_owned)
        .collect()
}

/// Regression (issue 16): anyone could lock the admin out for the window with 5 bad tries.
#[tokio::test(flavor = "multi_thread")]
async fn five_bad_tries_from_one_address_do_not_lock_the_admin_out_from_another() {
    let s = TestServer::start_with(|c| {
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
        c.login_window_secs = 600;
    })
    .await;
    let c = s.client();
    for _ in 0..5 {
        login_from(&c, "203.0.113.5", ADMIN, "wrong")
            .await
            .assert_error(401);
    }
    // That address is stopped, even with the right password...
    login_from(&c, "203.0.113.5", ADMIN, ADMIN_PASSWORD)
        .await
        .assert_error(429);
    // ...and the admin, elsewhere, is not.
    let r = login_from(&c, "198.51.100.7", ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(r.status, 204, "{}", r.text());
    // The address recorded is the forwarded one, not the proxy's or the spoofed 6.6.6.6.
    assert_five_failures_from(&s, "203.0.113.5").await;
}

/// `X-Forwarded-For` from a peer that is not a trusted proxy is ignored: rotating it neither
/// escapes the throttle nor changes the recorded address.
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let s = TestServer::start_with(|c| {
        c.trusted_proxies = "10.0.0.0/8".parse().unwrap();
    })
    .await;
    let c = s.client();
    for i in 0..5 {
        login_from(&c, &format!("203.0.113.{i}"), ADMIN, "wrong")
            .await
            .assert_error(401);
    }
    login_from(&c, "198.51.100.7", ADMIN, ADMIN_PASSWORD)
        .await
        .assert_error(429);
    let r = login_via(&c, "forwarded", "198.51.100.8", ADMIN, ADMIN_PASSWORD).await;
    r.assert_error(429);
    s.clock.advance(15 * 60 + 1);
    assert_five_failures_from(&s, "127.0.0.1").await;
}

/// Regression (issue 16): check and count were separate steps, so a burst of concurrent
/// attempts all passed the check before the first failure was counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_burst_cannot_exceed_the_limit() {
    let s = TestServer::start_with(|c| {
        // A hash slow enough (a few ms) that the whole burst is in flight at once.
        c.scrypt_log_n = 12;
        c.hash_queue = 64;
    })
    .await;
    let attempts: Vec<_> = (0..30)
        .map(|_| {
            let mut c = s.client();
            tokio::spawn(async move { c.login(ADMIN, "wrong").await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for a in attempts {
        statuses.push(a.await.expect("attempt"));
    }
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(checked + refused, 30, "{statuses:?}");
    assert!(
        (1..=5).contains(&checked),
        "{checked} passwords checked: {statuses:?}"
    );
}

/// Regression (issue 16): the per-account key had no length limit and was kept until stale,
/// so 10 k distinct 10 kB logins grew the server by 100 MB. Logins longer than any stored
/// one are refused before hashing or counting (401), and the server's memory stays flat.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_distinct_bogus_logins_keep_memory_flat() {
    const LOGINS: usize = 10_000;
    const LONG: usize = 10_000;
    let dir = tempfile::tempdir().expect("dir");
    let server = ServerProcess::start(
        &dir.path().join("forge.redb"),
        &[("FORGE_LOGIN_MAX_FAILURES", "4000000000")],
    );
    let base = server.client();
    let spray = |from: usize, to: usize, len: usize| {
        let base = base.clone();
        async move {
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    let c = base.clone();
                    tokio::spawn(async move {
                        for i in (from + w..to).step_by(8) {
                            let mut login = format!("bogus-{i}-");
                            login.push_str(&"x".repeat(len.saturating_sub(login.len())));
                            let r = c
                                .post(
                                    "/api/auth/login",
                                    json!({"auth": login, "password": "wrong"}),
                                )
                                .await;
                            assert_eq!(r.status, 401, "{}", r.text());
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.expect("worker");
            }
        }
    };
    // Warm up: allocator pools, hash threads, connections.
    spray(0, 1_000, LONG).await;
    spray(1_000, 2_000, 200).await;
    let before = server.status_kib("VmRSS");
    spray(2_000, 2_000 + LOGINS, LONG).await;
    let after = server.status_kib("VmRSS");
    let grown = after.saturating_sub(before);
    eprintln!("VmRSS {before} kB before, {after} kB after {LOGINS} logins of {LONG} bytes");
    assert!(
        grown < 8 * 1024,
        "the server grew by {grown} kB ({before} → {after} kB)"
    );
    // The server still answers, and the admin still logs in.
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
}
