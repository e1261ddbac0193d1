//! The Postman collections in `docs/postman/`:
//!
//! - `walkthrough.postman_collection.json`, the product docs' API walk-through kept by hand
//!   (log in, create a token, set up a project, run a bash task, read its output, expire the
//!   token, log out; every request carries `pm.test` assertions), runs green in newman against
//!   the real `forge` binary;
//! - `forge.postman_collection.json`, generated from `docs/openapi.json` by
//!   `docs/postman/generate.sh`, is what the spec gives today (`generate.sh --check`), holds
//!   exactly the spec's operations, and is what `GET /api/postman.json` serves.
//!
//! newman and openapi-to-postmanv2 are npm packages pinned in `tests/js/package.json` and
//! installed into `tests/js/node_modules` by `.ci/install-tools.sh`; they need `node`. Without
//! them the tests that run them fail in CI (`CI=true`) and are skipped elsewhere.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::process::ServerProcess;
use common::tools::{self, root};
use common::{ADMIN, ADMIN_PASSWORD, TestServer};
use serde_json::Value;

/// A JSON file of the repository.
fn read_json(rel: &str) -> Value {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Whether `node` runs and `tests/js/node_modules/<module>` exists (see [`tools::ready`]).
fn have_node_module(module: &str, what: &str) -> bool {
    let mut missing = Vec::new();
    if tools::find("node").is_none() {
        missing.push("node".to_owned());
    }
    if !tools::has_node_module(module) {
        missing.push(format!("tests/js/node_modules/{module}"));
    }
    tools::ready(what, &missing)
}

#[test]
fn walkthrough_collection_passes_in_newman() {
    if !have_node_module("newman", "the Postman walk-through") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // The repository the walk-through's template runs from: the README's demo script.
    let repo = dir.path().join("demo");
    std::fs::create_dir(&repo).expect("repo dir");
    std::fs::write(repo.join("hello.sh"), "echo \"hello, $1\"\n").expect("script");
    let server = ServerProcess::start(&dir.path().join("forge.redb"), &[]);

    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let junit = artifacts.join("newman-walkthrough.xml");
    let _ = std::fs::remove_file(&junit);
    let out = Command::new(root().join("tests/js/node_modules/.bin/newman"))
        .current_dir(root())
        .arg("run")
        .arg("docs/postman/walkthrough.postman_collection.json")
        .args(["--env-var", &format!("baseUrl=http://{}", server.addr)])
        .args(["--env-var", &format!("username={ADMIN}")])
        .args(["--env-var", &format!("password={ADMIN_PASSWORD}")])
        .args(["--env-var", &format!("repoPath={}", repo.display())])
        .args(["--reporters", "cli,junit", "--reporter-junit-export"])
        .arg(&junit)
        .args(["--color", "off", "--disable-unicode"])
        // A hung request fails the run instead of the test suite.
        .args(["--timeout-request", "30000", "--timeout", "120000"])
        .stdin(Stdio::null())
        .output()
        .expect("run newman");
    let report = tools::show(&out);
    assert!(
        out.status.success(),
        "newman failed:\n{report}\nserver log:\n{}",
        String::from_utf8_lossy(&server.log())
    );
    println!("{report}");
    // The run did what the collection says, not a subset of it.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "Log in",
        "Create an API token (with the session cookie)",
        "Create a bash template",
        "Poll the task until it ends",
        "Read the task output",
        "The expired token is refused",
        "The old session cookie is refused",
    ] {
        assert!(
            stdout.contains(name),
            "newman did not run {name:?}:\n{report}"
        );
    }
    let xml = std::fs::read_to_string(&junit)
        .unwrap_or_else(|e| panic!("no JUnit report at {}: {e}\n{report}", junit.display()));
    assert!(xml.contains("<testsuites"), "not a JUnit report: {xml}");
}

#[test]
fn generated_collection_is_up_to_date() {
    if !have_node_module("openapi-to-postmanv2", "docs/postman/generate.sh") {
        return;
    }
    let out = Command::new("bash")
        .current_dir(root())
        .args(["docs/postman/generate.sh", "--check"])
        .stdin(Stdio::null())
        .output()
        .expect("run generate.sh");
    assert!(
        out.status.success(),
        "docs/postman/forge.postman_collection.json is not what docs/openapi.json gives; \
         run docs/postman/generate.sh and commit the result:\n{}",
        tools::show(&out)
    );
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// `/api/project/{}/tasks` for `/api/project/{project_id}/tasks`: path parameters named
/// nothing, whatever their names.
fn normalise(segments: impl IntoIterator<Item = String>) -> String {
    let mut path = String::new();
    for s in segments {
        if s.is_empty() {
            continue;
        }
        path.push('/');
        let param = (s.starts_with('{') && s.ends_with('}')) || s.starts_with(':');
        path.push_str(if param { "{}" } else { &s });
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// Every `(METHOD, normalised path)` of the spec, with the path as the spec writes it.
fn spec_operations(spec: &Value) -> BTreeMap<(String, String), String> {
    let paths = spec["paths"]
        .as_object()
        .expect("docs/openapi.json has no `paths` object");
    let mut ops = BTreeMap::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                let key = (
                    method.to_ascii_uppercase(),
                    normalise(path.split('/').map(str::to_owned)),
                );
                ops.insert(key, path.clone());
            }
        }
    }
    ops
}

/// The path segments of a Postman request URL (an object with `path`, or a string), without
/// the `{{baseUrl}}` host; `{{param}}` segments become `{param}`.
fn url_segments(url: &Value) -> Vec<String> {
    let segments: Vec<String> = match url {
        Value::String(raw) => raw
            .split('?')
            .next()
            .unwrap_or_default()
            .split('/')
            .filter(|s| !s.starts_with("{{baseUrl}}"))
            .map(str::to_owned)
            .collect(),
        _ => match &url["path"] {
            Value::Array(parts) => parts
                .iter()
                .map(|p| p.as_str().expect("path segment").to_owned())
                .collect(),
            Value::String(p) => p.split('/').map(str::to_owned).collect(),
            other => panic!("request URL without a path: {other}"),
        },
    };
    segments
        .into_iter()
        .map(
            |s| match s.strip_prefix("{{").and_then(|s| s.strip_suffix("}}")) {
                Some(name) => format!("{{{name}}}"),
                None => s,
            },
        )
        .collect()
}

/// Every request of a collection (folders walked) as `(METHOD, normalised path)` with its name.
fn collection_requests(items: &Value, out: &mut Vec<((String, String), String)>) {
    for item in items.as_array().expect("`item` is an array") {
        if let Some(children) = item.get("item") {
            collection_requests(children, out);
            continue;
        }
        let request = &item["request"];
        let method = request["method"]
            .as_str()
            .unwrap_or_else(|| panic!("request without a method: {item}"))
            .to_ascii_uppercase();
        let path = normalise(url_segments(&request["url"]));
        let name = item["name"].as_str().unwrap_or_default().to_owned();
        out.push(((method, path), name));
    }
}

#[test]
fn generated_collection_covers_every_operation() {
    let spec = read_json("docs/openapi.json");
    let collection = read_json("docs/postman/forge.postman_collection.json");
    assert_eq!(
        collection["info"]["schema"],
        "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
    );
    let ops = spec_operations(&spec);
    assert!(!ops.is_empty(), "docs/openapi.json has no operations");
    let mut requests = Vec::new();
    collection_requests(&collection["item"], &mut requests);

    let mut seen: BTreeMap<&(String, String), Vec<&str>> = BTreeMap::new();
    for (op, name) in &requests {
        seen.entry(op).or_default().push(name);
    }
    let missing: Vec<String> = ops
        .iter()
        .filter(|(op, _)| !seen.contains_key(op))
        .map(|((method, _), path)| format!("{method} {path}"))
        .collect();
    let extra: Vec<String> = seen
        .keys()
        .filter(|op| !ops.contains_key(*op))
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|((method, path), names)| format!("{method} {path} ({names:?})"))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && twice.is_empty(),
        "the collection does not match the spec (run docs/postman/generate.sh)\n\
         in the spec, not in the collection: {missing:#?}\n\
         in the collection, not in the spec: {extra:#?}\n\
         in the collection more than once: {twice:#?}"
    );
    assert_eq!(requests.len(), ops.len());
    // Requests authenticate with the Bearer token from the `bearerToken` variable, on baseUrl.
    let variables: Vec<&str> = collection["variable"]
        .as_array()
        .expect("collection variables")
        .iter()
        .filter_map(|v| v["key"].as_str())
        .collect();
    assert!(variables.contains(&"baseUrl"), "{variables:?}");
    assert!(variables.contains(&"bearerToken"), "{variables:?}");
    assert_eq!(collection["auth"]["type"], "bearer");
    assert_eq!(collection["auth"]["bearer"][0]["value"], "{{bearerToken}}");
}

/// Counts the requests below `items`, asserting each has a test script with a status check.
fn assert_tests(items: &Value, count: &mut usize) {
    for item in items.as_array().expect("`item` is an array") {
        if let Some(children) = item.get("item") {
            assert_tests(children, count);
            continue;
        }
        *count += 1;
        let tests: String = item["event"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["listen"] == "test")
            .flat_map(|e| e["script"]["exec"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            tests.contains("pm.test(") && tests.contains("to.have.status("),
            "request {} has no status assertion",
            item["name"]
        );
    }
}

/// The walk-through collection is what the task says: v2.1, the three variables, and a
/// `pm.test` in every request's test script.
#[test]
fn walkthrough_collection_has_tests_everywhere() {
    let collection = read_json("docs/postman/walkthrough.postman_collection.json");
    assert_eq!(
        collection["info"]["schema"],
        "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
    );
    let variables: BTreeMap<&str, &str> = collection["variable"]
        .as_array()
        .expect("collection variables")
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap_or_default(),
                v["value"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(variables.get("baseUrl"), Some(&"http://127.0.0.1:3000"));
    assert!(variables.contains_key("username") && variables.contains_key("password"));

    let mut count = 0;
    assert_tests(&collection["item"], &mut count);
    assert!(count >= 15, "only {count} requests");

    // Pretty-printed with two-space indentation (a level at a time, no tabs).
    let path = root().join("docs/postman/walkthrough.postman_collection.json");
    let text = std::fs::read_to_string(path).expect("walk-through");
    assert!(text.ends_with("}\n") && !text.contains('\t'));
    let mut previous = 0;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        assert!(
            indent % 2 == 0 && indent <= previous + 2,
            "line {}: not 2-space pretty-printed JSON: {line:?}",
            n + 1
        );
        previous = indent;
    }
    assert!(text.lines().count() > 100, "not pretty-printed");
}

#[tokio::test(flavor = "multi_thread")]
async fn served_collection_is_the_committed_one() {
    let committed = read_json("docs/postman/forge.postman_collection.json");
    let s = TestServer::start().await;
    let r = s.client().get("/api/postman.json").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        r.json() == committed,
        "GET /api/postman.json is not docs/postman/forge.postman_collection.json"
    );
}
