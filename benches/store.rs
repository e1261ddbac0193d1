//! Questions about the store and the request path:
//! - What does one durable redb commit cost (the one-commit-per-request ceiling that group
//!   commit is measured against), what does one durable write through the store cost alone,
//!   and what do 64 concurrent durable writes cost together (group commit: one writer commits
//!   them in shared transactions)?
//! - What does routing a request cost?
//! - What does rendering a task as JSON cost?

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use forge::http::router::{Router, routes};
use forge::model::{Task, TaskStatus};
use forge::store::{NewEvent, Store};
use hyper::Method;

fn event(n: u64) -> NewEvent {
    NewEvent {
        user_id: Some(1),
        project_id: None,
        object_id: Some(n),
        object_type: "user",
        description: format!("bench event {n}"),
    }
}

fn durable_writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("bench.redb")).expect("open");
    let mut group = c.benchmark_group("durable_write");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    // The ceiling: plain redb, one row per durable (fsynced) transaction, nothing else.
    group.bench_function("redb_one_commit_per_write", |b| {
        const ROWS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("rows");
        let db = redb::Database::create(dir.path().join("ceiling.redb")).expect("create");
        let row = [7u8; 160];
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let tx = db.begin_write().expect("begin");
            tx.open_table(ROWS)
                .expect("table")
                .insert(n, row.as_slice())
                .expect("insert");
            tx.commit().expect("commit");
        });
    });
    group.bench_function("one_alone", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            store.record_event(0, event(n)).expect("write");
        });
    });
    // 64 writers, 10 writes each: thread start-up is amortised, the writes contend.
    group.throughput(Throughput::Elements(640));
    group.bench_function("64_concurrent_writers", |b| {
        let store = Arc::new(store.clone());
        b.iter_batched(
            || Arc::clone(&store),
            |store| {
                std::thread::scope(|s| {
                    for t in 0..64 {
                        let store = &store;
                        s.spawn(move || {
                            for n in 0..10 {
                                store.record_event(0, event(t * 100 + n)).expect("write");
                            }
                        });
                    }
                });
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let router = Router::new(routes());
    c.bench_function("route/project_task_output", |b| {
        b.iter(|| router.lookup(&Method::GET, "/api/project/12/tasks/3456/output"));
    });
    c.bench_function("route/ping", |b| {
        b.iter(|| router.lookup(&Method::GET, "/api/ping"))
    });
}

fn task_json(c: &mut Criterion) {
    let task = Task {
        id: 42,
        status: TaskStatus::Running,
        environment: r#"{"k":"v"}"#.into(),
        arguments: Some(r#"["--x"]"#.into()),
        user_id: Some(1),
        start: Some(1_747_794_913),
        message: "deploy 1.2".into(),
        process_group: Some(1234),
        ..Task::waiting(1, 7, 1_747_794_912)
    };
    c.bench_function("task_json", |b| {
        b.iter(|| serde_json::to_vec(&forge::http::task_view(&task, "")));
    });
}

criterion_group!(benches, durable_writes, routing, task_json);
criterion_main!(benches);
