//! The request pipeline through a real server: routing, methods, HEAD, limits, timeouts, and
//! a table-driven pass over every route in the route table.

mod common;

use std::time::Duration;

use common::TestServer;
use forge::http::auth::Need;
use forge::http::router::routes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A concrete path for a route pattern (`{id}` → `1`).
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| if seg.starts_with('{') { "1" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_is_plain_text_and_needs_no_auth() {
    let s = TestServer::start().await;
    let r = s.client().get("/api/ping").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "pong");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let head = s.client().raw("HEAD", "/api/ping", None, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length").as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread")]
async fn info_reports_version_and_web_host() {
    let s = TestServer::start_with(|c| c.web_host = "https://forge.example.com".into()).await;
    s.client().get("/api/info").await.assert_error(401);
    let r = s.admin().await.get("/api/info").await;
    assert_eq!(r.status, 200);
    let info = r.json();
    let version = info["version"].as_str().unwrap();
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
    assert_eq!(version.split('-').count(), 3, "{version}");
    assert_eq!(info["web_host"], "https://forge.example.com");
    assert_eq!(info["use_remote_runner"], false);
    assert!(info["ansible"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_wrong_methods_and_trailing_slashes() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    a.get("/api/nothing/here").await.assert_error(404);
    s.client().get("/api/nothing").await.assert_error(404);
    let r = a.raw("PATCH", "/api/users/1", None, &[]).await;
    r.assert_error(405);
    assert_eq!(r.header("allow").as_deref(), Some("DELETE, GET, HEAD, PUT"));
    a.raw("DELETE", "/api/ping", None, &[])
        .await
        .assert_error(405);
    assert_eq!(a.get("/api/user/").await.status, 200);
    assert_eq!(a.get("/api/users/1/").await.status, 200);
    assert_eq!(a.get("/api/ping/").await.text(), "pong");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_refuses_anonymous_callers_unless_public() {
    let s = TestServer::start().await;
    let anon = s.client();
    for route in routes() {
        let path = concrete(route.path);
        let r = anon
            .raw(route.method.as_str(), &path, Some(b"{}".to_vec()), &[])
            .await;
        match route.need {
            // Public routes answer on their own terms (login with `{}` is a failed login).
            Need::Anonymous => assert!(r.status < 500, "{} {path}: {}", route.method, r.status),
            Need::User | Need::Admin | Need::Metrics | Need::Project(_) | Need::SecondFactor => {
                r.assert_error(401);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_refuses_oversized_bodies_with_413() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 1024).await;
    let a = s.admin().await;
    // Project routes check access before reading the body: give them a project 1.
    assert_eq!(
        a.post("/api/projects", serde_json::json!({"name": "p"}))
            .await
            .status,
        201
    );
    let big = vec![b' '; 1025];
    for route in routes() {
        let path = concrete(route.path);
        let r = a
            .raw(route.method.as_str(), &path, Some(big.clone()), &[])
            .await;
        let msg = r.assert_error(413);
        assert!(msg.contains("1024"), "{msg}");
    }
    // At the limit is fine.
    let login = r#"{"auth":"admin","password":"changeme"}"#;
    let at_limit = format!("{login}{}", " ".repeat(1024 - login.len()));
    assert_eq!(at_limit.len(), 1024);
    assert_eq!(
        a.raw("POST", "/api/auth/login", Some(at_limit.into_bytes()), &[])
            .await
            .status,
        204
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_chunked_body_without_length_gets_413() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 1024).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut req =
        b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b' '; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&req).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_works_wherever_get_does() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    assert_eq!(
        a.post("/api/projects", serde_json::json!({"name": "p"}))
            .await
            .status,
        201
    );
    for route in routes().iter().filter(|r| r.method == hyper::Method::GET) {
        let path = concrete(route.path);
        let head = a.raw("HEAD", &path, None, &[]).await;
        if route.acts {
            // A GET that acts (the webhook receiver) is never reached by a HEAD probe.
            assert_eq!(head.status, 405, "HEAD {path}");
            continue;
        }
        let get = a.get(&path).await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has a body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off() {
    let s = TestServer::start_with(|c| c.header_timeout_secs = 1).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /api/ping HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must close the connection on its own.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection still open after the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_bodies_get_408() {
    let s = TestServer::start_with(|c| c.body_timeout_secs = 1).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_json_and_responses_are_not_cached() {
    let s = TestServer::start().await;
    let r = s.client().get("/api/user").await;
    r.assert_error(401);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

/// The raw head of the answer to `request`, as the bytes on the wire.
async fn raw_head(s: &TestServer, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "connection closed before the head ended");
        bytes.extend_from_slice(&buf[..n]);
    }
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    String::from_utf8(bytes[..end].to_vec()).expect("ASCII head")
}

/// Regression: hyper writes `set-cookie`; a generated client that copies headers into a plain
/// dict reads `headers["Set-Cookie"]` as Go writes it, and found no session.
#[tokio::test(flavor = "multi_thread")]
async fn header_names_are_title_case_on_the_wire() {
    let s = TestServer::start().await;
    let body = format!(
        r#"{{"auth":"{}","password":"{}"}}"#,
        common::ADMIN,
        common::ADMIN_PASSWORD
    );
    let request = format!(
        "POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let head = raw_head(&s, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    assert!(head.contains("\r\nSet-Cookie: semaphore="), "{head}");
    let ping = raw_head(
        &s,
        b"GET /api/ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    for line in [&head, &ping].iter().flat_map(|h| h.lines().skip(1)) {
        let name = line.split(':').next().unwrap();
        let title = name
            .split('-')
            .all(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
        assert!(
            title,
            "header {name:?} is not Title-Case in:\n{head}\n{ping}"
        );
    }
    assert!(ping.contains("\r\nContent-Type: text/plain"), "{ping}");
}
