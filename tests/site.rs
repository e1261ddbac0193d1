//! The web page (issue 5) as the server delivers it: `/`, its scripts (the console's modules
//! too) and stylesheet, the page
//! for every other non-API path (as upstream serves its app), strict headers; and the CSRF
//! guard on state-changing requests: a browser page of another origin cannot use the session
//! cookie, while curl, Bearer clients and our own page keep working.

mod common;

use common::{Client, TestServer};
use serde_json::{Value, json};

#[tokio::test]
async fn the_page_and_its_files_are_served_with_a_strict_policy() {
    let server = TestServer::start().await;
    let c = server.client();

    let page = c.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("CSP");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    let html = page.text();
    assert!(
        html.contains("/app.js") && html.contains("/app.css"),
        "{html}"
    );
    // No inline code: the policy would block it.
    for tag in html.split("<script").skip(1) {
        let open = tag.split('>').next().unwrap_or_default();
        assert!(open.contains("src="), "inline script: <script{open}>");
    }
    assert!(!html.contains("<style"), "inline style block");
    for link in ["/swagger/", "/api/openapi.json", "/api/postman.json"] {
        assert!(html.contains(link), "page links {link}");
    }

    let js = c.get("/app.js").await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.text().contains("/api/user/tokens"));
    // The console's modules: the page loads the first, which imports the second.
    assert!(
        html.contains(r#"<script src="/console.js" type="module">"#),
        "{html}"
    );
    for (path, needle) in [
        ("/console.js", "from './logview.js'"),
        ("/logview.js", "export class LogView"),
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/javascript; charset=utf-8"),
            "{path}"
        );
        assert!(r.header("content-security-policy").is_some(), "{path}");
        assert!(r.text().contains(needle), "{path}");
    }
    let css = c.get("/app.css").await;
    assert_eq!(
        css.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    assert!(!css.body.is_empty());
    let icon = c.get("/favicon.ico").await;
    assert_eq!(icon.header("content-type").as_deref(), Some("image/png"));

    // Any other non-API path is the page (deep links); HEAD too, without a body.
    for path in [
        "/project/1/templates",
        "/auth/login",
        "/apis",
        "/index.html",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, page.body, "{path}");
    }
    let head = c.raw("HEAD", "/project/1", None, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length").as_deref(),
        Some(page.body.len().to_string().as_str())
    );

    // The API keeps its JSON errors; other methods outside it are not the page.
    c.get("/api").await.assert_error(404);
    c.get("/api/nope").await.assert_error(404);
    c.post("/", json!({})).await.assert_error(404);
    c.raw("DELETE", "/project/1", None, &[])
        .await
        .assert_error(404);
}

async fn token_count(c: &Client) -> usize {
    let r = c.get("/api/user/tokens").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().expect("token list").len()
}

#[tokio::test]
async fn cookie_requests_from_another_origin_are_refused() {
    let server = TestServer::start().await;
    let same = format!("http://{}", server.addr);
    let login = json!({"auth": common::ADMIN, "password": common::ADMIN_PASSWORD}).to_string();
    let anon = server.client();

    // Login CSRF: another site's page cannot log the browser in.
    let r = anon
        .raw(
            "POST",
            "/api/auth/login",
            Some(login.clone().into_bytes()),
            &[
                ("origin", "http://evil.test"),
                ("content-type", "application/json"),
            ],
        )
        .await;
    let msg = r.assert_error(403);
    assert!(msg.contains("cross-origin"), "{msg}");
    assert!(r.header("set-cookie").is_none());
    let r = anon
        .raw(
            "POST",
            "/api/auth/login",
            Some(login.into_bytes()),
            &[("origin", same.as_str()), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let c = server.admin().await;
    assert_eq!(token_count(&c).await, 0);
    for headers in [
        &[("origin", "http://evil.test")][..],
        &[("origin", "null")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[
            ("sec-fetch-site", "same-site"),
            ("origin", "http://sub.evil.test"),
        ][..],
    ] {
        let r = c.raw("POST", "/api/user/tokens", None, headers).await;
        r.assert_error(403);
    }
    assert_eq!(token_count(&c).await, 0, "a refused request wrote nothing");

    // Reads are not state changes; our own page and curl-like clients pass.
    let r = c
        .raw("GET", "/api/user", None, &[("origin", "http://evil.test")])
        .await;
    assert_eq!(r.status, 200);
    let from_page = c
        .raw(
            "POST",
            "/api/user/tokens",
            None,
            &[("origin", same.as_str())],
        )
        .await;
    assert_eq!(from_page.status, 201, "{}", from_page.text());
    let token = from_page.json()["id"].as_str().expect("token").to_owned();
    let plain = c.raw("POST", "/api/user/tokens", None, &[]).await;
    assert_eq!(plain.status, 201);
    assert_eq!(token_count(&c).await, 2);

    // Expiring a token and logging out are state changes too.
    let handle = c.get("/api/user/tokens").await.json()[0]["id"]
        .as_str()
        .expect("handle")
        .to_owned();
    let evil = [("origin", "http://evil.test")];
    c.raw("DELETE", &format!("/api/user/tokens/{handle}"), None, &evil)
        .await
        .assert_error(403);
    let tokens: Value = c.get("/api/user/tokens").await.json();
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["expired"] == false)
    );
    c.raw("POST", "/api/auth/logout", None, &evil)
        .await
        .assert_error(403);
    assert_eq!(c.get("/api/user").await.status, 200, "session survived");

    // Bearer requests cannot be forged by a page, so Origin does not matter to them.
    let bearer = server.client().with_bearer(&token);
    let r = bearer.raw("POST", "/api/user/tokens", None, &evil).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test]
async fn trusted_origins_pass_behind_a_proxy() {
    let server = TestServer::start_with(|c| {
        c.trusted_origins = vec!["https://forge.example.com".to_owned()];
    })
    .await;
    let c = server.admin().await;
    let r = c
        .raw(
            "POST",
            "/api/user/tokens",
            None,
            &[("origin", "https://forge.example.com")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    c.raw(
        "POST",
        "/api/user/tokens",
        None,
        &[("origin", "https://other.example.com")],
    )
    .await
    .assert_error(403);
}
