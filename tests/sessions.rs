//! Login, sessions and logout through a real server.

mod common;

use common::{ADMIN, ADMIN_PASSWORD, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn login_sets_an_httponly_samesite_cookie_and_authenticates() {
    let s = TestServer::start().await;
    let mut c = s.client();
    let r = c.login(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let cookie = r.header("set-cookie").expect("set-cookie");
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("semaphore=")
        .expect("name");
    assert!(value.len() >= 22, "at least 128 bits: {value}");
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("; Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");

    let me = c.get("/api/user").await;
    assert_eq!(me.status, 200);
    assert_eq!(
        me.header("content-type").as_deref(),
        Some("application/json")
    );
    let me = me.json();
    assert_eq!(me["username"], "admin");
    assert_eq!(me["admin"], true);
    assert_eq!(me["can_create_project"], true);
    assert_eq!(me["created"], "2025-05-21T02:35:12Z");
    assert!(me.get("password").is_none() && me.get("password_hash").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn secure_cookies_flag_marks_the_cookie_secure() {
    let s = TestServer::start_with(|c| c.secure_cookies = true).await;
    let r = s.client().login(ADMIN, ADMIN_PASSWORD).await;
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));
}

#[tokio::test(flavor = "multi_thread")]
async fn login_by_username_or_email_case_insensitively() {
    let s = TestServer::start().await;
    for auth in ["admin", "ADMIN", "admin@example.com", "Admin@Example.COM"] {
        assert_eq!(
            s.client().login(auth, ADMIN_PASSWORD).await.status,
            204,
            "{auth}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_unknown_user_and_bad_bodies() {
    let s = TestServer::start().await;
    s.client().login(ADMIN, "nope").await.assert_error(401);
    s.client().login("ghost", "nope").await.assert_error(401);
    s.client().login("", "").await.assert_error(401);
    let c = s.client();
    c.raw("POST", "/api/auth/login", Some(b"{not json".to_vec()), &[])
        .await
        .assert_error(400);
    c.raw("POST", "/api/auth/login", None, &[])
        .await
        .assert_error(400);
    let msg = c
        .post("/api/auth/login", json!({"auth": 5, "password": "x"}))
        .await
        .assert_error(400);
    assert!(msg.contains("auth"), "names the field: {msg}");
    let msg = c
        .post("/api/auth/login", json!({"auth": "a", "password": []}))
        .await
        .assert_error(400);
    assert!(msg.contains("password"), "names the field: {msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_options_for_the_login_page() {
    let s = TestServer::start().await;
    let r = s.client().get("/api/auth/login").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"oidc_providers": [], "login_with_password": true})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn password_with_backslash_quotes_and_non_ascii_logs_in() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let password = "slashy\\pass \"quoted\" 'single' ünïcødé 🔑";
    let r = a
        .post(
            "/api/users",
            json!({"name": "Q", "username": "quirky", "email": "q@example.com", "password": password}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.client().login("quirky", password).await.status, 204);
    assert_eq!(s.client().login("quirky", "slashy\\pass").await.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_session_server_side() {
    let s = TestServer::start().await;
    let c = s.admin().await;
    let stolen = c.clone();
    let r = c.raw("POST", "/api/auth/logout", None, &[]).await;
    assert_eq!(r.status, 204);
    let cleared = r.header("set-cookie").expect("clears the cookie");
    assert!(
        cleared.starts_with("semaphore=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // The old cookie, replayed, no longer works.
    stolen.get("/api/user").await.assert_error(401);
    // Logout without a session is harmless.
    assert_eq!(
        s.client()
            .raw("POST", "/api/auth/logout", None, &[])
            .await
            .status,
        204
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_expire_after_inactivity_and_activity_slides_the_window() {
    let s = TestServer::start_with(|c| c.session_idle_secs = 3600).await;
    let c = s.admin().await;
    // Active every 50 minutes: the window slides, the session lives past 1 h of age.
    for _ in 0..3 {
        s.clock.advance(50 * 60);
        assert_eq!(c.get("/api/user").await.status, 200);
    }
    // Idle for longer than the timeout: expired, and it stays expired.
    s.clock.advance(3601);
    c.get("/api/user").await.assert_error(401);
    s.clock.advance(-3601);
    c.get("/api/user").await.assert_error(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_cookie_and_missing_auth_get_401() {
    let s = TestServer::start().await;
    s.client().get("/api/user").await.assert_error(401);
    let mut c = s.client();
    c.cookie = Some("semaphore=forged".into());
    c.get("/api/user").await.assert_error(401);
    c.cookie = Some("semaphore=".into());
    c.get("/api/user").await.assert_error(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_after_five_failures_per_account() {
    let s = TestServer::start_with(|c| c.login_window_secs = 600).await;
    for _ in 0..5 {
        s.client().login(ADMIN, "wrong").await.assert_error(401);
    }
    // The 6th attempt, even with the right password, is refused without checking it.
    let r = s.client().login(ADMIN, ADMIN_PASSWORD).await;
    r.assert_error(429);
    let retry: i64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    // Once the window has passed, the right password works again.
    s.clock.advance(601);
    assert_eq!(s.client().login(ADMIN, ADMIN_PASSWORD).await.status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_per_client_address_across_accounts() {
    // One address may fail 20 times the per-account limit across accounts (issue 16: the
    // per-account limit per address no longer locks the account for everyone).
    let s = TestServer::start_with(|c| c.login_max_failures = 3).await;
    for i in 0..3 * 20 {
        s.client()
            .login(&format!("a{i}"), "wrong")
            .await
            .assert_error(401);
    }
    // A different account from the same address is refused too.
    s.client()
        .login(ADMIN, ADMIN_PASSWORD)
        .await
        .assert_error(429);
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_wins_over_cookie_and_scheme_is_case_insensitive() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let token = admin.new_token().await;
    let c = s.client();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {token}");
        let r = c
            .raw("GET", "/api/user", None, &[("authorization", &auth)])
            .await;
        assert_eq!(r.status, 200, "{scheme}");
    }
    // A valid cookie does not rescue a bad Bearer header.
    let mut both = admin.clone();
    both.bearer = Some("not-a-token".into());
    both.get("/api/user").await.assert_error(401);
    // A malformed Bearer header is 401, not a fallback.
    let r = admin
        .raw("GET", "/api/user", None, &[("authorization", "Bearer")])
        .await;
    r.assert_error(401);
    // Another scheme is ignored and the cookie is used.
    let r = admin
        .raw(
            "GET",
            "/api/user",
            None,
            &[("authorization", "Basic Zm9vOmJhcg==")],
        )
        .await;
    assert_eq!(r.status, 200);
    // The token is compared exactly: case changes break it.
    let upper = token.to_uppercase();
    s.client()
        .with_bearer(&upper)
        .get("/api/user")
        .await
        .assert_error(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_storm_gets_503_at_once_and_bearer_requests_still_pass() {
    let s = TestServer::start_with(|c| {
        c.scrypt_log_n = 12;
        c.hash_threads = 1;
        c.hash_queue = 1;
        c.login_max_failures = u32::MAX;
    })
    .await;
    let token = s.admin().await.new_token().await;
    let bearer = s.client().with_bearer(&token);
    let logins: Vec<_> = (0..12)
        .map(|_| {
            let c = s.client();
            tokio::spawn(async move {
                c.raw(
                    "POST",
                    "/api/auth/login",
                    Some(
                        json!({"auth": ADMIN, "password": "wrong"})
                            .to_string()
                            .into_bytes(),
                    ),
                    &[],
                )
                .await
            })
        })
        .collect();
    // Bearer requests do not queue behind the hashes.
    for _ in 0..5 {
        assert_eq!(bearer.get("/api/user").await.status, 200);
    }
    let mut busy = 0;
    for l in logins {
        let r = l.await.unwrap();
        match r.status {
            401 => {}
            503 => {
                busy += 1;
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
                r.assert_error(503);
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert!(
        busy > 0,
        "one thread and one queue slot cannot take 12 logins at once"
    );
    // Once the storm has passed, logins work again.
    assert_eq!(s.client().login(ADMIN, ADMIN_PASSWORD).await.status, 204);
}

/// Regression (issue 16): a password change revoked nothing. Now it revokes every other
/// session of the user, whoever makes it and through either route; the session making the
/// change survives, and so do other users' sessions and the user's API tokens.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_change_revokes_the_users_other_sessions_but_not_its_own() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (id, first) = s.user("alice", false).await;
    let (_, bystander) = s.user("bob", false).await;
    let token = first.new_token().await;
    let by_token = s.client().with_bearer(&token);
    let mut password = "pw-of-user".to_owned();
    // (who changes it, through which route)
    for (round, (by_self, put)) in [(true, false), (true, true), (false, false), (false, true)]
        .into_iter()
        .enumerate()
    {
        let mut changer = s.client();
        assert_eq!(changer.login("alice", &password).await.status, 204);
        let mut other = s.client();
        assert_eq!(other.login("alice", &password).await.status, 204);
        let changer = if by_self { changer } else { admin.clone() };
        password = format!("new password {round}");
        let r = if put {
            changer
                .put(
                    &format!("/api/users/{id}"),
                    json!({"name": "alice", "username": "alice",
                           "email": "alice@example.com", "password": password}),
                )
                .await
        } else {
            changer
                .post(
                    &format!("/api/users/{id}/password"),
                    json!({ "password": password }),
                )
                .await
        };
        assert_eq!(r.status, 204, "round {round}: {}", r.text());
        other.get("/api/user").await.assert_error(401);
        assert_eq!(changer.get("/api/user").await.status, 200, "round {round}");
        assert_eq!(bystander.get("/api/user").await.status, 200);
        assert_eq!(by_token.get("/api/user").await.status, 200);
    }
    // The very first session went in the first change.
    first.get("/api/user").await.assert_error(401);
    // An update without a password revokes nothing.
    let mut kept = s.client();
    assert_eq!(kept.login("alice", &password).await.status, 204);
    let r = admin
        .put(
            &format!("/api/users/{id}"),
            json!({"name": "Alice", "username": "alice", "email": "alice@example.com"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(kept.get("/api/user").await.status, 200);
}
