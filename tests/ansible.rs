//! An `ansible` template running a real playbook with the real `ansible-playbook` against
//! `localhost` (`ansible_connection=local`), through the real `forge` binary (issue 4; API.md
//! §8.3): a static inventory, the playbook in a local-path repository, an extra variable from
//! the environment's `json`. The task ends `success` and its output holds ansible's PLAY/TASK
//! lines and the messages.
//!
//! `ansible-playbook` comes from PATH or from the venv `.ci/install-tools.sh` makes
//! (`.ci/venv`). Without it the test fails in CI (`CI=true`) and is skipped elsewhere.

mod common;

use common::id_by_name;
use common::{at, id_of, ok_json};

use common::process::ServerProcess;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ADMIN, ADMIN_PASSWORD, Client};
use serde_json::json;

/// `forge serve` whose PATH starts with `ansible_dir`.
fn start_server(db: &Path, ansible_dir: &Path) -> ServerProcess {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(ansible_dir.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .expect("PATH");
    let path = path.to_str().expect("PATH is UTF-8").to_owned();
    ServerProcess::start(db, &[("PATH", path.as_str())])
}

/// `localhost` over the local connection. Modules run with the Python that runs
/// ansible-playbook itself: interpreter discovery may pick a `python3.x` shim on PATH (pyenv's)
/// that cannot run.
const INVENTORY: &str = "localhost ansible_connection=local ansible_python_interpreter='{{ ansible_playbook_python }}'\n";

const PLAYBOOK: &str = r#"- name: forge smoke play
  hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: hello-from-forge
    - name: show the extra var
      ansible.builtin.debug:
        msg: "greeting is {{ greeting }}"
    - name: run a module on the target
      ansible.builtin.command: echo ran-on-{{ inventory_hostname }}
      register: echoed
      changed_when: false
    - name: show what it printed
      ansible.builtin.debug:
        msg: "target said {{ echoed.stdout }}"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn ansible_playbook_runs_against_localhost() {
    let Some(ansible) = common::tools::require("ansible-playbook", "the ansible test") else {
        return;
    };
    let ansible = ansible
        .parent()
        .expect("a directory holds ansible-playbook");

    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir(repo.path().join("playbooks")).unwrap();
    std::fs::write(repo.path().join("playbooks/site.yml"), PLAYBOOK).unwrap();

    let server = start_server(&dir.path().join("forge.redb"), ansible);
    let mut a = Client::new(server.addr);
    assert_eq!(a.login(ADMIN, ADMIN_PASSWORD).await.status, 204);

    let r = a.post("/api/projects", json!({"name": "ansible"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let none = id_by_name(&a, &at(p, "keys"), "None").await;
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "playbooks", "project_id": p, "ssh_key_id": none, "git_branch": "",
                   "git_url": repo.path().display().to_string()}),
        )
        .await;
    assert_eq!(r.status, 204, "POST repositories: {}", r.text());
    let repo_id = id_by_name(&a, &at(p, "repositories"), "playbooks").await;
    let r = a
        .post(
            &at(p, "inventory"),
            json!({"name": "local", "project_id": p, "type": "static",
                   "inventory": INVENTORY}),
        )
        .await;
    assert_eq!(r.status, 201, "POST inventory: {}", r.text());
    let inv = id_of(&r.json());
    let r = a
        .post(
            &at(p, "environment"),
            json!({"name": "vars", "project_id": p,
                   "json": "{\"greeting\": \"hi-from-environment-json\"}", "env": "{}"}),
        )
        .await;
    assert_eq!(r.status, 204, "POST environment: {}", r.text());
    let env = id_by_name(&a, &at(p, "environment"), "vars").await;
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": "smoke", "project_id": p, "app": "ansible",
                   "playbook": "playbooks/site.yml", "inventory_id": inv,
                   "repository_id": repo_id, "environment_id": env}),
        )
        .await;
    assert_eq!(r.status, 201, "POST templates: {}", r.text());
    let tpl = id_of(&r.json());

    let r = a.post(&at(p, "tasks"), json!({"template_id": tpl})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let task = id_of(&r.json());

    let deadline = Instant::now() + Duration::from_secs(180);
    let t = loop {
        let t = ok_json(&a, &at(p, &format!("tasks/{task}"))).await;
        if matches!(t["status"].as_str(), Some("success" | "error" | "stopped")) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the ansible task never ended: {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = ok_json(&a, &at(p, &format!("tasks/{task}/output"))).await;
    let lines: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["output"].as_str().unwrap())
        .collect();
    assert_eq!(t["status"], "success", "{t}\noutput:\n{}", lines.join("\n"));
    assert!(t["start"].is_string() && t["end"].is_string(), "{t}");

    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
    };
    // ansible's own lines, in order.
    let order = [
        "PLAY [forge smoke play]",
        "TASK [say hello]",
        "\"msg\": \"hello-from-forge\"",
        "TASK [show the extra var]",
        "\"msg\": \"greeting is hi-from-environment-json\"",
        "TASK [run a module on the target]",
        "TASK [show what it printed]",
        "\"msg\": \"target said ran-on-localhost\"",
        "PLAY RECAP",
    ];
    let positions: Vec<usize> = order.iter().map(|n| pos(n)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "ansible's lines out of order ({positions:?}):\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("localhost") && l.contains("ok=4") && l.contains("failed=0")),
        "recap line for localhost:\n{}",
        lines.join("\n")
    );
    // Forge's own lines frame ansible's.
    assert_eq!(lines[0], format!("Task {task} added to queue"));
    assert!(has(&format!("Started: {task}")), "{lines:#?}");
    assert!(has(&format!("Preparing: {task}")), "{lines:#?}");
    assert!(pos(&format!("Preparing: {task}")) < positions[0]);
    // No ANSI colour codes in stored lines.
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "colour codes in the output:\n{}",
        lines.join("\n")
    );
}
