//! The README's curl walk-through, run from the README text itself so it cannot drift, and the
//! product's own API page (`docs/api.md`), whose curl blocks must work as printed.

mod common;

use std::process::Command;

use common::TestServer;

/// Whether `curl` and `jq` can run here (see [`common::tools::ready`]).
fn have_tools() -> bool {
    let missing: Vec<String> = ["curl", "jq"]
        .into_iter()
        .filter(|t| common::tools::find(t).is_none())
        .map(str::to_owned)
        .collect();
    common::tools::ready("the README walk-through", &missing)
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
    let script = script
        .replace("http://localhost:3000", &server.base())
        .replace(
            "/tmp/forge-",
            &format!("{}/forge-", server.dir.path().display()),
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

/// curl's own complaints (`Note: Unnecessary use of -X or --request, POST is already inferred.`).
fn curl_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("Note:") || l.starts_with("Warning:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_walkthrough_works_verbatim() {
    if !have_tools() {
        return;
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = walkthrough_blocks(&readme);
    assert!(blocks.len() >= 7, "found {} blocks", blocks.len());
    let s = TestServer::start().await;
    let admin = s.admin().await;
    // Twice against one database: the walk-through captures every id it uses, so the second
    // run works on its own project and task, not the first run's.
    for run_no in 1..=2 {
        let (stdout, stderr) = run(&blocks.join("\n"), &s);
        assert!(
            curl_warnings(&stderr).is_empty(),
            "curl warned: {:?}",
            curl_warnings(&stderr)
        );
        assert!(
            stderr.contains("< HTTP/1.1 204"),
            "login answered 204:\n{stderr}"
        );
        assert!(
            stderr.contains("< Set-Cookie: semaphore="),
            "the session cookie was set, as Go names the header:\n{stderr}"
        );
        for (needle, what) in [
            (r#""expired":false"#, "a token was created"),
            (r#""username":"admin""#, "Bearer GET /api/user worked"),
            (r#""name":"Demo""#, "the project was created"),
            (r#""type":"static""#, "the inventory was created"),
            (r#""playbook":"hello.sh""#, "the template was created"),
            (r#""status":"waiting""#, "the task was launched"),
            (r#""status":"success""#, "the task succeeded"),
            (r#""output":"hello, world""#, "paged output"),
        ] {
            assert!(stdout.contains(needle), "run {run_no}: {what}:\n{stdout}");
        }
        assert!(
            stderr.contains("< HTTP/1.1 201"),
            "token creation answered 201:\n{stderr}"
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

        // This run's objects, as the API shows them: the newest project named Demo.
        let projects = admin.get("/api/projects").await.json();
        let demos: Vec<u64> = projects
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "Demo")
            .map(common::id_of)
            .collect();
        assert_eq!(demos.len(), run_no, "{projects}");
        let p = *demos.iter().max().unwrap();
        let repos = common::ok_json(&admin, &common::at(p, "repositories")).await;
        let envs = common::ok_json(&admin, &common::at(p, "environment")).await;
        let prod = envs
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "prod")
            .unwrap_or_else(|| panic!("no prod environment: {envs}"));
        let templates = common::ok_json(&admin, &common::at(p, "templates")).await;
        assert_eq!(templates[0]["repository_id"], repos[0]["id"]);
        assert_eq!(templates[0]["environment_id"], prod["id"]);
        assert_eq!(templates[0]["arguments"], r#"["world"]"#);
        let detail = common::ok_json(
            &admin,
            &common::at(p, &format!("environment/{}", prod["id"])),
        )
        .await;
        assert_eq!(detail["secrets"][0]["name"], "API_TOKEN");
        let tasks = common::ok_json(&admin, &common::at(p, "tasks")).await;
        assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
        let t = common::id_of(&tasks[0]);
        assert!(
            stdout.contains(&format!(
                "Task {t} added to queue\nStarted: {t}\nRun TaskRunner with template: Hello\n\
                 Preparing: {t}\nhello, world\n"
            )),
            "run {run_no}: the followed output shows task {t}:\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn product_docs_walkthrough_works() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md");
    if !have_tools() {
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
    assert!(curl_warnings(&stderr).is_empty(), "{stderr}");
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

/// A user's clone has only the repository: the README names no file outside it, and every
/// relative link in it points at a file that exists.
#[test]
fn readme_needs_nothing_outside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "docs/api.md"] {
        let text = std::fs::read_to_string(root.join(doc)).expect(doc);
        for banned in ["../", "API.md", "§"] {
            assert!(!text.contains(banned), "{doc} mentions {banned:?}");
        }
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            assert!(
                root.join(target).exists(),
                "{doc} links to a missing {target}"
            );
        }
    }
}
