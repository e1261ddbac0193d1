//! API tokens through a real server.

mod common;

use common::TestServer;

fn is_token_shape(t: &str) -> bool {
    t.len() == 44
        && t.ends_with('=')
        && t[..43]
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

#[tokio::test(flavor = "multi_thread")]
async fn create_list_use_and_expire() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let r = admin.raw("POST", "/api/user/tokens", None, &[]).await;
    assert_eq!(r.status, 201);
    let created = r.json();
    let token = created["id"].as_str().unwrap().to_owned();
    assert!(is_token_shape(&token), "{token}");
    assert_eq!(created["created"], "2025-05-21T02:35:12Z");
    assert_eq!(created["expired"], false);
    assert_eq!(created["user_id"], 1);

    let bearer = s.client().with_bearer(&token);
    assert_eq!(bearer.get("/api/user").await.json()["username"], "admin");

    // The list shows a stable handle, not the token; the handle is not a credential.
    let list = bearer.get("/api/user/tokens").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    let listed = list.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    let handle = listed[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(handle, token);
    assert!(!token.contains(&handle));
    assert_eq!(listed[0]["expired"], false);
    assert_eq!(
        bearer.get("/api/user/tokens").await.json()[0]["id"],
        handle.as_str()
    );
    s.client()
        .with_bearer(&handle)
        .get("/api/user")
        .await
        .assert_error(401);

    // Expire by handle: still listed, expired, and the Bearer gets 401.
    assert_eq!(
        admin
            .delete(&format!("/api/user/tokens/{handle}"))
            .await
            .status,
        204
    );
    bearer.get("/api/user").await.assert_error(401);
    let list = admin.get("/api/user/tokens").await.json();
    assert_eq!(list[0]["expired"], true);
    // Expiring again is idempotent.
    assert_eq!(
        admin
            .delete(&format!("/api/user/tokens/{handle}"))
            .await
            .status,
        204
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_accepts_the_full_token_even_percent_encoded() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let t1 = admin.new_token().await;
    let t2 = admin.new_token().await;
    let bearer = s.client().with_bearer(&t1);
    // The product docs' call: the token deletes itself.
    assert_eq!(
        bearer
            .delete(&format!("/api/user/tokens/{t1}"))
            .await
            .status,
        204
    );
    bearer.get("/api/user").await.assert_error(401);
    let encoded = t2.replace('=', "%3D");
    assert_eq!(
        admin
            .delete(&format!("/api/user/tokens/{encoded}"))
            .await
            .status,
        204
    );
    s.client()
        .with_bearer(&t2)
        .get("/api/user")
        .await
        .assert_error(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_private_to_their_owner() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (_, bob) = s.user("bob", false).await;
    let admins = admin.new_token().await;
    let bobs = bob.new_token().await;
    // Bob sees only his own token and cannot expire the admin's, by token or handle.
    let list = bob.get("/api/user/tokens").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["user_id"], 2);
    bob.delete(&format!("/api/user/tokens/{admins}"))
        .await
        .assert_error(404);
    let admin_handle = admin.get("/api/user/tokens").await.json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.delete(&format!("/api/user/tokens/{admin_handle}"))
        .await
        .assert_error(404);
    assert_eq!(
        s.client()
            .with_bearer(&admins)
            .get("/api/user")
            .await
            .status,
        200
    );
    assert_eq!(
        s.client().with_bearer(&bobs).get("/api/user").await.json()["username"],
        "bob"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_token_id_and_missing_auth() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    admin
        .delete("/api/user/tokens/0123456789abcdef")
        .await
        .assert_error(404);
    admin
        .delete(&format!("/api/user/tokens/{}", "a".repeat(43) + "="))
        .await
        .assert_error(404);
    admin.delete("/api/user/tokens/%zz").await.assert_error(400);
    let anon = s.client();
    anon.get("/api/user/tokens").await.assert_error(401);
    anon.raw("POST", "/api/user/tokens", None, &[])
        .await
        .assert_error(401);
    anon.delete("/api/user/tokens/abc").await.assert_error(401);
    // A body on create is ignored, even a non-JSON one.
    let r = admin
        .raw("POST", "/api/user/tokens", Some(b"whatever".to_vec()), &[])
        .await;
    assert_eq!(r.status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_tokens_never_reach_the_database_file() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(admin.new_token().await);
    }
    let session = admin.cookie.clone().unwrap();
    let session_id = session.strip_prefix("semaphore=").unwrap().to_owned();
    let dir = s.stop().await;
    let bytes = std::fs::read(dir.path().join("forge.redb")).unwrap();
    assert!(bytes.len() > 1000);
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for t in &tokens {
        assert!(
            !contains(t.as_bytes()),
            "raw token {t} found in the db file"
        );
        // Nor the token's base64 payload in another case or without padding.
        assert!(!contains(t.to_uppercase().as_bytes()));
        assert!(!contains(&t.as_bytes()[..20]));
    }
    assert!(
        !contains(session_id.as_bytes()),
        "raw session id found in the db file"
    );
    assert!(
        !contains(b"changeme"),
        "plain password found in the db file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_kills_their_tokens_and_sessions() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let (bob_id, bob) = s.user("bob", false).await;
    let token = bob.new_token().await;
    assert_eq!(
        admin.delete(&format!("/api/users/{bob_id}")).await.status,
        204
    );
    bob.get("/api/user").await.assert_error(401);
    s.client()
        .with_bearer(&token)
        .get("/api/user")
        .await
        .assert_error(401);
}
