//! What does the alert outbox add to the transaction that finishes a task?
//!
//! Each iteration commits one durable transaction that moves a running task to `error`, as
//! the runner does: with no channel configured (one settings read more than before), and
//! with all five channels on a project with alerts on and 10 members who want email (the
//! project, template and members are read, and five outbox rows written). One task per
//! commit shows what a task costs end to end (fsync-bound); 100 per commit shows the work
//! inside the transaction. (The outbox is not drained here: it grows as tasks do.)

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use forge::model::{Project, Role, Task, TaskStatus, Template};
use forge::store::{NewUser, Store};

fn template(project: u64) -> Template {
    Template {
        id: 0,
        project_id: project,
        inventory_id: None,
        repository_id: 1,
        environment_id: None,
        view_id: None,
        name: "deploy".into(),
        playbook: "run.sh".into(),
        arguments: None,
        allow_override_args_in_task: false,
        description: None,
        kind: String::new(),
        start_version: None,
        build_template_id: None,
        autorun: false,
        git_branch: None,
        survey_vars: Vec::new(),
        vaults: Vec::new(),
        suppress_success_alerts: false,
        app: "bash".into(),
        max_duration_secs: 0,
        runner_tag: None,
        allow_ansible_vars_in_task: false,
    }
}

/// A store with one project (alerts on), a template and 10 members with `alert` on.
fn setup(dir: &std::path::Path) -> (Store, u64, u64) {
    let store = Store::open(&dir.join("bench.redb")).expect("open");
    let mut users = Vec::new();
    for i in 0..10 {
        let u = store
            .create_user(NewUser {
                created: 1,
                username: format!("u{i}"),
                name: format!("U {i}"),
                email: format!("u{i}@example.com"),
                admin: false,
                external: false,
                alert: true,
                password_hash: String::new(),
            })
            .expect("user");
        users.push(u.id);
    }
    let (p, t) = store
        .transact(1, move |tx| {
            let mut project = Project {
                id: 0,
                name: "bench".into(),
                created: 1,
                alert: true,
                alert_chat: Some("-1".into()),
                max_parallel_tasks: 0,
                kind: String::new(),
            };
            let p = tx.insert_project(&mut project)?;
            for u in &users {
                tx.set_role(p, *u, Role::Guest)?;
            }
            let t = tx.insert(&mut template(p))?;
            Ok::<_, forge::store::Error>((p, t))
        })
        .expect("project");
    (store, p, t)
}

/// Inserts a running task, then commits its end (two durable commits).
fn finish_one(store: &Store, p: u64, t: u64) {
    let id = store
        .transact(2, move |tx| {
            let mut task = Task {
                status: TaskStatus::Running,
                start: Some(2),
                ..Task::waiting(p, t, 2)
            };
            tx.insert_task(&mut task)
        })
        .expect("insert");
    store
        .transact(3, move |tx| {
            let mut task = tx.task(id)?.expect("task");
            task.status = TaskStatus::Error;
            task.end = Some(3);
            tx.put_task(&task)
        })
        .expect("finish");
}

/// Inserts 100 running tasks, then ends them all in one transaction: the fsync is shared, so
/// the time per task is the work inside the transaction.
fn finish_hundred(store: &Store, p: u64, t: u64) {
    let ids = store
        .transact(2, move |tx| {
            (0..100)
                .map(|_| {
                    let mut task = Task {
                        status: TaskStatus::Running,
                        start: Some(2),
                        ..Task::waiting(p, t, 2)
                    };
                    tx.insert_task(&mut task)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("insert");
    store
        .transact(3, move |tx| {
            for id in &ids {
                let mut task = tx.task(*id)?.expect("task");
                task.status = TaskStatus::Error;
                task.end = Some(3);
                tx.put_task(&task)?;
            }
            Ok::<_, forge::store::Error>(())
        })
        .expect("finish");
}

fn finish(c: &mut Criterion) {
    let mut group = c.benchmark_group("finish_task");
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));
    for (name, channels) in [
        ("no_channel", &[][..]),
        ("five_channels", &[1, 2, 3, 4, 5][..]),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, p, t) = setup(dir.path());
        store.set_alert_channels(channels).expect("channels");
        // Each iteration: one durable insert and one durable finish (the insert is the same
        // in both cases, so the difference is the outbox's).
        group.bench_function(name, |b| b.iter(|| finish_one(&store, p, t)));
        group.throughput(Throughput::Elements(100));
        group.bench_function(format!("{name}_100_per_commit"), |b| {
            b.iter(|| finish_hundred(&store, p, t));
        });
        group.throughput(Throughput::Elements(1));
        let pending = store.pending_alert_count().expect("count");
        assert!(
            channels.is_empty() == (pending == 0),
            "{name}: {pending} rows"
        );
    }
    group.finish();
}

criterion_group!(benches, finish);
criterion_main!(benches);
