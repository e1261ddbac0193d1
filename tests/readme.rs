//! The README's curl walk-through, run from the README text itself so it cannot drift, and the
//! product docs' walk-through (`../shared/PRODUCT-API-DOCS.md`) where that file is present.

mod common;

use std::process::Command;

use common::TestServer;

/// Whether `curl` can run here (see [`common::tools::ready`]).
fn have_curl() -> bool {
    common::tools::require("curl", "the README walk-through").is_some()
}

/// The ```bash blocks of `text`, in order.
fn bash_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```bash") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap_or_default()),
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The ```bash blocks between the walk-through markers, in order.
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find("<!-- walkthrough:start -->")
        .expect("start marker");
    let end = readme.find("<!-- walkthrough:end -->").expect("end marker");
    bash_blocks(&readme[start..end])
}

/// Runs `script` with bash, `localhost:3000` pointing at the test server and the cookie jar in
/// a temp dir; returns stdout and stderr. Blocks this worker thread (the server runs on the
/// others) while curl talks to the server.
fn run(script: &str, server: &TestServer) -> (String, String) {
    tokio::task::block_in_place(|| run_blocking(script, server))
}

fn run_blocking(script: &str, server: &TestServer) -> (String, String) {
    let jar = server.dir.path().join("cookie-jar");
    let script = script
        .replace("http://localhost:3000", &server.base())
        .replace("/tmp/forge-cookie", &jar.display().to_string())
        .replace(
            "/tmp/forge-demo",
            &server.dir.path().join("demo").display().to_string(),
        );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "script failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_walkthrough_works_verbatim() {
    if !have_curl() {
        return;
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = walkthrough_blocks(&readme);
    assert!(blocks.len() >= 7, "found {} blocks", blocks.len());
    let s = TestServer::start().await;
    let (stdout, stderr) = run(&blocks.join("\n"), &s);

    assert!(
        stderr.contains("< HTTP/1.1 204"),
        "login answered 204:\n{stderr}"
    );
    assert!(
        stderr.contains("semaphore="),
        "the session cookie was set:\n{stderr}"
    );
    assert!(
        stdout.contains(r#""expired":false"#),
        "a token was created:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""username":"admin""#),
        "Bearer GET /api/user worked:\n{stdout}"
    );
    assert!(
        stderr.contains("< HTTP/1.1 201"),
        "token creation answered 201:\n{stderr}"
    );
    assert!(
        stdout.contains(r#""name":"Demo""#),
        "the project was created:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""type":"static""#),
        "the inventory was created:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""playbook":"hello.sh""#),
        "the template was created:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""status":"waiting""#),
        "the task was launched:\n{stdout}"
    );
    assert!(
        stdout.contains(
            "Started: 1\nRun TaskRunner with template: Hello\nPreparing: 1\nhello, world\n"
        ),
        "the followed output shows the run:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""status":"success""#),
        "the task succeeded:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""output":"hello, world""#),
        "paged output:\n{stdout}"
    );
    assert!(
        !stdout.contains("s3cret") && !stdout.contains("t0ps3cret"),
        "secrets leaked:\n{stdout}"
    );
    let codes: Vec<&str> = stdout.lines().filter(|l| l.len() == 3).collect();
    assert_eq!(
        codes,
        ["204", "204", "204", "401", "401"],
        "key, repository, environment created; expired token and old cookie refused:\n{stdout}"
    );
    // What the walk-through built is there, as the API shows it.
    let admin = s.admin().await;
    let templates = admin.get("/api/project/1/templates").await.json();
    assert_eq!(templates[0]["repository_id"], 1);
    assert_eq!(templates[0]["environment_id"], 2);
    assert_eq!(templates[0]["arguments"], r#"["world"]"#);
    let env = admin.get("/api/project/1/environment/2").await.json();
    assert_eq!(env["secrets"][0]["name"], "API_TOKEN");
}

#[tokio::test(flavor = "multi_thread")]
async fn product_docs_walkthrough_works() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/PRODUCT-API-DOCS.md");
    let Ok(docs) = std::fs::read_to_string(path) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the product docs must sit beside the repository in CI: {path}"
        );
        eprintln!("SKIPPED: {path} is not present");
        return;
    };
    if !have_curl() {
        return;
    }
    let s = TestServer::start().await;
    // The docs' blocks use placeholders; fill them the way a reader would.
    let docs = docs
        .replace("YOUR_LOGIN", common::ADMIN)
        .replace("YOUR_PASSWORD", common::ADMIN_PASSWORD);
    let blocks = bash_blocks(&docs);
    let find = |needle: &str| {
        blocks
            .iter()
            .find(|b| b.contains(needle))
            .unwrap_or_else(|| panic!("no block with {needle}"))
            .clone()
    };
    let (_, stderr) = run(&find("/api/auth/login"), &s);
    assert!(stderr.contains("< HTTP/1.1 204"), "{stderr}");
    let (stdout, _) = run(&find("/api/user/tokens\n"), &s);
    let token: serde_json::Value = serde_json::from_str(stdout.trim()).expect("token JSON");
    let token = token["id"].as_str().expect("id").to_owned();
    assert_eq!(token.len(), 44);
    let bearer = s.client().with_bearer(&token);
    assert_eq!(bearer.get("/api/user").await.status, 200);
    // The launch block runs template 1 of project 1: set that up as the README does.
    let admin = s.admin().await;
    let repo = s.dir.path().join("docs-repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("run.sh"), "echo launched from the docs\n").unwrap();
    assert_eq!(
        admin
            .post("/api/projects", serde_json::json!({"name": "Docs"}))
            .await
            .status,
        201
    );
    let r = admin
        .post(
            "/api/project/1/repositories",
            serde_json::json!({"name": "r", "project_id": 1, "git_url": repo, "ssh_key_id": 1}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = admin
        .post(
            "/api/project/1/templates",
            serde_json::json!({"name": "t", "project_id": 1, "app": "bash", "playbook": "run.sh",
                "repository_id": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let launch = find("/api/project/1/tasks").replace("YOUR_ACCESS_TOKEN", &token);
    let (stdout, stderr) = run(&launch, &s);
    assert!(stderr.contains("< HTTP/1.1 201"), "{stderr}");
    assert!(stdout.contains(r#""status":"waiting""#), "{stdout}");
    let mut done = false;
    for _ in 0..100 {
        if bearer.get("/api/project/1/tasks/1").await.json()["status"] == "success" {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(done, "the launched task did not succeed");
    let output = bearer.get("/api/project/1/tasks/1/output").await.json();
    assert!(
        output
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["output"] == "launched from the docs")
    );
    // The expiry block, last.
    let expire = find("-XDELETE").replace("YOUR_ACCESS_TOKEN", &token);
    let (_, stderr) = run(&expire, &s);
    assert!(stderr.contains("< HTTP/1.1 204"), "{stderr}");
    bearer.get("/api/user").await.assert_error(401);
}
