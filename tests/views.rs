//! Views (API.md §6.6, §12.2) and server options (§9, §12.9) through a real server: CRUD,
//! order by position, `POST /views/positions`, the templates of a view, a template's `view_id`
//! kept inside its project and cleared when its view goes, events; options for admins only,
//! durable and apart from Forge's own settings. Bad input for every endpoint.

mod common;

use common::{Client, Resp, TestServer, at, id_of, new_project, ok_json};
use serde_json::{Value, json};

async fn add_view(a: &Client, p: u64, title: &str, position: i64) -> Value {
    let r = a
        .post(
            &at(p, "views"),
            json!({"title": title, "project_id": p, "position": position}),
        )
        .await;
    assert_eq!(r.status, 201, "create view: {}", r.text());
    r.json()
}

fn titles(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| v["title"].as_str().expect("title").to_owned())
        .collect()
}

/// A repository (over the project's `None` key) for templates to use.
async fn repo(a: &Client, p: u64) -> u64 {
    let keys = ok_json(a, &at(p, "keys")).await;
    let key = id_of(&keys[0]);
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "repo", "git_url": "/srv/repo", "git_branch": "main", "ssh_key_id": key}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    id_of(&ok_json(a, &at(p, "repositories")).await[0])
}

fn template_body(name: &str, repo: u64, view: Option<u64>) -> Value {
    json!({"name": name, "app": "bash", "playbook": "run.sh", "repository_id": repo,
           "view_id": view})
}

async fn add_template(a: &Client, p: u64, name: &str, repo: u64, view: Option<u64>) -> u64 {
    let r = a
        .post(&at(p, "templates"), template_body(name, repo, view))
        .await;
    assert_eq!(r.status, 201, "create template {name}: {}", r.text());
    id_of(&r.json())
}

async fn send_raw(c: &Client, method: &str, path: &str, body: &str) -> Resp {
    c.raw(
        method,
        path,
        Some(body.as_bytes().to_vec()),
        &[("content-type", "application/json")],
    )
    .await
}

#[tokio::test]
async fn views_crud_in_position_order_with_events() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "views").await;
    let empty = ok_json(&a, &at(p, "views")).await;
    assert_eq!(empty, json!([]));

    let third = add_view(&a, p, "Third", 7).await;
    assert_eq!(
        third,
        json!({"id": id_of(&third), "project_id": p, "title": "Third", "position": 7})
    );
    let first = add_view(&a, p, "First", -2).await;
    let second = add_view(&a, p, "  Second ", 3).await;
    assert_eq!(second["title"], "Second", "titles are trimmed");
    // No position: 0.
    let r = a.post(&at(p, "views"), json!({"title": "Zero"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["position"], 0);
    let zero = id_of(&r.json());

    let list = ok_json(&a, &at(p, "views")).await;
    assert_eq!(titles(&list), ["First", "Zero", "Second", "Third"]);
    // Any `sort` sorts by position; `desc` reverses.
    let list = ok_json(&a, &format!("{}?sort=title&order=desc", at(p, "views"))).await;
    assert_eq!(titles(&list), ["Third", "Second", "Zero", "First"]);

    let url = at(p, &format!("views/{}", id_of(&first)));
    assert_eq!(ok_json(&a, &url).await, first);
    let r = a
        .put(
            &url,
            json!({"id": id_of(&first), "project_id": p, "title": "Renamed", "position": 9}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let got = ok_json(&a, &url).await;
    assert_eq!(
        (got["title"].clone(), got["position"].clone()),
        (json!("Renamed"), json!(9))
    );
    // Without a position the view keeps its place.
    let r = a
        .put(&url, json!({"id": id_of(&first), "title": "Again"}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(ok_json(&a, &url).await["position"], 9);

    let r = a.delete(&at(p, &format!("views/{zero}"))).await;
    assert_eq!(r.status, 204, "{}", r.text());
    a.get(&at(p, &format!("views/{zero}")))
        .await
        .assert_error(404);
    a.delete(&at(p, &format!("views/{zero}")))
        .await
        .assert_error(404);
    assert_eq!(
        titles(&ok_json(&a, &at(p, "views")).await),
        ["Second", "Third", "Again"]
    );

    let events = ok_json(&a, &at(p, "events")).await;
    let views: Vec<String> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["object_type"] == "view")
        .map(|e| e["description"].as_str().expect("description").to_owned())
        .collect();
    for want in [
        "View Third created",
        "View Renamed updated",
        "View Again updated",
        "View Zero deleted",
    ] {
        assert!(views.iter().any(|d| d == want), "{want:?} not in {views:?}");
    }
}

#[tokio::test]
async fn views_refuse_bad_input() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 4096).await;
    let a = s.admin().await;
    let p = new_project(&a, "mine").await;
    let other = new_project(&a, "other").await;
    let v = id_of(&add_view(&a, p, "Tab", 1).await);
    let foreign = id_of(&add_view(&a, other, "Elsewhere", 1).await);
    let list = at(p, "views");
    let one = at(p, &format!("views/{v}"));

    let post = |label, body: String, want| ("POST", label, list.clone(), body, want);
    let put = |label, body: String, want| ("PUT", label, one.clone(), body, want);
    let wrong_id = "View ID in URL and in body must be the same";
    let wrong_project = "Project ID in body and URL must be the same";
    let empty = "title can not be empty";
    let cases = [
        post("empty title", json!({"title": "  "}).to_string(), empty),
        post("no title", "{}".into(), empty),
        post(
            "other project",
            json!({"title": "x", "project_id": other}).to_string(),
            wrong_project,
        ),
        post("title type", r#"{"title": 5}"#.into(), "title"),
        post(
            "position type",
            r#"{"title": "x", "position": "1"}"#.into(),
            "position",
        ),
        post(
            "fractional position",
            r#"{"title": "x", "position": 1.5}"#.into(),
            "position",
        ),
        post("malformed", r#"{"title": "#.into(), "invalid JSON"),
        post("empty body", String::new(), "empty body"),
        post("array", "[]".into(), "JSON object"),
        put(
            "id mismatch",
            json!({"id": v + 100, "title": "x"}).to_string(),
            wrong_id,
        ),
        put("no id", json!({"title": "x"}).to_string(), wrong_id),
        put(
            "other project",
            json!({"id": v, "title": "x", "project_id": other}).to_string(),
            wrong_project,
        ),
        put(
            "empty title",
            json!({"id": v, "title": ""}).to_string(),
            empty,
        ),
        put("malformed", "{".into(), "invalid JSON"),
        put("id type", r#"{"id": "1", "title": "x"}"#.into(), "id"),
    ];
    for (method, label, path, body, want) in cases {
        let msg = send_raw(&a, method, &path, &body).await.assert_error(400);
        assert!(
            msg.contains(want),
            "{method} {label}: {msg:?} lacks {want:?}"
        );
    }
    // Nothing changed.
    assert_eq!(titles(&ok_json(&a, &list).await), ["Tab"]);
    assert_eq!(
        titles(&ok_json(&a, &at(other, "views")).await),
        ["Elsewhere"]
    );

    // Unknown ids, another project's view, ids that are no ids.
    for path in [
        at(p, "views/999"),
        at(p, &format!("views/{foreign}")),
        at(p, "views/999/templates"),
        at(p, &format!("views/{foreign}/templates")),
    ] {
        a.get(&path).await.assert_error(404);
    }
    let body = |id: u64| json!({"id": id, "title": "x"});
    a.put(&at(p, "views/999"), body(999))
        .await
        .assert_error(404);
    a.put(&at(p, &format!("views/{foreign}")), body(foreign))
        .await
        .assert_error(404);
    a.delete(&at(p, &format!("views/{foreign}")))
        .await
        .assert_error(404);
    for path in [
        at(p, "views/abc"),
        at(p, "views/0"),
        at(p, "views/-1/templates"),
    ] {
        let msg = a.get(&path).await.assert_error(400);
        assert_eq!(msg, "Invalid view ID");
    }
    assert_eq!(
        titles(&ok_json(&a, &at(other, "views")).await),
        ["Elsewhere"]
    );

    // 401 without credentials, 404 for non-members, 403 for a guest writing.
    let anon = s.client();
    anon.get(&list).await.assert_error(401);
    anon.post(&list, json!({"title": "x"}))
        .await
        .assert_error(401);
    anon.post(&at(p, "views/positions"), json!({}))
        .await
        .assert_error(401);
    let (_, outsider) = s.user("outsider", false).await;
    outsider.get(&list).await.assert_error(404);
    outsider.get(&one).await.assert_error(404);
    let (guest_id, guest) = s.user("guest", false).await;
    let r = a
        .post(
            &at(p, "users"),
            json!({"user_id": guest_id, "role": "guest"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        ok_json(&guest, &list).await.as_array().map(Vec::len),
        Some(1)
    );
    guest
        .post(&list, json!({"title": "x"}))
        .await
        .assert_error(403);
    guest.put(&one, body(v)).await.assert_error(403);
    guest.delete(&one).await.assert_error(403);
    guest
        .post(&at(p, "views/positions"), json!({v.to_string(): 5}))
        .await
        .assert_error(403);

    // 413 for an oversized body.
    let big = format!(r#"{{"title": "{}"}}"#, "x".repeat(5000));
    send_raw(&a, "POST", &list, &big).await.assert_error(413);
    send_raw(&a, "PUT", &one, &big).await.assert_error(413);
    send_raw(&a, "POST", &at(p, "views/positions"), &big)
        .await
        .assert_error(413);
    assert_eq!(ok_json(&a, &one).await["title"], "Tab");
}

#[tokio::test]
async fn positions_move_views_all_or_nothing() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "positions").await;
    let other = new_project(&a, "other").await;
    let x = id_of(&add_view(&a, p, "X", 0).await);
    let y = id_of(&add_view(&a, p, "Y", 1).await);
    let z = id_of(&add_view(&a, p, "Z", 2).await);
    let foreign = id_of(&add_view(&a, other, "F", 0).await);
    let url = at(p, "views/positions");

    let r = a
        .post(&url, json!({x.to_string(): 5, z.to_string(): -1}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(titles(&ok_json(&a, &at(p, "views")).await), ["Z", "Y", "X"]);
    let moved: Vec<Value> = ok_json(&a, &at(p, "events"))
        .await
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["object_type"] == "view" && e["description"] == "View X moved")
        .cloned()
        .collect();
    assert_eq!(moved.len(), 1, "one event for X");
    assert_eq!(moved[0]["object_id"], x);

    // Nothing to move (`null` too, as upstream).
    for nothing in ["{}", "null"] {
        let r = send_raw(&a, "POST", &url, nothing).await;
        assert_eq!(r.status, 204, "{nothing}: {}", r.text());
    }

    let before = ok_json(&a, &at(p, "views")).await;
    let cases: Vec<(&str, String, String)> = vec![
        (
            "unknown id",
            json!({y.to_string(): 9, "999": 1}).to_string(),
            "999".into(),
        ),
        (
            "another project's view",
            json!({y.to_string(): 9, foreign.to_string(): 1}).to_string(),
            foreign.to_string(),
        ),
        (
            "not an id",
            json!({y.to_string(): 9, "abc": 1}).to_string(),
            "\"abc\"".into(),
        ),
        ("zero id", json!({"0": 1}).to_string(), "\"0\"".into()),
        (
            "string position",
            json!({y.to_string(): "9"}).to_string(),
            y.to_string(),
        ),
        (
            "fractional position",
            json!({y.to_string(): 1.5}).to_string(),
            y.to_string(),
        ),
        (
            "null position",
            json!({y.to_string(): null}).to_string(),
            y.to_string(),
        ),
        ("an array", "[1, 2]".into(), "JSON object".into()),
        ("malformed", "{\"1\": ".into(), "invalid JSON".into()),
        ("empty body", String::new(), "empty body".into()),
    ];
    for (label, body, want) in cases {
        let msg = send_raw(&a, "POST", &url, &body).await.assert_error(400);
        assert!(msg.contains(&want), "{label}: {msg:?} lacks {want:?}");
    }
    assert_eq!(ok_json(&a, &at(p, "views")).await, before, "nothing moved");
    assert_eq!(
        ok_json(&a, &at(other, &format!("views/{foreign}"))).await["position"],
        0
    );
    // Another project's positions route does not reach this project's views.
    let r = a
        .post(&at(other, "views/positions"), json!({x.to_string(): 1}))
        .await;
    assert!(r.assert_error(400).contains(&x.to_string()));
    s.client().post(&url, json!({})).await.assert_error(401);
    let (_, outsider) = s.user("outsider", false).await;
    outsider.post(&url, json!({})).await.assert_error(404);
}

#[tokio::test]
async fn templates_belong_to_views_of_their_project() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "templates").await;
    let other = new_project(&a, "other").await;
    let repo_id = repo(&a, p).await;
    let v = id_of(&add_view(&a, p, "Deploys", 0).await);
    let w = id_of(&add_view(&a, p, "Builds", 1).await);
    let foreign = id_of(&add_view(&a, other, "Elsewhere", 0).await);

    // A template's view must be a view of the project, on create and on update.
    for bad in [foreign, 999] {
        let msg = a
            .post(&at(p, "templates"), template_body("t", repo_id, Some(bad)))
            .await
            .assert_error(400);
        assert!(msg.contains("view_id"), "{msg}");
    }
    assert_eq!(ok_json(&a, &at(p, "templates")).await, json!([]));
    let beta = add_template(&a, p, "beta", repo_id, Some(v)).await;
    let alpha = add_template(&a, p, "alpha", repo_id, Some(v)).await;
    let gamma = add_template(&a, p, "gamma", repo_id, Some(w)).await;
    add_template(&a, p, "none", repo_id, None).await;
    let mut update = template_body("alpha", repo_id, Some(foreign));
    update["id"] = json!(alpha);
    let msg = a
        .put(&at(p, &format!("templates/{alpha}")), update)
        .await
        .assert_error(400);
    assert!(msg.contains("view_id"), "{msg}");
    assert_eq!(
        ok_json(&a, &at(p, &format!("templates/{alpha}"))).await["view_id"],
        v
    );

    // The view's templates: exactly the list's elements with that view, sorted as the list.
    let all = ok_json(&a, &at(p, "templates")).await;
    let of_v: Vec<Value> = all
        .as_array()
        .expect("list")
        .iter()
        .filter(|t| t["view_id"] == v)
        .cloned()
        .collect();
    let url = at(p, &format!("views/{v}/templates"));
    assert_eq!(ok_json(&a, &url).await, Value::Array(of_v));
    let names = |list: Value| -> Vec<String> {
        list.as_array()
            .expect("list")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(names(ok_json(&a, &url).await), ["alpha", "beta"]);
    assert_eq!(
        names(ok_json(&a, &format!("{url}?sort=name&order=desc")).await),
        ["beta", "alpha"]
    );
    assert_eq!(
        names(ok_json(&a, &at(p, &format!("views/{w}/templates"))).await),
        ["gamma"]
    );

    // Deleting the view takes it off its templates (and only its own), not the templates.
    let deleted = a.delete(&at(p, &format!("views/{v}"))).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    for t in [alpha, beta] {
        let got = ok_json(&a, &at(p, &format!("templates/{t}"))).await;
        assert_eq!(got["view_id"], Value::Null, "template {t}");
    }
    assert_eq!(
        ok_json(&a, &at(p, &format!("templates/{gamma}"))).await["view_id"],
        w
    );
    a.get(&url).await.assert_error(404);
    let mut moved = template_body("alpha", repo_id, Some(v));
    moved["id"] = json!(alpha);
    a.put(&at(p, &format!("templates/{alpha}")), moved)
        .await
        .assert_error(400);
}

#[tokio::test]
async fn options_for_admins_durable_and_apart_from_settings() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 4096).await;
    let a = s.admin().await;
    assert_eq!(ok_json(&a, "/api/options").await, json!({}));
    let r = a
        .post(
            "/api/options",
            json!({"key": "apps.ansible.path", "value": "/usr/bin/x"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"key": "apps.ansible.path", "value": "/usr/bin/x"})
    );
    // A key named like one of Forge's own settings is only an option.
    let r = a
        .post(
            "/api/options",
            json!({"key": "secret_key_check", "value": "garbage"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a.post("/api/options", json!({"key": "no_value"})).await;
    assert_eq!(r.json(), json!({"key": "no_value", "value": ""}));
    let r = a
        .post(
            "/api/options",
            json!({"key": "apps.ansible.path", "value": "/opt/y"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let want =
        json!({"apps.ansible.path": "/opt/y", "no_value": "", "secret_key_check": "garbage"});
    assert_eq!(ok_json(&a, "/api/options").await, want);

    let bad: [(&str, &str); 11] = [
        (r#"{"key": "a b", "value": "x"}"#, "key must match"),
        (r#"{"key": "a/b", "value": "x"}"#, "key must match"),
        (r#"{"key": "", "value": "x"}"#, "key must match"),
        (r#"{"value": "x"}"#, "key must match"),
        (r#"{"key": "ключ", "value": "x"}"#, "key must match"),
        (r#"{"key": 5, "value": "x"}"#, "key"),
        (r#"{"key": "a", "value": 5}"#, "value"),
        (r#"{"key": "a", "value": {"x": 1}}"#, "value"),
        (r#"{"key": "a", "#, "invalid JSON"),
        ("", "empty body"),
        ("[]", "JSON object"),
    ];
    for (body, want) in bad {
        let msg = send_raw(&a, "POST", "/api/options", body)
            .await
            .assert_error(400);
        assert!(msg.contains(want), "{body}: {msg:?} lacks {want:?}");
    }
    let long = json!({"key": "k".repeat(256), "value": "x"});
    a.post("/api/options", long).await.assert_error(400);
    let big = json!({"key": "k", "value": "x".repeat(5000)}).to_string();
    send_raw(&a, "POST", "/api/options", &big)
        .await
        .assert_error(413);

    s.client().get("/api/options").await.assert_error(401);
    s.client()
        .post("/api/options", json!({"key": "k", "value": "v"}))
        .await
        .assert_error(401);
    let (_, user) = s.user("user", false).await;
    user.get("/api/options").await.assert_error(403);
    user.post("/api/options", json!({"key": "k", "value": "v"}))
        .await
        .assert_error(403);
    assert_eq!(
        ok_json(&a, "/api/options").await,
        want,
        "nothing else stored"
    );

    // Acknowledged options survive a restart, and the server key still checks out.
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    let a = s.admin().await;
    assert_eq!(ok_json(&a, "/api/options").await, want);
}
