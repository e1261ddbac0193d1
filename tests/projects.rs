//! Projects, membership and roles, and the event log, through a real server (API.md §5, §6.8);
//! deleting a project is checked down to the redb tables.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Client, Resp, TestServer};
use forge::store::tables;
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use serde_json::{Value, json};

const PROJECT_FIELDS: &[&str] = &[
    "id",
    "name",
    "created",
    "alert",
    "alert_chat",
    "max_parallel_tasks",
    "type",
];
const MEMBER_FIELDS: &[&str] = &["id", "username", "name", "role"];
const USER_FIELDS: &[&str] = &[
    "id", "created", "username", "name", "email", "admin", "external", "alert",
];
const EVENT_FIELDS: &[&str] = &[
    "user_id",
    "project_id",
    "integration_id",
    "object_id",
    "object_type",
    "description",
    "created",
    "object_name",
    "project_name",
    "username",
];

/// The sorted field names of a JSON object.
fn fields(v: &Value) -> Vec<String> {
    let mut f: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    f.sort();
    f
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut f: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    f.sort();
    f
}

fn array(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", r.text()))
        .clone()
}

fn ids(list: &[Value]) -> Vec<u64> {
    list.iter().map(|v| v["id"].as_u64().expect("id")).collect()
}

fn strings(list: &[Value], field: &str) -> Vec<String> {
    list.iter()
        .map(|v| v[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn id_named(list: &[Value], name: &str) -> u64 {
    list.iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list:?}"))["id"]
        .as_u64()
        .expect("id")
}

fn expect(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
}

async fn create_project(c: &Client, name: &str) -> u64 {
    let r = c.post("/api/projects", json!({ "name": name })).await;
    expect(&r, 201, "create project");
    r.json()["id"].as_u64().expect("project id")
}

/// Creates a user with distinct username, display name and email; returns their id and a
/// logged-in client.
async fn user_with(s: &TestServer, username: &str, name: &str, email: &str) -> (u64, Client) {
    let a = s.admin().await;
    let r = a
        .post(
            "/api/users",
            json!({"name": name, "username": username, "email": email,
                   "password": "pw-of-user"}),
        )
        .await;
    expect(&r, 201, "create user");
    let id = r.json()["id"].as_u64().expect("id");
    let mut c = s.client();
    expect(&c.login(username, "pw-of-user").await, 204, "login");
    (id, c)
}

async fn add_member(c: &Client, p: u64, user: u64, role: &str) {
    let r = c
        .post(
            &format!("/api/project/{p}/users"),
            json!({"user_id": user, "role": role}),
        )
        .await;
    expect(&r, 204, "add member");
}

/// Ids of the objects made by [`fill_project`].
#[derive(Debug, Clone, Copy)]
struct Filled {
    ssh_key: u64,
    lp_key: u64,
    repository: u64,
    inventory: u64,
    environment: u64,
    template: u64,
}

/// Fills project `p` with two keys, a repository, an inventory, an environment with secrets
/// and a template that uses all of them.
async fn fill_project(c: &Client, p: u64, tag: &str) -> Filled {
    let base = format!("/api/project/{p}");
    let r = c
        .post(
            &format!("{base}/keys"),
            json!({"name": format!("{tag} ssh"), "type": "ssh", "project_id": p,
                   "ssh": {"login": "root", "private_key": "-----BEGIN KEY-----\nx\n"}}),
        )
        .await;
    expect(&r, 204, "create ssh key");
    let r = c
        .post(
            &format!("{base}/keys"),
            json!({"name": format!("{tag} vault"), "type": "login_password", "project_id": p,
                   "login_password": {"login": "", "password": "vault-pw"}}),
        )
        .await;
    expect(&r, 204, "create login_password key");
    let keys = array(&c.get(&format!("{base}/keys")).await);
    let ssh_key = id_named(&keys, &format!("{tag} ssh"));
    let lp_key = id_named(&keys, &format!("{tag} vault"));

    let r = c
        .post(
            &format!("{base}/repositories"),
            json!({"name": format!("{tag} repo"), "project_id": p,
                   "git_url": "https://example.com/org/repo.git", "git_branch": "main",
                   "ssh_key_id": ssh_key}),
        )
        .await;
    expect(&r, 204, "create repository");
    let repository = id_named(
        &array(&c.get(&format!("{base}/repositories")).await),
        &format!("{tag} repo"),
    );

    let r = c
        .post(
            &format!("{base}/inventory"),
            json!({"name": format!("{tag} hosts"), "project_id": p, "type": "static",
                   "inventory": "[all]\nlocalhost\n", "ssh_key_id": ssh_key}),
        )
        .await;
    expect(&r, 201, "create inventory");
    let inventory = r.json()["id"].as_u64().expect("inventory id");

    let r = c
        .post(
            &format!("{base}/environment"),
            json!({"name": format!("{tag} env"), "project_id": p, "json": "{\"a\":1}",
            "env": "{\"B\":\"c\"}", "password": "vault-password",
            "secrets": [
                {"operation": "create", "type": "env", "name": "TOKEN", "secret": "t0k"},
                {"operation": "create", "type": "var", "name": "db_pw", "secret": "pw"}
            ]}),
        )
        .await;
    expect(&r, 204, "create environment");
    let environment = id_named(
        &array(&c.get(&format!("{base}/environment")).await),
        &format!("{tag} env"),
    );

    let r = c
        .post(
            &format!("{base}/templates"),
            json!({"name": format!("{tag} deploy"), "project_id": p, "app": "ansible",
                   "playbook": "site.yml", "repository_id": repository,
                   "inventory_id": inventory, "environment_id": environment,
                   "vaults": [{"vault_key_id": lp_key}]}),
        )
        .await;
    expect(&r, 201, "create template");
    let template = r.json()["id"].as_u64().expect("template id");
    Filled {
        ssh_key,
        lp_key,
        repository,
        inventory,
        environment,
        template,
    }
}

// ---------------------------------------------------------------------------------------------
// Projects

#[tokio::test(flavor = "multi_thread")]
async fn project_crud() {
    let s = TestServer::start().await;
    let a = s.admin().await;

    let r = a
        .post(
            "/api/projects",
            json!({"name": "Demo", "alert": true, "alert_chat": "ops", "max_parallel_tasks": 3,
                   "type": "", "id": 77, "created": "2000-01-01T00:00:00Z"}),
        )
        .await;
    expect(&r, 201, "create project");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let demo = r.json();
    assert_eq!(fields(&demo), sorted(PROJECT_FIELDS), "{demo}");
    let p = demo["id"].as_u64().expect("id");
    assert_ne!(p, 77, "a client-supplied id is ignored");
    assert_eq!(demo["name"], "Demo");
    assert_eq!(demo["created"], "2025-05-21T02:35:12Z");
    assert_eq!(demo["alert"], true);
    assert_eq!(demo["alert_chat"], "ops");
    assert_eq!(demo["max_parallel_tasks"], 3);
    assert_eq!(demo["type"], "");
    assert_eq!(a.get(&format!("/api/project/{p}")).await.json(), demo);

    // The creator is the owner; the None key and the Empty environment come with it.
    assert_eq!(
        a.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "owner", "permissions": 15})
    );
    let keys = array(&a.get(&format!("/api/project/{p}/keys")).await);
    assert_eq!(strings(&keys, "name"), ["None"]);
    assert_eq!(keys[0]["type"], "none");
    let envs = array(&a.get(&format!("/api/project/{p}/environment")).await);
    assert_eq!(strings(&envs, "name"), ["Empty"]);
    assert_eq!(envs[0]["json"], "{}");
    let members = array(&a.get(&format!("/api/project/{p}/users")).await);
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["username"], "admin");
    assert_eq!(members[0]["role"], "owner");

    // A plain `{"name"}` body gets the defaults.
    let r = a.post("/api/projects", json!({"name": "Plain"})).await;
    expect(&r, 201, "create plain");
    let plain = r.json();
    assert_eq!(plain["alert"], false);
    assert_eq!(plain["alert_chat"], Value::Null);
    assert_eq!(plain["max_parallel_tasks"], 0);
    assert_eq!(plain["type"], "");

    // Empty names are refused and nothing is created.
    for bad in [json!({"name": ""}), json!({"name": "   "}), json!({})] {
        a.post("/api/projects", bad).await.assert_error(400);
    }
    assert_eq!(array(&a.get("/api/projects").await).len(), 2);

    // PUT: the body id must match the URL.
    let r = a
        .put(
            &format!("/api/project/{p}"),
            json!({"id": p + 100, "name": "Other"}),
        )
        .await;
    assert_eq!(
        r.assert_error(400),
        "Project ID in body and URL must be the same"
    );
    let r = a
        .put(&format!("/api/project/{p}"), json!({"name": "No id"}))
        .await;
    assert_eq!(
        r.assert_error(400),
        "Project ID in body and URL must be the same"
    );
    a.put(&format!("/api/project/{p}"), json!({"id": p, "name": ""}))
        .await
        .assert_error(400);
    assert_eq!(a.get(&format!("/api/project/{p}")).await.json(), demo);
    let r = a
        .put(
            &format!("/api/project/{p}"),
            json!({"id": p, "name": "Demo 2", "alert": false, "alert_chat": null,
                   "max_parallel_tasks": 1, "type": "x"}),
        )
        .await;
    expect(&r, 204, "update project");
    assert!(r.body.is_empty());
    let updated = a.get(&format!("/api/project/{p}")).await.json();
    assert_eq!(
        updated,
        json!({"id": p, "name": "Demo 2", "created": "2025-05-21T02:35:12Z", "alert": false,
               "alert_chat": null, "max_parallel_tasks": 1, "type": "x"})
    );

    // DELETE → 204, then gone everywhere.
    let r = a.delete(&format!("/api/project/{p}")).await;
    expect(&r, 204, "delete project");
    assert!(r.body.is_empty());
    a.get(&format!("/api/project/{p}")).await.assert_error(404);
    a.get(&format!("/api/project/{p}/keys"))
        .await
        .assert_error(404);
    a.delete(&format!("/api/project/{p}"))
        .await
        .assert_error(404);
    assert_eq!(
        ids(&array(&a.get("/api/projects").await)),
        [plain["id"].as_u64().unwrap()]
    );
    // Anonymous callers get 401.
    s.client().get("/api/projects").await.assert_error(401);
    s.client()
        .post("/api/projects", json!({"name": "x"}))
        .await
        .assert_error(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn project_lists_are_per_caller_and_sorted_by_name() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (bob_id, bob) = s.user("bob", false).await;
    let (_, carol) = s.user("carol", false).await;

    // A non-admin may not create projects by default (upstream's 401), and nothing is made.
    bob.post("/api/projects", json!({"name": "mine"}))
        .await
        .assert_error(401);

    let zeta = create_project(&a, "zeta").await;
    let alpha = create_project(&a, "alpha").await;
    let beta = create_project(&a, "beta").await;
    let all = array(&a.get("/api/projects").await);
    assert_eq!(strings(&all, "name"), ["alpha", "beta", "zeta"]);
    for p in &all {
        assert_eq!(fields(p), sorted(PROJECT_FIELDS));
    }

    assert!(array(&bob.get("/api/projects").await).is_empty());
    add_member(&a, zeta, bob_id, "guest").await;
    add_member(&a, alpha, bob_id, "manager").await;
    assert_eq!(ids(&array(&bob.get("/api/projects").await)), [alpha, zeta]);
    assert_eq!(
        bob.get(&format!("/api/project/{zeta}/role")).await.json(),
        json!({"role": "guest", "permissions": 0})
    );
    assert_eq!(
        bob.get(&format!("/api/project/{alpha}/role")).await.json(),
        json!({"role": "manager", "permissions": 5})
    );
    // Non-members never learn a project exists.
    bob.get(&format!("/api/project/{beta}"))
        .await
        .assert_error(404);
    bob.get(&format!("/api/project/{beta}/role"))
        .await
        .assert_error(404);
    bob.put(
        &format!("/api/project/{beta}"),
        json!({"id": beta, "name": "x"}),
    )
    .await
    .assert_error(404);
    bob.delete(&format!("/api/project/{beta}"))
        .await
        .assert_error(404);
    assert!(array(&carol.get("/api/projects").await).is_empty());
    // Members without UpdateProject get 403 for PUT and DELETE.
    for p in [zeta, alpha] {
        bob.put(&format!("/api/project/{p}"), json!({"id": p, "name": "x"}))
            .await
            .assert_error(403);
        bob.delete(&format!("/api/project/{p}"))
            .await
            .assert_error(403);
    }
    assert_eq!(
        strings(&array(&a.get("/api/projects").await), "name"),
        ["alpha", "beta", "zeta"]
    );
    // Invalid project ids in the path.
    a.get("/api/project/abc").await.assert_error(400);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_admins_create_projects_when_configured() {
    let s = TestServer::start_with(|c| c.non_admin_can_create_project = true).await;
    let a = s.admin().await;
    let (bob_id, bob) = s.user("bob", false).await;
    let (_, carol) = s.user("carol", false).await;

    let r = bob.post("/api/projects", json!({"name": "Bob's"})).await;
    expect(&r, 201, "non-admin creates a project");
    let p = r.json()["id"].as_u64().unwrap();
    assert_eq!(
        bob.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "owner", "permissions": 15})
    );
    let members = array(&bob.get(&format!("/api/project/{p}/users")).await);
    assert_eq!(ids(&members), [bob_id]);
    bob.post("/api/projects", json!({"name": ""}))
        .await
        .assert_error(400);

    assert_eq!(ids(&array(&bob.get("/api/projects").await)), [p]);
    assert!(array(&carol.get("/api/projects").await).is_empty());
    carol
        .get(&format!("/api/project/{p}"))
        .await
        .assert_error(404);
    // The admin sees it, has every permission, but no role in it.
    assert_eq!(ids(&array(&a.get("/api/projects").await)), [p]);
    assert_eq!(
        a.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "", "permissions": 0})
    );
    let r = a
        .put(
            &format!("/api/project/{p}"),
            json!({"id": p, "name": "Renamed"}),
        )
        .await;
    expect(&r, 204, "admin updates a project it is not a member of");
    expect(
        &bob.delete(&format!("/api/project/{p}")).await,
        204,
        "owner deletes",
    );
    assert!(array(&bob.get("/api/projects").await).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Deleting a project leaves no orphans

/// The tables [`fill_project`] and project creation write to (other project-scoped tables, such
/// as tasks, are only checked for leftovers).
const FILLED_TABLES: &[&str] = &[
    "keys",
    "repositories",
    "inventories",
    "environments",
    "templates",
    "projects",
    "project_members",
    "user_projects",
    "events_by_project",
];

/// Every key of interest in the database file, decoding no value.
#[derive(Debug, Default)]
struct Scan {
    /// Table name → (project, id) keys, for each `PROJECT_SCOPED` table.
    scoped: Vec<(String, Vec<(u64, u64)>)>,
    projects: Vec<u64>,
    /// (project, user).
    members: Vec<(u64, u64)>,
    /// (user, project).
    user_projects: Vec<(u64, u64)>,
    /// (project, event).
    project_events: Vec<(u64, u64)>,
    events: BTreeSet<u64>,
    /// Task id → project, from the task index.
    task_projects: Vec<(u64, u64)>,
    /// The ids of unfinished tasks.
    active_tasks: Vec<u64>,
    /// (project, template, task).
    template_tasks: Vec<(u64, u64, u64)>,
    /// The task ids output lines are stored under.
    output_tasks: BTreeSet<u64>,
}

/// Every key of table `$def` in read transaction `$tx`, or none when nothing was ever written
/// to it.
macro_rules! keys {
    ($tx:expr, $def:expr) => {
        match $tx.open_table($def) {
            Ok(table) => table
                .iter()
                .unwrap()
                .map(|row| row.unwrap().0.value())
                .collect(),
            Err(redb::TableError::TableDoesNotExist(_)) => Default::default(),
            Err(e) => panic!("{}: {e}", $def.name()),
        }
    };
}

fn scan(db: &Path) -> Scan {
    let db = redb::Database::open(db).expect("open the database file");
    let tx = db.begin_read().expect("read transaction");
    let mut out = Scan::default();
    for def in tables::PROJECT_SCOPED {
        let keys = match tx.open_table(*def) {
            Ok(table) => table
                .iter()
                .unwrap()
                .map(|row| row.unwrap().0.value())
                .collect(),
            // A table nothing was ever written to holds no orphans.
            Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => panic!("{}: {e}", def.name()),
        };
        out.scoped.push((def.name().to_owned(), keys));
    }
    out.projects = tx
        .open_table(tables::PROJECTID_PROJECT)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value())
        .collect();
    out.members = tx
        .open_table(tables::PROJECTUSER_ROLE)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value())
        .collect();
    out.user_projects = tx
        .open_table(tables::USERPROJECT)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value())
        .collect();
    out.project_events = tx
        .open_table(tables::PROJECT_EVENTID)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value())
        .collect();
    out.events = tx
        .open_table(tables::EVENTID_EVENT)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value())
        .collect();
    let task_projects: Vec<(u64, u64)> = match tx.open_table(tables::TASKID_PROJECT) {
        Ok(table) => table
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.value(), v.value())
            })
            .collect(),
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => panic!("task_projects: {e}"),
    };
    out.task_projects = task_projects;
    out.active_tasks = keys!(tx, tables::ACTIVE_TASK);
    out.template_tasks = keys!(tx, tables::TEMPLATE_TASK);
    let output: Vec<(u64, u64)> = keys!(tx, tables::OUTPUT_CHUNK);
    out.output_tasks = output.into_iter().map(|(task, _)| task).collect();
    out
}

impl Scan {
    /// Rows naming project `p`, per table (empty tables omitted).
    fn rows_of(&self, p: u64) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (name, keys) in &self.scoped {
            out.push((name.clone(), keys.iter().filter(|k| k.0 == p).count()));
        }
        out.push((
            "projects".into(),
            self.projects.iter().filter(|&&k| k == p).count(),
        ));
        out.push((
            "project_members".into(),
            self.members.iter().filter(|k| k.0 == p).count(),
        ));
        out.push((
            "user_projects".into(),
            self.user_projects.iter().filter(|k| k.1 == p).count(),
        ));
        out.push((
            "events_by_project".into(),
            self.project_events.iter().filter(|k| k.0 == p).count(),
        ));
        out
    }

    fn events_of(&self, p: u64) -> BTreeSet<u64> {
        self.project_events
            .iter()
            .filter(|k| k.0 == p)
            .map(|k| k.1)
            .collect()
    }

    /// The indexes agree with each other.
    fn assert_consistent(&self) {
        let members: BTreeSet<(u64, u64)> = self.members.iter().copied().collect();
        let reverse: BTreeSet<(u64, u64)> =
            self.user_projects.iter().map(|&(u, p)| (p, u)).collect();
        assert_eq!(members, reverse, "project_members vs user_projects");
        for (p, _) in &members {
            assert!(
                self.projects.contains(p),
                "membership of missing project {p}"
            );
        }
        for (p, e) in &self.project_events {
            assert!(
                self.projects.contains(p),
                "event index of missing project {p}"
            );
            assert!(
                self.events.contains(e),
                "event index names missing event {e}"
            );
        }
        for (name, keys) in &self.scoped {
            for (p, id) in keys {
                assert!(
                    self.projects.contains(p),
                    "{name} row ({p}, {id}) of a missing project"
                );
            }
        }
        // Every task row, index entry and output line belongs to a task that exists.
        let tasks: BTreeSet<(u64, u64)> = self
            .scoped
            .iter()
            .find(|(name, _)| name == "tasks")
            .map(|(_, keys)| keys.iter().copied().collect())
            .unwrap_or_default();
        let indexed: BTreeSet<(u64, u64)> =
            self.task_projects.iter().map(|&(t, p)| (p, t)).collect();
        assert_eq!(tasks, indexed, "tasks vs task_projects");
        let task_ids: BTreeSet<u64> = tasks.iter().map(|&(_, t)| t).collect();
        for t in &self.active_tasks {
            assert!(task_ids.contains(t), "active_tasks names missing task {t}");
        }
        for (p, tpl, t) in &self.template_tasks {
            assert!(
                tasks.contains(&(*p, *t)),
                "tasks_by_template ({p}, {tpl}, {t}) names a missing task"
            );
        }
        let orphans: Vec<&u64> = self.output_tasks.difference(&task_ids).collect();
        assert!(
            orphans.is_empty(),
            "output lines under task ids that no longer exist: {orphans:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_project_leaves_no_orphans() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (bob_id, _bob) = s.user("bob", false).await;
    let (carol_id, _carol) = s.user("carol", false).await;

    let doomed = create_project(&a, "doomed").await;
    let kept = create_project(&a, "kept").await;
    let filled = fill_project(&a, doomed, "D").await;
    let other = fill_project(&a, kept, "K").await;
    add_member(&a, doomed, bob_id, "manager").await;
    add_member(&a, doomed, carol_id, "guest").await;
    add_member(&a, kept, bob_id, "task_runner").await;
    // Updates add events too.
    let r = a
        .put(
            &format!("/api/project/{doomed}/keys/{}", filled.ssh_key),
            json!({"id": filled.ssh_key, "name": "D ssh 2", "project_id": doomed}),
        )
        .await;
    expect(&r, 204, "rename key");
    assert!(array(&a.get(&format!("/api/project/{doomed}/events")).await).len() >= 10);
    let kept_events_before = array(&a.get(&format!("/api/project/{kept}/events")).await);
    let kept_views = move |c: Client| async move {
        let mut out = Vec::new();
        for res in [
            "",
            "/keys",
            "/repositories",
            "/inventory",
            "/environment",
            "/templates",
            "/users",
            "/events",
        ] {
            out.push(c.get(&format!("/api/project/{kept}{res}")).await.json());
        }
        out.push(
            c.get(&format!(
                "/api/project/{kept}/environment/{}",
                other.environment
            ))
            .await
            .json(),
        );
        out
    };
    let kept_before = kept_views(a.clone()).await;

    // Before: the doomed project has rows in every table (so the check below means something).
    let dir = s.stop().await;
    let db = dir.path().join("forge.redb");
    let before = scan(&db);
    before.assert_consistent();
    for (table, n) in before.rows_of(doomed) {
        if FILLED_TABLES.contains(&table.as_str()) {
            assert!(
                n > 0,
                "{table}: no rows of the filled project before deleting it"
            );
        }
    }
    for (table, n) in before.rows_of(kept) {
        if FILLED_TABLES.contains(&table.as_str()) {
            assert!(n > 0, "{table}: no rows of the kept project");
        }
    }
    let doomed_events = before.events_of(doomed);
    assert!(doomed_events.len() >= 10);

    let s = TestServer::start_in(dir, |_| {}).await;
    let a = s.admin().await;
    expect(
        &a.delete(&format!("/api/project/{doomed}")).await,
        204,
        "delete project",
    );
    a.get(&format!("/api/project/{doomed}"))
        .await
        .assert_error(404);
    for path in [
        format!("/api/project/{doomed}/keys/{}", filled.lp_key),
        format!("/api/project/{doomed}/repositories/{}", filled.repository),
        format!("/api/project/{doomed}/inventory/{}", filled.inventory),
        format!("/api/project/{doomed}/templates/{}", filled.template),
    ] {
        a.get(&path).await.assert_error(404);
    }
    // The kept project is untouched (its events too).
    assert_eq!(kept_views(a.clone()).await, kept_before);
    assert_eq!(
        array(&a.get(&format!("/api/project/{kept}/events")).await),
        kept_events_before
    );
    // No event visible to the admin names the deleted project.
    let all_events = array(&a.get("/api/events").await);
    assert!(
        all_events.iter().all(|e| e["project_id"] != json!(doomed)),
        "{all_events:?}"
    );
    let dir = s.stop().await;

    let after = scan(&db_path(&dir));
    after.assert_consistent();
    for (table, n) in after.rows_of(doomed) {
        assert_eq!(n, 0, "{table}: rows of the deleted project remain");
    }
    for ((table, n_before), (_, n_after)) in
        before.rows_of(kept).into_iter().zip(after.rows_of(kept))
    {
        assert_eq!(
            n_before, n_after,
            "{table}: rows of the kept project changed"
        );
    }
    let orphans: Vec<&u64> = doomed_events.intersection(&after.events).collect();
    assert!(
        orphans.is_empty(),
        "events of the deleted project remain: {orphans:?}"
    );
    for (table, keys) in &after.scoped {
        let ids_before: Vec<&(u64, u64)> = before
            .scoped
            .iter()
            .find(|(t, _)| t == table)
            .unwrap()
            .1
            .iter()
            .filter(|k| k.0 == kept)
            .collect();
        let ids_after: Vec<&(u64, u64)> = keys.iter().filter(|k| k.0 == kept).collect();
        assert_eq!(ids_before, ids_after, "{table}");
    }
    // Bob is still a member of the kept project, and of nothing else.
    assert_eq!(
        after
            .user_projects
            .iter()
            .filter(|k| k.0 == bob_id)
            .collect::<Vec<_>>(),
        [&(bob_id, kept)]
    );
    assert!(after.user_projects.iter().all(|k| k.0 != carol_id));
    // Every event left is one the admin can list (none hidden, none orphaned): the delete
    // event itself outlives the project, without a project id.
    assert_eq!(after.events.len(), all_events.len());
    let delete_event = &all_events[0];
    assert_eq!(delete_event["object_type"], "project");
    assert_eq!(delete_event["object_id"], doomed);
    assert_eq!(delete_event["project_id"], Value::Null);
}

/// Prints without pause (so output is being stored when the delete comes), ignores SIGTERM
/// and leaves a grandchild that ignores it too in its process group.
const BUSY_SCRIPT: &str = r#"#!/usr/bin/env bash
trap 'echo "got TERM"' TERM
echo "script pid $$"
( trap '' TERM; sleep 300 ) &
echo "grandchild pid $!"
i=0
while true; do i=$((i+1)); echo "line $i"; sleep 0.01; done
"#;

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    state != "Z" && state != "X"
}

/// Starts `busy.sh` from `repo` in project `p`; returns the task id and, once it has printed
/// them, its script's and grandchild's pids.
async fn start_busy_task(a: &Client, p: u64, repo: &Path) -> (u64, i32, i32) {
    let keys = array(&a.get(&format!("/api/project/{p}/keys")).await);
    let none = keys[0]["id"].as_u64().unwrap();
    let r = a
        .post(
            &format!("/api/project/{p}/repositories"),
            json!({"name": "local", "project_id": p, "ssh_key_id": none, "git_branch": "",
                   "git_url": repo.display().to_string()}),
        )
        .await;
    expect(&r, 204, "add repository");
    let repo_id = array(&a.get(&format!("/api/project/{p}/repositories")).await)[0]["id"]
        .as_u64()
        .unwrap();
    let r = a
        .post(
            &format!("/api/project/{p}/templates"),
            json!({"name": "busy", "project_id": p, "app": "bash", "playbook": "busy.sh",
                   "repository_id": repo_id}),
        )
        .await;
    expect(&r, 201, "add template");
    let tpl = r.json()["id"].as_u64().unwrap();
    let r = a
        .post(
            &format!("/api/project/{p}/tasks"),
            json!({"template_id": tpl}),
        )
        .await;
    expect(&r, 201, "launch");
    let task = r.json()["id"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let lines: Vec<String> = array(
            &a.get(&format!("/api/project/{p}/tasks/{task}/output"))
                .await,
        )
        .iter()
        .map(|l| l["output"].as_str().unwrap_or_default().to_owned())
        .collect();
        let number = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix).and_then(|n| n.parse::<i32>().ok()))
        };
        if let (Some(script), Some(grandchild), true) = (
            number("script pid "),
            number("grandchild pid "),
            lines.iter().any(|l| l == "line 20"),
        ) {
            return (task, script, grandchild);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the busy task printed too little: {lines:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_project_stops_its_running_tasks_first() {
    let s = TestServer::start_with(|c| c.stop_grace_secs = 1).await;
    let a = s.admin().await;
    let doomed = create_project(&a, "doomed").await;
    let kept = create_project(&a, "kept").await;
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("busy.sh"), BUSY_SCRIPT).unwrap();
    let (gone_task, script, grandchild) = start_busy_task(&a, doomed, repo.path()).await;
    let (kept_task, kept_script, kept_grandchild) = start_busy_task(&a, kept, repo.path()).await;
    let pids = [script, grandchild, kept_script, kept_grandchild];
    let _cleanup = scopeguard(pids);

    expect(
        &a.delete(&format!("/api/project/{doomed}")).await,
        204,
        "delete a project whose task runs",
    );
    // By the time the delete answers, nothing of the task runs any more (SIGTERM was
    // ignored: SIGKILL on the whole group after the stop grace).
    assert!(
        !alive(script),
        "the deleted project's script {script} still runs"
    );
    assert!(
        !alive(grandchild),
        "the deleted project's grandchild {grandchild} still runs"
    );
    let work = s.dir.path().join("forge.redb.work").join("tasks");
    assert!(
        !work.join(gone_task.to_string()).exists(),
        "the stopped task's workspace remains"
    );
    a.get(&format!("/api/project/{doomed}/tasks/{gone_task}"))
        .await
        .assert_error(404);
    // The other project's task was left alone.
    assert!(alive(kept_script) && alive(kept_grandchild));
    let t = a
        .get(&format!("/api/project/{kept}/tasks/{kept_task}"))
        .await
        .json();
    assert_eq!(t["status"], "running", "{t}");
    expect(
        &a.post(
            &format!("/api/project/{kept}/tasks/{kept_task}/stop"),
            json!({"force": true}),
        )
        .await,
        204,
        "stop the other task",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while a
        .get(&format!("/api/project/{kept}/tasks/{kept_task}"))
        .await
        .json()["status"]
        != "stopped"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the kept task never stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let dir = s.stop().await;

    let after = scan(&db_path(&dir));
    after.assert_consistent();
    for (table, n) in after.rows_of(doomed) {
        assert_eq!(n, 0, "{table}: rows of the deleted project remain");
    }
    assert!(!after.output_tasks.contains(&gone_task));
    assert!(after.output_tasks.contains(&kept_task));
}

/// Kills the test's processes on drop, should an assertion fail before the server did.
fn scopeguard(pids: [i32; 4]) -> impl Drop {
    struct Kill([i32; 4]);
    impl Drop for Kill {
        fn drop(&mut self) {
            for pid in self.0 {
                if alive(pid) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
    }
    Kill(pids)
}

fn db_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("forge.redb")
}

// ---------------------------------------------------------------------------------------------
// Members

#[tokio::test(flavor = "multi_thread")]
async fn members_roles_and_leaving() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    // Names, usernames and emails sort differently.
    let (bob, bob_c) = user_with(&s, "bob", "Zoe", "m@example.com").await;
    let (carol, carol_c) = user_with(&s, "carol", "Yves", "b@example.com").await;
    let (dave, dave_c) = user_with(&s, "dave", "Xena", "z@example.com").await;
    let (erin, erin_c) = user_with(&s, "erin", "Wes", "e@example.com").await;
    let (frank, frank_c) = user_with(&s, "frank", "Vic", "f@example.com").await;
    let p = create_project(&a, "Team").await;
    let users = format!("/api/project/{p}/users");

    add_member(&a, p, bob, "manager").await;
    add_member(&a, p, carol, "guest").await;
    add_member(&a, p, dave, "task_runner").await;

    // Bad additions.
    a.post(&users, json!({"user_id": erin, "role": "boss"}))
        .await
        .assert_error(400);
    a.post(&users, json!({"user_id": erin, "role": ""}))
        .await
        .assert_error(400);
    a.post(&users, json!({"user_id": erin}))
        .await
        .assert_error(400);
    a.post(&users, json!({"user_id": 999, "role": "guest"}))
        .await
        .assert_error(404);
    a.post(&users, json!({"user_id": bob, "role": "guest"}))
        .await
        .assert_error(409);
    // Managers and guests may not manage members; non-members do not see the project.
    bob_c
        .post(&users, json!({"user_id": erin, "role": "guest"}))
        .await
        .assert_error(403);
    carol_c
        .post(&users, json!({"user_id": erin, "role": "guest"}))
        .await
        .assert_error(403);
    frank_c
        .post(&users, json!({"user_id": frank, "role": "owner"}))
        .await
        .assert_error(404);
    frank_c.get(&users).await.assert_error(404);

    // The list: shape, default order (name), every sort column, desc.
    let list = array(&carol_c.get(&users).await);
    for m in &list {
        assert_eq!(fields(m), sorted(MEMBER_FIELDS), "{m}");
    }
    assert_eq!(
        list,
        vec![
            json!({"id": 1, "username": "admin", "name": "Admin", "role": "owner"}),
            json!({"id": dave, "username": "dave", "name": "Xena", "role": "task_runner"}),
            json!({"id": carol, "username": "carol", "name": "Yves", "role": "guest"}),
            json!({"id": bob, "username": "bob", "name": "Zoe", "role": "manager"}),
        ]
    );
    let order = |q: &'static str| {
        let c = a.clone();
        let users = users.clone();
        async move { strings(&array(&c.get(&format!("{users}{q}")).await), "username") }
    };
    assert_eq!(order("?sort=name").await, ["admin", "dave", "carol", "bob"]);
    assert_eq!(
        order("?sort=username").await,
        ["admin", "bob", "carol", "dave"]
    );
    assert_eq!(
        order("?sort=email").await,
        ["admin", "carol", "bob", "dave"]
    );
    assert_eq!(order("?sort=role").await, ["carol", "bob", "admin", "dave"]);
    assert_eq!(
        order("?sort=name&order=desc").await,
        ["bob", "carol", "dave", "admin"]
    );
    assert_eq!(
        order("?sort=username&order=desc").await,
        ["dave", "carol", "bob", "admin"]
    );
    assert_eq!(
        order("?order=desc").await,
        ["bob", "carol", "dave", "admin"]
    );
    assert_eq!(
        order("?sort=bogus").await,
        ["admin", "dave", "carol", "bob"]
    );

    // One member: the full user object, for members only.
    let r = carol_c.get(&format!("{users}/{bob}")).await;
    expect(&r, 200, "member");
    let bob_user = r.json();
    assert_eq!(fields(&bob_user), sorted(USER_FIELDS), "{bob_user}");
    assert_eq!(bob_user, a.get(&format!("/api/users/{bob}")).await.json());
    assert!(bob_user.get("role").is_none());
    carol_c
        .get(&format!("{users}/{erin}"))
        .await
        .assert_error(404);
    a.get(&format!("{users}/999")).await.assert_error(404);
    frank_c
        .get(&format!("{users}/{bob}"))
        .await
        .assert_error(404);

    // Roles change; the new role is what the member gets.
    let r = a
        .put(&format!("{users}/{carol}"), json!({"role": "manager"}))
        .await;
    expect(&r, 204, "set role");
    assert_eq!(
        carol_c.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "manager", "permissions": 5})
    );
    a.put(&format!("{users}/{carol}"), json!({"role": "king"}))
        .await
        .assert_error(400);
    a.put(&format!("{users}/{carol}"), json!({}))
        .await
        .assert_error(400);
    a.put(&format!("{users}/{erin}"), json!({"role": "guest"}))
        .await
        .assert_error(404);
    bob_c
        .put(&format!("{users}/{dave}"), json!({"role": "owner"}))
        .await
        .assert_error(403);
    assert_eq!(
        dave_c.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "task_runner", "permissions": 1})
    );

    // A non-admin owner manages others but cannot change their own role.
    add_member(&a, p, erin, "owner").await;
    erin_c
        .put(&format!("{users}/{erin}"), json!({"role": "guest"}))
        .await
        .assert_error(400);
    assert_eq!(
        erin_c.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "owner", "permissions": 15})
    );
    expect(
        &erin_c
            .put(&format!("{users}/{carol}"), json!({"role": "guest"}))
            .await,
        204,
        "owner demotes another member",
    );
    expect(
        &erin_c
            .post(&users, json!({"user_id": frank, "role": "guest"}))
            .await,
        204,
        "owner adds a member",
    );
    assert_eq!(
        frank_c.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "guest", "permissions": 0})
    );

    // Removing members.
    bob_c
        .delete(&format!("{users}/{frank}"))
        .await
        .assert_error(403);
    expect(
        &erin_c.delete(&format!("{users}/{frank}")).await,
        204,
        "remove member",
    );
    frank_c
        .get(&format!("/api/project/{p}"))
        .await
        .assert_error(404);
    erin_c
        .delete(&format!("{users}/{frank}"))
        .await
        .assert_error(404);
    a.delete(&format!("{users}/999")).await.assert_error(404);

    // Leaving: a manager may, a non-admin owner may not.
    expect(
        &bob_c.delete(&format!("/api/project/{p}/me")).await,
        204,
        "manager leaves",
    );
    bob_c
        .get(&format!("/api/project/{p}"))
        .await
        .assert_error(404);
    bob_c
        .delete(&format!("/api/project/{p}/me"))
        .await
        .assert_error(404);
    assert!(array(&bob_c.get("/api/projects").await).is_empty());
    erin_c
        .delete(&format!("/api/project/{p}/me"))
        .await
        .assert_error(400);
    assert_eq!(
        erin_c.get(&format!("/api/project/{p}/role")).await.json(),
        json!({"role": "owner", "permissions": 15})
    );
    expect(
        &carol_c.delete(&format!("/api/project/{p}/me")).await,
        204,
        "guest leaves",
    );
    assert_eq!(
        strings(
            &array(&a.get(&format!("{users}?sort=username")).await),
            "username"
        ),
        ["admin", "dave", "erin"]
    );

    // Deleting a user removes their memberships.
    let q = create_project(&a, "Second").await;
    add_member(&a, q, dave, "manager").await;
    expect(
        &a.delete(&format!("/api/users/{dave}")).await,
        204,
        "delete user",
    );
    assert_eq!(
        strings(
            &array(&a.get(&format!("{users}?sort=username")).await),
            "username"
        ),
        ["admin", "erin"]
    );
    assert_eq!(
        strings(
            &array(&a.get(&format!("/api/project/{q}/users")).await),
            "username"
        ),
        ["admin"]
    );
    a.get(&format!("{users}/{dave}")).await.assert_error(404);
    a.put(&format!("{users}/{dave}"), json!({"role": "guest"}))
        .await
        .assert_error(404);
    // ... down to the tables.
    let dir = s.stop().await;
    let tables = scan(&db_path(&dir));
    tables.assert_consistent();
    assert!(
        tables.members.iter().all(|k| k.1 != dave),
        "{:?}",
        tables.members
    );
    assert!(tables.user_projects.iter().all(|k| k.0 != dave));
    assert!(tables.members.contains(&(p, erin)));
}

// ---------------------------------------------------------------------------------------------
// Events

/// The newest event of project `p` and the project's event count; asserts one new event of
/// `object_type` about `object_id` whose description mentions `mentions`.
async fn expect_event(
    c: &Client,
    p: u64,
    count: &mut usize,
    object_type: &str,
    object_id: u64,
    mentions: &str,
) -> Value {
    let events = array(&c.get(&format!("/api/project/{p}/events")).await);
    assert_eq!(
        events.len(),
        *count + 1,
        "one new event for {object_type} {object_id}: {events:#?}"
    );
    *count += 1;
    let e = events[0].clone();
    assert_eq!(fields(&e), sorted(EVENT_FIELDS), "{e}");
    assert_eq!(e["object_type"], object_type, "{e}");
    assert_eq!(e["object_id"], object_id, "{e}");
    assert_eq!(e["project_id"], p, "{e}");
    assert_eq!(e["integration_id"], Value::Null, "{e}");
    assert_eq!(e["object_name"], "", "{e}");
    let description = e["description"].as_str().expect("description");
    assert!(
        description.contains(mentions),
        "{description:?} should mention {mentions:?}"
    );
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_an_event() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (bob, _bob_c) = s.user("bob", false).await;
    let p = create_project(&a, "Events").await;
    let base = format!("/api/project/{p}");
    let mut n = 0;
    let created = expect_event(&a, p, &mut n, "project", p, "Events").await;
    assert_eq!(created["user_id"], 1);
    assert_eq!(created["username"], "admin");
    assert_eq!(created["project_name"], "Events");
    assert_eq!(created["created"], "2025-05-21T02:35:12Z");

    s.clock.advance(60);
    expect(
        &a.put(&base, json!({"id": p, "name": "Events 2"})).await,
        204,
        "update project",
    );
    let e = expect_event(&a, p, &mut n, "project", p, "Events 2").await;
    assert_eq!(e["created"], "2025-05-21T02:36:12Z");
    assert_eq!(e["project_name"], "Events 2");

    // Keys.
    s.clock.advance(1);
    let r = a
        .post(
            &format!("{base}/keys"),
            json!({"name": "deploy", "type": "ssh", "project_id": p,
                   "ssh": {"private_key": "PRIVATE"}}),
        )
        .await;
    expect(&r, 204, "create key");
    let key = id_named(&array(&a.get(&format!("{base}/keys")).await), "deploy");
    expect_event(&a, p, &mut n, "key", key, "deploy").await;
    let r = a
        .put(
            &format!("{base}/keys/{key}"),
            json!({"id": key, "name": "deploy2", "project_id": p}),
        )
        .await;
    expect(&r, 204, "update key");
    expect_event(&a, p, &mut n, "key", key, "deploy2").await;

    // Repositories.
    let r = a
        .post(
            &format!("{base}/repositories"),
            json!({"name": "repo", "project_id": p, "git_url": "https://example.com/r.git",
                   "git_branch": "main", "ssh_key_id": key}),
        )
        .await;
    expect(&r, 204, "create repository");
    let repo = id_named(
        &array(&a.get(&format!("{base}/repositories")).await),
        "repo",
    );
    expect_event(&a, p, &mut n, "repository", repo, "repo").await;
    let r = a
        .put(
            &format!("{base}/repositories/{repo}"),
            json!({"id": repo, "name": "repo2", "project_id": p,
                   "git_url": "https://example.com/r.git", "git_branch": "dev",
                   "ssh_key_id": key}),
        )
        .await;
    expect(&r, 204, "update repository");
    expect_event(&a, p, &mut n, "repository", repo, "repo2").await;

    // Inventories.
    let r = a
        .post(
            &format!("{base}/inventory"),
            json!({"name": "hosts", "project_id": p, "type": "static",
                   "inventory": "localhost"}),
        )
        .await;
    expect(&r, 201, "create inventory");
    let inv = r.json()["id"].as_u64().unwrap();
    expect_event(&a, p, &mut n, "inventory", inv, "hosts").await;
    let r = a
        .put(
            &format!("{base}/inventory/{inv}"),
            json!({"id": inv, "name": "hosts2", "project_id": p, "type": "static",
                   "inventory": "localhost"}),
        )
        .await;
    expect(&r, 204, "update inventory");
    expect_event(&a, p, &mut n, "inventory", inv, "hosts2").await;

    // Environments.
    let r = a
        .post(
            &format!("{base}/environment"),
            json!({"name": "prod", "project_id": p, "json": "{}"}),
        )
        .await;
    expect(&r, 204, "create environment");
    let env = id_named(&array(&a.get(&format!("{base}/environment")).await), "prod");
    expect_event(&a, p, &mut n, "environment", env, "prod").await;
    let r = a
        .put(
            &format!("{base}/environment/{env}"),
            json!({"id": env, "name": "prod2", "project_id": p, "json": "{}"}),
        )
        .await;
    expect(&r, 204, "update environment");
    expect_event(&a, p, &mut n, "environment", env, "prod2").await;

    // Templates.
    let r = a
        .post(
            &format!("{base}/templates"),
            json!({"name": "run", "project_id": p, "app": "bash", "playbook": "run.sh",
                   "repository_id": repo}),
        )
        .await;
    expect(&r, 201, "create template");
    let tpl = r.json()["id"].as_u64().unwrap();
    expect_event(&a, p, &mut n, "template", tpl, "run").await;
    let r = a
        .put(
            &format!("{base}/templates/{tpl}"),
            json!({"id": tpl, "name": "run2", "project_id": p, "app": "bash",
                   "playbook": "run.sh", "repository_id": repo}),
        )
        .await;
    expect(&r, 204, "update template");
    expect_event(&a, p, &mut n, "template", tpl, "run2").await;

    // Members.
    add_member(&a, p, bob, "guest").await;
    expect_event(&a, p, &mut n, "user", bob, "bob").await;
    let r = a
        .put(&format!("{base}/users/{bob}"), json!({"role": "manager"}))
        .await;
    expect(&r, 204, "set role");
    expect_event(&a, p, &mut n, "user", bob, "bob").await;
    expect(
        &a.delete(&format!("{base}/users/{bob}")).await,
        204,
        "remove member",
    );
    expect_event(&a, p, &mut n, "user", bob, "bob").await;

    // Deletes, in dependency order.
    expect(
        &a.delete(&format!("{base}/templates/{tpl}")).await,
        204,
        "delete template",
    );
    expect_event(&a, p, &mut n, "template", tpl, "run2").await;
    expect(
        &a.delete(&format!("{base}/environment/{env}")).await,
        204,
        "delete environment",
    );
    expect_event(&a, p, &mut n, "environment", env, "prod2").await;
    expect(
        &a.delete(&format!("{base}/inventory/{inv}")).await,
        204,
        "delete inventory",
    );
    expect_event(&a, p, &mut n, "inventory", inv, "hosts2").await;
    expect(
        &a.delete(&format!("{base}/repositories/{repo}")).await,
        204,
        "delete repository",
    );
    expect_event(&a, p, &mut n, "repository", repo, "repo2").await;
    expect(
        &a.delete(&format!("{base}/keys/{key}")).await,
        204,
        "delete key",
    );
    expect_event(&a, p, &mut n, "key", key, "deploy2").await;

    // Failed changes record nothing.
    a.put(&base, json!({"id": p + 1, "name": "x"}))
        .await
        .assert_error(400);
    a.post(&format!("{base}/keys"), json!({"name": "", "type": "none"}))
        .await
        .assert_error(400);
    a.post(
        &format!("{base}/users"),
        json!({"user_id": bob, "role": "nope"}),
    )
    .await
    .assert_error(400);
    let events = array(&a.get(&format!("{base}/events")).await);
    assert_eq!(events.len(), n);
    // Newest first, every one with the project's current name and the actor.
    let times = strings(&events, "created");
    let mut by_time = times.clone();
    by_time.sort_by(|x, y| y.cmp(x));
    assert_eq!(times, by_time);
    for e in &events {
        assert_eq!(e["project_name"], "Events 2", "{e}");
        assert_eq!(e["username"], "admin", "{e}");
        assert_eq!(e["user_id"], 1, "{e}");
    }
    assert_eq!(array(&a.get(&format!("{base}/events/last")).await), events);
    let global: Vec<Value> = array(&a.get("/api/events").await)
        .into_iter()
        .filter(|e| e["project_id"] == p)
        .collect();
    assert_eq!(global, events);

    // Deleting the project is an event too; it outlives the project.
    expect(&a.delete(&base).await, 204, "delete project");
    let global = array(&a.get("/api/events").await);
    let e = &global[0];
    assert_eq!(e["object_type"], "project");
    assert_eq!(e["object_id"], p);
    assert_eq!(e["user_id"], 1);
    assert!(
        e["description"].as_str().unwrap().contains("Events 2"),
        "{e}"
    );
    assert_eq!(array(&a.get("/api/events/last").await)[0], *e);
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_and_failed_logins_are_events_with_the_client_address() {
    let s = TestServer::start().await;
    let (bob, mut bob_c) = s.user("bob", false).await;
    let a = s.admin().await;

    s.clock.advance(10);
    let mut anon = s.client();
    anon.login("bob", "wrong password").await.assert_error(401);
    s.clock.advance(10);
    expect(&bob_c.login("bob", "pw-of-user").await, 204, "bob logs in");

    let events = array(&a.get("/api/events").await);
    for e in &events {
        assert_eq!(fields(e), sorted(EVENT_FIELDS), "{e}");
    }
    let ok = &events[0];
    assert_eq!(ok["user_id"], bob, "{ok}");
    assert_eq!(ok["username"], "bob");
    assert_eq!(ok["project_id"], Value::Null);
    assert_eq!(ok["project_name"], Value::Null);
    assert_eq!(ok["integration_id"], Value::Null);
    assert_eq!(ok["created"], "2025-05-21T02:35:32Z");
    let text = ok["description"].as_str().unwrap();
    assert!(text.contains("127.0.0.1") && text.contains("bob"), "{text}");

    let failed = &events[1];
    assert_eq!(failed["project_id"], Value::Null, "{failed}");
    assert_eq!(failed["user_id"], Value::Null, "{failed}");
    assert_eq!(failed["created"], "2025-05-21T02:35:22Z");
    let text = failed["description"].as_str().unwrap();
    assert!(text.contains("127.0.0.1") && text.contains("bob"), "{text}");
    assert!(
        !text.contains("wrong password"),
        "the password is not recorded: {text}"
    );
    // An unknown account's failure is recorded too.
    anon.login("nobody", "x").await.assert_error(401);
    let e = &array(&a.get("/api/events/last").await)[0];
    assert!(
        e["description"].as_str().unwrap().contains("127.0.0.1"),
        "{e}"
    );
    assert_eq!(e["project_id"], Value::Null);
    // A non-admin sees their own login, not the admin's.
    let seen = array(&bob_c.get("/api/events").await);
    assert!(seen.iter().any(|e| e["description"] == ok["description"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_visible_to_members_only() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (bob, bob_c) = s.user("bob", false).await;
    let secret_project = create_project(&a, "Hidden").await;
    let shared = create_project(&a, "Shared").await;
    fill_project(&a, secret_project, "H").await;
    add_member(&a, shared, bob, "guest").await;

    bob_c
        .get(&format!("/api/project/{secret_project}/events"))
        .await
        .assert_error(404);
    bob_c
        .get(&format!("/api/project/{secret_project}/events/last"))
        .await
        .assert_error(404);
    for path in ["/api/events", "/api/events/last"] {
        let seen = array(&bob_c.get(path).await);
        assert!(
            seen.iter().all(|e| e["project_id"] != secret_project),
            "{path}: {seen:#?}"
        );
        assert!(
            seen.iter().all(|e| e["project_name"] != "Hidden"),
            "{path}: {seen:#?}"
        );
        // Bob does see the shared project's events.
        let shared_events: Vec<&Value> =
            seen.iter().filter(|e| e["project_id"] == shared).collect();
        assert_eq!(shared_events.len(), 2, "{path}: {seen:#?}");
    }
    let guest_view = array(&bob_c.get(&format!("/api/project/{shared}/events")).await);
    assert_eq!(
        guest_view,
        array(&a.get(&format!("/api/project/{shared}/events")).await)
    );
    // The admin sees everything.
    let all = array(&a.get("/api/events").await);
    assert!(all.iter().any(|e| e["project_id"] == secret_project));
    s.client().get("/api/events").await.assert_error(401);
}

#[tokio::test(flavor = "multi_thread")]
async fn last_events_are_the_newest_200() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = create_project(&a, "P-0").await;
    for i in 1..=210 {
        let r = a
            .put(
                &format!("/api/project/{p}"),
                json!({"id": p, "name": format!("P-{i}")}),
            )
            .await;
        expect(&r, 204, "update project");
    }
    let all = array(&a.get(&format!("/api/project/{p}/events")).await);
    assert_eq!(all.len(), 211);
    let last = array(&a.get(&format!("/api/project/{p}/events/last")).await);
    assert_eq!(last.len(), 200);
    assert_eq!(last[..], all[..200]);
    assert_eq!(last[0]["description"], "Project P-210 updated");
    assert_eq!(last[199]["description"], "Project P-11 updated");
    assert!(
        all[210]["description"].as_str().unwrap().contains("P-0"),
        "{}",
        all[210]
    );

    let global_all = array(&a.get("/api/events").await);
    assert!(global_all.len() > 211, "{}", global_all.len());
    let global_last = array(&a.get("/api/events/last").await);
    assert_eq!(global_last.len(), 200);
    assert_eq!(global_last[..], global_all[..200]);
}
