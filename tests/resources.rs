//! Project resources through a real server (issue 3; API.md §6.1–6.5): access keys,
//! repositories, inventories, environments and templates — CRUD with exact status codes and
//! JSON shapes, sorting, refs and in-use deletes, environment secrets, and bad input that must
//! be refused with 400 `{"error": ...}` without writing anything.

mod common;

use common::{at, id_of, new_project};

use common::{Client, Resp, TestServer};
use std::collections::BTreeMap;

use serde_json::{Value, json};

// =============================================================================================
// Helpers
// =============================================================================================

/// `base` with the fields of `patch` set (a `null` in `patch` removes the field).
fn with(base: &Value, patch: Value) -> Value {
    let mut out = base.clone();
    let obj = out.as_object_mut().expect("base is an object");
    for (k, v) in patch.as_object().expect("patch is an object") {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    out
}

/// `v` without the named fields.
fn strip(v: &Value, fields: &[&str]) -> Value {
    let mut out = v.clone();
    if let Some(obj) = out.as_object_mut() {
        for f in fields {
            obj.remove(*f);
        }
    }
    out
}

fn names(items: &[Value]) -> Vec<String> {
    column(items, "name")
}

fn column(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i[field]
                .as_str()
                .unwrap_or_else(|| panic!("no string `{field}` in {i}"))
                .to_owned()
        })
        .collect()
}

/// GET of a list: 200, `application/json`, a plain array (never `null`).
async fn list(a: &Client, path: &str) -> Vec<Value> {
    let r = a.get(path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "GET {path}"
    );
    match r.json() {
        Value::Array(items) => items,
        other => panic!("GET {path}: not an array: {other}"),
    }
}

/// GET of one object: 200 with JSON.
async fn get_ok(a: &Client, path: &str) -> Value {
    let r = a.get(path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "GET {path}"
    );
    r.json()
}

/// 204 with an empty body.
fn assert_no_content(r: &Resp, what: &str) {
    assert_eq!(r.status, 204, "{what}: {}", r.text());
    assert!(r.body.is_empty(), "{what}: 204 with a body: {}", r.text());
}

/// The id of the one item called `name` in the list at `path`.
async fn id_by_name(a: &Client, path: &str, name: &str) -> u64 {
    let items = list(a, path).await;
    let hits: Vec<&Value> = items.iter().filter(|i| i["name"] == name).collect();
    assert_eq!(hits.len(), 1, "exactly one {name:?} in {path}: {items:?}");
    id_of(hits[0])
}

async fn add_key(a: &Client, p: u64, body: Value) -> u64 {
    let name = body["name"].as_str().expect("key name").to_owned();
    let r = a.post(&at(p, "keys"), body).await;
    assert_no_content(&r, "POST keys");
    id_by_name(a, &at(p, "keys"), &name).await
}

async fn none_key(a: &Client, p: u64, name: &str) -> u64 {
    add_key(a, p, json!({"name": name, "type": "none", "project_id": p})).await
}

const PRIVATE_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRET-SSH-MATERIAL-7f3a\n-----END OPENSSH PRIVATE KEY-----\n";

async fn ssh_key(a: &Client, p: u64, name: &str) -> u64 {
    add_key(
        a,
        p,
        json!({"name": name, "type": "ssh", "project_id": p,
               "ssh": {"login": "git", "passphrase": "ssh-passphrase-7f3a", "private_key": PRIVATE_KEY}}),
    )
    .await
}

async fn lp_key(a: &Client, p: u64, name: &str) -> u64 {
    add_key(
        a,
        p,
        json!({"name": name, "type": "login_password", "project_id": p,
               "login_password": {"login": "deployer", "password": "lp-password-7f3a"}}),
    )
    .await
}

async fn add_repo(a: &Client, p: u64, name: &str, url: &str, branch: &str, key: u64) -> u64 {
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": name, "project_id": p, "git_url": url, "git_branch": branch,
                   "ssh_key_id": key}),
        )
        .await;
    assert_no_content(&r, "POST repositories");
    id_by_name(a, &at(p, "repositories"), name).await
}

async fn add_inventory(a: &Client, p: u64, body: Value) -> Value {
    let r = a.post(&at(p, "inventory"), body).await;
    assert_eq!(r.status, 201, "POST inventory: {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let inv = r.json();
    assert_inventory(&inv);
    inv
}

async fn static_inventory(a: &Client, p: u64, name: &str) -> u64 {
    id_of(
        &add_inventory(
            a,
            p,
            json!({"name": name, "project_id": p, "type": "static", "inventory": "[all]\nh1\n"}),
        )
        .await,
    )
}

async fn add_env(a: &Client, p: u64, body: Value) -> u64 {
    let name = body["name"].as_str().expect("environment name").to_owned();
    let r = a.post(&at(p, "environment"), body).await;
    assert_no_content(&r, "POST environment");
    id_by_name(a, &at(p, "environment"), &name).await
}

async fn add_template(a: &Client, p: u64, body: Value) -> Value {
    let r = a.post(&at(p, "templates"), body).await;
    assert_eq!(r.status, 201, "POST templates: {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let t = r.json();
    assert_template(&t);
    t
}

async fn bash_template(a: &Client, p: u64, name: &str, repo: u64) -> u64 {
    id_of(
        &add_template(
            a,
            p,
            json!({"name": name, "project_id": p, "app": "bash", "playbook": "run.sh",
                   "repository_id": repo}),
        )
        .await,
    )
}

/// The secrets of environment `env`, from its single GET.
async fn env_secrets(a: &Client, p: u64, env: u64) -> Vec<Value> {
    let e = get_ok(a, &at(p, &format!("environment/{env}"))).await;
    e["secrets"]
        .as_array()
        .unwrap_or_else(|| panic!("environment GET without a secrets array: {e}"))
        .clone()
}

// --- JSON shapes -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Ty {
    Int,
    OptInt,
    Str,
    OptStr,
    Bool,
    Arr,
    OptArr,
    Obj,
    OptObj,
}

fn has_type(v: &Value, t: Ty) -> bool {
    match t {
        Ty::Int => v.is_u64(),
        Ty::OptInt => v.is_null() || v.is_u64(),
        Ty::Str => v.is_string(),
        Ty::OptStr => v.is_null() || v.is_string(),
        Ty::Bool => v.is_boolean(),
        Ty::Arr => v.is_array(),
        Ty::OptArr => v.is_null() || v.is_array(),
        Ty::Obj => v.is_object(),
        Ty::OptObj => v.is_null() || v.is_object(),
    }
}

/// Every `required` field is present with its type; anything else must be in `optional` (so a
/// stray field — a leaked secret, say — fails).
fn assert_shape(what: &str, v: &Value, required: &[(&str, Ty)], optional: &[(&str, Ty)]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for (k, t) in required {
        let f = obj
            .get(*k)
            .unwrap_or_else(|| panic!("{what}: missing `{k}` in {v}"));
        assert!(
            has_type(f, *t),
            "{what}: `{k}` should be {t:?}, is {f} in {v}"
        );
    }
    for (k, f) in obj {
        if required.iter().any(|(n, _)| n == k) {
            continue;
        }
        match optional.iter().find(|(n, _)| n == k) {
            Some((_, t)) => assert!(has_type(f, *t), "{what}: `{k}` should be {t:?} in {v}"),
            None => panic!("{what}: unexpected field `{k}` in {v}"),
        }
    }
}

const KEY_FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("name", Ty::Str),
    ("type", Ty::Str),
    ("project_id", Ty::Int),
    ("string", Ty::Str),
    ("login_password", Ty::Obj),
    ("ssh", Ty::Obj),
    ("override_secret", Ty::Bool),
];

/// Forge's flag on a key still lacking its secret (restored from a project backup), only when
/// set: keys made through the API keep upstream's exact shape.
const KEY_EXTRA: &[(&str, Ty)] = &[("needs_secret", Ty::Bool)];

/// A key response: every field, and empty placeholders where the secrets would be.
fn assert_key(k: &Value) {
    assert_shape("key", k, KEY_FIELDS, KEY_EXTRA);
    assert_ne!(
        k.get("needs_secret"),
        Some(&json!(false)),
        "unset is absent: {k}"
    );
    assert_eq!(k["string"], "", "{k}");
    assert_eq!(k["login_password"], json!({"login": "", "password": ""}));
    assert_eq!(
        k["ssh"],
        json!({"login": "", "passphrase": "", "private_key": ""})
    );
    assert_eq!(k["override_secret"], false);
}

const REPOSITORY_FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("name", Ty::Str),
    ("project_id", Ty::Int),
    ("git_url", Ty::Str),
    ("git_branch", Ty::Str),
    ("ssh_key_id", Ty::Int),
];

const INVENTORY_FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("name", Ty::Str),
    ("project_id", Ty::Int),
    ("inventory", Ty::Str),
    ("ssh_key_id", Ty::OptInt),
    ("become_key_id", Ty::OptInt),
    ("type", Ty::Str),
    ("holder_id", Ty::OptInt),
    ("repository_id", Ty::OptInt),
];

fn assert_inventory(i: &Value) {
    assert_shape("inventory", i, INVENTORY_FIELDS, &[]);
}

const ENVIRONMENT_FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("name", Ty::Str),
    ("project_id", Ty::Int),
    ("password", Ty::OptStr),
    ("json", Ty::Str),
    ("env", Ty::OptStr),
    // Upstream's list gives `null`; the single GET an array.
    ("secrets", Ty::OptArr),
];

const SECRET_FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("type", Ty::Str),
    ("name", Ty::Str),
    ("secret", Ty::Str),
    ("operation", Ty::Str),
];

/// An environment response: the legacy password is never returned, secret values neither.
fn assert_environment(e: &Value) {
    assert_shape("environment", e, ENVIRONMENT_FIELDS, &[]);
    assert!(e["password"].is_null(), "password returned: {e}");
    for s in e["secrets"].as_array().into_iter().flatten() {
        assert_shape("environment secret", s, SECRET_FIELDS, &[]);
        assert_eq!(s["secret"], "", "secret value returned: {e}");
    }
}

const TEMPLATE_FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::Int),
    ("project_id", Ty::Int),
    ("inventory_id", Ty::OptInt),
    ("repository_id", Ty::Int),
    ("environment_id", Ty::OptInt),
    ("view_id", Ty::OptInt),
    ("name", Ty::Str),
    ("playbook", Ty::Str),
    ("arguments", Ty::OptStr),
    ("allow_override_args_in_task", Ty::Bool),
    ("allow_ansible_vars_in_task", Ty::Bool),
    ("description", Ty::OptStr),
    ("type", Ty::Str),
    ("start_version", Ty::OptStr),
    ("build_template_id", Ty::OptInt),
    ("autorun", Ty::Bool),
    ("git_branch", Ty::OptStr),
    ("survey_vars", Ty::Arr),
    ("vaults", Ty::Arr),
    ("suppress_success_alerts", Ty::Bool),
    ("app", Ty::Str),
    ("tasks", Ty::Int),
    ("last_task", Ty::OptObj),
];

/// Forge extensions a template may carry besides API.md's fields, only when set (a strict
/// client of upstream's shape never sees them otherwise).
const TEMPLATE_EXTRA: &[(&str, Ty)] = &[("max_duration_secs", Ty::Int)];

fn assert_template(t: &Value) {
    assert_shape("template", t, TEMPLATE_FIELDS, TEMPLATE_EXTRA);
    assert_ne!(
        t.get("max_duration_secs"),
        Some(&json!(0)),
        "unset is absent: {t}"
    );
    for v in t["survey_vars"].as_array().into_iter().flatten() {
        assert_shape(
            "survey var",
            v,
            &[
                ("name", Ty::Str),
                ("title", Ty::Str),
                ("description", Ty::Str),
                ("type", Ty::Str),
                ("required", Ty::Bool),
                ("values", Ty::OptArr),
            ],
            &[],
        );
    }
    for v in t["vaults"].as_array().into_iter().flatten() {
        assert_shape(
            "vault",
            v,
            &[
                ("id", Ty::Int),
                ("project_id", Ty::Int),
                ("template_id", Ty::Int),
                ("vault_key_id", Ty::Int),
                ("name", Ty::OptStr),
            ],
            &[],
        );
    }
}

/// A refs body: `{"templates":[{id,name}],"inventories":[...],"repositories":[...]}`.
fn refs(templates: &[(u64, &str)], inventories: &[(u64, &str)], repos: &[(u64, &str)]) -> Value {
    let list = |items: &[(u64, &str)]| {
        items
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect::<Vec<_>>()
    };
    json!({"templates": list(templates), "inventories": list(inventories),
           "repositories": list(repos)})
}

// --- refusals: 400, a message, nothing written -----------------------------------------------

/// A request body: JSON, or raw text for malformed input.
#[derive(Clone, Debug)]
enum Body {
    Json(Value),
    Raw(&'static str),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Json(v) => v.to_string().into_bytes(),
            Body::Raw(s) => s.as_bytes().to_vec(),
        }
    }
}

/// One request that must be refused.
struct Case {
    label: String,
    method: &'static str,
    path: String,
    body: Body,
    /// A fragment the error message must contain (`""`: any message).
    want: &'static str,
}

fn case(label: &str, method: &'static str, path: &str, body: Value, want: &'static str) -> Case {
    Case {
        label: label.to_owned(),
        method,
        path: path.to_owned(),
        body: Body::Json(body),
        want,
    }
}

/// Malformed bodies every POST/PUT must refuse.
fn malformed(label: &str, method: &'static str, path: &str) -> Vec<Case> {
    [
        ("truncated JSON", "{\"name\": \"x\", "),
        ("not JSON", "name=x"),
        ("array body", "[{\"name\": \"x\"}]"),
        ("string body", "\"x\""),
        ("number body", "42"),
        ("empty body", ""),
        ("two values", "{} {}"),
    ]
    .into_iter()
    .map(|(what, raw)| Case {
        label: format!("{label}: {what}"),
        method,
        path: path.to_owned(),
        body: Body::Raw(raw),
        want: "",
    })
    .collect()
}

/// Everything observable about `projects`, by path: every resource list, each environment
/// with its secrets, and the project's events.
async fn snapshot(a: &Client, projects: &[u64]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for &p in projects {
        for res in [
            "keys",
            "repositories",
            "inventory",
            "environment",
            "templates",
            "events",
        ] {
            let path = at(p, res);
            let items = list(a, &path).await;
            if res == "environment" {
                for e in &items {
                    let path = at(p, &format!("environment/{}", id_of(e)));
                    let one = get_ok(a, &path).await;
                    out.insert(path, one);
                }
            }
            out.insert(path, Value::Array(items));
        }
    }
    out
}

/// What changed between two snapshots, briefly.
fn differences(before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>) -> Vec<String> {
    let show = |items: Vec<&Value>| {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    for path in before
        .keys()
        .chain(after.keys().filter(|k| !before.contains_key(*k)))
    {
        match (before.get(path), after.get(path)) {
            (Some(b), Some(a)) if b == a => {}
            (Some(Value::Array(b)), Some(Value::Array(a))) => out.push(format!(
                "{path} changed: added [{}] removed [{}]",
                show(a.iter().filter(|v| !b.contains(v)).collect()),
                show(b.iter().filter(|v| !a.contains(v)).collect()),
            )),
            (b, a) => out.push(format!(
                "{path} changed: before {} after {}",
                b.map_or("(none)".into(), ToString::to_string),
                a.map_or("(none)".into(), ToString::to_string),
            )),
        }
    }
    out
}

fn error_message(r: &Resp) -> Result<String, String> {
    if r.header("content-type").as_deref() != Some("application/json") {
        return Err(format!(
            "content-type {:?}, body {:?}",
            r.header("content-type"),
            r.text()
        ));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("error").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Ok(m.to_owned()),
        _ => Err(format!("no error message in {v}")),
    }
}

/// Sends every case and checks: 400, `{"error": msg}` containing the wanted fragment, and
/// no change in anything observable in `watched`. Reports all failing cases at once.
async fn expect_refusals(a: &Client, watched: &[u64], cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let before = snapshot(a, watched).await;
        let r = a
            .raw(
                c.method,
                &c.path,
                Some(c.body.bytes()),
                &[("content-type", "application/json")],
            )
            .await;
        let after = snapshot(a, watched).await;
        let mut problems = Vec::new();
        if r.status != 400 {
            problems.push(format!("status {} (want 400)", r.status));
        }
        match error_message(&r) {
            Ok(m) if !m.contains(c.want) => {
                problems.push(format!("message {m:?} lacks {:?}", c.want));
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
        problems.extend(differences(&before, &after));
        if !problems.is_empty() {
            let body = match &c.body {
                Body::Json(v) => v.to_string(),
                Body::Raw(s) => format!("{s:?}"),
            };
            failures.push(format!(
                "[{}] {} {} {body}\n  -> {} {}\n  {}",
                c.label,
                c.method,
                c.path,
                r.status,
                r.text().trim_end(),
                problems.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} refusal case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// --- a furnished project ---------------------------------------------------------------------

/// A project with one of everything.
struct Proj {
    id: u64,
    /// The `None` key every project starts with.
    none: u64,
    /// The `Empty` environment every project starts with.
    empty: u64,
    ssh: u64,
    lp: u64,
    repo: u64,
    inv: u64,
    /// An environment with one secret.
    env: u64,
    secret: u64,
    /// A `build` template.
    build: u64,
    /// A plain (`""`) template.
    plain: u64,
}

async fn furnished(a: &Client, name: &str) -> Proj {
    let p = new_project(a, name).await;
    let none = id_by_name(a, &at(p, "keys"), "None").await;
    let empty = id_by_name(a, &at(p, "environment"), "Empty").await;
    let ssh = ssh_key(a, p, "ssh-key").await;
    let lp = lp_key(a, p, "lp-key").await;
    let repo = add_repo(a, p, "repo", "https://example.com/repo.git", "main", ssh).await;
    let inv = static_inventory(a, p, "inv").await;
    let env = add_env(
        a,
        p,
        json!({"name": "env", "project_id": p, "json": "{}",
               "secrets": [{"operation": "create", "type": "env", "name": "TOKEN",
                            "secret": "env-secret-7f3a"}]}),
    )
    .await;
    let secret = id_of(&env_secrets(a, p, env).await[0]);
    let build = id_of(
        &add_template(
            a,
            p,
            json!({"name": "build", "project_id": p, "app": "ansible", "playbook": "build.yml",
                   "inventory_id": inv, "repository_id": repo, "environment_id": env,
                   "type": "build"}),
        )
        .await,
    );
    let plain = bash_template(a, p, "plain", repo).await;
    Proj {
        id: p,
        none,
        empty,
        ssh,
        lp,
        repo,
        inv,
        env,
        secret,
        build,
        plain,
    }
}

/// No response of the project shows any of `secrets`.
async fn assert_secrets_hidden(a: &Client, p: u64, secrets: &[&str]) {
    let mut paths = vec![at(p, "keys"), at(p, "environment"), at(p, "events")];
    for k in list(a, &at(p, "keys")).await {
        paths.push(at(p, &format!("keys/{}", id_of(&k))));
    }
    for e in list(a, &at(p, "environment")).await {
        paths.push(at(p, &format!("environment/{}", id_of(&e))));
    }
    for path in paths {
        let text = a.get(&path).await.text();
        for s in secrets {
            assert!(!text.contains(s), "GET {path} shows secret {s:?}: {text}");
        }
    }
}

// =============================================================================================
// A new project
// =============================================================================================

#[tokio::test(flavor = "multi_thread")]
async fn a_new_project_holds_the_none_key_and_the_empty_environment() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Demo").await;

    let keys = list(&a, &at(p, "keys")).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let none = &keys[0];
    assert_key(none);
    assert_eq!(none["name"], "None");
    assert_eq!(none["type"], "none");
    assert_eq!(none["project_id"], p);
    let one = get_ok(&a, &at(p, &format!("keys/{}", id_of(none)))).await;
    assert_key(&one);
    assert_eq!(&one, none);

    let envs = list(&a, &at(p, "environment")).await;
    assert_eq!(envs.len(), 1, "{envs:?}");
    let empty = &envs[0];
    assert_environment(empty);
    assert_eq!(empty["name"], "Empty");
    assert_eq!(empty["json"], "{}");
    assert_eq!(empty["project_id"], p);
    assert!(
        empty["env"].is_null() || empty["env"] == "{}",
        "env of Empty: {empty}"
    );
    let one = get_ok(&a, &at(p, &format!("environment/{}", id_of(empty)))).await;
    assert_environment(&one);
    assert_eq!(one["secrets"], json!([]));
    assert_eq!(strip(&one, &["secrets"]), strip(empty, &["secrets"]));

    // The other lists are empty arrays, never null.
    for res in ["repositories", "inventory", "templates"] {
        let r = a.get(&at(p, res)).await;
        assert_eq!(r.status, 200, "{res}");
        assert_eq!(r.text().trim_end(), "[]", "{res}");
    }

    // Every project gets its own.
    let q = new_project(&a, "Other").await;
    let q_keys = list(&a, &at(q, "keys")).await;
    assert_eq!(names(&q_keys), ["None"]);
    assert_eq!(q_keys[0]["project_id"], q);
    assert_ne!(id_of(&q_keys[0]), id_of(none));
    let q_envs = list(&a, &at(q, "environment")).await;
    assert_eq!(names(&q_envs), ["Empty"]);
    assert_ne!(id_of(&q_envs[0]), id_of(empty));
    // ...and cannot see the first project's through its own URLs.
    assert_eq!(
        a.get(&at(q, &format!("keys/{}", id_of(none)))).await.status,
        404
    );
}

// =============================================================================================
// CRUD
// =============================================================================================

#[tokio::test(flavor = "multi_thread")]
async fn access_keys_crud() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Keys").await;
    let keys = at(p, "keys");
    let none = id_by_name(&a, &keys, "None").await;

    // POST → 204 with an empty body, for each type.
    let ssh = ssh_key(&a, p, "deploy").await;
    let k = get_ok(&a, &format!("{keys}/{ssh}")).await;
    assert_key(&k);
    assert_eq!(
        strip(&k, &["string", "ssh", "login_password", "override_secret"]),
        json!({"id": ssh, "name": "deploy", "type": "ssh", "project_id": p})
    );

    // Without project_id in the body the URL decides.
    let r = a
        .post(
            &keys,
            json!({"name": "web login", "type": "login_password",
                   "login_password": {"login": "admin", "password": "lp-password-7f3a"}}),
        )
        .await;
    assert_no_content(&r, "POST login_password key");
    let lp = id_by_name(&a, &keys, "web login").await;
    let k = get_ok(&a, &format!("{keys}/{lp}")).await;
    assert_key(&k);
    assert_eq!(k["type"], "login_password");
    assert_eq!(k["project_id"], p);

    // A client-supplied id on create is ignored: it never overwrites the None key.
    let r = a
        .post(
            &keys,
            json!({"id": none, "name": "anonymous", "type": "none", "project_id": p}),
        )
        .await;
    assert_no_content(&r, "POST none key with an id");
    let anon = id_by_name(&a, &keys, "anonymous").await;
    assert_ne!(anon, none);
    assert_eq!(get_ok(&a, &format!("{keys}/{none}")).await["name"], "None");

    let all = list(&a, &keys).await;
    let mut got = names(&all);
    got.sort();
    assert_eq!(got, ["None", "anonymous", "deploy", "web login"]);
    for k in &all {
        assert_key(k);
        assert_eq!(k["project_id"], p);
    }

    // PUT without override_secret: only the name changes, type and secret stay.
    let r = a
        .put(
            &format!("{keys}/{ssh}"),
            json!({"id": ssh, "project_id": p, "name": "deploy2", "type": "none",
                   "override_secret": false}),
        )
        .await;
    assert_no_content(&r, "PUT key name");
    let k = get_ok(&a, &format!("{keys}/{ssh}")).await;
    assert_eq!(k["name"], "deploy2");
    assert_eq!(k["type"], "ssh");

    // PUT with override_secret: type and secret replaced.
    let r = a
        .put(
            &format!("{keys}/{ssh}"),
            json!({"id": ssh, "project_id": p, "name": "deploy3", "type": "login_password",
                   "override_secret": true,
                   "login_password": {"login": "u", "password": "lp-password-7f3a"}}),
        )
        .await;
    assert_no_content(&r, "PUT key override_secret");
    let k = get_ok(&a, &format!("{keys}/{ssh}")).await;
    assert_key(&k);
    assert_eq!(k["name"], "deploy3");
    assert_eq!(k["type"], "login_password");
    let r = a
        .put(
            &format!("{keys}/{ssh}"),
            json!({"id": ssh, "project_id": p, "name": "deploy4", "type": "none",
                   "override_secret": true}),
        )
        .await;
    assert_no_content(&r, "PUT key to none");
    let k = get_ok(&a, &format!("{keys}/{ssh}")).await;
    assert_eq!(
        (k["name"].clone(), k["type"].clone()),
        (json!("deploy4"), json!("none"))
    );

    assert_secrets_hidden(
        &a,
        p,
        &[
            "SECRET-SSH-MATERIAL",
            "ssh-passphrase-7f3a",
            "lp-password-7f3a",
        ],
    )
    .await;

    // DELETE → 204, then 404.
    assert_no_content(&a.delete(&format!("{keys}/{anon}")).await, "DELETE key");
    assert_eq!(a.get(&format!("{keys}/{anon}")).await.status, 404);
    assert_eq!(a.delete(&format!("{keys}/{anon}")).await.status, 404);
    assert_eq!(a.get(&format!("{keys}/{anon}/refs")).await.status, 404);
    assert!(!names(&list(&a, &keys).await).contains(&"anonymous".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_crud() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Repos").await;
    let repos = at(p, "repositories");
    let none = id_by_name(&a, &at(p, "keys"), "None").await;
    let ssh = ssh_key(&a, p, "deploy").await;

    let r = a
        .post(
            &repos,
            json!({"name": "demo", "project_id": p,
                   "git_url": "https://github.com/semaphoreui/demo-project.git",
                   "git_branch": "main", "ssh_key_id": none}),
        )
        .await;
    assert_no_content(&r, "POST repository");
    let demo = id_by_name(&a, &repos, "demo").await;
    let got = get_ok(&a, &format!("{repos}/{demo}")).await;
    assert_shape("repository", &got, REPOSITORY_FIELDS, &[]);
    assert_eq!(
        got,
        json!({"id": demo, "name": "demo", "project_id": p,
               "git_url": "https://github.com/semaphoreui/demo-project.git",
               "git_branch": "main", "ssh_key_id": none})
    );

    // Every accepted URL form; an absolute local path needs no branch.
    let forms = [
        ("scp", "git@github.com:org/repo.git", "main"),
        (
            "ssh",
            "ssh://git@example.com:2222/org/repo.git",
            "release/1.x",
        ),
        ("http", "http://git.local/repo", "main"),
        ("git", "git://example.com/repo.git", "main"),
        ("file", "file:///srv/git/repo.git", "main"),
        ("local", "/srv/checkouts/app", ""),
    ];
    for (name, url, branch) in forms {
        let id = add_repo(&a, p, name, url, branch, ssh).await;
        let got = get_ok(&a, &format!("{repos}/{id}")).await;
        assert_shape("repository", &got, REPOSITORY_FIELDS, &[]);
        assert_eq!(got["git_url"], url, "{name}");
        assert_eq!(got["git_branch"], branch, "{name}");
        assert_eq!(got["ssh_key_id"], ssh, "{name}");
    }
    let all = list(&a, &repos).await;
    assert_eq!(all.len(), 1 + forms.len());
    for r in &all {
        assert_shape("repository", r, REPOSITORY_FIELDS, &[]);
    }

    // PUT replaces the whole object.
    let r = a
        .put(
            &format!("{repos}/{demo}"),
            json!({"id": demo, "project_id": p, "name": "demo2", "git_url": "/srv/other",
                   "git_branch": "", "ssh_key_id": ssh}),
        )
        .await;
    assert_no_content(&r, "PUT repository");
    assert_eq!(
        get_ok(&a, &format!("{repos}/{demo}")).await,
        json!({"id": demo, "name": "demo2", "project_id": p, "git_url": "/srv/other",
               "git_branch": "", "ssh_key_id": ssh})
    );

    assert_no_content(
        &a.delete(&format!("{repos}/{demo}")).await,
        "DELETE repository",
    );
    assert_eq!(a.get(&format!("{repos}/{demo}")).await.status, 404);
    assert_eq!(a.delete(&format!("{repos}/{demo}")).await.status, 404);
    assert_eq!(list(&a, &repos).await.len(), forms.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_crud() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Inv").await;
    let invs = at(p, "inventory");
    let ssh = ssh_key(&a, p, "login").await;
    let lp = lp_key(&a, p, "become").await;
    let none = id_by_name(&a, &at(p, "keys"), "None").await;
    let repo = add_repo(&a, p, "repo", "https://example.com/r.git", "main", none).await;

    // POST → 201 with the object; a client-supplied id is ignored.
    let prod = add_inventory(
        &a,
        p,
        json!({"id": 777_777, "name": "prod", "project_id": p, "type": "static",
               "inventory": "[web]\nhost1\n", "ssh_key_id": ssh, "become_key_id": lp}),
    )
    .await;
    let id = id_of(&prod);
    assert_ne!(id, 777_777);
    assert_eq!(
        prod,
        json!({"id": id, "name": "prod", "project_id": p, "inventory": "[web]\nhost1\n",
               "ssh_key_id": ssh, "become_key_id": lp, "type": "static", "holder_id": null,
               "repository_id": null})
    );
    assert_eq!(get_ok(&a, &format!("{invs}/{id}")).await, prod);

    let yaml = add_inventory(
        &a,
        p,
        json!({"name": "yaml", "project_id": p, "type": "static-yaml",
               "inventory": "all:\n  hosts:\n    h1:\n"}),
    )
    .await;
    assert_eq!(yaml["type"], "static-yaml");
    assert!(yaml["ssh_key_id"].is_null() && yaml["become_key_id"].is_null());
    let file = add_inventory(
        &a,
        p,
        json!({"name": "file", "project_id": p, "type": "file",
               "inventory": "inventories/prod.ini", "repository_id": repo}),
    )
    .await;
    assert_eq!(file["inventory"], "inventories/prod.ini");
    assert_eq!(file["repository_id"], repo);

    let all = list(&a, &invs).await;
    assert_eq!(all.len(), 3);
    for i in &all {
        assert_inventory(i);
    }

    // PUT replaces everything: fields left out are cleared.
    let r = a
        .put(
            &format!("{invs}/{id}"),
            json!({"id": id, "project_id": p, "name": "prod-file", "type": "file",
                   "inventory": "./inv/hosts.yml"}),
        )
        .await;
    assert_no_content(&r, "PUT inventory");
    assert_eq!(
        get_ok(&a, &format!("{invs}/{id}")).await,
        json!({"id": id, "name": "prod-file", "project_id": p, "inventory": "./inv/hosts.yml",
               "ssh_key_id": null, "become_key_id": null, "type": "file", "holder_id": null,
               "repository_id": null})
    );

    assert_no_content(&a.delete(&format!("{invs}/{id}")).await, "DELETE inventory");
    assert_eq!(a.get(&format!("{invs}/{id}")).await.status, 404);
    assert_eq!(a.delete(&format!("{invs}/{id}")).await.status, 404);
    assert_eq!(list(&a, &invs).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_crud() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Env").await;
    let envs = at(p, "environment");

    let r = a
        .post(
            &envs,
            json!({"name": "prod", "project_id": p, "json": "{\"var\":\"x\"}",
                   "env": "{\"ENV_VAR\":\"y\"}", "password": "vault-password-7f3a"}),
        )
        .await;
    assert_no_content(&r, "POST environment");
    let prod = id_by_name(&a, &envs, "prod").await;
    let got = get_ok(&a, &format!("{envs}/{prod}")).await;
    assert_environment(&got);
    assert_eq!(
        got,
        json!({"id": prod, "name": "prod", "project_id": p, "password": null,
               "json": "{\"var\":\"x\"}", "env": "{\"ENV_VAR\":\"y\"}", "secrets": []})
    );

    // Only a name: extra variables default to "{}".
    let min = add_env(&a, p, json!({"name": "minimal"})).await;
    let got = get_ok(&a, &format!("{envs}/{min}")).await;
    assert_environment(&got);
    assert_eq!(got["json"], "{}");
    assert_eq!(got["project_id"], p);

    let all = list(&a, &envs).await;
    let mut got_names = names(&all);
    got_names.sort();
    assert_eq!(got_names, ["Empty", "minimal", "prod"]);
    for e in &all {
        assert_environment(e);
    }

    // PUT replaces: env left out is cleared.
    let r = a
        .put(
            &format!("{envs}/{prod}"),
            json!({"id": prod, "project_id": p, "name": "prod2", "json": "{\"a\":1}"}),
        )
        .await;
    assert_no_content(&r, "PUT environment");
    let got = get_ok(&a, &format!("{envs}/{prod}")).await;
    assert_environment(&got);
    assert_eq!(got["name"], "prod2");
    assert_eq!(got["json"], "{\"a\":1}");
    assert!(got["env"].is_null(), "env not cleared by PUT: {got}");

    assert_secrets_hidden(&a, p, &["vault-password-7f3a"]).await;

    assert_no_content(
        &a.delete(&format!("{envs}/{prod}")).await,
        "DELETE environment",
    );
    assert_eq!(a.get(&format!("{envs}/{prod}")).await.status, 404);
    assert_eq!(a.delete(&format!("{envs}/{prod}")).await.status, 404);
    let mut left = names(&list(&a, &envs).await);
    left.sort();
    assert_eq!(left, ["Empty", "minimal"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_crud() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Tpl").await;
    let tpls = at(p, "templates");
    let none = id_by_name(&a, &at(p, "keys"), "None").await;
    let env = id_by_name(&a, &at(p, "environment"), "Empty").await;
    let vault = lp_key(&a, p, "vault").await;
    let repo = add_repo(&a, p, "repo", "https://example.com/r.git", "main", none).await;
    let inv = static_inventory(&a, p, "inv").await;

    let survey = json!([{"name": "version", "title": "Version", "description": "which",
                         "type": "enum", "required": true,
                         "values": [{"name": "One", "value": "1"}]}]);
    let build = add_template(
        &a,
        p,
        json!({"id": 777_777, "project_id": p, "name": "Build app", "playbook": "build.yml",
               "inventory_id": inv, "repository_id": repo, "environment_id": env,
               "arguments": "[\"-v\"]", "allow_override_args_in_task": true,
               "description": "builds", "type": "build", "start_version": "1.0.0",
               "git_branch": "feature/x", "survey_vars": survey,
               "vaults": [{"vault_key_id": vault, "name": "prod"}],
               "suppress_success_alerts": true, "app": "ansible"}),
    )
    .await;
    let b = id_of(&build);
    assert_ne!(b, 777_777);
    let expected = json!({
        "id": b, "project_id": p, "inventory_id": inv, "repository_id": repo,
        "environment_id": env, "view_id": null, "name": "Build app", "playbook": "build.yml",
        "arguments": "[\"-v\"]", "allow_override_args_in_task": true,
        "allow_ansible_vars_in_task": false, "description": "builds",
        "type": "build", "start_version": "1.0.0", "build_template_id": null, "autorun": false,
        "git_branch": "feature/x", "survey_vars": survey, "suppress_success_alerts": true,
        "app": "ansible", "tasks": 0, "last_task": null,
    });
    assert_eq!(strip(&build, &["vaults", "max_duration_secs"]), expected);
    let vaults = build["vaults"].as_array().expect("vaults");
    assert_eq!(vaults.len(), 1, "{build}");
    assert_eq!(
        strip(&vaults[0], &["id"]),
        json!({"project_id": p, "template_id": b, "vault_key_id": vault, "name": "prod"})
    );
    assert_eq!(get_ok(&a, &format!("{tpls}/{b}")).await, build);

    // A deploy template of it; a bash template needs no inventory.
    let deploy = add_template(
        &a,
        p,
        json!({"project_id": p, "name": "Deploy app", "playbook": "deploy.sh", "app": "bash",
               "repository_id": repo, "type": "deploy", "build_template_id": b,
               "autorun": true}),
    )
    .await;
    let d = id_of(&deploy);
    assert_eq!(deploy["build_template_id"], b);
    assert_eq!(deploy["autorun"], true);
    assert_eq!(deploy["app"], "bash");
    assert!(deploy["inventory_id"].is_null() && deploy["environment_id"].is_null());
    assert!(deploy["arguments"].is_null() && deploy["description"].is_null());
    assert_eq!(deploy["survey_vars"], json!([]));
    assert_eq!(deploy["vaults"], json!([]));
    // python is built in too.
    let py = add_template(
        &a,
        p,
        json!({"project_id": p, "name": "Script", "playbook": "tools/run.py", "app": "python",
               "repository_id": repo}),
    )
    .await;
    assert_eq!(py["app"], "python");
    assert_eq!(py["type"], "");

    let all = list(&a, &tpls).await;
    assert_eq!(all.len(), 3);
    for t in &all {
        assert_template(t);
        assert_eq!(t["tasks"], 0);
        assert!(t["last_task"].is_null());
    }
    assert_eq!(
        all.iter().find(|t| id_of(t) == b).expect("build listed"),
        &build
    );

    // PUT is a full replacement: everything left out is cleared.
    let r = a
        .put(
            &format!("{tpls}/{b}"),
            json!({"id": b, "project_id": p, "name": "Renamed", "playbook": "scripts/run.sh",
                   "repository_id": repo, "app": "bash", "arguments": "", "type": "build"}),
        )
        .await;
    assert_no_content(&r, "PUT template");
    let got = get_ok(&a, &format!("{tpls}/{b}")).await;
    assert_template(&got);
    assert_eq!(
        strip(&got, &["max_duration_secs"]),
        json!({
            "id": b, "project_id": p, "inventory_id": null, "repository_id": repo,
            "environment_id": null, "view_id": null, "name": "Renamed",
            "playbook": "scripts/run.sh", "arguments": null,
            "allow_override_args_in_task": false, "allow_ansible_vars_in_task": false,
            "description": null, "type": "build",
            "start_version": null, "build_template_id": null, "autorun": false,
            "git_branch": null, "survey_vars": [], "vaults": [],
            "suppress_success_alerts": false, "app": "bash", "tasks": 0, "last_task": null,
        })
    );

    // build_template_id is cleared when the template is not a deploy template.
    let r = a
        .put(
            &format!("{tpls}/{d}"),
            json!({"id": d, "project_id": p, "name": "Deploy app", "playbook": "deploy.sh",
                   "app": "bash", "repository_id": repo, "type": "", "build_template_id": b,
                   "start_version": "2.0"}),
        )
        .await;
    assert_no_content(&r, "PUT template type");
    let got = get_ok(&a, &format!("{tpls}/{d}")).await;
    assert_eq!(got["type"], "");
    assert!(got["build_template_id"].is_null(), "{got}");
    assert!(got["start_version"].is_null(), "{got}");

    assert_no_content(&a.delete(&format!("{tpls}/{d}")).await, "DELETE template");
    assert_eq!(a.get(&format!("{tpls}/{d}")).await.status, 404);
    assert_eq!(a.delete(&format!("{tpls}/{d}")).await.status, 404);
    assert_no_content(&a.delete(&format!("{tpls}/{b}")).await, "DELETE template");
    assert_eq!(names(&list(&a, &tpls).await), ["Script"]);
}

// =============================================================================================
// Sorting
// =============================================================================================

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// `items` reversed.
fn rev(items: &[&str]) -> Vec<String> {
    items.iter().rev().map(|s| (*s).to_owned()).collect()
}

/// Checks `GET path?{query}` lists `field` in the order `want`.
async fn assert_order(a: &Client, path: &str, query: &str, field: &str, want: &[String]) {
    let items = list(a, &format!("{path}?{query}")).await;
    assert_eq!(column(&items, field), want, "GET {path}?{query} by {field}");
}

async fn assert_sorts(a: &Client, path: &str, cases: &[(&str, &str, &[&str])]) {
    for (sort, field, asc) in cases {
        assert_order(a, path, &format!("sort={sort}"), field, &owned(asc)).await;
        let q = format!("sort={sort}&order=asc");
        assert_order(a, path, &q, field, &owned(asc)).await;
        let q = format!("sort={sort}&order=desc");
        assert_order(a, path, &q, field, &rev(asc)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_sort_and_order() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Sorting").await;

    // Keys (names chosen so that case-sensitive and case-insensitive orders agree).
    ssh_key(&a, p, "q-ssh").await;
    lp_key(&a, p, "p-lp").await;
    none_key(&a, p, "r-none").await;
    let keys = at(p, "keys");
    let by_name: &[&str] = &["None", "p-lp", "q-ssh", "r-none"];
    assert_order(&a, &keys, "", "name", &owned(by_name)).await;
    assert_sorts(
        &a,
        &keys,
        &[
            ("name", "name", by_name),
            ("type", "type", &["login_password", "none", "none", "ssh"]),
            ("bogus", "name", by_name),
        ],
    )
    .await;
    assert_order(&a, &keys, "order=desc", "name", &rev(by_name)).await;

    // Repositories: three orders that differ by name, URL and key name.
    let ka = none_key(&a, p, "k-a").await;
    let kb = none_key(&a, p, "k-b").await;
    let kc = none_key(&a, p, "k-c").await;
    add_repo(&a, p, "gamma", "https://m.example/r.git", "main", ka).await;
    add_repo(&a, p, "alpha", "https://z.example/r.git", "main", kb).await;
    add_repo(&a, p, "beta", "https://a.example/r.git", "main", kc).await;
    let repos = at(p, "repositories");
    let by_name: &[&str] = &["alpha", "beta", "gamma"];
    assert_order(&a, &repos, "", "name", &owned(by_name)).await;
    assert_sorts(
        &a,
        &repos,
        &[
            ("name", "name", by_name),
            ("git_url", "name", &["beta", "gamma", "alpha"]),
            ("ssh_key", "name", &["gamma", "alpha", "beta"]),
            ("bogus", "name", by_name),
        ],
    )
    .await;

    // Inventory: only name (type is ignored, as upstream).
    let inv_c = static_inventory(&a, p, "i3").await;
    let inv_a = id_of(
        &add_inventory(
            &a,
            p,
            json!({"name": "i2", "project_id": p, "type": "file", "inventory": "hosts"}),
        )
        .await,
    );
    let inv_b = id_of(
        &add_inventory(
            &a,
            p,
            json!({"name": "i1", "project_id": p, "type": "static-yaml", "inventory": "all:"}),
        )
        .await,
    );
    let invs = at(p, "inventory");
    let by_name: &[&str] = &["i1", "i2", "i3"];
    assert_order(&a, &invs, "", "name", &owned(by_name)).await;
    assert_sorts(
        &a,
        &invs,
        &[
            ("name", "name", by_name),
            ("type", "name", by_name),
            ("bogus", "name", by_name),
        ],
    )
    .await;

    // Environment: name.
    let e3 = add_env(&a, p, json!({"name": "f3"})).await;
    let e1 = add_env(&a, p, json!({"name": "f1"})).await;
    let e2 = add_env(&a, p, json!({"name": "f2"})).await;
    let envs = at(p, "environment");
    let by_name: &[&str] = &["Empty", "f1", "f2", "f3"];
    assert_order(&a, &envs, "", "name", &owned(by_name)).await;
    assert_sorts(
        &a,
        &envs,
        &[("name", "name", by_name), ("bogus", "name", by_name)],
    )
    .await;

    // Templates: name, playbook and the names of the referenced inventory, environment and
    // repository each give a different order.
    let r1 = add_repo(&a, p, "r1", "/srv/r1", "", ka).await;
    let r2 = add_repo(&a, p, "r2", "/srv/r2", "", ka).await;
    let r3 = add_repo(&a, p, "r3", "/srv/r3", "", ka).await;
    for (name, playbook, inv, env, repo) in [
        ("t2", "p1.yml", inv_c, e3, r1),
        ("t3", "p2.yml", inv_b, e2, r3),
        ("t1", "p3.yml", inv_a, e1, r2),
    ] {
        add_template(
            &a,
            p,
            json!({"name": name, "project_id": p, "app": "ansible", "playbook": playbook,
                   "inventory_id": inv, "environment_id": env, "repository_id": repo}),
        )
        .await;
    }
    let tpls = at(p, "templates");
    let by_name: &[&str] = &["t1", "t2", "t3"];
    assert_order(&a, &tpls, "", "name", &owned(by_name)).await;
    assert_sorts(
        &a,
        &tpls,
        &[
            ("name", "name", by_name),
            ("playbook", "name", &["t2", "t3", "t1"]),
            // inventories: t1→i2, t2→i3, t3→i1
            ("inventory", "name", &["t3", "t1", "t2"]),
            // environments: t1→f1, t2→f3, t3→f2
            ("environment", "name", &["t1", "t3", "t2"]),
            // repositories: t1→r2, t2→r1, t3→r3
            ("repository", "name", &["t2", "t1", "t3"]),
            ("bogus", "name", by_name),
        ],
    )
    .await;
    assert_order(&a, &tpls, "order=desc", "name", &rev(by_name)).await;
}

// =============================================================================================
// Refs and in-use deletes
// =============================================================================================

/// DELETE refused with 400 `{"error": ..., "inUse": true}`; the object is still there.
async fn assert_in_use(a: &Client, path: &str) {
    let r = a.delete(path).await;
    assert_eq!(r.status, 400, "DELETE {path}: {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = r.json();
    let obj = body.as_object().expect("object body");
    assert_eq!(obj.len(), 2, "DELETE {path}: {body}");
    assert!(
        obj["error"].as_str().is_some_and(|m| !m.is_empty()),
        "DELETE {path}: {body}"
    );
    assert_eq!(obj["inUse"], true, "DELETE {path}: {body}");
    assert_eq!(a.get(path).await.status, 200, "{path} deleted anyway");
}

#[tokio::test(flavor = "multi_thread")]
async fn refs_and_in_use_deletes() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Refs").await;
    let key = |id: u64| at(p, &format!("keys/{id}"));
    let repo_at = |id: u64| at(p, &format!("repositories/{id}"));
    let inv_at = |id: u64| at(p, &format!("inventory/{id}"));
    let env_at = |id: u64| at(p, &format!("environment/{id}"));
    let tpl_at = |id: u64| at(p, &format!("templates/{id}"));

    let none = id_by_name(&a, &at(p, "keys"), "None").await;
    let repo_key = ssh_key(&a, p, "repo-key").await;
    let login = ssh_key(&a, p, "login").await;
    let vault = lp_key(&a, p, "vault").await;
    let unused_key = none_key(&a, p, "unused").await;
    let repo = add_repo(&a, p, "repo", "https://example.com/r.git", "main", repo_key).await;
    let inv = id_of(
        &add_inventory(
            &a,
            p,
            json!({"name": "inv", "project_id": p, "type": "static", "inventory": "",
                   "ssh_key_id": login, "become_key_id": vault}),
        )
        .await,
    );
    let file_inv = id_of(
        &add_inventory(
            &a,
            p,
            json!({"name": "file-inv", "project_id": p, "type": "file", "inventory": "hosts",
                   "repository_id": repo}),
        )
        .await,
    );
    let env = add_env(&a, p, json!({"name": "env", "project_id": p})).await;
    let tpl = id_of(
        &add_template(
            &a,
            p,
            json!({"name": "tpl", "project_id": p, "app": "ansible", "playbook": "site.yml",
                   "inventory_id": inv, "repository_id": repo, "environment_id": env,
                   "vaults": [{"vault_key_id": vault}]}),
        )
        .await,
    );
    let build = id_of(
        &add_template(
            &a,
            p,
            json!({"name": "build", "project_id": p, "app": "bash", "playbook": "b.sh",
                   "repository_id": repo, "type": "build"}),
        )
        .await,
    );
    let deploy = id_of(
        &add_template(
            &a,
            p,
            json!({"name": "deploy", "project_id": p, "app": "bash", "playbook": "d.sh",
                   "repository_id": repo, "type": "deploy", "build_template_id": build}),
        )
        .await,
    );

    // refs of each object.
    let none_refs = refs(&[], &[], &[]);
    for (path, want) in [
        (key(repo_key), refs(&[], &[], &[(repo, "repo")])),
        (key(login), refs(&[], &[(inv, "inv")], &[])),
        (key(vault), refs(&[(tpl, "tpl")], &[(inv, "inv")], &[])),
        (key(unused_key), none_refs.clone()),
        (key(none), none_refs.clone()),
        (
            repo_at(repo),
            refs(
                &[(tpl, "tpl"), (build, "build"), (deploy, "deploy")],
                &[(file_inv, "file-inv")],
                &[],
            ),
        ),
        (inv_at(inv), refs(&[(tpl, "tpl")], &[], &[])),
        (inv_at(file_inv), none_refs.clone()),
        (env_at(env), refs(&[(tpl, "tpl")], &[], &[])),
        (tpl_at(build), refs(&[(deploy, "deploy")], &[], &[])),
        (tpl_at(tpl), none_refs.clone()),
        (tpl_at(deploy), none_refs.clone()),
    ] {
        let mut got = get_ok(&a, &format!("{path}/refs")).await;
        // Order within a list is not part of the contract.
        for list in ["templates", "inventories", "repositories"] {
            if let Some(items) = got[list].as_array_mut() {
                items.sort_by_key(id_of);
            }
        }
        assert_eq!(got, want, "GET {path}/refs");
    }
    assert_eq!(a.get(&key(999_999)).await.status, 404);
    assert_eq!(a.get(&format!("{}/refs", key(999_999))).await.status, 404);

    // In use: 400 inUse and still there.
    for path in [
        key(repo_key),
        key(login),
        key(vault),
        repo_at(repo),
        inv_at(inv),
        env_at(env),
    ] {
        assert_in_use(&a, &path).await;
    }
    // A build template of a deploy template: 409.
    let msg = a.delete(&tpl_at(build)).await.assert_error(409);
    assert!(!msg.is_empty());
    assert_eq!(a.get(&tpl_at(build)).await.status, 200);

    // Once the users are gone, everything can go.
    assert_no_content(&a.delete(&tpl_at(tpl)).await, "DELETE tpl");
    // The inventory still uses the vault key (as become key) and the login key.
    assert_eq!(
        get_ok(&a, &format!("{}/refs", key(vault))).await,
        refs(&[], &[(inv, "inv")], &[])
    );
    assert_in_use(&a, &key(vault)).await;
    assert_no_content(&a.delete(&inv_at(inv)).await, "DELETE inv");
    assert_no_content(&a.delete(&key(vault)).await, "DELETE vault key");
    assert_no_content(&a.delete(&key(login)).await, "DELETE login key");
    assert_no_content(&a.delete(&env_at(env)).await, "DELETE env");
    assert_no_content(&a.delete(&tpl_at(deploy)).await, "DELETE deploy");
    assert_no_content(&a.delete(&tpl_at(build)).await, "DELETE build");
    // The repository is still used by the file inventory.
    assert_eq!(
        get_ok(&a, &format!("{}/refs", repo_at(repo))).await,
        refs(&[], &[(file_inv, "file-inv")], &[])
    );
    assert_in_use(&a, &repo_at(repo)).await;
    assert_no_content(&a.delete(&inv_at(file_inv)).await, "DELETE file inv");
    assert_no_content(&a.delete(&repo_at(repo)).await, "DELETE repo");
    assert_no_content(&a.delete(&key(repo_key)).await, "DELETE repo key");
    assert_no_content(&a.delete(&key(unused_key)).await, "DELETE unused key");
}

// =============================================================================================
// Bad input: 400 with a message, nothing written
// =============================================================================================

const DANGEROUS_URLS: &[&str] = &[
    "ext::sh -c touch% /tmp/x",
    "--upload-pack=x",
    "-oProxyCommand=x",
    "ssh://-oProxyCommand=x/repo",
    "https://example.com/repo\nx",
    "fd::3",
];

const DANGEROUS_BRANCHES: &[&str] = &["--upload-pack=x", "-f", "a..b"];

const ESCAPING_PATHS: &[&str] = &["../x", "/etc/passwd", "a/../../x"];

/// API.md §6.3, upstream's message.
const BAD_INVENTORY_PATH: &str = "Invalid inventory file pathname. Must be: path/to/inventory.";

const PROJECT_MISMATCH: &str = "Project ID in body and URL must be the same";

const ID_MISMATCH: &str = "ID in body and URL must be the same";

/// A table row: (label, patch applied to the base body, fragment the message must contain).
type Row = (&'static str, Value, &'static str);

/// `rows` as cases sent with `method` to `path`, each body `base` patched.
fn patched(method: &'static str, path: &str, base: &Value, rows: Vec<Row>) -> Vec<Case> {
    rows.into_iter()
        .map(|(label, patch, want)| {
            case(
                &format!("{method}: {label}"),
                method,
                path,
                with(base, patch),
                want,
            )
        })
        .collect()
}

/// Both projects, `A` (where the requests go) and `B` (whose objects they name).
async fn two_projects(a: &Client) -> (Proj, Proj) {
    (furnished(a, "A").await, furnished(a, "B").await)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_are_refused_and_nothing_is_written() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (pa, pb) = two_projects(&a).await;
    let p = pa.id;
    let post = at(p, "keys");
    let put = at(p, &format!("keys/{}", pa.ssh));
    let base = json!({"name": "k", "type": "none", "project_id": p});
    let put_base = json!({"id": pa.ssh, "name": "k", "type": "ssh", "project_id": p});
    let ssh = |v: Value| json!({"type": "ssh", "ssh": v});
    let lp = |v: Value| json!({"type": "login_password", "login_password": v});

    let mut cases = patched(
        "POST",
        &post,
        &base,
        vec![
            ("empty name", json!({"name": ""}), "name can not be empty"),
            (
                "blank name",
                json!({"name": "   "}),
                "name can not be empty",
            ),
            ("no name", json!({"name": null}), "name can not be empty"),
            ("name: number", json!({"name": 5}), "name"),
            ("type: bool", json!({"type": true}), "type"),
            (
                "project_id: string",
                json!({"project_id": "1"}),
                "project_id",
            ),
            ("ssh: string", ssh(json!("x")), "ssh"),
            // serde would fill the struct by position; Go refuses an array for an object.
            ("ssh: array", ssh(json!(["git", "pp", PRIVATE_KEY])), "ssh"),
            (
                "ssh.private_key: number",
                ssh(json!({"private_key": 1})),
                "private_key",
            ),
            (
                "login_password: array",
                lp(json!(["u", "pw"])),
                "login_password",
            ),
            ("unknown type", json!({"type": "kerberos"}), ""),
            ("no type", json!({"type": null}), ""),
            (
                "ssh without private_key",
                ssh(json!({"login": "git", "passphrase": "x"})),
                "private key can not be empty",
            ),
            (
                "ssh with a blank private_key",
                ssh(json!({"private_key": "  \n"})),
                "private key can not be empty",
            ),
            (
                "login_password without password",
                lp(json!({"login": "u"})),
                "password can not be empty",
            ),
            (
                "project_id of B",
                json!({"project_id": pb.id}),
                PROJECT_MISMATCH,
            ),
        ],
    );
    cases.extend(patched(
        "PUT",
        &put,
        &put_base,
        vec![
            ("empty name", json!({"name": ""}), "name can not be empty"),
            ("name: array", json!({"name": ["k"]}), "name"),
            ("id of another key", json!({"id": pa.lp}), ID_MISMATCH),
            ("id of B's key", json!({"id": pb.ssh}), ID_MISMATCH),
            ("no id", json!({"id": null}), ID_MISMATCH),
            (
                "project_id of B",
                json!({"project_id": pb.id}),
                PROJECT_MISMATCH,
            ),
            (
                "override_secret: string",
                json!({"override_secret": "yes"}),
                "override_secret",
            ),
            (
                "override: ssh without private_key",
                json!({"override_secret": true, "ssh": {"login": "x"}}),
                "private key can not be empty",
            ),
            (
                "override: login_password without password",
                json!({"override_secret": true, "type": "login_password",
                       "login_password": {"login": "x"}}),
                "password can not be empty",
            ),
            (
                "override: unknown type",
                json!({"override_secret": true, "type": "kerberos"}),
                "",
            ),
        ],
    ));
    cases.extend(malformed("POST", "POST", &post));
    cases.extend(malformed("PUT", "PUT", &put));
    expect_refusals(&a, &[pa.id, pb.id], cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_repositories_are_refused_and_nothing_is_written() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (pa, pb) = two_projects(&a).await;
    let p = pa.id;
    let post = at(p, "repositories");
    let put = at(p, &format!("repositories/{}", pa.repo));
    let base = json!({"name": "r", "project_id": p, "git_url": "https://example.com/r.git",
                      "git_branch": "main", "ssh_key_id": pa.none});
    let put_base = with(&base, json!({"id": pa.repo}));

    let shared = || -> Vec<Row> {
        let mut rows: Vec<Row> = vec![
            (
                "empty name",
                json!({"name": ""}),
                "repository name can't be empty",
            ),
            (
                "blank name",
                json!({"name": "  "}),
                "repository name can't be empty",
            ),
            (
                "no url",
                json!({"git_url": null}),
                "repository url can't be empty",
            ),
            (
                "empty url",
                json!({"git_url": ""}),
                "repository url can't be empty",
            ),
            (
                "https url without branch",
                json!({"git_branch": ""}),
                "repository branch can't be empty",
            ),
            ("name: number", json!({"name": 1}), "name"),
            ("git_url: array", json!({"git_url": ["x"]}), "git_url"),
            ("git_branch: number", json!({"git_branch": 5}), "git_branch"),
            (
                "ssh_key_id: string",
                json!({"ssh_key_id": "1"}),
                "ssh_key_id",
            ),
            (
                "ssh_key_id: negative",
                json!({"ssh_key_id": -1}),
                "ssh_key_id",
            ),
            ("no ssh_key_id", json!({"ssh_key_id": null}), "ssh_key_id"),
            (
                "ssh_key_id of B",
                json!({"ssh_key_id": pb.ssh}),
                "ssh_key_id",
            ),
            (
                "ssh_key_id unknown",
                json!({"ssh_key_id": 999_999}),
                "ssh_key_id",
            ),
            (
                "ssh_key_id of a secret",
                json!({"ssh_key_id": pa.secret}),
                "ssh_key_id",
            ),
            (
                "project_id of B",
                json!({"project_id": pb.id}),
                PROJECT_MISMATCH,
            ),
        ];
        for url in DANGEROUS_URLS {
            rows.push((
                "dangerous git_url",
                json!({ "git_url": url }),
                "repository url",
            ));
        }
        for branch in DANGEROUS_BRANCHES {
            rows.push((
                "dangerous git_branch",
                json!({ "git_branch": branch }),
                "branch",
            ));
        }
        rows
    };
    let mut cases = patched("POST", &post, &base, shared());
    cases.extend(patched("PUT", &put, &put_base, shared()));
    cases.extend(patched(
        "PUT",
        &put,
        &put_base,
        vec![
            ("id of B's repository", json!({"id": pb.repo}), ID_MISMATCH),
            ("no id", json!({"id": null}), ID_MISMATCH),
        ],
    ));
    cases.extend(malformed("POST", "POST", &post));
    cases.extend(malformed("PUT", "PUT", &put));
    expect_refusals(&a, &[pa.id, pb.id], cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inventories_are_refused_and_nothing_is_written() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (pa, pb) = two_projects(&a).await;
    let p = pa.id;
    let post = at(p, "inventory");
    let put = at(p, &format!("inventory/{}", pa.inv));
    let base = json!({"name": "i", "project_id": p, "type": "static", "inventory": "[all]\nh1"});
    let put_base = with(&base, json!({"id": pa.inv}));
    let file = |path: &str| json!({"type": "file", "inventory": path});

    let shared = || -> Vec<Row> {
        let mut rows: Vec<Row> = vec![
            ("empty name", json!({"name": ""}), "name can not be empty"),
            ("no name", json!({"name": null}), "name can not be empty"),
            ("name: number", json!({"name": 1}), "name"),
            ("inventory: number", json!({"inventory": 5}), "inventory"),
            ("type: array", json!({"type": []}), "type"),
            (
                "ssh_key_id: string",
                json!({"ssh_key_id": "x"}),
                "ssh_key_id",
            ),
            (
                "become_key_id: bool",
                json!({"become_key_id": true}),
                "become_key_id",
            ),
            (
                "ssh_key_id of B",
                json!({"ssh_key_id": pb.ssh}),
                "ssh_key_id",
            ),
            (
                "become_key_id of B",
                json!({"become_key_id": pb.lp}),
                "become_key_id",
            ),
            (
                "holder_id of B",
                json!({"holder_id": pb.build}),
                "holder_id",
            ),
            (
                "ssh_key_id unknown",
                json!({"ssh_key_id": 999_999}),
                "ssh_key_id",
            ),
            (
                "ssh_key_id of a secret",
                json!({"ssh_key_id": pa.secret}),
                "ssh_key_id",
            ),
            (
                "repository_id of B",
                json!({"type": "file", "inventory": "hosts", "repository_id": pb.repo}),
                "repository_id",
            ),
            (
                "project_id of B",
                json!({"project_id": pb.id}),
                PROJECT_MISMATCH,
            ),
            ("file without a path", file(""), ""),
        ];
        for path in ESCAPING_PATHS {
            rows.push(("escaping file path", file(path), BAD_INVENTORY_PATH));
        }
        rows
    };
    let mut cases = patched("POST", &post, &base, shared());
    cases.extend(patched(
        "POST",
        &post,
        &base,
        vec![
            (
                "unknown type",
                json!({"type": "bogus"}),
                "Not supported inventory type",
            ),
            (
                "no type",
                json!({"type": null}),
                "Not supported inventory type",
            ),
            (
                "tofu-workspace",
                json!({"type": "tofu-workspace"}),
                "Not supported inventory type",
            ),
        ],
    ));
    cases.extend(patched("PUT", &put, &put_base, shared()));
    cases.extend(patched(
        "PUT",
        &put,
        &put_base,
        vec![
            (
                "unknown type",
                json!({"type": "bogus"}),
                "unknown inventory type: bogus",
            ),
            ("id of B's inventory", json!({"id": pb.inv}), ID_MISMATCH),
            ("no id", json!({"id": null}), ID_MISMATCH),
        ],
    ));
    cases.extend(malformed("POST", "POST", &post));
    cases.extend(malformed("PUT", "PUT", &put));
    expect_refusals(&a, &[pa.id, pb.id], cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_environments_are_refused_and_nothing_is_written() {
    const EXTRA: &str = "Extra variables must be valid JSON";
    const ENV: &str = "Environment variables must be valid JSON";
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (pa, pb) = two_projects(&a).await;
    let p = pa.id;
    let post = at(p, "environment");
    let put = at(p, &format!("environment/{}", pa.env));
    let base = json!({"name": "e", "project_id": p, "json": "{}", "env": "{}"});
    let put_base = with(&base, json!({"id": pa.env}));
    let secret = |s: Value| json!({ "secrets": [s] });

    let shared = || -> Vec<Row> {
        vec![
            (
                "empty name",
                json!({"name": ""}),
                "Environment name can not be empty",
            ),
            (
                "blank name",
                json!({"name": " "}),
                "Environment name can not be empty",
            ),
            (
                "no name",
                json!({"name": null}),
                "Environment name can not be empty",
            ),
            ("name: number", json!({"name": 5}), "name"),
            (
                "json: an object, not a string",
                json!({"json": {"a": 1}}),
                "json",
            ),
            ("json: not JSON", json!({"json": "nope"}), EXTRA),
            ("json: truncated", json!({"json": "{\"a\":"}), EXTRA),
            ("json: an array", json!({"json": "[1]"}), EXTRA),
            ("json: a string", json!({"json": "\"x\""}), EXTRA),
            (
                "env: an object, not a string",
                json!({"env": {"A": "x"}}),
                "env",
            ),
            ("env: not JSON", json!({"env": "nope"}), ENV),
            ("env: an array", json!({"env": "[\"A\"]"}), ENV),
            ("env: a number value", json!({"env": "{\"A\":1}"}), ENV),
            ("env: a bool value", json!({"env": "{\"A\":true}"}), ENV),
            (
                "env: an object value",
                json!({"env": "{\"A\":{\"b\":\"c\"}}"}),
                ENV,
            ),
            ("env: a null value", json!({"env": "{\"A\":null}"}), ENV),
            ("secrets: a string", json!({"secrets": "x"}), "secrets"),
            (
                "secret: an array, not an object",
                json!({"secrets": [[null, "env", "ARR", "v", "create"]]}),
                "secrets",
            ),
            (
                "secret: unknown operation",
                secret(json!({"operation": "explode", "name": "X", "secret": "y"})),
                "",
            ),
            (
                "secret: unknown type",
                secret(json!({"operation": "create", "type": "file", "name": "X", "secret": "y"})),
                "",
            ),
            (
                "secret: env name that is no variable name",
                secret(
                    json!({"operation": "create", "type": "env", "name": "1 BAD", "secret": "y"}),
                ),
                "",
            ),
            (
                "secret: no name",
                secret(json!({"operation": "create", "type": "var", "secret": "y"})),
                "",
            ),
            (
                "secret: update without id",
                secret(json!({"operation": "update", "name": "X", "secret": "y"})),
                "",
            ),
            (
                "project_id of B",
                json!({"project_id": pb.id}),
                PROJECT_MISMATCH,
            ),
        ]
    };
    let mut cases = patched("POST", &post, &base, shared());
    cases.extend(patched("PUT", &put, &put_base, shared()));
    cases.extend(patched(
        "PUT",
        &put,
        &put_base,
        vec![
            (
                "id of another environment",
                json!({"id": pa.empty}),
                ID_MISMATCH,
            ),
            ("no id", json!({"id": null}), ID_MISMATCH),
            (
                "secret: create with a taken name",
                secret(
                    json!({"operation": "create", "type": "env", "name": "TOKEN", "secret": "y"}),
                ),
                "",
            ),
        ],
    ));
    cases.extend(malformed("POST", "POST", &post));
    cases.extend(malformed("PUT", "PUT", &put));
    expect_refusals(&a, &[pa.id, pb.id], cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_templates_are_refused_and_nothing_is_written() {
    const ARGS: &str = "template arguments must be valid JSON";
    const NO_INVENTORY: &str = "template inventory can not be empty";
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (pa, pb) = two_projects(&a).await;
    let p = pa.id;
    let post = at(p, "templates");
    let put = at(p, &format!("templates/{}", pa.build));
    let base = json!({"name": "t", "project_id": p, "app": "ansible", "playbook": "site.yml",
                      "inventory_id": pa.inv, "repository_id": pa.repo,
                      "environment_id": pa.env});
    let put_base = with(&base, json!({"id": pa.build, "type": "build"}));
    let deploy_of = |id: u64| json!({"type": "deploy", "build_template_id": id});

    let shared = || -> Vec<Row> {
        vec![
            (
                "empty name",
                json!({"name": ""}),
                "template name can not be empty",
            ),
            (
                "no name",
                json!({"name": null}),
                "template name can not be empty",
            ),
            (
                "empty playbook",
                json!({"playbook": ""}),
                "template playbook can not be empty",
            ),
            (
                "ansible without inventory",
                json!({"inventory_id": null}),
                NO_INVENTORY,
            ),
            (
                "ansible with inventory 0",
                json!({"inventory_id": 0}),
                NO_INVENTORY,
            ),
            (
                "default app (ansible) without inventory",
                json!({"app": null, "inventory_id": null}),
                NO_INVENTORY,
            ),
            (
                "unknown app",
                json!({"app": "no_such_app"}),
                "Invalid app id: no_such_app",
            ),
            (
                "custom app",
                json!({"app": "x-custom"}),
                "Invalid app id: x-custom",
            ),
            ("arguments: not JSON", json!({"arguments": "-v"}), ARGS),
            ("arguments: numbers", json!({"arguments": "[1,2]"}), ARGS),
            ("arguments: bools", json!({"arguments": "[true]"}), ARGS),
            (
                "arguments: an object",
                json!({"arguments": "{\"a\":\"b\"}"}),
                ARGS,
            ),
            ("arguments: a string", json!({"arguments": "\"-v\""}), ARGS),
            (
                "arguments: truncated",
                json!({"arguments": "[\"-v\""}),
                ARGS,
            ),
            (
                "arguments: an array, not a string",
                json!({"arguments": ["-v"]}),
                "arguments",
            ),
            ("name: number", json!({"name": 1}), "name"),
            (
                "repository_id: string",
                json!({"repository_id": "1"}),
                "repository_id",
            ),
            (
                "survey_vars: a string",
                json!({"survey_vars": "x"}),
                "survey_vars",
            ),
            (
                "survey var: an array, not an object",
                json!({"survey_vars": [["v", "V", "", "", false, null]]}),
                "survey_vars",
            ),
            ("vaults: an object", json!({"vaults": {}}), "vaults"),
            (
                "allow_override_args_in_task: string",
                json!({"allow_override_args_in_task": "yes"}),
                "allow_override_args_in_task",
            ),
            (
                "no repository",
                json!({"repository_id": null}),
                "repository",
            ),
            ("unknown type", json!({"type": "weird"}), ""),
            (
                "unknown survey var type",
                json!({"survey_vars": [{"name": "v", "type": "bogus"}]}),
                "",
            ),
            ("git_branch -f", json!({"git_branch": "-f"}), "branch"),
            (
                "git_branch --upload-pack",
                json!({"git_branch": "--upload-pack=x"}),
                "branch",
            ),
            ("git_branch a..b", json!({"git_branch": "a..b"}), "branch"),
            (
                "escaping playbook",
                json!({"playbook": "../x.yml"}),
                "playbook",
            ),
            (
                "repository of B",
                json!({"repository_id": pb.repo}),
                "repository_id",
            ),
            (
                "inventory of B",
                json!({"inventory_id": pb.inv}),
                "inventory_id",
            ),
            (
                "environment of B",
                json!({"environment_id": pb.env}),
                "environment_id",
            ),
            (
                "build template of B",
                deploy_of(pb.build),
                "build_template_id",
            ),
            (
                "build template that is no build template",
                deploy_of(pa.plain),
                "build_template_id",
            ),
            (
                "vault key of B",
                json!({"vaults": [{"vault_key_id": pb.lp}]}),
                "vault",
            ),
            (
                "vault key that is a secret",
                json!({"vaults": [{"vault_key_id": pa.secret}]}),
                "vault",
            ),
            (
                "unknown repository",
                json!({"repository_id": 999_999}),
                "repository_id",
            ),
            (
                "unknown inventory",
                json!({"inventory_id": 999_999}),
                "inventory_id",
            ),
        ]
    };
    let mut cases = patched("POST", &post, &base, shared());
    cases.push(case(
        "POST: project_id of B",
        "POST",
        &post,
        with(&base, json!({"project_id": pb.id})),
        PROJECT_MISMATCH,
    ));
    cases.extend(patched("PUT", &put, &put_base, shared()));
    cases.extend(patched(
        "PUT",
        &put,
        &put_base,
        vec![
            (
                "id of another template",
                json!({"id": pa.plain}),
                "template id in URL and in body must be the same",
            ),
            (
                "no id",
                json!({"id": null}),
                "template id in URL and in body must be the same",
            ),
            (
                "project_id of B",
                json!({"project_id": pb.id}),
                "You can not move template to other project",
            ),
            (
                "its own build template",
                deploy_of(pa.build),
                "build_template_id",
            ),
        ],
    ));
    cases.extend(malformed("POST", "POST", &post));
    cases.extend(malformed("PUT", "PUT", &put));
    expect_refusals(&a, &[pa.id, pb.id], cases).await;

    // The unknown-app body is exactly upstream's.
    let r = a
        .post(&post, with(&base, json!({"app": "no_such_app"})))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"error": "Invalid app id: no_such_app"}));
}

// =============================================================================================
// Environment secrets
// =============================================================================================

#[tokio::test(flavor = "multi_thread")]
async fn environment_secrets_are_created_updated_and_deleted_but_never_shown() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Secrets").await;
    let envs = at(p, "environment");
    let r = a
        .post(
            &envs,
            json!({"name": "prod", "project_id": p, "json": "{}",
                   "secrets": [
                       {"operation": "create", "type": "env", "name": "TOKEN",
                        "secret": "token-value-7f3a"},
                       {"operation": "create", "type": "var", "name": "db_password",
                        "secret": "db-value-7f3a"}]}),
        )
        .await;
    assert_no_content(&r, "POST environment with secrets");
    let env = id_by_name(&a, &envs, "prod").await;
    let path = format!("{envs}/{env}");
    let mut secrets = env_secrets(&a, p, env).await;
    secrets.sort_by_key(id_of);
    assert_eq!(secrets.len(), 2, "{secrets:?}");
    let token = id_of(&secrets[0]);
    let db = id_of(&secrets[1]);
    assert_eq!(
        secrets,
        [
            json!({"id": token, "type": "env", "name": "TOKEN", "secret": "", "operation": ""}),
            json!({"id": db, "type": "var", "name": "db_password", "secret": "",
                   "operation": ""}),
        ]
    );
    assert_environment(&get_ok(&a, &path).await);
    assert_secrets_hidden(&a, p, &["token-value-7f3a", "db-value-7f3a"]).await;

    // Secrets are not access keys of the project.
    let key_ids: Vec<u64> = list(&a, &at(p, "keys")).await.iter().map(id_of).collect();
    for id in [token, db] {
        assert!(!key_ids.contains(&id), "secret {id} listed as a key");
        let k = at(p, &format!("keys/{id}"));
        assert_eq!(a.get(&k).await.status, 404);
        assert_eq!(a.get(&format!("{k}/refs")).await.status, 404);
        let r = a
            .put(
                &k,
                json!({"id": id, "project_id": p, "name": "x", "type": "none"}),
            )
            .await;
        assert_eq!(r.status, 404, "PUT a secret as a key: {}", r.text());
        assert_eq!(a.delete(&k).await.status, 404);
    }
    assert_eq!(env_secrets(&a, p, env).await.len(), 2);

    // Echoing the listed secrets back (operation "") changes nothing.
    let body = json!({"id": env, "project_id": p, "name": "prod", "json": "{}"});
    let r = a
        .put(&path, with(&body, json!({ "secrets": secrets.clone() })))
        .await;
    assert_no_content(&r, "PUT echoing secrets");
    let mut now = env_secrets(&a, p, env).await;
    now.sort_by_key(id_of);
    assert_eq!(now, secrets);

    // update: rename and new value.
    let r = a
        .put(
            &path,
            with(
                &body,
                json!({"secrets": [{"id": token, "operation": "update", "type": "env",
                                    "name": "TOKEN2", "secret": "token-new-7f3a"}]}),
            ),
        )
        .await;
    assert_no_content(&r, "PUT secret update");
    let mut now = env_secrets(&a, p, env).await;
    now.sort_by_key(id_of);
    assert_eq!(
        now[0],
        json!({"id": token, "type": "env", "name": "TOKEN2", "secret": "", "operation": ""})
    );
    assert_eq!(now[1], secrets[1]);

    // delete and create in one PUT.
    let r = a
        .put(
            &path,
            with(
                &body,
                json!({"secrets": [{"id": db, "operation": "delete"},
                                   {"operation": "create", "type": "var", "name": "api_key",
                                    "secret": "api-value-7f3a"}]}),
            ),
        )
        .await;
    assert_no_content(&r, "PUT secret delete + create");
    let now = env_secrets(&a, p, env).await;
    let mut got = names(&now);
    got.sort();
    assert_eq!(got, ["TOKEN2", "api_key"]);
    assert!(now.iter().all(|s| id_of(s) != db));
    assert_secrets_hidden(
        &a,
        p,
        &[
            "token-value-7f3a",
            "token-new-7f3a",
            "db-value-7f3a",
            "api-value-7f3a",
        ],
    )
    .await;
}

/// Upstream bug API.md §10.10: an environment's `update`/`delete` secret operation could reach
/// any key of the project. Each refusal must leave the targeted key — and the rest of the
/// request — untouched.
#[tokio::test(flavor = "multi_thread")]
async fn secret_operations_cannot_reach_keys_that_are_not_the_environments_secrets() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let pa = furnished(&a, "A").await;
    let pb = furnished(&a, "B").await;
    let p = pa.id;
    let other_env = add_env(
        &a,
        p,
        json!({"name": "other", "project_id": p,
               "secrets": [{"operation": "create", "type": "var", "name": "OTHER",
                            "secret": "other-7f3a"}]}),
    )
    .await;
    let other_secret = id_of(&env_secrets(&a, p, other_env).await[0]);
    let put = at(p, &format!("environment/{}", pa.env));
    // Each body also renames the environment and creates a secret: all or nothing.
    let body = |op: &str, id: u64| {
        json!({"id": pa.env, "project_id": p, "name": "renamed", "json": "{\"x\":1}",
               "secrets": [{"operation": "create", "type": "var", "name": "NEW", "secret": "n"},
                           {"operation": op, "id": id, "name": "HIJACK", "secret": "h"}]})
    };
    let mut cases = Vec::new();
    for op in ["update", "delete"] {
        for (what, id) in [
            ("a plain ssh key", pa.ssh),
            ("the None key", pa.none),
            ("another environment's secret", other_secret),
            ("another project's key", pb.ssh),
            ("another project's secret", pb.secret),
            ("a key that does not exist", 999_999),
        ] {
            cases.push(case(&format!("{op} {what}"), "PUT", &put, body(op, id), ""));
        }
    }
    expect_refusals(&a, &[pa.id, pb.id], cases).await;

    // Spelled out: the targets are all still there, unchanged.
    assert_eq!(
        get_ok(&a, &at(p, &format!("keys/{}", pa.ssh))).await["name"],
        "ssh-key"
    );
    assert_eq!(
        get_ok(&a, &at(p, &format!("keys/{}", pa.none))).await["name"],
        "None"
    );
    assert_eq!(names(&env_secrets(&a, p, other_env).await), ["OTHER"]);
    assert_eq!(names(&env_secrets(&a, pb.id, pb.env).await), ["TOKEN"]);
    let e = get_ok(&a, &put).await;
    assert_eq!(e["name"], "env");
    assert_eq!(names(e["secrets"].as_array().expect("secrets")), ["TOKEN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_environment_deletes_its_secrets() {
    use forge::model::AccessKey;

    let s = TestServer::start().await;
    let a = s.admin().await;
    let pa = furnished(&a, "A").await;
    let p = pa.id;
    let keep = add_env(
        &a,
        p,
        json!({"name": "keep", "secrets": [{"operation": "create", "type": "env",
                                            "name": "KEEP", "secret": "k"}]}),
    )
    .await;
    let gone = add_env(
        &a,
        p,
        json!({"name": "gone", "secrets": [
            {"operation": "create", "type": "env", "name": "A", "secret": "a"},
            {"operation": "create", "type": "var", "name": "b", "secret": "b"}]}),
    )
    .await;
    let gone_secrets: Vec<u64> = env_secrets(&a, p, gone).await.iter().map(id_of).collect();
    assert_eq!(gone_secrets.len(), 2);
    assert_no_content(
        &a.delete(&at(p, &format!("environment/{gone}"))).await,
        "DELETE environment",
    );
    assert_eq!(names(&env_secrets(&a, p, keep).await), ["KEEP"]);

    // Scan the store: no key of the project belongs to the deleted environment any more.
    let dir = s.stop().await;
    let path = dir.path().join("forge.redb");
    let mut store = None;
    for _ in 0..50 {
        match forge::store::Store::open(&path) {
            Ok(st) => {
                store = Some(st);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let store = store.expect("database reopens after the server stopped");
    let keys: Vec<AccessKey> = store.view().expect("view").list(p).expect("keys");
    let orphans: Vec<&AccessKey> = keys
        .iter()
        .filter(|k| k.environment_id == Some(gone) || gone_secrets.contains(&k.id))
        .collect();
    assert!(orphans.is_empty(), "secrets left behind: {orphans:?}");
    // The other environments' secrets are still there.
    assert!(keys.iter().any(|k| k.environment_id == Some(keep)));
    assert!(keys.iter().any(|k| k.environment_id == Some(pa.env)));
}

// =============================================================================================
// Ids in paths
// =============================================================================================

/// (path segment, what the `Invalid ... ID` message names)
const RESOURCES: &[(&str, &str)] = &[
    ("keys", "key"),
    ("repositories", "repository"),
    ("inventory", "inventory"),
    ("environment", "environment"),
    ("templates", "template"),
];

/// A PUT body for resource `res` that is valid in project `pa` (so only the id decides).
fn valid_put(res: &str, id: u64, pa: &Proj) -> Value {
    let p = pa.id;
    match res {
        "keys" => json!({"id": id, "project_id": p, "name": "x", "type": "none"}),
        "repositories" => json!({"id": id, "project_id": p, "name": "x", "git_url": "/srv/x",
                                 "ssh_key_id": pa.none}),
        "inventory" => json!({"id": id, "project_id": p, "name": "x", "type": "static",
                              "inventory": ""}),
        "environment" => json!({"id": id, "project_id": p, "name": "x", "json": "{}"}),
        "templates" => json!({"id": id, "project_id": p, "name": "x", "app": "bash",
                              "playbook": "a.sh", "repository_id": pa.repo}),
        other => panic!("unknown resource {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_foreign_and_malformed_ids() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let pa = furnished(&a, "A").await;
    let pb = furnished(&a, "B").await;
    let p = pa.id;
    let mut failures = Vec::new();
    let mut check = |what: String, r: &Resp, status: u16, msg: Option<&str>| {
        let mut bad = r.status != status;
        if let Some(m) = msg {
            bad |= error_message(r).as_deref() != Ok(m);
        }
        if bad {
            failures.push(format!(
                "{what}: want {status} {msg:?}, got {} {}",
                r.status,
                r.text().trim_end()
            ));
        }
    };

    let foreign = |res: &str| match res {
        "keys" => pb.ssh,
        "repositories" => pb.repo,
        "inventory" => pb.inv,
        "environment" => pb.env,
        _ => pb.build,
    };
    let before = snapshot(&a, &[pa.id, pb.id]).await;
    for (res, what) in RESOURCES {
        // Unknown ids, and another project's ids through this project's URL: 404.
        for (label, id) in [("unknown", 999_999), ("other project's", foreign(res))] {
            let one = at(p, &format!("{res}/{id}"));
            check(format!("GET {label} {one}"), &a.get(&one).await, 404, None);
            let refs = format!("{one}/refs");
            check(
                format!("GET {label} {refs}"),
                &a.get(&refs).await,
                404,
                None,
            );
            let r = a.put(&one, valid_put(res, id, &pa)).await;
            check(format!("PUT {label} {one}"), &r, 404, None);
            check(
                format!("DELETE {label} {one}"),
                &a.delete(&one).await,
                404,
                None,
            );
        }
        // Non-numeric ids: 400 `Invalid <what> ID`.
        let msg = format!("Invalid {what} ID");
        for bad in ["abc", "1x"] {
            let one = at(p, &format!("{res}/{bad}"));
            check(format!("GET {one}"), &a.get(&one).await, 400, Some(&msg));
            let refs = format!("{one}/refs");
            check(format!("GET {refs}"), &a.get(&refs).await, 400, Some(&msg));
            let r = a.put(&one, valid_put(res, 1, &pa)).await;
            check(format!("PUT {one}"), &r, 400, Some(&msg));
            check(
                format!("DELETE {one}"),
                &a.delete(&one).await,
                400,
                Some(&msg),
            );
        }
        // Non-numeric project: 400 `Invalid project ID`; unknown project: 404.
        for (project, status, msg) in [
            ("abc", 400, Some("Invalid project ID")),
            ("999999", 404, None),
        ] {
            let all = format!("/api/project/{project}/{res}");
            check(format!("GET {all}"), &a.get(&all).await, status, msg);
            let r = a.post(&all, valid_put(res, 0, &pa)).await;
            check(format!("POST {all}"), &r, status, msg);
            let one = format!("{all}/1");
            check(format!("GET {one}"), &a.get(&one).await, status, msg);
            check(
                format!("GET {one}/refs"),
                &a.get(&format!("{one}/refs")).await,
                status,
                msg,
            );
            let r = a.put(&one, valid_put(res, 1, &pa)).await;
            check(format!("PUT {one}"), &r, status, msg);
            check(format!("DELETE {one}"), &a.delete(&one).await, status, msg);
        }
    }
    assert!(
        failures.is_empty(),
        "{} id case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // None of it wrote anything.
    assert_eq!(before, snapshot(&a, &[pa.id, pb.id]).await);
}

/// Reading one project's objects never needs more than that project's URL; a body naming
/// another project's object never moves or overwrites it (upstream bugs API.md §10.8–9).
#[tokio::test(flavor = "multi_thread")]
async fn bodies_cannot_move_or_overwrite_objects_of_another_project() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let pa = furnished(&a, "A").await;
    let pb = furnished(&a, "B").await;
    let b_before = snapshot(&a, &[pb.id]).await;

    // PUT A's key with B's key id and project in the body: refused, B untouched.
    let r = a
        .put(
            &at(pa.id, &format!("keys/{}", pa.ssh)),
            json!({"id": pb.ssh, "project_id": pb.id, "name": "pwned", "type": "none",
                   "override_secret": true}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // POST to A with B's project id (upstream created it in B for repositories and
    // environments).
    for (res, body) in [
        (
            "repositories",
            json!({"name": "moved", "project_id": pb.id, "git_url": "/srv/x",
                   "ssh_key_id": pb.none}),
        ),
        (
            "environment",
            json!({"name": "moved", "project_id": pb.id, "json": "{}"}),
        ),
    ] {
        let r = a.post(&at(pa.id, res), body).await;
        assert_eq!(r.status, 400, "POST {res}: {}", r.text());
        assert!(
            !names(&list(&a, &at(pa.id, res)).await).contains(&"moved".to_owned()),
            "{res} created in A"
        );
    }
    assert_eq!(b_before, snapshot(&a, &[pb.id]).await, "project B changed");
}
