//! Shared test setup: a Forge server on 127.0.0.1:0 with a fresh temp database and a manual
//! clock, and a small real HTTP/1 client (hyper's) with a cookie jar.
#![allow(dead_code)]

pub mod files;
pub mod git;
pub mod process;
pub mod ssh;
pub mod terraform;
pub mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use forge::clock::{ClockHandle, ManualClock};
use forge::config::{Config, Secret};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Login of the administrator every test server starts with.
pub const ADMIN: &str = "admin";
/// Its password.
pub const ADMIN_PASSWORD: &str = "changeme";
/// The manual clock's starting time (2025-05-21T02:35:12Z).
pub const T0: i64 = 1_747_794_912;

/// Folders test servers allow local-path repositories under (`--local-repo-roots`): the temp
/// dir the tests' repositories are made in, and the made-up paths that are only ever saved.
#[must_use]
pub fn local_repo_roots() -> Vec<PathBuf> {
    vec![std::env::temp_dir(), "/srv".into(), "/nonexistent".into()]
}

/// `/api/project/{p}/{rest}`.
pub fn at(p: u64, rest: &str) -> String {
    format!("/api/project/{p}/{rest}")
}

/// The integer `id` of a JSON object (panics with the object when there is none).
pub fn id_of(v: &Value) -> u64 {
    v["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer id in {v}"))
}

/// Creates a project named `name` (asserting 201); returns its id.
pub async fn new_project(a: &Client, name: &str) -> u64 {
    let r = a
        .post("/api/projects", serde_json::json!({ "name": name }))
        .await;
    assert_eq!(r.status, 201, "create project: {}", r.text());
    id_of(&r.json())
}

/// Adds a repository named "local" at the path `dir` to project `p`, with the project's "None"
/// key; returns its id.
pub async fn local_repository(a: &Client, p: u64, dir: &std::path::Path) -> u64 {
    let none = id_of(&ok_json(a, &at(p, "keys")).await[0]);
    let r = a
        .post(
            &at(p, "repositories"),
            serde_json::json!({"name": "local", "project_id": p, "ssh_key_id": none,
                               "git_branch": "", "git_url": dir.display().to_string()}),
        )
        .await;
    assert_eq!(r.status, 204, "add repository: {}", r.text());
    let list = ok_json(a, &at(p, "repositories")).await;
    list.as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == "local"))
        .map_or_else(|| panic!("no repository \"local\" in {list}"), id_of)
}

/// Adds an integration named `name` without authentication that launches `template` in
/// project `p`, with one alias; returns the integration's id and the alias.
pub async fn open_webhook(a: &Client, p: u64, name: &str, template: u64) -> (u64, String) {
    let r = a
        .post(
            &at(p, "integrations"),
            serde_json::json!({"name": name, "template_id": template, "auth_method": "none"}),
        )
        .await;
    assert_eq!(r.status, 201, "create integration: {}", r.text());
    let hook = id_of(&r.json());
    let r = a
        .post(
            &at(p, &format!("integrations/{hook}/aliases")),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, 201, "create alias: {}", r.text());
    let alias = r.json()["alias"].as_str().expect("alias").to_owned();
    (hook, alias)
}

/// Adds a bash template running `script` of repository `repo` (asserting 201); `extra` adds or
/// overrides fields of the body. Returns its id.
pub async fn bash_template(
    a: &Client,
    p: u64,
    name: &str,
    repo: u64,
    script: &str,
    extra: Value,
) -> u64 {
    let mut body = serde_json::json!({"name": name, "project_id": p, "app": "bash",
                                      "playbook": script, "repository_id": repo});
    for (k, v) in extra.as_object().expect("extra is an object") {
        body[k] = v.clone();
    }
    let r = a.post(&at(p, "templates"), body).await;
    assert_eq!(r.status, 201, "POST templates: {}", r.text());
    id_of(&r.json())
}

/// The id of the first item named `name` in the list at `path` (asserting 200; panics with
/// the list when there is none).
pub async fn id_by_name(c: &Client, path: &str, name: &str) -> u64 {
    let items = ok_json(c, path).await;
    let hit = items
        .as_array()
        .expect("a list")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {path}: {items}"));
    id_of(hit)
}

/// GET `path`, asserting 200, as JSON.
pub async fn ok_json(c: &Client, path: &str) -> Value {
    let r = c.get(path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// A running in-process server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its clock; tests move it instead of sleeping.
    pub clock: Arc<ManualClock>,
    /// The temp dir holding the database (deleted on drop).
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// A server with test defaults: cheap scrypt, the admin account, a manual clock.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose config `tweak` adjusts after the test defaults are set.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, tweak).await
    }

    /// A server on the database in `dir` (reused across restarts).
    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let mut config = Config::with_db(dir.path().join("forge.redb"));
        config.scrypt_log_n = 4;
        config.admin = Some(ADMIN.into());
        config.admin_password = Some(Secret(ADMIN_PASSWORD.into()));
        config.admin_email = Some("admin@example.com".into());
        config.admin_name = Some("Admin".into());
        config.clock = ClockHandle(clock.clone());
        // Templates may use ansible whether or not it is installed here (no test runs it
        // without checking that it is).
        config.extra_apps = vec!["ansible".into()];
        config.local_repo_roots = local_repo_roots();
        // Tasks run in the sandbox through the built binary (this process is the test's).
        config.sandbox_exe = Some(process::FORGE.into());
        tweak(&mut config);
        let app = forge::App::start(config).await.expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(forge::serve(listener, app, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            clock,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has released the database; returns the data dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.take().map(|tx| tx.send(()));
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        // The App (and its redb handle) is dropped once every connection task has ended.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("forge.redb")
    }

    /// An anonymous client.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// A client logged in as the administrator (session cookie).
    pub async fn admin(&self) -> Client {
        let mut c = self.client();
        let r = c.login(ADMIN, ADMIN_PASSWORD).await;
        assert_eq!(r.status, 204, "admin login: {}", r.text());
        c
    }

    /// Creates a user through the API (as admin) and returns a client logged in as them.
    pub async fn user(&self, username: &str, admin: bool) -> (u64, Client) {
        let a = self.admin().await;
        let r = a
            .post(
                "/api/users",
                serde_json::json!({"name": username, "username": username,
                    "email": format!("{username}@example.com"), "password": "pw-of-user",
                    "admin": admin}),
            )
            .await;
        assert_eq!(r.status, 201, "create user: {}", r.text());
        let id = r.json()["id"].as_u64().expect("id");
        let mut c = self.client();
        assert_eq!(c.login(username, "pw-of-user").await.status, 204);
        (id, c)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.take().map(|tx| tx.send(()));
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts a JSON error body `{"error": "..."}` with `status`; returns the message.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json")
        );
        let msg = self.json()["error"].as_str().map(str::to_owned);
        msg.unwrap_or_else(|| panic!("no error message in {}", self.text()))
    }
}

/// A minimal HTTP/1.1 client: one connection per request, a one-cookie jar, optional Bearer.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    /// `semaphore=<value>` once logged in.
    pub cookie: Option<String>,
    /// A Bearer token to send.
    pub bearer: Option<String>,
}

impl Client {
    /// A client without credentials.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            cookie: None,
            bearer: None,
        }
    }

    /// A client that sends `Authorization: Bearer <token>`.
    pub fn with_bearer(&self, token: &str) -> Self {
        Self {
            addr: self.addr,
            cookie: None,
            bearer: Some(token.to_owned()),
        }
    }

    /// Sends a request with raw body bytes and extra headers.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.try_raw(method, path, body, headers)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Client::raw`], but a failed connection or request is an `Err` (the server may
    /// be gone on purpose).
    pub async fn try_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        if let Some(t) = &self.bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("response: {e}"))?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, None, &[]).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Resp {
        self.raw("DELETE", path, None, &[]).await
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.raw(
            "POST",
            path,
            Some(body.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
        .await
    }

    /// PUT with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.raw(
            "PUT",
            path,
            Some(body.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
        .await
    }

    /// Logs in; on success keeps the session cookie.
    pub async fn login(&mut self, auth: &str, password: &str) -> Resp {
        let r = self
            .post(
                "/api/auth/login",
                serde_json::json!({"auth": auth, "password": password}),
            )
            .await;
        if let Some(set) = r.header("set-cookie") {
            let pair = set.split(';').next().unwrap_or_default().to_owned();
            self.cookie = Some(pair);
        }
        r
    }

    /// Creates an API token (with whatever credentials this client has); returns it.
    pub async fn new_token(&self) -> String {
        let r = self.raw("POST", "/api/user/tokens", None, &[]).await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().expect("token id").to_owned()
    }
}
