//! Does counting requests slow the hot path down? What the pipeline adds to every request for
//! issue 17 — counting it (`metrics::Http::record`: three relaxed atomic additions on the
//! route's slot) and making a request id — against the whole of a `GET /api/ping` round trip
//! over loopback (keep-alive), the cheapest request there is. Also: the same counting from
//! two threads on one route (the slot's cache line is shared), and what one scrape costs.
//!
//! `cargo bench --bench metrics` measures; `cargo test --all-targets` runs each bench once.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use forge::config::{Config, Secret};
use forge::http::router::routes;
use forge::metrics::Http;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::runtime::Runtime;

fn counters() -> (Http, usize) {
    let table = routes();
    let ping = table
        .iter()
        .position(|r| r.path == "/api/ping")
        .expect("the ping route");
    (
        Http::new(table.iter().map(|r| (r.method.to_string(), r.path))),
        ping,
    )
}

fn counting(c: &mut Criterion) {
    let (http, ping) = counters();
    let mut g = c.benchmark_group("metrics");
    g.bench_function("record one request", |b| {
        b.iter(|| {
            http.record(
                black_box(ping),
                black_box(200),
                black_box(Duration::from_micros(137)),
            );
        });
    });
    let http = Arc::new(http);
    g.bench_function(
        "record one request, another thread on the same route",
        |b| {
            b.iter_custom(|iters| {
                let running = Arc::new(AtomicBool::new(true));
                let (other, flag) = (Arc::clone(&http), Arc::clone(&running));
                let noise = std::thread::spawn(move || {
                    while flag.load(Ordering::Relaxed) {
                        other.record(ping, 200, Duration::from_micros(90));
                    }
                });
                let started = Instant::now();
                for _ in 0..iters {
                    http.record(black_box(ping), 200, Duration::from_micros(137));
                }
                let spent = started.elapsed();
                running.store(false, Ordering::Relaxed);
                noise.join().expect("the other thread");
                spent
            });
        },
    );
    g.bench_function("generate a request id", |b| {
        b.iter(|| black_box(forge::http::request_id(&hyper::HeaderMap::new())));
    });
    g.finish();
}

fn round_trips(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    // The server, and one keep-alive connection to it.
    let (addr, app, mut sender) = rt.block_on(async {
        let mut config = Config::with_db(dir.path().join("forge.redb"));
        config.scrypt_log_n = 4;
        config.admin = Some("admin".into());
        config.admin_password = Some(Secret("changeme".into()));
        let app = forge::App::start(config).await.expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(forge::serve(
            listener,
            Arc::clone(&app),
            std::future::pending(),
        ));
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        (addr, app, sender)
    });
    let mut g = c.benchmark_group("metrics");
    g.bench_function("GET /api/ping round trip (counted and logged)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let req = Request::get("/api/ping")
                        .header("host", addr.to_string())
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    sender.ready().await.expect("connection ready");
                    let res = sender.send_request(req).await.expect("response");
                    let body = res.into_body().collect().await.expect("body");
                    black_box(body);
                }
                started.elapsed()
            })
        });
    });
    g.bench_function("render one scrape", |b| {
        b.iter(|| black_box(forge::metrics::scrape::render(&app)));
    });
    g.finish();
}

criterion_group!(benches, counting, round_trips);
criterion_main!(benches);
