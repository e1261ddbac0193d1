//! Task alerts (issue 14, "Notifications") through a real server: loopback receivers shaped
//! like Slack, Teams, Telegram and a generic webhook record what they get, and a small SMTP
//! sink written here takes the email. Covers the message contents, the HMAC signature
//! (checked with the `hmac` crate, not with Forge's code), the project's `alert` switch and
//! `alert_chat`, `suppress_success_alerts`, `POST .../notifications/test` (answers and bad
//! input), HTTPS with `--alert-ca-file`, a receiver that never answers (the next task still
//! runs), the give-up bound and its event, `kill -9` between the finish and the send, email
//! over implicit TLS with AUTH, and start-up refusing misconfigured channels.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::ServerProcess;
use common::{ADMIN, ADMIN_PASSWORD, Client, TestServer, at, id_of, ok_json};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How a receiver answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// 200 with Telegram's `{"ok": true}` (Slack and webhooks ignore the body).
    Ok,
    /// 500.
    Fail,
}

/// A loopback HTTP(S) receiver recording every request.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: Answer) -> Self {
        Self::start_on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            answer,
            None,
        )
    }

    fn start_on(
        listener: TcpListener,
        answer: Answer,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&got);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = Arc::clone(&record);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let path = req.uri().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            record.lock().unwrap().push(Got {
                                path,
                                headers,
                                body,
                            });
                            let resp = match answer {
                                Answer::Ok => Response::new(Full::new(Bytes::from_static(
                                    br#"{"ok":true,"result":{}}"#,
                                ))),
                                Answer::Fail => {
                                    let mut r =
                                        Response::new(Full::new(Bytes::from_static(b"boom")));
                                    *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                                    r
                                }
                            };
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = conn.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = conn.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self { addr, got, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (panics after 20 s).
    async fn wait_for(&self, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} request(s), got {}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One message an SMTP sink took.
#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// A minimal SMTP server (RFC 5321's plain dialogue, no TLS) for loopback tests.
struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&mails);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                    let mut mail = Mail {
                        from: String::new(),
                        to: Vec::new(),
                        data: String::new(),
                    };
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO")
                        {
                            b"250-sink\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("MAIL FROM:") {
                            mail.from = line[10..].trim().to_owned();
                            b"250 ok\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            mail.to.push(line[8..].trim().to_owned());
                            b"250 ok\r\n"
                        } else if upper == "DATA" {
                            let _ = write.write_all(b"354 go on\r\n").await;
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                mail.data.push_str(&l);
                                mail.data.push('\n');
                            }
                            store.lock().unwrap().push(mail.clone());
                            mail.to.clear();
                            mail.data.clear();
                            b"250 queued\r\n"
                        } else if upper == "QUIT" {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        if write.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, mails, task }
    }

    async fn wait_for(&self, n: usize) -> Vec<Mail> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mails = self.mails.lock().unwrap().clone();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} mail(s): {mails:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A project with a succeeding and a failing template.
struct Project {
    id: u64,
    ok: u64,
    fail: u64,
    _repo: tempfile::TempDir,
}

async fn project(c: &Client, alert: bool, chat: Option<&str>, suppress: bool) -> Project {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("ok.sh"),
        "#!/usr/bin/env bash\necho fine\n",
    )
    .unwrap();
    std::fs::write(repo.path().join("fail.sh"), "#!/usr/bin/env bash\nexit 3\n").unwrap();
    let r = c
        .post(
            "/api/projects",
            json!({"name": "Demo", "alert": alert, "alert_chat": chat}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let none = id_of(&ok_json(c, &at(p, "keys")).await[0]);
    let r = c
        .post(
            &at(p, "repositories"),
            json!({"name": "local", "project_id": p, "ssh_key_id": none, "git_branch": "",
                   "git_url": repo.path().display().to_string()}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repo_id = id_of(&ok_json(c, &at(p, "repositories")).await[0]);
    let mut ids = Vec::new();
    for (name, script) in [("deploy", "ok.sh"), ("broken", "fail.sh")] {
        let r = c
            .post(
                &at(p, "templates"),
                json!({"name": name, "project_id": p, "app": "bash", "playbook": script,
                       "repository_id": repo_id, "suppress_success_alerts": suppress}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(id_of(&r.json()));
    }
    Project {
        id: p,
        ok: ids[0],
        fail: ids[1],
        _repo: repo,
    }
}

/// Runs `template` and waits for it to finish; returns the task.
async fn run(c: &Client, p: u64, template: u64) -> Value {
    let r = c
        .post(&at(p, "tasks"), json!({"template_id": template}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = id_of(&r.json());
    wait_finished(c, p, id, 30).await
}

async fn wait_finished(c: &Client, p: u64, id: u64, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = ok_json(c, &at(p, &format!("tasks/{id}"))).await;
        if matches!(t["status"].as_str(), Some("success" | "error" | "stopped")) {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} did not finish: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a user with `alert` on and makes them a guest of `p`; returns their email.
async fn alert_member(c: &Client, p: u64, login: &str) -> String {
    let email = format!("{login}@example.com");
    let r = c
        .post(
            "/api/users",
            json!({"name": login, "username": login, "email": email, "password": "pw-of-user",
                   "alert": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c
        .post(
            &at(p, "users"),
            json!({"user_id": id_of(&r.json()), "role": "guest"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    email
}

/// HMAC-SHA256 of `body` under `key` as `sha256=<hex>`, computed here with the `hmac` crate.
fn expected_signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

const WEB_HOST: &str = "https://forge.example";
const HOOK_KEY: &str = "hook-signing-key";
const BOT_TOKEN: &str = "123456:bot-token";

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_task_alerts_slack_teams_telegram_the_webhook_and_members_by_email() {
    let slack = Receiver::start(Answer::Ok).await;
    let teams = Receiver::start(Answer::Ok).await;
    let telegram = Receiver::start(Answer::Ok).await;
    let hook = Receiver::start(Answer::Ok).await;
    let smtp = SmtpSink::start().await;
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), format!("{HOOK_KEY}\n")).unwrap();
    let server = TestServer::start_with(|c| {
        c.web_host = WEB_HOST.into();
        let a = &mut c.alerts;
        a.alert_slack_url = Some(forge::config::Secret(slack.url("/services/T/B/X")));
        a.alert_teams_url = Some(forge::config::Secret(teams.url("/webhook/teams")));
        a.alert_telegram_token = Some(forge::config::Secret(BOT_TOKEN.into()));
        a.alert_telegram_api = telegram.url("");
        a.alert_telegram_chat = Some("-1000".into());
        a.alert_webhook_url = Some(hook.url("/hook"));
        a.alert_webhook_secret_file = Some(key_file.path().to_owned());
        a.alert_smtp_host = Some("127.0.0.1".into());
        a.alert_smtp_port = Some(smtp.addr.port());
        a.alert_smtp_security = "none".into();
        a.alert_email_from = "forge@example.com".into();
    })
    .await;
    let admin = server.admin().await;
    let p = project(&admin, true, Some("-42"), false).await;
    let email = alert_member(&admin, p.id, "watcher").await;
    // A member with alert off gets nothing.
    let r = admin
        .post(
            "/api/users",
            json!({"name": "quiet", "username": "quiet", "email": "quiet@example.com",
                   "password": "pw-of-user", "alert": false}),
        )
        .await;
    let quiet = id_of(&r.json());
    let r = admin
        .post(
            &at(p.id, "users"),
            json!({"user_id": quiet, "role": "guest"}),
        )
        .await;
    assert_eq!(r.status, 204);

    let task = run(&admin, p.id, p.fail).await;
    assert_eq!(task["status"], "error");
    let t = id_of(&task);
    let link = format!("{WEB_HOST}/project/{}/templates/{}?t={t}", p.id, p.fail);

    let got = slack.wait_for(1).await;
    assert_eq!(got[0].path, "/services/T/B/X");
    let text = got[0].json()["text"].as_str().unwrap().to_owned();
    for part in [
        format!("task #{t} broken failed"),
        "Status: error".into(),
        "Started by: user admin".into(),
        "Duration: 0 s".into(),
        link.clone(),
    ] {
        assert!(text.contains(&part), "{part:?} not in {text:?}");
    }

    let got = teams.wait_for(1).await;
    let card = got[0].json();
    assert_eq!(card["@type"], "MessageCard");
    assert!(
        card["title"]
            .as_str()
            .unwrap()
            .contains(&format!("task #{t}"))
    );

    let got = telegram.wait_for(1).await;
    assert_eq!(got[0].path, format!("/bot{BOT_TOKEN}/sendMessage"));
    let msg = got[0].json();
    assert_eq!(
        msg["chat_id"], "-42",
        "the project's alert_chat overrides the server's"
    );
    assert!(msg["text"].as_str().unwrap().contains("Status: error"));

    let got = hook.wait_for(1).await;
    let doc = got[0].json();
    assert_eq!(doc["event"], "task_finished");
    assert_eq!(doc["task_id"], t);
    assert_eq!(doc["template"], "broken");
    assert_eq!(doc["status"], "error");
    assert_eq!(doc["started_by"], "user admin");
    assert_eq!(doc["url"], link.as_str());
    assert_eq!(
        got[0].headers["x-forge-signature-256"],
        expected_signature(HOOK_KEY.as_bytes(), &got[0].body)
    );

    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0].to, [format!("<{email}>")]);
    assert_eq!(mails[0].from, "<forge@example.com>");
    assert!(
        mails[0].data.contains(&format!("task #{t} broken failed")),
        "{}",
        mails[0].data
    );

    // Delivered once each: nothing more comes, and the outbox is empty.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for r in [&slack, &teams, &telegram, &hook] {
        assert_eq!(r.got().len(), 1);
    }
    assert_eq!(smtp.mails.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_off_and_suppressed_successes_send_nothing_but_failures_still_go() {
    let slack = Receiver::start(Answer::Ok).await;
    let server = TestServer::start_with(|c| {
        c.alerts.alert_slack_url = Some(forge::config::Secret(slack.url("/s")));
    })
    .await;
    let admin = server.admin().await;

    // Project alert off: its failure sends nothing. Then alerts on (same project, templates
    // suppressing successes): the success sends nothing, the failure does. Messages of one
    // channel go in order, so the one that arrives shows that nothing came before it.
    let p = project(&admin, false, None, true).await;
    let quiet = run(&admin, p.id, p.fail).await;
    let r = admin
        .put(
            &format!("/api/project/{}", p.id),
            json!({"id": p.id, "name": "Demo", "alert": true, "alert_chat": null}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let suppressed = run(&admin, p.id, p.ok).await;
    assert_eq!(suppressed["status"], "success");
    let loud = run(&admin, p.id, p.fail).await;

    let got = slack.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got_all = slack.got();
    assert_eq!(got_all.len(), 1, "{got_all:#?}");
    let text = got[0].json()["text"].as_str().unwrap().to_owned();
    assert!(text.contains(&format!("task #{} ", id_of(&loud))), "{text}");
    assert!(!text.contains(&format!("task #{} ", id_of(&quiet))));
    assert!(!text.contains(&format!("task #{} ", id_of(&suppressed))));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_route_answers_per_channel_and_refuses_bad_callers() {
    let slack = Receiver::start(Answer::Ok).await;
    let hook = Receiver::start(Answer::Fail).await;
    let telegram = Receiver::start(Answer::Ok).await;
    let smtp = SmtpSink::start().await;
    let server = TestServer::start_with(|c| {
        let a = &mut c.alerts;
        a.alert_slack_url = Some(forge::config::Secret(slack.url("/s")));
        a.alert_webhook_url = Some(hook.url("/h"));
        a.alert_telegram_token = Some(forge::config::Secret(BOT_TOKEN.into()));
        a.alert_telegram_api = telegram.url("");
        a.alert_smtp_host = Some("127.0.0.1".into());
        a.alert_smtp_port = Some(smtp.addr.port());
        a.alert_smtp_security = "none".into();
    })
    .await;
    let admin = server.admin().await;
    let p = project(&admin, false, None, false).await;
    let path = at(p.id, "notifications/test");

    // No chat anywhere and no member with alert on: those two say why.
    let r = admin.post(&path, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["slack"], json!({"ok": true}));
    assert_eq!(v["webhook"]["ok"], false);
    assert!(
        v["webhook"]["error"].as_str().unwrap().contains("HTTP 500"),
        "{v}"
    );
    assert_eq!(v["telegram"]["ok"], false);
    assert!(
        v["telegram"]["error"].as_str().unwrap().contains("no chat"),
        "{v}"
    );
    assert!(
        v["email"]["error"]
            .as_str()
            .unwrap()
            .contains("no recipient"),
        "{v}"
    );
    assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
    assert!(
        slack.got()[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("test alert")
    );
    assert_eq!(hook.got()[0].headers["x-forge-event"], "test");
    assert!(
        !hook.got()[0].headers.contains_key("x-forge-signature-256"),
        "no key, no signature"
    );

    // With a chat and a member who wants alerts, every channel but the failing hook is ok.
    let r = admin
        .put(
            &format!("/api/project/{}", p.id),
            json!({"id": p.id, "name": "Demo", "alert": false, "alert_chat": "77"}),
        )
        .await;
    assert_eq!(r.status, 204);
    let email = alert_member(&admin, p.id, "reader").await;
    let v = admin.post(&path, json!({})).await.json();
    assert_eq!(v["telegram"], json!({"ok": true}), "{v}");
    assert_eq!(v["email"], json!({"ok": true}), "{v}");
    assert_eq!(telegram.got()[0].json()["chat_id"], "77");
    assert_eq!(smtp.wait_for(1).await[0].to, [format!("<{email}>")]);
    // An empty body is fine too.
    let r = admin.raw("POST", &path, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Bad input and bad callers.
    server
        .client()
        .post(&path, json!({}))
        .await
        .assert_error(401);
    let r = admin.post(&at(999, "notifications/test"), json!({})).await;
    r.assert_error(404);
    let r = admin.post(&path, json!([1])).await;
    r.assert_error(400);
    let r = admin.post(&at(p.id, "notifications/nope"), json!({})).await;
    assert_eq!(r.status, 404);
    for role in ["guest", "task_runner"] {
        let (uid, c) = server.user(&format!("u-{role}"), false).await;
        let r = admin
            .post(&at(p.id, "users"), json!({"user_id": uid, "role": role}))
            .await;
        assert_eq!(r.status, 204);
        c.post(&path, json!({})).await.assert_error(403);
    }
    let (uid, c) = server.user("u-manager", false).await;
    let r = admin
        .post(
            &at(p.id, "users"),
            json!({"user_id": uid, "role": "manager"}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(c.post(&path, json!({})).await.status, 200);
}

/// A CA and a certificate for 127.0.0.1 it signed: (CA PEM, server TLS acceptor).
fn loopback_tls() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test(flavor = "multi_thread")]
async fn https_endpoints_are_trusted_through_the_alert_ca_file_only() {
    let (ca_pem, acceptor) = loopback_tls();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = Receiver::start_on(listener, Answer::Ok, Some(acceptor));
    let url = format!("https://127.0.0.1:{}/s", tls.addr.port());
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca_pem).unwrap();

    // Without the CA file the certificate is unknown.
    let server = TestServer::start_with(|c| {
        c.alerts.alert_slack_url = Some(forge::config::Secret(url.clone()));
    })
    .await;
    let admin = server.admin().await;
    let p = project(&admin, false, None, false).await;
    let v = admin
        .post(&at(p.id, "notifications/test"), json!({}))
        .await
        .json();
    assert_eq!(v["slack"]["ok"], false, "{v}");
    assert!(
        v["slack"]["error"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{v}"
    );
    assert!(tls.got().is_empty());
    drop(admin);
    let dir = server.stop().await;

    let server = TestServer::start_in(dir, |c| {
        c.alerts.alert_slack_url = Some(forge::config::Secret(url.clone()));
        c.alerts.alert_ca_file = Some(ca_file.path().to_owned());
    })
    .await;
    let admin = server.admin().await;
    let v = admin
        .post(&at(p.id, "notifications/test"), json!({}))
        .await
        .json();
    assert_eq!(v["slack"], json!({"ok": true}), "{v}");
    assert_eq!(tls.got().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_never_answers_delays_neither_the_next_task_nor_other_channels() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    let black_hole = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let hook = Receiver::start(Answer::Ok).await;
    let server = TestServer::start_with(|c| {
        c.alerts.alert_slack_url = Some(forge::config::Secret(format!("http://{addr}/s")));
        c.alerts.alert_webhook_url = Some(hook.url("/h"));
        c.alerts.alert_timeout_secs = 120;
        c.max_parallel_tasks = 1;
    })
    .await;
    let admin = server.admin().await;
    let p = project(&admin, true, None, false).await;
    let first = run(&admin, p.id, p.fail).await;
    // The alert's request is stuck in the black hole.
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the alert never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two more tasks start and finish (one slot) while that request waits unanswered:
    // well inside the 120 s the send may take.
    let second = run(&admin, p.id, p.ok).await;
    let third = run(&admin, p.id, p.fail).await;
    assert_eq!(second["status"], "success");
    assert_eq!(third["status"], "error");
    assert!(id_of(&third) > id_of(&first));
    // Channels drain independently: the webhook got all three while Slack's first send hangs.
    let got = hook.wait_for(3).await;
    let ids: Vec<_> = got.iter().map(|g| g.json()["task_id"].clone()).collect();
    assert_eq!(
        ids,
        [
            first["id"].clone(),
            second["id"].clone(),
            third["id"].clone()
        ]
    );
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "Slack's one send is still waiting"
    );
    black_hole.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_undelivered_past_the_bound_is_dropped_with_an_event() {
    // A port nobody listens on: every attempt is refused.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let server = TestServer::start_with(|c| {
        c.alerts.alert_slack_url = Some(forge::config::Secret(format!("http://{addr}/s")));
        c.alerts.alert_give_up_secs = 60;
    })
    .await;
    let admin = server.admin().await;
    let p = project(&admin, true, None, false).await;
    let t = id_of(&run(&admin, p.id, p.fail).await);
    // Past the bound on the server's clock: the next attempt gives up instead.
    server.clock.advance(61);
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let events = ok_json(&admin, &at(p.id, "events")).await;
        if let Some(e) = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["description"].as_str().unwrap_or("").contains("gave up"))
        {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no give-up event: {events}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = event["description"].as_str().unwrap();
    assert!(text.contains(&format!("task {t}")), "{text}");
    assert!(text.contains("slack"), "{text}");
    assert!(text.contains("within 60 s"), "{text}");
    assert_eq!(event["object_id"], t);
    // Once: the row is gone, so no second event follows.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events = ok_json(&admin, &at(p.id, "events")).await;
    let n = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["description"].as_str().unwrap_or("").contains("gave up"))
        .count();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_between_finish_and_send_delivers_after_restart_exactly_once() {
    // The receiver's port, reserved and closed: while the task finishes, nobody answers.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let url = format!("http://{addr}/s");
    let envs = [("FORGE_ALERT_SLACK_URL", url.as_str())];

    let server = ServerProcess::start(&db, &envs);
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = admin.new_token().await;
    let p = project(&admin, true, None, false).await;
    let t = id_of(&run(&admin, p.id, p.fail).await);
    // The sender has tried (and failed) at least once; the alert waits in the outbox.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill_9();

    let receiver = Receiver::start_on(
        TcpListener::bind(addr)
            .await
            .expect("the reserved port is free again"),
        Answer::Ok,
        None,
    );
    let server = ServerProcess::start(&db, &envs);
    let got = receiver.wait_for(1).await;
    let text = got[0].json()["text"].as_str().unwrap().to_owned();
    assert!(text.contains(&format!("task #{t} ")), "{text}");
    // Exactly once: marked delivered, never sent again (also not after another restart).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.got().len(), 1);
    let c = server.client().with_bearer(&token);
    assert_eq!(
        ok_json(&c, &at(p.id, &format!("tasks/{t}"))).await["status"],
        "error"
    );
    server.kill_9();
    let server = ServerProcess::start(&db, &envs);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.got().len(), 1, "sent again after a second restart");
    drop(server);
}

/// A change to the alert settings.
type Tweak = fn(&mut forge::notify::AlertConfig);

#[tokio::test(flavor = "multi_thread")]
async fn misconfigured_channels_stop_the_server_from_starting_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Tweak); 4] = [
        ("--alert-slack-url-file", |a| {
            a.alert_slack_url_file = Some("/nonexistent/slack-url".into());
        }),
        ("--alert-webhook-url", |a| {
            a.alert_webhook_url = Some("ftp://example.com/hook".into());
        }),
        ("--alert-ca-file", |a| {
            a.alert_slack_url = Some(forge::config::Secret("https://example.com/s".into()));
            a.alert_ca_file = Some("/nonexistent/ca.pem".into());
        }),
        ("--alert-smtp-username", |a| {
            a.alert_smtp_host = Some("127.0.0.1".into());
            a.alert_smtp_username = Some("mailer".into());
        }),
    ];
    for (flag, tweak) in cases {
        let mut config = forge::Config::with_db(dir.path().join("forge.redb"));
        tweak(&mut config.alerts);
        let err = forge::App::start(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("started despite a bad {flag}"));
        assert!(err.to_string().contains(flag), "{flag}: {err}");
    }
}

/// How the TLS SMTP sink starts its sessions.
#[derive(Clone, Copy, PartialEq)]
enum SmtpTls {
    /// Port-465 style: TLS from the first byte.
    Implicit,
    /// Port-587 style: a plain greeting and EHLO offering STARTTLS, then TLS.
    StartTls,
}

/// An SMTP server that speaks only over TLS (AUTH is offered inside TLS alone) and records
/// the message lines it takes.
async fn tls_smtp_sink(
    acceptor: tokio_rustls::TlsAcceptor,
    mode: SmtpTls,
) -> (SocketAddr, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = Arc::new(Mutex::new(String::new()));
    let keep = Arc::clone(&data);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            if mode == SmtpTls::StartTls && !plain_until_starttls(&mut stream).await {
                continue;
            }
            let Ok(stream) = acceptor.accept(stream).await else {
                continue;
            };
            smtp_dialogue(stream, mode == SmtpTls::Implicit, &keep).await;
        }
    });
    (addr, data)
}

/// The plain part of a STARTTLS session: greeting, EHLO offering only STARTTLS, and the
/// go-ahead; false when the client did anything else (nothing may be sent in the clear).
async fn plain_until_starttls(stream: &mut tokio::net::TcpStream) -> bool {
    let _ = stream.write_all(b"220 starttls-sink ESMTP\r\n").await;
    // Byte by byte: the client's TLS handshake follows the go-ahead on the same socket.
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if tokio::io::AsyncReadExt::read(stream, &mut byte)
            .await
            .unwrap_or(0)
            == 0
        {
            return false;
        }
        if byte[0] != b'\n' {
            line.push(byte[0]);
            continue;
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end()
            .to_ascii_uppercase();
        line.clear();
        let reply: &[u8] = if text.starts_with("EHLO") {
            b"250-starttls-sink\r\n250 STARTTLS\r\n"
        } else if text == "STARTTLS" {
            let _ = stream.write_all(b"220 go ahead\r\n").await;
            return true;
        } else {
            let _ = stream.write_all(b"530 STARTTLS first\r\n").await;
            return false;
        };
        let _ = stream.write_all(reply).await;
    }
}

/// The SMTP dialogue inside TLS: AUTH PLAIN with the test's credentials, one message taken.
async fn smtp_dialogue<S>(stream: S, greet: bool, keep: &Mutex<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    if greet {
        let _ = write.write_all(b"220 tls-sink ESMTP\r\n").await;
    }
    let mut in_data = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if in_data {
            if line == "." {
                in_data = false;
                let _ = write.write_all(b"250 queued\r\n").await;
            } else {
                keep.lock().unwrap().push_str(&line);
                keep.lock().unwrap().push('\n');
            }
            continue;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-tls-sink\r\n250 AUTH PLAIN LOGIN\r\n"
        } else if upper.starts_with("AUTH PLAIN") {
            // The test's credentials, base64 of "\0mailer\0pw".
            if line.ends_with("AG1haWxlcgBwdw==") {
                b"235 ok\r\n"
            } else {
                b"535 bad credentials\r\n"
            }
        } else if upper == "DATA" {
            in_data = true;
            b"354 go on\r\n"
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            break;
        } else {
            b"250 ok\r\n"
        };
        let _ = write.write_all(reply).await;
    }
}

/// A failing task's email over `security`, with AUTH, trusting the CA of `--alert-ca-file`.
async fn email_over_tls(mode: SmtpTls, security: &str) {
    let (ca_pem, acceptor) = loopback_tls();
    let (addr, data) = tls_smtp_sink(acceptor, mode).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca_pem).unwrap();
    let password = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(password.path(), "pw\n").unwrap();
    let server = TestServer::start_with(|c| {
        let a = &mut c.alerts;
        a.alert_smtp_host = Some("127.0.0.1".into());
        a.alert_smtp_port = Some(addr.port());
        a.alert_smtp_security = security.into();
        a.alert_smtp_username = Some("mailer".into());
        a.alert_smtp_password_file = Some(password.path().to_owned());
        a.alert_ca_file = Some(ca_file.path().to_owned());
    })
    .await;
    let admin = server.admin().await;
    let p = project(&admin, true, None, false).await;
    alert_member(&admin, p.id, "ops").await;
    let t = id_of(&run(&admin, p.id, p.fail).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data.lock().unwrap().contains(&format!("task #{t} ")) {
        assert!(
            Instant::now() < deadline,
            "no mail over {security}: {}",
            data.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn email_goes_over_implicit_tls_with_auth_trusting_the_alert_ca_file() {
    email_over_tls(SmtpTls::Implicit, "tls").await;
}

/// The default, `starttls`: the sink offers only STARTTLS in the clear and AUTH only inside
/// TLS, so the mail arrives only if the client upgraded before authenticating.
#[tokio::test(flavor = "multi_thread")]
async fn email_goes_over_starttls_with_auth_trusting_the_alert_ca_file() {
    email_over_tls(SmtpTls::StartTls, "starttls").await;
}
