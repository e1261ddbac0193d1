//! User administration through a real server, with upstream's permission rules.

mod common;

use common::TestServer;
use serde_json::json;

fn body(username: &str) -> serde_json::Value {
    json!({"name": format!("{username} name"), "username": username,
           "email": format!("{username}@example.com"), "password": "pw", "alert": true})
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_creates_reads_updates_and_deletes_a_user() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let r = a.post("/api/users", body("carol")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let carol = r.json();
    assert_eq!(carol["id"], 2);
    assert_eq!(carol["username"], "carol");
    assert_eq!(carol["alert"], true);
    assert_eq!(carol["admin"], false);
    assert_eq!(carol["external"], false);
    assert_eq!(carol["created"], "2025-05-21T02:35:12Z");
    assert!(carol.get("password").is_none());
    assert!(carol.get("can_create_project").is_none());

    assert_eq!(a.get("/api/users/2").await.json(), carol);
    let all = a.get("/api/users").await.json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[1], carol);

    let r = a
        .put(
            "/api/users/2",
            json!({"name": "Carol C", "username": "carolc",
             "email": "cc@example.com", "alert": false, "admin": true}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let updated = a.get("/api/users/2").await.json();
    assert_eq!(updated["username"], "carolc");
    assert_eq!(updated["admin"], true);
    // The password was untouched by a PUT without one.
    assert_eq!(s.client().login("carolc", "pw").await.status, 204);

    assert_eq!(a.delete("/api/users/2").await.status, 204);
    a.get("/api/users/2").await.assert_error(404);
    a.delete("/api/users/2").await.assert_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_admins_see_a_reduced_list_and_only_themselves() {
    let s = TestServer::start().await;
    let (bob_id, bob) = s.user("bob", false).await;
    let list = bob.get("/api/users").await.json();
    assert_eq!(
        list,
        json!([{"id": 1, "username": "admin", "name": "Admin"},
                            {"id": bob_id, "username": "bob", "name": "bob"}])
    );
    assert_eq!(
        bob.get(&format!("/api/users/{bob_id}")).await.json()["username"],
        "bob"
    );
    assert_eq!(
        bob.get("/api/user").await.json()["can_create_project"],
        false
    );
    // Upstream answers 401 for these authorization failures.
    bob.get("/api/users/1").await.assert_error(401);
    bob.post("/api/users", body("eve")).await.assert_error(401);
    bob.put(
        "/api/users/1",
        json!({"name": "x", "username": "admin", "email": "a@x"}),
    )
    .await
    .assert_error(401);
    bob.delete("/api/users/1").await.assert_error(401);
    bob.post("/api/users/1/password", json!({"password": "x"}))
        .await
        .assert_error(401);
    // Missing users are 404 for admins; for others the permission check comes first.
    s.admin().await.get("/api/users/99").await.assert_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn self_service_rules() {
    let s = TestServer::start().await;
    let (bob_id, bob) = s.user("bob", false).await;
    let path = format!("/api/users/{bob_id}");
    // Editing oneself works when `admin` is echoed unchanged...
    let r = bob
        .put(
            &path,
            json!({"name": "Bobby", "username": "bob", "email": "bob@example.com", "admin": false}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    // ...and self-promotion is refused with 401, as upstream does.
    bob.put(
        &path,
        json!({"name": "Bobby", "username": "bob", "email": "bob@example.com", "admin": true}),
    )
    .await
    .assert_error(401);
    // Changing one's own password.
    let r = bob
        .post(
            &format!("{path}/password"),
            json!({"password": "new-secret"}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(s.client().login("bob", "new-secret").await.status, 204);
    assert_eq!(s.client().login("bob", "pw-of-user").await.status, 401);
    // Deleting oneself is allowed.
    assert_eq!(bob.delete(&path).await.status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_and_uniqueness() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    for (field, value) in [
        ("name", ""),
        ("username", ""),
        ("email", ""),
        ("password", ""),
        ("email", "no-at-sign"),
        ("username", "has space"),
    ] {
        let mut b = body("dave");
        b[field] = json!(value);
        let msg = a.post("/api/users", b).await.assert_error(400);
        assert!(msg.contains(field), "{field}: {msg}");
    }
    assert_eq!(a.post("/api/users", body("dave")).await.status, 201);
    // Taken username or email, in any case, also across the two fields.
    let mut b = body("DAVE");
    b["email"] = json!("other@example.com");
    assert!(
        a.post("/api/users", b)
            .await
            .assert_error(400)
            .contains("username")
    );
    let mut b = body("erin");
    b["email"] = json!("Dave@Example.com");
    assert!(
        a.post("/api/users", b)
            .await
            .assert_error(400)
            .contains("email")
    );
    let mut b = body("erin");
    b["username"] = json!("dave@example.com");
    a.post("/api/users", b).await.assert_error(400);
    // Updates follow the same rules.
    a.put(
        "/api/users/2",
        json!({"name": "", "username": "dave", "email": "dave@example.com"}),
    )
    .await
    .assert_error(400);
    a.put(
        "/api/users/2",
        json!({"name": "D", "username": "admin", "email": "dave@example.com"}),
    )
    .await
    .assert_error(400);
    // Wrong types name the field.
    let msg = a
        .post("/api/users", json!({"username": "x", "admin": "yes"}))
        .await
        .assert_error(400);
    assert!(msg.contains("admin"), "{msg}");
    let msg = a
        .put("/api/users/2", json!({"name": 1}))
        .await
        .assert_error(400);
    assert!(msg.contains("name"), "{msg}");
    a.raw("POST", "/api/users", Some(b"{".to_vec()), &[])
        .await
        .assert_error(400);
    a.raw("PUT", "/api/users/2", Some(b"[]".to_vec()), &[])
        .await
        .assert_error(400);
    a.raw("POST", "/api/users/2/password", Some(b"".to_vec()), &[])
        .await
        .assert_error(400);
    a.post("/api/users/2/password", json!({"password": ""}))
        .await
        .assert_error(400);
    a.post("/api/users/99/password", json!({"password": "x"}))
        .await
        .assert_error(404);
    a.put("/api/users/99", body("zed")).await.assert_error(404);
    // Bad ids.
    for bad in ["abc", "0", "-1", "99999999999999999999999"] {
        let msg = a.get(&format!("/api/users/{bad}")).await.assert_error(400);
        assert_eq!(msg, "Invalid user ID");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_admin_cannot_be_deleted_or_demoted() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    a.delete("/api/users/1").await.assert_error(400);
    let (bob_id, _) = s.user("bob", false).await;
    // An admin cannot demote themselves through PUT (401, upstream) ...
    a.put(
        "/api/users/1",
        json!({"name": "Admin", "username": "admin",
        "email": "admin@example.com", "admin": false}),
    )
    .await
    .assert_error(401);
    // ... and with a second admin the first can be removed, but then not the second.
    let r = a
        .put(
            &format!("/api/users/{bob_id}"),
            json!({"name": "bob", "username": "bob",
            "email": "bob@example.com", "admin": true}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let mut bob = s.client();
    assert_eq!(bob.login("bob", "pw-of-user").await.status, 204);
    assert_eq!(bob.delete("/api/users/1").await.status, 204);
    bob.delete(&format!("/api/users/{bob_id}"))
        .await
        .assert_error(400);
    let r = bob
        .put(
            &format!("/api/users/{bob_id}"),
            json!({"name": "bob", "username": "bob",
            "email": "bob@example.com", "admin": true}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(bob.get("/api/user").await.json()["admin"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn external_users_have_no_password() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let r = a
        .post(
            "/api/users",
            json!({"name": "Ext", "username": "ext", "email": "ext@example.com",
              "external": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_u64().unwrap();
    assert_eq!(r.json()["external"], true);
    s.client().login("ext", "").await.assert_error(401);
    a.post(
        &format!("/api/users/{id}/password"),
        json!({"password": "x"}),
    )
    .await
    .assert_error(400);
    a.put(
        &format!("/api/users/{id}"),
        json!({"name": "Ext", "username": "renamed",
        "email": "ext@example.com"}),
    )
    .await
    .assert_error(400);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_routes_need_authentication() {
    let s = TestServer::start().await;
    let anon = s.client();
    anon.get("/api/users").await.assert_error(401);
    anon.post("/api/users", body("x")).await.assert_error(401);
    anon.get("/api/users/1").await.assert_error(401);
    anon.put("/api/users/1", body("x")).await.assert_error(401);
    anon.delete("/api/users/1").await.assert_error(401);
    anon.post("/api/users/1/password", json!({"password": "x"}))
        .await
        .assert_error(401);
    anon.get("/api/user").await.assert_error(401);
}
