//! Two-factor login (issue 16, API.md §12.8) through a real server: enabling, the QR code,
//! the verify step of a login, recovery codes, disabling, `--totp off`, and what a session
//! awaiting its code can reach. Codes are computed here, by RFC 6238 over HMAC-SHA1 written
//! in this file, never by the code under test (or the crate it uses).

mod common;

use common::{ADMIN, ADMIN_PASSWORD, Client, T0, TestServer};
use forge::clock::Clock;
use forge::config::Switch;
use forge::http::auth::Need;
use forge::http::router::routes;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

/// RFC 4648 base32 (no padding) → bytes.
fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("not base32: {text}"));
        bits = (bits << 5) | v as u64;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// RFC 6238 (RFC 4226 truncation): the 6-digit code of `secret` at Unix time `time`, 30 s steps.
fn code_at(secret: &[u8], time: i64) -> String {
    let step = u64::try_from(time / 30).expect("positive time");
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret).expect("any key length");
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0xf);
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    format!("{:06}", value % 1_000_000)
}

#[test]
fn rfc_6238_test_vector() {
    // RFC 6238 appendix B, SHA-1, last 6 of the 8 digits.
    let secret = b"12345678901234567890";
    assert_eq!(code_at(secret, 59), "287082");
    assert_eq!(code_at(secret, 1_111_111_109), "081804");
    assert_eq!(code_at(secret, 2_000_000_000), "279037");
}

/// The secret of an `otpauth://` URL.
fn secret_of(url: &str) -> Vec<u8> {
    let query = url.split_once('?').expect("query").1;
    let secret = query
        .split('&')
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {url}"));
    base32_decode(secret)
}

/// An enrolled user: their id, their logged-in (verified) client, the secret and the answer
/// of enabling.
struct Enrolled {
    id: u64,
    client: Client,
    secret: Vec<u8>,
    answer: Value,
}

async fn enrol(s: &TestServer, name: &str) -> Enrolled {
    let (id, client) = s.user(name, false).await;
    let r = client
        .post(&format!("/api/users/{id}/2fas/totp"), json!({}))
        .await;
    assert_eq!(r.status, 201, "enable: {}", r.text());
    let answer = r.json();
    let secret = secret_of(answer["url"].as_str().expect("url"));
    Enrolled {
        id,
        client,
        secret,
        answer,
    }
}

/// Logs `name` in with the test password: a session awaiting its code.
async fn pending_login(s: &TestServer, name: &str) -> Client {
    let mut c = s.client();
    assert_eq!(c.login(name, "pw-of-user").await.status, 204);
    c
}

fn verify_body(code: &str) -> Value {
    json!({ "passcode": code })
}

#[tokio::test(flavor = "multi_thread")]
async fn enable_verify_and_then_every_login_needs_a_code() {
    let s = TestServer::start().await;
    let info = s.admin().await.get("/api/info").await.json();
    assert_eq!(info["auth_methods"]["totp"]["enabled"], true);
    assert_eq!(info["auth_methods"]["totp"]["allow_recovery"], true);

    let e = enrol(&s, "ada").await;
    let url = e.answer["url"].as_str().unwrap();
    assert!(url.starts_with("otpauth://totp/Forge:ada?"), "{url}");
    assert!(url.contains("issuer=Forge"), "{url}");
    assert_eq!(e.secret.len(), 20);
    assert_eq!(e.answer["user_id"], e.id);
    let codes = e.answer["recovery_codes"].as_array().expect("codes");
    assert_eq!(codes.len(), 8);
    assert_eq!(e.answer["recovery_code"], codes[0]);
    for c in codes {
        let c = c.as_str().unwrap();
        assert_eq!(c.len(), 19, "{c}");
        assert_eq!(c.matches('-').count(), 3, "{c}");
    }
    let totp_id = e.answer["id"].as_u64().expect("id");

    // Enabling twice is a conflict; the QR code is a PNG until a code is verified.
    let base = format!("/api/users/{}/2fas/totp", e.id);
    e.client.post(&base, json!({})).await.assert_error(409);
    let qr = e.client.get(&format!("{base}/{totp_id}/qr")).await;
    assert_eq!(qr.status, 200);
    assert_eq!(qr.header("content-type").as_deref(), Some("image/png"));
    assert!(qr.body.starts_with(b"\x89PNG\r\n\x1a\n"));

    // Confirming from the verified session (the enable flow) hides the QR code for good.
    let now = s.clock.now();
    let r = e
        .client
        .post("/api/auth/verify", verify_body(&code_at(&e.secret, now)))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    e.client
        .get(&format!("{base}/{totp_id}/qr"))
        .await
        .assert_error(409);
    // The session that enabled it is not affected; it lists the enrolment, never the secret.
    let me = e.client.get("/api/user").await;
    assert_eq!(me.status, 200);
    let listed = &me.json()["totp"];
    assert_eq!(listed["id"], totp_id);
    assert_eq!(
        listed.as_object().map(serde_json::Map::len),
        Some(3),
        "{listed}"
    );

    // A new login can only verify; a wrong code is refused; the right one lets it in.
    s.clock.advance(30);
    let c = pending_login(&s, "ada").await;
    let r = c.get("/api/user").await;
    r.assert_error(401);
    assert_eq!(r.json()["verify"], "totp");
    let wrong = if code_at(&e.secret, s.clock.now()) == "000000" {
        "111111"
    } else {
        "000000"
    };
    c.post("/api/auth/verify", verify_body(wrong))
        .await
        .assert_error(401);
    c.get("/api/user").await.assert_error(401);
    let r = c
        .post(
            "/api/auth/verify",
            verify_body(&code_at(&e.secret, s.clock.now())),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let me = c.get("/api/user").await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["username"], "ada");
}

#[tokio::test(flavor = "multi_thread")]
async fn neighbouring_steps_count_but_no_code_is_accepted_twice() {
    let s = TestServer::start().await;
    let e = enrol(&s, "bob").await;
    let now = s.clock.now();

    // The previous step's code (a slow typist), as typed with a space.
    let c = pending_login(&s, "bob").await;
    let previous = code_at(&e.secret, now - 30);
    let typed = format!("{} {}", &previous[..3], &previous[3..]);
    assert_eq!(
        c.post("/api/auth/verify", verify_body(&typed)).await.status,
        204
    );
    // The same code again (replayed by someone who saw it) is refused.
    let again = pending_login(&s, "bob").await;
    again
        .post("/api/auth/verify", verify_body(&previous))
        .await
        .assert_error(401);
    // The next step's code (a clock running ahead) works.
    let r = again
        .post(
            "/api/auth/verify",
            verify_body(&code_at(&e.secret, now + 30)),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Two steps away is too far.
    let far = pending_login(&s, "bob").await;
    s.clock.advance(30 * 4);
    let far_code = code_at(&e.secret, s.clock.now() + 60);
    if far_code != code_at(&e.secret, s.clock.now())
        && far_code != code_at(&e.secret, s.clock.now() - 30)
        && far_code != code_at(&e.secret, s.clock.now() + 30)
    {
        far.post("/api/auth/verify", verify_body(&far_code))
            .await
            .assert_error(401);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_code_works_once() {
    let s = TestServer::start().await;
    let e = enrol(&s, "cy").await;
    let code = e.answer["recovery_codes"][3].as_str().unwrap().to_owned();

    let c = pending_login(&s, "cy").await;
    c.post(
        "/api/auth/recovery",
        json!({"recovery_code": "aaaa-bbbb-cccc-dddd"}),
    )
    .await
    .assert_error(401);
    // Upper case and without dashes is the same code.
    let typed = code.replace('-', "").to_uppercase();
    let r = c
        .post("/api/auth/recovery", json!({ "recovery_code": typed }))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(c.get("/api/user").await.status, 200);

    let again = pending_login(&s, "cy").await;
    again
        .post("/api/auth/recovery", json!({ "recovery_code": code }))
        .await
        .assert_error(401);
    again.get("/api/user").await.assert_error(401);
    // Another, unused code still works.
    let other = e.answer["recovery_codes"][4].as_str().unwrap();
    let r = again
        .post("/api/auth/recovery", json!({ "recovery_code": other }))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_codes_is_throttled() {
    let s = TestServer::start_with(|c| c.login_max_failures = 3).await;
    let e = enrol(&s, "dee").await;
    let c = pending_login(&s, "dee").await;
    let right = code_at(&e.secret, s.clock.now());
    let wrong = if right == "123456" {
        "654321"
    } else {
        "123456"
    };
    for _ in 0..3 {
        c.post("/api/auth/verify", verify_body(wrong))
            .await
            .assert_error(401);
    }
    let r = c.post("/api/auth/verify", verify_body(&right)).await;
    r.assert_error(429);
    assert!(r.header("retry-after").is_some());
    // Recovery codes share the same bucket.
    let code = e.answer["recovery_codes"][0].as_str().unwrap();
    c.post("/api/auth/recovery", json!({ "recovery_code": code }))
        .await
        .assert_error(429);
    c.get("/api/user").await.assert_error(401);
    // Once the window has passed, the right code works.
    s.clock
        .advance(forge::config::Config::with_db("x".into()).login_window_secs + 1);
    let r = c
        .post(
            "/api/auth/verify",
            verify_body(&code_at(&e.secret, s.clock.now())),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_ends_the_second_step() {
    let s = TestServer::start().await;
    let e = enrol(&s, "eve").await;
    let id = e.answer["id"].as_u64().unwrap();
    let path = format!("/api/users/{}/2fas/totp/{id}", e.id);

    // Another (non-admin) user may not; an unknown id is 404.
    let (_, mallory) = s.user("mallory", false).await;
    mallory.delete(&path).await.assert_error(403);
    e.client
        .delete(&format!("/api/users/{}/2fas/totp/{}", e.id, id + 100))
        .await
        .assert_error(404);

    let r = e.client.delete(&path).await;
    assert_eq!(r.status, 204, "{}", r.text());
    e.client.delete(&path).await.assert_error(404);
    assert!(e.client.get("/api/user").await.json().get("totp").is_none());
    let mut c = s.client();
    assert_eq!(c.login("eve", "pw-of-user").await.status, 204);
    assert_eq!(c.get("/api/user").await.status, 200);
    // No enrolment: nothing to verify.
    c.post("/api/auth/verify", verify_body("123456"))
        .await
        .assert_error(400);

    // An admin may disable it for a user who lost their device; the pending session of that
    // user is then a full one (there is nothing left to verify).
    let f = enrol(&s, "fay").await;
    let pending = pending_login(&s, "fay").await;
    pending.get("/api/user").await.assert_error(401);
    let fid = f.answer["id"].as_u64().unwrap();
    let r = s
        .admin()
        .await
        .delete(&format!("/api/users/{}/2fas/totp/{fid}", f.id))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(pending.get("/api/user").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_off_turns_enrolment_and_the_second_step_off() {
    let s = TestServer::start().await;
    let e = enrol(&s, "gil").await;
    let dir = s.stop().await;

    let s = TestServer::start_in(dir, |c| c.totp = Switch::Off).await;
    let info = s.admin().await.get("/api/info").await.json();
    assert_eq!(info["auth_methods"]["totp"]["enabled"], false);
    // An enrolled user logs in with the password alone.
    let mut c = s.client();
    assert_eq!(c.login("gil", "pw-of-user").await.status, 204);
    assert_eq!(c.get("/api/user").await.status, 200);
    let msg = c
        .post("/api/auth/verify", verify_body(&code_at(&e.secret, T0)))
        .await
        .assert_error(400);
    assert!(msg.contains("--totp off"), "{msg}");
    // Nobody can enrol.
    let (id, other) = s.user("hal", false).await;
    let msg = other
        .post(&format!("/api/users/{id}/2fas/totp"), json!({}))
        .await
        .assert_error(400);
    assert!(msg.contains("--totp off"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_session_reaches_nothing_but_the_verify_routes() {
    let s = TestServer::start().await;
    let e = enrol(&s, "ida").await;
    // An admin's pending session: it would pass every authorization check once verified.
    let a = s.admin().await;
    let r = a
        .put(
            &format!("/api/users/{}", e.id),
            json!({"name": "ida", "username": "ida", "email": "ida@example.com", "admin": true}),
        )
        .await;
    assert_eq!(r.status, 204, "make admin: {}", r.text());
    let c = pending_login(&s, "ida").await;
    for route in routes() {
        if matches!(route.need, Need::Anonymous | Need::SecondFactor) {
            continue;
        }
        let path = route
            .path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let r = c
            .raw(
                route.method.as_str(),
                &path,
                Some(b"{}".to_vec()),
                &[("content-type", "application/json")],
            )
            .await;
        assert_eq!(r.status, 401, "{} {path}: {}", route.method, r.text());
        assert_eq!(r.json()["verify"], "totp", "{} {path}", route.method);
    }
    // Logging out works, and the cookie is then dead.
    let mut out = c.clone();
    assert_eq!(
        out.raw("POST", "/api/auth/logout", None, &[]).await.status,
        204
    );
    out.post("/api/auth/verify", verify_body(&code_at(&e.secret, T0)))
        .await
        .assert_error(401);
    out.cookie = None;
    assert_eq!(out.login("ida", "pw-of-user").await.status, 204);
    out.get("/api/user").await.assert_error(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_every_route() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 1024).await;
    let e = enrol(&s, "jo").await;
    let id = e.answer["id"].as_u64().unwrap();
    let base = format!("/api/users/{}/2fas/totp", e.id);
    let qr = format!("{base}/{id}/qr");
    let one = format!("{base}/{id}");
    let anon = s.client();

    // 401 without credentials.
    for (method, path) in [
        ("POST", base.as_str()),
        ("GET", qr.as_str()),
        ("DELETE", one.as_str()),
        ("POST", "/api/auth/verify"),
        ("POST", "/api/auth/recovery"),
    ] {
        anon.raw(method, path, Some(b"{}".to_vec()), &[])
            .await
            .assert_error(401);
    }
    // 403: another user's enrolment (even an admin may not enrol someone or see their QR).
    let a = s.admin().await;
    let (_, other) = s.user("kim", false).await;
    other.post(&base, json!({})).await.assert_error(403);
    other.get(&qr).await.assert_error(403);
    other.delete(&one).await.assert_error(403);
    a.post(&base, json!({})).await.assert_error(403);
    a.get(&qr).await.assert_error(403);
    // 404: unknown enrolment, unknown sub-route; 400: ids that are not ids.
    e.client
        .get(&format!("{base}/{}/qr", id + 1))
        .await
        .assert_error(404);
    e.client
        .get(&format!("{base}/{id}/png"))
        .await
        .assert_error(404);
    e.client
        .get(&format!("{base}/x/qr"))
        .await
        .assert_error(400);
    // 413: oversized bodies.
    let big = vec![b' '; 2048];
    for (method, path) in [
        ("POST", base.as_str()),
        ("POST", "/api/auth/verify"),
        ("POST", "/api/auth/recovery"),
    ] {
        e.client
            .raw(
                method,
                path,
                Some(big.clone()),
                &[("content-type", "application/json")],
            )
            .await
            .assert_error(413);
    }
    // 400: malformed JSON, missing or malformed codes (none of which count as a guess).
    let c = pending_login(&s, "jo").await;
    for (path, body) in [
        ("/api/auth/verify", "{"),
        ("/api/auth/verify", "[\"123456\"]"),
        ("/api/auth/verify", "{}"),
        ("/api/auth/verify", "{\"passcode\": 123456}"),
        ("/api/auth/verify", "{\"passcode\": \"12345\"}"),
        ("/api/auth/verify", "{\"passcode\": \"12345x\"}"),
        ("/api/auth/verify", "{\"passcode\": \"1234567\"}"),
        ("/api/auth/recovery", "{"),
        ("/api/auth/recovery", "{}"),
        ("/api/auth/recovery", "{\"recovery_code\": \"short\"}"),
        (
            "/api/auth/recovery",
            "{\"recovery_code\": \"abcd-efgh-ijkl-mn0p\"}",
        ),
    ] {
        let r = c
            .raw(
                "POST",
                path,
                Some(body.as_bytes().to_vec()),
                &[("content-type", "application/json")],
            )
            .await;
        r.assert_error(400);
    }
    // Not one of those was counted: the right code still gets through at once.
    let r = c
        .post(
            "/api/auth/verify",
            verify_body(&code_at(&e.secret, s.clock.now())),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_is_sealed_at_rest_and_deleted_with_its_user() {
    let s = TestServer::start().await;
    let e = enrol(&s, "lou").await;
    let a = s.admin().await;
    let m = enrol(&s, "ned").await;
    let r = a.delete(&format!("/api/users/{}", m.id)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let db = s.db_path();
    let dir = s.stop().await;
    let bytes = std::fs::read(&db).expect("db");
    for secret in [&e.secret, &m.secret] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "a TOTP secret is stored in the clear"
        );
    }
    let codes = e.answer["recovery_codes"].as_array().unwrap();
    for code in codes {
        let plain = code.as_str().unwrap().replace('-', "");
        assert!(
            !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "a recovery code is stored in the clear"
        );
    }
    // `forge check` opens the sealed secret and finds the deleted user's enrolment gone.
    let config = forge::config::Config::with_db(db.clone());
    let cipher = forge::service::secrets::Cipher::configured(&config)
        .expect("key")
        .expect("key file");
    let report = forge::store::check::check_file(&db, Some(&cipher)).expect("check");
    assert!(report.is_clean(), "{report}");
    assert!(
        report.counts.contains(&("user_totp", 1)),
        "{:?}",
        report.counts
    );
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_by_email_and_an_api_token_follow_the_rules() {
    let s = TestServer::start().await;
    let e = enrol(&s, "ola").await;
    // A token made by the verified session works without a code (it was made after one).
    let token = e.client.new_token().await;
    let t = s.client().with_bearer(&token);
    assert_eq!(t.get("/api/user").await.status, 200);
    // A pending session cannot make a token.
    let mut c = s.client();
    assert_eq!(c.login("ola@example.com", "pw-of-user").await.status, 204);
    c.raw("POST", "/api/user/tokens", None, &[])
        .await
        .assert_error(401);
    // The admin's own login is untouched by other users' enrolments.
    let mut a = s.client();
    assert_eq!(a.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    assert_eq!(a.get("/api/user").await.status, 200);
}
