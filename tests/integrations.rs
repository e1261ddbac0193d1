//! Integrations (API.md §12.4) through a real server: CRUD of integrations, matchers, extract
//! values and aliases; the receiver with real signed payloads (signatures computed here with
//! the `hmac` crate, never by the code under test): a GitHub push launching a template with
//! the branch in the task environment and message, every matcher method, token / hmac / no
//! auth, a wrong signature that creates nothing, throttling, 413, unknown alias, and the
//! deliveries log. Bad input for the CRUD routes.

mod common;

use common::{Client, Resp, TestServer, at, id_of, new_project, ok_json};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "It's a Secret to Everybody";

/// Hex HMAC-SHA256 of `body` under `secret`.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A project with a bash template and a `login_password` key holding [`SECRET`]:
/// (project, template, key).
async fn project(a: &Client) -> (u64, u64, u64) {
    let p = new_project(a, "hooks").await;
    let r = a
        .post(
            &at(p, "keys"),
            json!({"name": "hook secret", "type": "login_password",
                   "login_password": {"login": "", "password": SECRET}}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let keys = ok_json(a, &at(p, "keys")).await;
    let key = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "hook secret")
        .map(id_of)
        .expect("the key");
    let none = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["type"] == "none")
        .map(id_of)
        .expect("the None key");
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "repo", "git_url": "/nonexistent/repo", "git_branch": "main",
                   "ssh_key_id": none}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repo = id_of(&ok_json(a, &at(p, "repositories")).await[0]);
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": "deploy", "app": "bash", "playbook": "run.sh", "repository_id": repo}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    (p, id_of(&r.json()), key)
}

async fn integration(a: &Client, p: u64, body: Value) -> u64 {
    let r = a.post(&at(p, "integrations"), body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    id_of(&r.json())
}

async fn alias(a: &Client, p: u64, i: u64) -> String {
    let r = a
        .post(&at(p, &format!("integrations/{i}/aliases")), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["integration_id"], i);
    let alias = v["alias"].as_str().expect("alias").to_owned();
    assert!(alias.len() >= 16, "{alias}");
    assert!(
        v["url"]
            .as_str()
            .expect("url")
            .ends_with(&format!("/api/integrations/{alias}"))
    );
    alias
}

async fn part(a: &Client, p: u64, i: u64, what: &str, body: Value) -> Value {
    let r = a
        .post(&at(p, &format!("integrations/{i}/{what}")), body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

async fn deliver(c: &Client, alias: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    c.raw(
        "POST",
        &format!("/api/integrations/{alias}"),
        Some(body.to_vec()),
        headers,
    )
    .await
}

async fn tasks(a: &Client, p: u64) -> Vec<Value> {
    ok_json(a, &at(p, "tasks"))
        .await
        .as_array()
        .expect("tasks")
        .clone()
}

async fn deliveries(a: &Client, p: u64, i: u64) -> Vec<Value> {
    ok_json(a, &at(p, &format!("integrations/{i}/deliveries")))
        .await
        .as_array()
        .expect("deliveries")
        .clone()
}

fn push_payload(branch: &str) -> Vec<u8> {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": "9f0c2d1e5b7a4c3d2e1f0a9b8c7d6e5f4a3b2c1d",
        "repository": {"full_name": "acme/site", "default_branch": "main"},
        "pusher": {"name": "octocat"},
        "head_commit": {"id": "9f0c2d1e5b7a4c3d2e1f0a9b8c7d6e5f4a3b2c1d",
                        "message": "Fix the footer"},
        "commits": [{"id": "9f0c2d1e", "message": "Fix the footer"}]
    })
    .to_string()
    .into_bytes()
}

/// The README's example: a GitHub push launches the template with the branch (`ref`) in the
/// task environment and the head commit's message as the task message; the integration id
/// is on the task; the delivery is logged with the task; an event names it.
#[tokio::test]
async fn github_push_launches_the_template_with_extracted_values() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, key) = project(&a).await;
    let i = integration(
        &a,
        p,
        json!({"name": "GitHub push", "template_id": t, "auth_method": "github",
               "auth_secret_id": key}),
    )
    .await;
    let hook = alias(&a, p, i).await;
    part(
        &a,
        p,
        i,
        "matchers",
        json!({"name": "push only", "match_type": "header",
        "method": "equals", "key": "X-GitHub-Event", "value": "push"}),
    )
    .await;
    part(
        &a,
        p,
        i,
        "values",
        json!({"name": "branch", "value_source": "body",
        "body_data_type": "json", "key": "ref", "variable": "branch",
        "variable_type": "environment"}),
    )
    .await;
    part(
        &a,
        p,
        i,
        "values",
        json!({"name": "message", "value_source": "body",
        "body_data_type": "json", "key": "head_commit.message", "variable": "message",
        "variable_type": "task"}),
    )
    .await;

    let body = push_payload("release");
    let sig = format!("sha256={}", sign(SECRET, &body));
    let c = s.client();
    let r = deliver(
        &c,
        &hook,
        &body,
        &[
            ("x-github-event", "push"),
            ("x-hub-signature-256", &sig),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());

    let list = tasks(&a, p).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let task = &list[0];
    assert_eq!(task["template_id"], t);
    assert_eq!(task["integration_id"], i);
    assert_eq!(task["user_id"], Value::Null);
    assert_eq!(task["message"], "Fix the footer");
    let env: Value =
        serde_json::from_str(task["environment"].as_str().expect("env")).expect("json");
    assert_eq!(env, json!({"branch": "refs/heads/release"}));

    let log = deliveries(&a, p, i).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["outcome"], "launched");
    assert_eq!(log[0]["task_id"], task["id"]);
    assert_eq!(log[0]["source"], "127.0.0.1");
    let events = ok_json(&a, &at(p, "events")).await;
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["object_type"] == "integration"
                && e["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("launched task"))),
        "{events}"
    );

    // Another event type is filtered out by the matcher: 204, no task, logged.
    let r = deliver(
        &c,
        &hook,
        &body,
        &[("x-github-event", "issues"), ("x-hub-signature-256", &sig)],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(tasks(&a, p).await.len(), 1);
    let log = deliveries(&a, p, i).await;
    assert_eq!(log[0]["outcome"], "filtered");
    assert_eq!(log[0]["matcher"], "push only");
}

/// A wrong, missing or malformed signature creates nothing: 401, no task, an event on the
/// integration without the body, the delivery logged as a bad signature. A body changed after
/// signing fails too (the signature covers the raw bytes).
#[tokio::test]
async fn wrong_signature_creates_nothing() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, key) = project(&a).await;
    let i = integration(
        &a,
        p,
        json!({"name": "gh", "template_id": t,
        "auth_method": "github", "auth_secret_id": key}),
    )
    .await;
    let hook = alias(&a, p, i).await;
    let body = push_payload("main");
    let c = s.client();
    let good = format!("sha256={}", sign(SECRET, &body));
    let wrong_key = format!("sha256={}", sign("guess", &body));
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    for headers in [
        vec![("x-hub-signature-256", wrong_key.as_str())],
        vec![],
        vec![("x-hub-signature-256", "sha256=zz")],
        vec![("x-hub-signature-256", good.trim_start_matches("sha256="))],
    ] {
        let r = deliver(&c, &hook, &body, &headers).await;
        r.assert_error(401);
    }
    let r = deliver(&c, &hook, &tampered, &[("x-hub-signature-256", &good)]).await;
    r.assert_error(401);
    assert!(tasks(&a, p).await.is_empty());
    let log = deliveries(&a, p, i).await;
    assert_eq!(log.len(), 5);
    assert!(
        log.iter()
            .all(|d| d["outcome"] == "bad_signature" && d["task_id"].is_null())
    );
    let events = ok_json(&a, &at(p, "events")).await;
    let failed: Vec<&Value> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["description"]
                .as_str()
                .is_some_and(|d| d.contains("failed authentication"))
        })
        .collect();
    assert_eq!(failed.len(), 5, "{events}");
    assert!(!events.to_string().contains("octocat"), "no body in events");
    // The right signature still works.
    let r = deliver(&c, &hook, &body, &[("x-hub-signature-256", &good)]).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(tasks(&a, p).await.len(), 1);
}

/// `hmac` (hex signature in a named header, no prefix), `token` (header equals the secret)
/// and no authentication.
#[tokio::test]
async fn hmac_token_and_no_auth() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, key) = project(&a).await;
    let c = s.client();
    let body = br#"{"alert":"disk full","host":"web-1"}"#;

    let hm = integration(
        &a,
        p,
        json!({"name": "hmac", "template_id": t, "auth_method": "hmac",
        "auth_header": "X-Signature", "auth_secret_id": key}),
    )
    .await;
    let hook = alias(&a, p, hm).await;
    deliver(&c, &hook, body, &[("x-signature", &sign("other", body))])
        .await
        .assert_error(401);
    let r = deliver(&c, &hook, body, &[("x-signature", &sign(SECRET, body))]).await;
    assert_eq!(r.status, 204, "{}", r.text());

    let tk = integration(
        &a,
        p,
        json!({"name": "token", "template_id": t, "auth_method": "token",
        "auth_header": "X-Token", "auth_secret_id": key}),
    )
    .await;
    let hook = alias(&a, p, tk).await;
    deliver(&c, &hook, body, &[("x-token", "nope")])
        .await
        .assert_error(401);
    deliver(&c, &hook, body, &[]).await.assert_error(401);
    let r = deliver(&c, &hook, body, &[("x-token", SECRET)]).await;
    assert_eq!(r.status, 204, "{}", r.text());

    let open = integration(
        &a,
        p,
        json!({"name": "open", "template_id": t,
        "auth_method": "none"}),
    )
    .await;
    let hook = alias(&a, p, open).await;
    // HEAD is a probe that clients and proxies send freely: it must not launch anything.
    let r = c
        .raw("HEAD", &format!("/api/integrations/{hook}"), None, &[])
        .await;
    assert_eq!(r.status, 405);
    let r = c
        .raw("GET", &format!("/api/integrations/{hook}"), None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let all = tasks(&a, p).await;
    let mut by: Vec<u64> = all
        .iter()
        .map(|t| t["integration_id"].as_u64().expect("id"))
        .collect();
    by.sort_unstable();
    assert_eq!(by, vec![hm, tk, open]);
}

/// Every matcher method on headers, JSON paths and whole string bodies; a non-JSON body
/// with a JSON matcher is filtered, not an error.
#[tokio::test]
async fn every_matcher_method() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, _) = project(&a).await;
    let c = s.client();
    struct Case {
        matcher: Value,
        body: &'static [u8],
        headers: &'static [(&'static str, &'static str)],
        launches: bool,
    }
    let m = |match_type: &str, method: &str, body_type: &str, key: &str, value: &str| {
        json!({"name": format!("{match_type} {method} {key}"), "match_type": match_type,
               "method": method, "body_data_type": body_type, "key": key, "value": value})
    };
    let json_body: &[u8] =
        br#"{"repository":{"full_name":"acme/site"},"size":3,"commits":[{"id":"abc"}]}"#;
    let cases = [
        Case {
            matcher: m("header", "equals", "", "X-Event", "push"),
            body: b"",
            headers: &[("x-event", "push")],
            launches: true,
        },
        Case {
            matcher: m("header", "equals", "", "X-Event", "push"),
            body: b"",
            headers: &[("x-event", "tag")],
            launches: false,
        },
        Case {
            matcher: m("header", "unequals", "", "X-Event", "ping"),
            body: b"",
            headers: &[("x-event", "push")],
            launches: true,
        },
        Case {
            matcher: m("header", "unequals", "", "X-Event", "ping"),
            body: b"",
            headers: &[("x-event", "ping")],
            launches: false,
        },
        Case {
            matcher: m("header", "contains", "", "User-Agent", "GitHub-Hookshot"),
            body: b"",
            headers: &[("user-agent", "GitHub-Hookshot/abc")],
            launches: true,
        },
        Case {
            matcher: m("header", "contains", "", "User-Agent", "GitHub-Hookshot"),
            body: b"",
            headers: &[("user-agent", "curl")],
            launches: false,
        },
        Case {
            matcher: m(
                "body",
                "equals",
                "json",
                "repository.full_name",
                "acme/site",
            ),
            body: json_body,
            headers: &[],
            launches: true,
        },
        Case {
            matcher: m("body", "equals", "json", "size", "3"),
            body: json_body,
            headers: &[],
            launches: true,
        },
        Case {
            matcher: m("body", "equals", "json", "commits.0.id", "abc"),
            body: json_body,
            headers: &[],
            launches: true,
        },
        Case {
            matcher: m(
                "body",
                "equals",
                "json",
                "repository.full_name",
                "acme/other",
            ),
            body: json_body,
            headers: &[],
            launches: false,
        },
        Case {
            matcher: m(
                "body",
                "unequals",
                "json",
                "repository.full_name",
                "acme/other",
            ),
            body: json_body,
            headers: &[],
            launches: true,
        },
        Case {
            matcher: m("body", "contains", "json", "repository.full_name", "acme/"),
            body: json_body,
            headers: &[],
            launches: true,
        },
        Case {
            matcher: m("body", "contains", "json", "repository.full_name", "zzz"),
            body: json_body,
            headers: &[],
            launches: false,
        },
        Case {
            matcher: m("body", "contains", "string", "", "disk full"),
            body: b"ALERT disk full on web-1",
            headers: &[],
            launches: true,
        },
        Case {
            matcher: m("body", "equals", "string", "", "exact"),
            body: b"exact",
            headers: &[],
            launches: true,
        },
        Case {
            matcher: m("body", "unequals", "string", "", "exact"),
            body: b"exact",
            headers: &[],
            launches: false,
        },
        // Not JSON: a JSON matcher filters it, whatever its method.
        Case {
            matcher: m("body", "unequals", "json", "a", "b"),
            body: b"not json {",
            headers: &[],
            launches: false,
        },
    ];
    for (n, case) in cases.iter().enumerate() {
        let i = integration(
            &a,
            p,
            json!({"name": format!("case {n}"), "template_id": t}),
        )
        .await;
        part(&a, p, i, "matchers", case.matcher.clone()).await;
        let hook = alias(&a, p, i).await;
        let r = deliver(&c, &hook, case.body, case.headers).await;
        assert_eq!(r.status, 204, "case {n}: {}", r.text());
        let log = deliveries(&a, p, i).await;
        let want = if case.launches {
            "launched"
        } else {
            "filtered"
        };
        assert_eq!(log[0]["outcome"], want, "case {n}: {}", case.matcher);
    }
}

/// Repeated failures from one address are refused unread (429 with Retry-After) until the
/// window passes, even with a right signature; the count is per address, not per alias.
#[tokio::test]
async fn repeated_failures_are_throttled() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, key) = project(&a).await;
    let i = integration(
        &a,
        p,
        json!({"name": "tk", "template_id": t, "auth_method": "token",
        "auth_header": "X-Token", "auth_secret_id": key}),
    )
    .await;
    let hook = alias(&a, p, i).await;
    let c = s.client();
    for _ in 0..10 {
        deliver(&c, &hook, b"{}", &[("x-token", "guess")])
            .await
            .assert_error(401);
    }
    let r = deliver(&c, &hook, b"{}", &[("x-token", SECRET)]).await;
    r.assert_error(429);
    assert!(r.header("retry-after").is_some());
    assert!(tasks(&a, p).await.is_empty());
    assert_eq!(
        deliveries(&a, p, i).await.len(),
        10,
        "throttled ones are not read"
    );
    s.clock.advance(61);
    let r = deliver(&c, &hook, b"{}", &[("x-token", SECRET)]).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(tasks(&a, p).await.len(), 1);
}

/// Unknown alias → 404; a body over the limit → 413 before anything is read; an alias stops
/// working once deleted; the deliveries log keeps the last 100.
#[tokio::test]
async fn bad_deliveries_and_the_log_bound() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 4096).await;
    let a = s.admin().await;
    let (p, t, _) = project(&a).await;
    let c = s.client();
    deliver(&c, "no-such-alias", b"{}", &[])
        .await
        .assert_error(404);
    let i = integration(&a, p, json!({"name": "x", "template_id": t})).await;
    part(
        &a,
        p,
        i,
        "matchers",
        json!({"name": "never", "match_type": "header",
        "method": "equals", "key": "X-Never", "value": "1"}),
    )
    .await;
    let hook = alias(&a, p, i).await;
    deliver(&c, &hook, &vec![b'a'; 5000], &[])
        .await
        .assert_error(413);
    for _ in 0..105 {
        assert_eq!(deliver(&c, &hook, b"{}", &[]).await.status, 204);
    }
    let log = deliveries(&a, p, i).await;
    assert_eq!(log.len(), 100);
    assert!(
        log.windows(2)
            .all(|w| w[0]["id"].as_u64() > w[1]["id"].as_u64()),
        "newest first"
    );

    let aliases = ok_json(&a, &at(p, &format!("integrations/{i}/aliases"))).await;
    let alias_id = id_of(&aliases[0]);
    let r = a
        .delete(&at(p, &format!("integrations/{i}/aliases/{alias_id}")))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    deliver(&c, &hook, b"{}", &[]).await.assert_error(404);
}

/// Project-wide aliases reach every `searchable` integration of the project.
#[tokio::test]
async fn project_alias_reaches_searchable_integrations() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, _) = project(&a).await;
    let yes = integration(
        &a,
        p,
        json!({"name": "yes", "template_id": t, "searchable": true}),
    )
    .await;
    integration(&a, p, json!({"name": "no", "template_id": t})).await;
    let r = a.post(&at(p, "integrations/aliases"), json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["integration_id"], Value::Null);
    let hook = v["alias"].as_str().expect("alias").to_owned();
    let listed = ok_json(&a, &at(p, "integrations/aliases")).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let r = deliver(&s.client(), &hook, b"{}", &[]).await;
    assert_eq!(r.status, 204);
    let all = tasks(&a, p).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["integration_id"], yes);
    let r = a
        .delete(&at(p, &format!("integrations/aliases/{}", id_of(&v))))
        .await;
    assert_eq!(r.status, 204);
}

/// CRUD with upstream's codes and shapes; bad input; deleting the template takes its
/// integrations (upstream's cascade), deleting the key leaves them failing closed.
#[tokio::test]
async fn crud_and_bad_input() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, key) = project(&a).await;
    let i = integration(
        &a,
        p,
        json!({"name": "first", "template_id": t, "auth_method": "token",
        "auth_header": "X-Token", "auth_secret_id": key, "task_params": {"message": "hi"}}),
    )
    .await;
    let got = ok_json(&a, &at(p, &format!("integrations/{i}"))).await;
    assert_eq!(
        got,
        json!({"id": i, "project_id": p, "name": "first", "template_id": t,
        "auth_method": "token", "auth_secret_id": key, "auth_header": "X-Token",
        "searchable": false, "task_params": {"message": "hi"}})
    );
    assert!(!got.to_string().contains(SECRET));
    let r = a
        .put(
            &at(p, &format!("integrations/{i}")),
            json!({"id": i, "name": "renamed", "template_id": t, "auth_method": "token", "auth_header": "X-Token", "auth_secret_id": key}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        ok_json(&a, &at(p, "integrations")).await[0]["name"],
        "renamed"
    );
    let refs = ok_json(&a, &at(p, &format!("integrations/{i}/refs"))).await;
    assert_eq!(refs["templates"], json!([]));

    for (body, fragment) in [
        (json!({"template_id": t}), "name"),
        (json!({"name": "x"}), "template_id"),
        (json!({"name": "x", "template_id": 999}), "template_id"),
        (
            json!({"name": "x", "template_id": t, "auth_method": "magic"}),
            "auth_method",
        ),
        (
            json!({"name": "x", "template_id": t, "auth_method": "github"}),
            "auth_secret_id",
        ),
        (
            json!({"name": "x", "template_id": t, "auth_method": "token", "auth_secret_id": key}),
            "auth_header",
        ),
        (
            json!({"name": "x", "template_id": t, "task_params": [1]}),
            "task_params",
        ),
        (
            json!({"name": "x", "template_id": t, "project_id": p + 1}),
            "Project ID",
        ),
    ] {
        let msg = a
            .post(&at(p, "integrations"), body.clone())
            .await
            .assert_error(400);
        assert!(msg.contains(fragment), "{body}: {msg}");
    }
    let msg = a
        .put(
            &at(p, &format!("integrations/{i}")),
            json!({"id": i + 1, "name": "x",
        "template_id": t}),
        )
        .await
        .assert_error(400);
    assert!(msg.contains("ID"), "{msg}");
    a.raw("POST", &at(p, "integrations"), Some(b"{".to_vec()), &[])
        .await
        .assert_error(400);
    a.get(&at(p, "integrations/999")).await.assert_error(404);
    a.get(&at(p, "integrations/abc")).await.assert_error(400);
    a.get(&at(p, "integrations/999/matchers"))
        .await
        .assert_error(404);
    a.get(&at(p, "integrations/999/deliveries"))
        .await
        .assert_error(404);

    let m = part(
        &a,
        p,
        i,
        "matchers",
        json!({"name": "m", "match_type": "body",
        "method": "contains", "body_data_type": "string", "value": "x"}),
    )
    .await;
    let mid = id_of(&m);
    assert_eq!(
        m,
        json!({"id": mid, "integration_id": i, "name": "m", "match_type": "body",
        "method": "contains", "body_data_type": "string", "key": "", "value": "x"})
    );
    for bad in [
        json!({"match_type": "cookie", "method": "equals", "key": "k"}),
        json!({"match_type": "header", "method": "matches", "key": "k"}),
        json!({"match_type": "header", "method": "equals"}),
    ] {
        a.post(&at(p, &format!("integrations/{i}/matchers")), bad)
            .await
            .assert_error(400);
    }
    let r = a
        .put(
            &at(p, &format!("integrations/{i}/matchers/{mid}")),
            json!({"id": mid,
        "name": "m2", "match_type": "header", "method": "equals", "key": "X-A", "value": "1"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        ok_json(&a, &at(p, &format!("integrations/{i}/matchers/{mid}"))).await["key"],
        "X-A"
    );
    ok_json(&a, &at(p, &format!("integrations/{i}/matchers/{mid}/refs"))).await;

    let v = part(
        &a,
        p,
        i,
        "values",
        json!({"name": "v", "value_source": "header",
        "key": "X-Branch", "variable": "BRANCH"}),
    )
    .await;
    let vid = id_of(&v);
    assert_eq!(v["variable_type"], "environment");
    for bad in [
        json!({"value_source": "header", "key": "k", "variable": "no spaces"}),
        json!({"value_source": "header", "key": "k", "variable": "user_id", "variable_type": "task"}),
        json!({"value_source": "query", "key": "k", "variable": "x"}),
    ] {
        a.post(&at(p, &format!("integrations/{i}/values")), bad)
            .await
            .assert_error(400);
    }
    assert_eq!(
        ok_json(&a, &at(p, &format!("integrations/{i}/values")))
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    ok_json(&a, &at(p, &format!("integrations/{i}/values/{vid}/refs"))).await;
    assert_eq!(
        a.delete(&at(p, &format!("integrations/{i}/values/{vid}")))
            .await
            .status,
        204
    );
    a.get(&at(p, &format!("integrations/{i}/values/{vid}")))
        .await
        .assert_error(404);

    // A guest reads, cannot write.
    let (uid, guest) = s.user("guest", false).await;
    let r = a
        .post(&at(p, "users"), json!({"user_id": uid, "role": "guest"}))
        .await;
    assert_eq!(r.status, 204);
    ok_json(&guest, &at(p, &format!("integrations/{i}"))).await;
    guest
        .post(
            &at(p, "integrations"),
            json!({"name": "g", "template_id": t}),
        )
        .await
        .assert_error(403);

    // Deleting the key: the integration stays, refusing every delivery.
    let hook = alias(&a, p, i).await;
    assert_eq!(a.delete(&at(p, &format!("keys/{key}"))).await.status, 204);
    assert_eq!(
        ok_json(&a, &at(p, &format!("integrations/{i}"))).await["auth_secret_id"],
        Value::Null
    );
    deliver(&s.client(), &hook, b"{}", &[("x-token", SECRET)])
        .await
        .assert_error(401);

    // Deleting the template takes the integration, its parts and aliases.
    assert_eq!(
        a.delete(&at(p, &format!("templates/{t}"))).await.status,
        204
    );
    a.get(&at(p, &format!("integrations/{i}")))
        .await
        .assert_error(404);
    deliver(&s.client(), &hook, b"{}", &[])
        .await
        .assert_error(404);
    assert_eq!(ok_json(&a, &at(p, "integrations")).await, json!([]));
}

/// The README's GitHub webhook example, run verbatim (its bash blocks between the webhook
/// markers) with `curl`, `jq` and `openssl` against a test server: it launches the template
/// with the branch and the message.
#[tokio::test(flavor = "multi_thread")]
async fn readme_webhook_example_works_verbatim() {
    let mut missing: Vec<String> = ["curl", "jq"]
        .into_iter()
        .filter(|t| common::tools::find(t).is_none())
        .map(str::to_owned)
        .collect();
    // `openssl` has no `--version`; `openssl version` says whether it runs.
    let openssl = std::process::Command::new("openssl")
        .arg("version")
        .output();
    if !openssl.is_ok_and(|o| o.status.success()) {
        missing.push("openssl".into());
    }
    if !common::tools::ready("the README webhook example", &missing) {
        return;
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme.find("<!-- webhook:start -->").expect("start marker");
    let end = readme.find("<!-- webhook:end -->").expect("end marker");
    let blocks: Vec<&str> = readme[start..end]
        .split("```bash\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .collect();
    assert_eq!(blocks.len(), 2, "the example's two blocks");
    let s = TestServer::start().await;
    let a = s.admin().await;
    let token = a.new_token().await;
    let (p, t, _) = project(&a).await;
    let script = format!(
        "set -euo pipefail\nTOKEN={token}\nPROJECT={p}\nTEMPLATE={t}\n{}",
        blocks.join("\n")
    )
    .replace("http://localhost:3000", &s.base())
    .replace("/tmp/forge-", &format!("{}/forge-", s.dir.path().display()));
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("run bash")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\n204\n"), "{stdout}");
    assert!(stdout.contains(r#""outcome":"launched""#), "{stdout}");
    let list = tasks(&a, p).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["message"], "Fix the footer");
    let env: Value =
        serde_json::from_str(list[0]["environment"].as_str().expect("env")).expect("json");
    assert_eq!(env, json!({"BRANCH": "refs/heads/main"}));
}

/// `forge check` finds nothing wrong in a file whose integrations went through every kind of
/// deletion (a part, an alias, an integration, a template taking its integrations, a whole
/// project with aliases and deliveries), and counts the new tables.
#[tokio::test]
async fn check_passes_after_integration_deletions() {
    use common::process::{FORGE, ServerProcess};
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("forge.redb");
    let server = ServerProcess::start(&db, &[]);
    let mut a = server.client();
    assert_eq!(
        a.login(common::ADMIN, common::ADMIN_PASSWORD).await.status,
        204
    );
    let mut launched = Vec::new();
    for round in 0..2 {
        let (p, t, _) = project(&a).await;
        let i = integration(&a, p, json!({"name": "kept", "template_id": t})).await;
        let gone = integration(&a, p, json!({"name": "gone", "template_id": t})).await;
        for id in [i, gone] {
            let m = part(
                &a,
                p,
                id,
                "matchers",
                json!({"match_type": "header",
                "method": "unequals", "key": "X-Skip", "value": "1"}),
            )
            .await;
            part(
                &a,
                p,
                id,
                "values",
                json!({"value_source": "header", "key": "X-A",
                "variable": "A"}),
            )
            .await;
            let hook = alias(&a, p, id).await;
            assert_eq!(deliver(&a, &hook, b"{}", &[]).await.status, 204);
            assert_eq!(
                deliver(&a, &hook, b"{}", &[("x-skip", "1")]).await.status,
                204
            );
            let path = at(p, &format!("integrations/{id}/matchers/{}", id_of(&m)));
            assert_eq!(a.delete(&path).await.status, 204);
        }
        let extra = alias(&a, p, i).await;
        let aliases = ok_json(&a, &at(p, &format!("integrations/{i}/aliases"))).await;
        let extra_id = aliases
            .as_array()
            .and_then(|l| l.iter().find(|x| x["alias"] == extra.as_str()))
            .map(id_of)
            .expect("alias");
        let path = at(p, &format!("integrations/{i}/aliases/{extra_id}"));
        assert_eq!(a.delete(&path).await.status, 204);
        let r = a.post(&at(p, "integrations/aliases"), json!({})).await;
        assert_eq!(r.status, 201);
        assert_eq!(
            a.delete(&at(p, &format!("integrations/{gone}")))
                .await
                .status,
            204
        );
        launched.extend(tasks(&a, p).await.into_iter().map(|t| (p, id_of(&t))));
        if round == 1 {
            // Wait for its tasks to end, then delete the project with all of it.
            for (tp, task) in launched.drain(..) {
                wait_finished(&a, tp, task).await;
            }
            assert_eq!(a.delete(&format!("/api/project/{p}")).await.status, 204);
        }
    }
    let (p, t, _) = project(&a).await;
    integration(&a, p, json!({"name": "with template", "template_id": t})).await;
    assert_eq!(
        a.delete(&at(p, &format!("templates/{t}"))).await.status,
        204
    );
    for (tp, task) in launched {
        wait_finished(&a, tp, task).await;
    }
    drop(server.stop());
    let out = std::process::Command::new(FORGE)
        .args(["check", "--db"])
        .arg(&db)
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .env_remove("FORGE_DB")
        .output()
        .expect("run forge check");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{report}");
    for table in [
        "integrations",
        "integration_aliases_by_hash",
        "integration_deliveries",
    ] {
        assert!(report.contains(table), "{table} counted: {report}");
    }
}

async fn wait_finished(a: &Client, p: u64, task: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = ok_json(a, &at(p, &format!("tasks/{task}"))).await["status"].clone();
        if ["success", "error", "stopped"].contains(&status.as_str().unwrap_or_default()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {task} still {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A project backup carries the integrations in upstream's shape (template and key by name,
/// matchers, extract values, aliases; project-wide aliases beside them), and a restore
/// recreates them: aliases still free keep their text (webhooks pointing at them keep working),
/// taken ones get a new random one; a bad reference names the integration and writes nothing.
#[tokio::test]
async fn backup_and_restore_carry_integrations() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (p, t, key) = project(&a).await;
    let i = integration(
        &a,
        p,
        json!({"name": "GitHub push", "template_id": t,
        "auth_method": "github", "auth_secret_id": key, "task_params": {"message": "hook"}}),
    )
    .await;
    part(
        &a,
        p,
        i,
        "matchers",
        json!({"name": "push", "match_type": "header",
        "method": "equals", "key": "X-GitHub-Event", "value": "push"}),
    )
    .await;
    part(
        &a,
        p,
        i,
        "values",
        json!({"name": "branch", "value_source": "body", "key": "ref",
        "variable": "BRANCH"}),
    )
    .await;
    let hook = alias(&a, p, i).await;
    let r = a.post(&at(p, "integrations/aliases"), json!({})).await;
    let project_alias = r.json()["alias"].as_str().expect("alias").to_owned();

    let doc = ok_json(&a, &at(p, "backup")).await;
    let entry = &doc["integrations"][0];
    assert_eq!(entry["name"], "GitHub push");
    assert_eq!(entry["template"], "deploy");
    assert_eq!(entry["auth_secret"], "hook secret");
    assert_eq!(entry["auth_method"], "github");
    assert_eq!(entry["task_params"], json!({"message": "hook"}));
    assert_eq!(entry["aliases"], json!([hook]));
    assert_eq!(entry["matchers"][0]["key"], "X-GitHub-Event");
    assert_eq!(entry["extract_values"][0]["variable"], "BRANCH");
    assert_eq!(doc["integration_aliases"], json!([project_alias]));
    assert!(!doc.to_string().contains(SECRET));

    // Restored beside the original: the aliases are taken, so new ones are made.
    let r = a.post("/api/projects/restore", doc.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q = id_of(&r.json());
    let restored = ok_json(&a, &at(q, "integrations")).await;
    let ri = id_of(&restored[0]);
    let templates = ok_json(&a, &at(q, "templates")).await;
    assert_eq!(restored[0]["template_id"], templates[0]["id"]);
    assert!(restored[0]["auth_secret_id"].is_u64());
    let matchers = ok_json(&a, &at(q, &format!("integrations/{ri}/matchers"))).await;
    assert_eq!(matchers[0]["value"], "push");
    let values = ok_json(&a, &at(q, &format!("integrations/{ri}/values"))).await;
    assert_eq!(values[0]["key"], "ref");
    let aliases = ok_json(&a, &at(q, &format!("integrations/{ri}/aliases"))).await;
    assert_eq!(aliases.as_array().map(Vec::len), Some(1));
    assert_ne!(aliases[0]["alias"], hook.as_str());
    let project_aliases = ok_json(&a, &at(q, "integrations/aliases")).await;
    assert_ne!(project_aliases[0]["alias"], project_alias.as_str());

    // Once the original is gone, a restore keeps the aliases' text.
    assert_eq!(a.delete(&format!("/api/project/{p}")).await.status, 204);
    let r = a.post("/api/projects/restore", doc.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q = id_of(&r.json());
    let ri = id_of(&ok_json(&a, &at(q, "integrations")).await[0]);
    let aliases = ok_json(&a, &at(q, &format!("integrations/{ri}/aliases"))).await;
    assert_eq!(aliases[0]["alias"], hook.as_str());
    // No auth without the key's secret (a restore has none): refused, not launched.
    let body = b"{}";
    let sig = format!("sha256={}", sign(SECRET, body));
    deliver(&s.client(), &hook, body, &[("x-hub-signature-256", &sig)])
        .await
        .assert_error(401);

    let projects_before = ok_json(&a, "/api/projects").await;
    let mut bad = doc.clone();
    bad["meta"]["name"] = json!("bad");
    bad["integrations"][0]["template"] = json!("missing");
    let msg = a.post("/api/projects/restore", bad).await.assert_error(400);
    assert!(
        msg.contains("integrations[0]") && msg.contains("missing"),
        "{msg}"
    );
    let mut bad = doc;
    bad["meta"]["name"] = json!("bad");
    bad["integrations"][0]["matchers"][0]["method"] = json!("like");
    let msg = a.post("/api/projects/restore", bad).await.assert_error(400);
    assert!(
        msg.contains("integrations[0]") && msg.contains("method"),
        "{msg}"
    );
    assert_eq!(ok_json(&a, "/api/projects").await, projects_before);
}
