//! Event lists longer than one read page (issue 16): `/api/events` and
//! `/api/project/{p}/events` have no limit upstream, so they were built whole in memory.
//! Past one page (1000 events) they are streamed as they are read: chunked, without a
//! length, with the same bytes (compact JSON, a newline), newest first across page edges;
//! `/events/last` keeps upstream's 200.

mod common;

use common::{Client, TestServer, at, new_project};
use serde_json::{Value, json};

/// GETs `path` and checks the streamed form: 200, JSON, no length, the canonical bytes.
async fn streamed_list(c: &Client, path: &str) -> Vec<Value> {
    let r = c.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.header("content-length"), None, "{path}: not streamed");
    let list: Vec<Value> = serde_json::from_slice(&r.body).expect("JSON");
    let mut canonical = serde_json::to_vec(&list).unwrap();
    canonical.push(b'\n');
    assert!(r.body[..] == canonical[..], "{path}: bytes differ");
    list
}

fn descriptions(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| e["description"].as_str().expect("description").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn long_event_lists_are_streamed_newest_first_with_the_same_bytes() {
    const KEYS: usize = 2_100;
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Busy").await;
    let other = new_project(&a, "Quiet").await;
    // 2 100 events in project Busy, 8 writers at once.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let a = a.clone();
            tokio::spawn(async move {
                for i in (w..KEYS).step_by(8) {
                    let r = a
                        .post(
                            &at(p, "keys"),
                            json!({"name": format!("key {i}"), "type": "none", "project_id": p}),
                        )
                        .await;
                    assert_eq!(r.status, 204, "{}", r.text());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }

    let project = streamed_list(&a, &at(p, "events")).await;
    let created = descriptions(&project)
        .iter()
        .filter(|d| d.contains("key "))
        .count();
    assert_eq!(created, KEYS, "{:?}", &descriptions(&project)[..5]);
    assert!(project.iter().all(|e| e["project_id"] == p));
    let all = streamed_list(&a, "/api/events").await;
    assert!(
        all.len() > project.len(),
        "{} ≤ {}",
        all.len(),
        project.len()
    );
    assert!(all.iter().any(|e| e["project_id"] == other));
    // Newest first across page edges: the project's events are the global list's, in order.
    let in_project: Vec<&Value> = all.iter().filter(|e| e["project_id"] == p).collect();
    assert_eq!(in_project.len(), project.len());
    assert!(in_project.iter().zip(&project).all(|(a, b)| *a == b));
    // The newest 200, as before.
    let last = a.get("/api/events/last").await.json();
    assert_eq!(last.as_array().unwrap()[..], all[..200]);
    let last = a.get(&at(p, "events/last")).await.json();
    assert_eq!(last.as_array().unwrap()[..], project[..200]);
    // A short list is one whole answer, with its length.
    let r = a.get(&at(other, "events")).await;
    assert!(r.header("content-length").is_some());
    assert!(!r.json().as_array().unwrap().is_empty());
}
