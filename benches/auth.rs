//! Authentication costs: what checking a request's credentials costs, and whether a failed
//! login tells an attacker if the account exists.
//!
//! `cargo bench --bench auth` measures; `cargo test --all-targets` runs each bench once.

use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use forge::config::Config;
use forge::http::auth::{Auth, Credentials};
use forge::service::{Error, LoginClient, NewUserInput, Services};
use forge::store::Store;
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderValue};
use tokio::runtime::Runtime;

/// Users besides the benched one, each with `TOKENS_PER_USER` tokens: the lookup happens among
/// 10 000 other tokens (100 in test mode).
const OTHER_USERS: usize = 1_000;
const OTHER_USERS_TEST: usize = 10;
const TOKENS_PER_USER: usize = 10;

/// Whether criterion runs each bench once as a test (`cargo test --all-targets`, or
/// `-- --test`) rather than measuring; decided as criterion does. Setup then stays cheap: few
/// filler tokens and a low scrypt cost, since an unoptimised scrypt at log_n 17 takes seconds.
fn test_mode() -> bool {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    !has("--bench") || has("--test")
}

/// A fresh store in a temp dir, with services configured by `tweak`.
struct Fixture {
    /// Keeps the database file alive; removed on drop.
    _dir: tempfile::TempDir,
    services: Arc<Services>,
}

impl Fixture {
    fn new(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let path = dir.path().join("forge.redb");
        let store = Store::open(&path).expect("open the bench store");
        let mut config = Config::with_db(path);
        tweak(&mut config);
        let cipher = forge::service::secrets::Cipher::new(&[7; 32]);
        let services = Services::new(store, cipher, &config);
        Self {
            _dir: dir,
            services,
        }
    }
}

fn user_input(username: &str, password: &str, admin: bool) -> NewUserInput {
    NewUserInput {
        name: username.to_owned(),
        username: username.to_owned(),
        email: format!("{username}@example.com"),
        password: password.to_owned(),
        admin,
        ..NewUserInput::default()
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// The Bearer fixture: `OTHER_USERS` users with their tokens, then the benched user and token.
struct BearerFixture {
    fx: Fixture,
    token: String,
}

fn bearer_fixture(rt: &Runtime) -> BearerFixture {
    // Cheap hashes: only the token lookup is measured here.
    let fx = Fixture::new(|c| c.scrypt_log_n = 4);
    let services = &fx.services;
    let others = if test_mode() {
        OTHER_USERS_TEST
    } else {
        OTHER_USERS
    };
    let token = rt.block_on(async {
        for i in 0..others {
            let user = services
                .add_user(user_input(&format!("user{i}"), "pw", false))
                .await
                .expect("add a filler user");
            for _ in 0..TOKENS_PER_USER {
                services
                    .create_token(&user)
                    .await
                    .expect("add a filler token");
            }
        }
        let me = services
            .add_user(user_input("me", "pw", false))
            .await
            .expect("add the benched user");
        services
            .create_token(&me)
            .await
            .expect("add the benched token")
            .0
    });
    BearerFixture { fx, token }
}

// Question: what does Bearer authentication cost per request? Every API request with
// `Authorization: Bearer` pays one SHA-256, then the token's user as remembered since the last
// access change (`token_user`), or, the first time after such a change, one redb read
// transaction (token, then user: `token_user_uncached`), and no write. `header_to_user` adds
// the header parsing the middleware does around it; `own_view` is `GET /api/user`'s work on
// top of `token_user` once its answer is kept beside the remembered user (TOTP on, so the
// data generation is checked too); `unknown` is a well-formed token that is not stored, as a
// guessing client sends (never remembered).
fn bearer(c: &mut Criterion) {
    let rt = runtime();
    let fixture = OnceCell::new();
    let setup = || fixture.get_or_init(|| bearer_fixture(&rt));

    let mut group = c.benchmark_group("bearer");
    group.bench_function("token_user", |b| {
        let f = setup();
        b.iter(|| {
            let user = f.fx.services.token_user(black_box(&f.token));
            assert!(matches!(user, Ok(Some(_))), "the benched token resolves");
            user
        });
    });
    group.bench_function("token_user_uncached", |b| {
        let f = setup();
        let store = f.fx.services.store();
        b.iter(|| {
            let hash = forge::service::auth::secret_hash(black_box(&f.token));
            let user = store.token_user(&hash);
            assert!(matches!(user, Ok(Some(_))), "the benched token resolves");
            user
        });
    });
    group.bench_function("header_to_user", |b| {
        let f = setup();
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {}", f.token)).expect("header value");
        headers.insert(AUTHORIZATION, value);
        b.to_async(&rt).iter(|| async {
            let auth = Credentials::from_headers(black_box(&headers))
                .resolve(&f.fx.services)
                .await;
            assert!(matches!(auth, Ok(Auth::User(_))), "the header resolves");
            auth
        });
    });
    group.bench_function("own_view", |b| {
        let f = setup();
        let services = &f.fx.services;
        b.iter(|| {
            let caller = services
                .token_user(black_box(&f.token))
                .expect("no storage failure")
                .expect("the benched token resolves");
            let view = services.own_view(&caller, |user, _| {
                bytes::Bytes::from(format!("{{\"username\":\"{}\"}}", user.username))
            });
            assert!(view.is_ok(), "the answer renders");
            view
        });
    });
    group.bench_function("unknown_token", |b| {
        let f = setup();
        let unknown = forge::service::auth::new_token();
        b.iter(|| {
            let user = f.fx.services.token_user(black_box(&unknown));
            assert!(
                matches!(user, Ok(None)),
                "an unknown token resolves to no one"
            );
            user
        });
    });
    group.finish();
}

/// The login fixture: the default scrypt cost (low in test mode), one administrator, and no
/// throttling.
fn login_fixture(rt: &Runtime) -> Fixture {
    let fx = Fixture::new(|c| {
        c.login_max_failures = u32::MAX;
        if test_mode() {
            c.scrypt_log_n = 4;
        }
    });
    rt.block_on(async {
        fx.services
            .add_user(user_input("admin", "right", true))
            .await
            .expect("add the administrator");
        // The first unknown-user login computes the dummy hash; keep that out of the figures.
        let _ = fx.services.login("nobody", "x".into(), client()).await;
    });
    fx
}

fn client() -> LoginClient {
    LoginClient {
        ip: "192.0.2.1".into(),
        user_agent: "forge-bench".into(),
    }
}

// Question: does a login for an unknown user cost the same as a wrong password? It must: a
// faster "no such user" would let anyone list accounts by timing. Both verify one scrypt hash at
// the default cost (log_n 17, ~260 ms); `success` adds a durable session write. Throttling is
// off (`login_max_failures = u32::MAX`) so every attempt reaches scrypt.
fn login(c: &mut Criterion) {
    let rt = runtime();
    let fixture = OnceCell::new();
    let setup = || fixture.get_or_init(|| login_fixture(&rt));

    let mut group = c.benchmark_group("login");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    for (name, login, password, ok) in [
        ("wrong_password", "admin", "wrong", false),
        ("unknown_user", "nobody", "wrong", false),
        ("success", "admin", "right", true),
    ] {
        group.bench_function(name, |b| {
            let services = &setup().services;
            b.to_async(&rt).iter(|| async {
                let result = services.login(login, password.into(), client()).await;
                let expected = if ok {
                    result.is_ok()
                } else {
                    matches!(result, Err(Error::Unauthorized))
                };
                assert!(expected, "{name}: {result:?}");
                result
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bearer, login);
criterion_main!(benches);
