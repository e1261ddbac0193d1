//! The authorization matrix (issue 3), through a real server: every project route (issue 3's
//! projects, members and resources, issue 4's tasks, issue 12's views and project backups,
//! issue 13's schedules, issue 14's integrations and alert test), plus the project list, project
//! creation and restore, the global event log, the server options and the apps, × every kind of
//! caller → the status the API must answer (API.md §5 and §11).
//!
//! The table in [`rows`] is the specification. [`every_project_route_has_a_row`] ties it to the
//! route table in both directions, so a new project route without a row fails the tests. Read
//! rows are asked of one shared project (reads change nothing), HEAD included; every write cell
//! gets a project of its own, so no cell sees what another one changed.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Client, Resp, TestServer};
use forge::http::auth::Need;
use forge::http::router::routes;
use serde_json::{Value, json};

/// The callers, in column order.
const CALLERS: [&str; 7] = [
    "anonymous",
    "non-member",
    "guest",
    "task_runner",
    "manager",
    "owner",
    "system admin",
];

/// Routes outside `/api/project/{project_id}` in the matrix: issue 3's, and issue 12's admin
/// task routes and options.
const GLOBAL_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/projects"),
    ("POST", "/api/projects"),
    ("POST", "/api/projects/restore"),
    ("GET", "/api/events"),
    ("GET", "/api/events/last"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/{task_id}"),
    ("DELETE", "/api/tasks/{task_id}"),
    ("GET", "/api/options"),
    ("POST", "/api/options"),
    ("GET", "/api/apps"),
    ("GET", "/api/apps/{app_id}"),
    ("PUT", "/api/apps/{app_id}"),
    ("DELETE", "/api/apps/{app_id}"),
    ("POST", "/api/apps/{app_id}/active"),
    ("GET", "/api/metrics"),
    ("GET", "/api/runners"),
    ("POST", "/api/runners"),
    ("GET", "/api/runners/{runner_id}"),
    ("PUT", "/api/runners/{runner_id}"),
    ("DELETE", "/api/runners/{runner_id}"),
    ("POST", "/api/runners/{runner_id}/active"),
    ("POST", "/api/auth/verify"),
    ("POST", "/api/auth/recovery"),
    ("POST", "/api/users/{user_id}/2fas/totp"),
    ("GET", "/api/users/{user_id}/2fas/totp/{totp_id}/qr"),
    ("DELETE", "/api/users/{user_id}/2fas/totp/{totp_id}"),
];

/// One row of the matrix: a route and the status each caller gets, in [`CALLERS`] order.
struct Row {
    method: &'static str,
    path: &'static str,
    expect: [u16; 7],
}

const fn row(method: &'static str, path: &'static str, expect: [u16; 7]) -> Row {
    Row {
        method,
        path,
        expect,
    }
}

/// The matrix. Anonymous callers get 401 everywhere; non-members 404 on every project route
/// (they never learn a project exists); members may read everything in the project; writes
/// need the route's permission bit (task_runner = RunTasks, manager = RunTasks +
/// ManageResources, owner = all, guest = none), else 403; system admins pass everywhere.
/// Successes: GET 200; POST of keys, repositories, environments and members 204; POST of
/// inventories, templates, views, tasks and projects 201; PUT, DELETE, stop and view positions
/// 204; `POST /api/options` 200 (it echoes the option).
#[rustfmt::skip]
fn rows() -> Vec<Row> {
    const G: &str = "GET";
    const P: &str = "POST";
    const U: &str = "PUT";
    const D: &str = "DELETE";
    vec![
        //                                                                     anon non-m guest runnr mangr owner admin
        row(G, "/api/projects",                                               [401, 200, 200, 200, 200, 200, 200]),
        // Only admins create projects (non_admin_can_create_project is off): upstream's 401.
        row(P, "/api/projects",                                               [401, 401, 401, 401, 401, 401, 201]),
        // A restore creates a project: the same rule as creating one.
        row(P, "/api/projects/restore",                                       [401, 401, 401, 401, 401, 401, 200]),
        row(G, "/api/events",                                                 [401, 200, 200, 200, 200, 200, 200]),
        row(G, "/api/events/last",                                            [401, 200, 200, 200, 200, 200, 200]),
        // Server options: system administrators only, whatever their project roles.
        row(G, "/api/options",                                                [401, 403, 403, 403, 403, 403, 200]),
        row(P, "/api/options",                                                [401, 403, 403, 403, 403, 403, 200]),
        // Apps (issue 12): every signed-in user lists them; only admins read or change one.
        row(G, "/api/apps",                                                   [401, 200, 200, 200, 200, 200, 200]),
        row(G, "/api/apps/{app_id}",                                          [401, 403, 403, 403, 403, 403, 200]),
        row(U, "/api/apps/{app_id}",                                          [401, 403, 403, 403, 403, 403, 204]),
        row(D, "/api/apps/{app_id}",                                          [401, 403, 403, 403, 403, 403, 204]),
        row(P, "/api/apps/{app_id}/active",                                   [401, 403, 403, 403, 403, 403, 204]),
        // Remote runners (issue 15): system administrators only.
        row(G, "/api/runners",                                                [401, 403, 403, 403, 403, 403, 200]),
        row(P, "/api/runners",                                                [401, 403, 403, 403, 403, 403, 201]),
        row(G, "/api/runners/{runner_id}",                                    [401, 403, 403, 403, 403, 403, 200]),
        row(U, "/api/runners/{runner_id}",                                    [401, 403, 403, 403, 403, 403, 204]),
        row(D, "/api/runners/{runner_id}",                                    [401, 403, 403, 403, 403, 403, 204]),
        row(P, "/api/runners/{runner_id}/active",                             [401, 403, 403, 403, 403, 403, 204]),
        // Metrics (issue 17): administrators, or a scraper's --metrics-token (see below).
        row(G, "/api/metrics",                                                [401, 403, 403, 403, 403, 403, 200]),
        // Two-factor login (issue 16), on the guest `member`, who has enabled it: only they
        // may enable it or see its QR code (admins included: the secret is theirs alone); an
        // admin may disable it for them. Verify/recovery: every caller gets there, and none
        // of them has enabled it (400).
        row(P, "/api/users/{user_id}/2fas/totp",                              [401, 403, 403, 403, 403, 403, 403]),
        row(G, "/api/users/{user_id}/2fas/totp/{totp_id}/qr",                 [401, 403, 403, 403, 403, 403, 403]),
        row(D, "/api/users/{user_id}/2fas/totp/{totp_id}",                    [401, 403, 403, 403, 403, 403, 204]),
        row(P, "/api/auth/verify",                                            [401, 400, 400, 400, 400, 400, 400]),
        row(P, "/api/auth/recovery",                                          [401, 400, 400, 400, 400, 400, 400]),

        row(G, "/api/project/{project_id}",                                   [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}",                                   [401, 404, 403, 403, 403, 204, 204]),
        row(D, "/api/project/{project_id}",                                   [401, 404, 403, 403, 403, 204, 204]),
        row(G, "/api/project/{project_id}/role",                              [401, 404, 200, 200, 200, 200, 200]),
        // A backup holds no secrets: every member may read it (API.md §6.9).
        row(G, "/api/project/{project_id}/backup",                            [401, 404, 200, 200, 200, 200, 200]),
        // Membership only: a (non-admin) owner cannot leave; an admin who is no member has
        // nothing to leave.
        row(D, "/api/project/{project_id}/me",                                [401, 404, 204, 204, 204, 400, 404]),
        row(G, "/api/project/{project_id}/events",                            [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/events/last",                       [401, 404, 200, 200, 200, 200, 200]),

        row(G, "/api/project/{project_id}/users",                             [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/users",                             [401, 404, 403, 403, 403, 204, 204]),
        row(G, "/api/project/{project_id}/users/{user_id}",                   [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/users/{user_id}",                   [401, 404, 403, 403, 403, 204, 204]),
        row(D, "/api/project/{project_id}/users/{user_id}",                   [401, 404, 403, 403, 403, 204, 204]),

        row(G, "/api/project/{project_id}/keys",                              [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/keys",                              [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/keys/{key_id}",                     [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/keys/{key_id}",                     [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/keys/{key_id}",                     [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/keys/{key_id}/refs",                [401, 404, 200, 200, 200, 200, 200]),

        row(G, "/api/project/{project_id}/repositories",                      [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/repositories",                      [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/repositories/{repository_id}",      [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/repositories/{repository_id}",      [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/repositories/{repository_id}",      [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/repositories/{repository_id}/refs", [401, 404, 200, 200, 200, 200, 200]),

        row(G, "/api/project/{project_id}/inventory",                         [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/inventory",                         [401, 404, 403, 403, 201, 201, 201]),
        row(G, "/api/project/{project_id}/inventory/{inventory_id}",          [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/inventory/{inventory_id}",          [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/inventory/{inventory_id}",          [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/inventory/{inventory_id}/refs",     [401, 404, 200, 200, 200, 200, 200]),

        row(G, "/api/project/{project_id}/environment",                       [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/environment",                       [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/environment/{environment_id}",      [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/environment/{environment_id}",      [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/environment/{environment_id}",      [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/environment/{environment_id}/refs", [401, 404, 200, 200, 200, 200, 200]),

        row(G, "/api/project/{project_id}/templates",                         [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/templates",                         [401, 404, 403, 403, 201, 201, 201]),
        row(G, "/api/project/{project_id}/templates/{template_id}",           [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/templates/{template_id}",           [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/templates/{template_id}",           [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/templates/{template_id}/refs",      [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/templates/{template_id}/tasks",     [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/templates/{template_id}/tasks/last",[401, 404, 200, 200, 200, 200, 200]),

        row(G, "/api/project/{project_id}/views",                             [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/views",                             [401, 404, 403, 403, 201, 201, 201]),
        row(P, "/api/project/{project_id}/views/positions",                   [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/views/{view_id}",                   [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/views/{view_id}",                   [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/views/{view_id}",                   [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/views/{view_id}/templates",         [401, 404, 200, 200, 200, 200, 200]),
        // No key is pinned in the fixture (pinning needs an SSH server: tests/secrets_linger.rs
        // reads and forgets a real one), so an allowed caller gets 404 for one key.
        row(G, "/api/project/{project_id}/host_keys",                         [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/host_keys/{host_key_id}",           [401, 404, 404, 404, 404, 404, 404]),
        row(D, "/api/project/{project_id}/host_keys/{host_key_id}",           [401, 404, 403, 403, 404, 404, 404]),
        // Schedules (issue 13): reads for members, writes and validate for ManageResources.
        row(G, "/api/project/{project_id}/schedules",                         [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/schedules",                         [401, 404, 403, 403, 201, 201, 201]),
        row(P, "/api/project/{project_id}/schedules/validate",                [401, 404, 403, 403, 200, 200, 200]),
        row(G, "/api/project/{project_id}/schedules/{schedule_id}",           [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/schedules/{schedule_id}",           [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/schedules/{schedule_id}",           [401, 404, 403, 403, 204, 204, 204]),
        row(U, "/api/project/{project_id}/schedules/{schedule_id}/active",    [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/templates/{template_id}/schedules", [401, 404, 200, 200, 200, 200, 200]),

        // Integrations (issue 14): reads for every member, writes ManageResources.
        row(G, "/api/project/{project_id}/integrations",                      [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/integrations",                      [401, 404, 403, 403, 201, 201, 201]),
        row(G, "/api/project/{project_id}/integrations/aliases",              [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/integrations/aliases",              [401, 404, 403, 403, 201, 201, 201]),
        row(D, "/api/project/{project_id}/integrations/aliases/{alias_id}",   [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}",     [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/integrations/{integration_id}",     [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/integrations/{integration_id}",     [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/refs", [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/matchers", [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/integrations/{integration_id}/matchers", [401, 404, 403, 403, 201, 201, 201]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}", [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}", [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}", [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}/refs", [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/values", [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/integrations/{integration_id}/values", [401, 404, 403, 403, 201, 201, 201]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}", [401, 404, 200, 200, 200, 200, 200]),
        row(U, "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}", [401, 404, 403, 403, 204, 204, 204]),
        row(D, "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}", [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}/refs", [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/aliases", [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/integrations/{integration_id}/aliases", [401, 404, 403, 403, 201, 201, 201]),
        row(D, "/api/project/{project_id}/integrations/{integration_id}/aliases/{alias_id}", [401, 404, 403, 403, 204, 204, 204]),
        row(G, "/api/project/{project_id}/integrations/{integration_id}/deliveries", [401, 404, 200, 200, 200, 200, 200]),

        // Tasks (issue 4): launching and stopping need RunTasks; deleting needs
        // ManageResources (else 403) and then system admin (else upstream's 401).
        row(G, "/api/project/{project_id}/tasks",                             [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/tasks",                             [401, 404, 403, 201, 201, 201, 201]),
        row(G, "/api/project/{project_id}/tasks/last",                        [401, 404, 200, 200, 200, 200, 200]),
        row(G, "/api/project/{project_id}/tasks/{task_id}",                   [401, 404, 200, 200, 200, 200, 200]),
        row(D, "/api/project/{project_id}/tasks/{task_id}",                   [401, 404, 403, 403, 401, 401, 204]),
        row(G, "/api/project/{project_id}/tasks/{task_id}/output",            [401, 404, 200, 200, 200, 200, 200]),
        row(P, "/api/project/{project_id}/tasks/{task_id}/stop",              [401, 404, 403, 204, 204, 204, 204]),
        row(G, "/api/project/{project_id}/tasks/{task_id}/raw_output",        [401, 404, 200, 200, 200, 200, 200]),
        // Plan approval needs RunTasks (checked first); the fixture's task has finished, so
        // whoever may decide learns that it waits for nothing (400).
        row(P, "/api/project/{project_id}/tasks/{task_id}/confirm",           [401, 404, 403, 400, 400, 400, 400]),
        row(P, "/api/project/{project_id}/tasks/{task_id}/reject",            [401, 404, 403, 400, 400, 400, 400]),
        // Alerts (issue 14): a test message on every channel needs a manager or above (no
        // channel is configured here: `{}`).
        row(P, "/api/project/{project_id}/notifications/test",                [401, 404, 403, 403, 200, 200, 200]),
        row(G, "/api/project/{project_id}/templates/{template_id}/stats",     [401, 404, 200, 200, 200, 200, 200]),
        // System administrators only, whatever the project role.
        row(G, "/api/tasks",                                                  [401, 403, 403, 403, 403, 403, 200]),
        row(G, "/api/tasks/{task_id}",                                        [401, 403, 403, 403, 403, 403, 200]),
        row(D, "/api/tasks/{task_id}",                                        [401, 403, 403, 403, 403, 403, 204]),
    ]
}

/// A project with one object of each kind, and the users the member routes act on.
#[derive(Debug, Clone, Copy, Default)]
struct Fixture {
    project: u64,
    /// A key nothing uses: the target of the key routes.
    key: u64,
    /// The key the repositories use.
    repo_key: u64,
    /// A repository nothing uses: the target of the repository routes.
    repository: u64,
    /// The repository the template uses.
    template_repo: u64,
    inventory: u64,
    environment: u64,
    template: u64,
    view: u64,
    /// A schedule of `template`.
    schedule: u64,
    /// A finished task of `template`.
    task: u64,
    /// An integration of `template`, with a matcher, an extract value and an alias.
    integration: u64,
    matcher: u64,
    value: u64,
    alias: u64,
    /// A project-wide integration alias.
    project_alias: u64,
    /// A guest member who is no caller: the target of the member routes.
    member: u64,
    /// A user in no project: who `POST .../users` adds.
    candidate: u64,
    /// A remote runner (global; a fresh one for each write cell).
    runner: u64,
    /// `member`'s TOTP enrolment.
    totp: u64,
}

impl Fixture {
    fn param(&self, name: &str) -> u64 {
        match name {
            "project_id" => self.project,
            "key_id" => self.key,
            "repository_id" => self.repository,
            "inventory_id" => self.inventory,
            "environment_id" => self.environment,
            "template_id" => self.template,
            "view_id" => self.view,
            "schedule_id" => self.schedule,
            "task_id" => self.task,
            "integration_id" => self.integration,
            "matcher_id" => self.matcher,
            "value_id" => self.value,
            "alias_id" => self.alias,
            "user_id" => self.member,
            // Never pinned: see the host key rows.
            "host_key_id" => 1,
            "runner_id" => self.runner,
            "totp_id" => self.totp,
            other => panic!("the fixture has no object for path parameter {{{other}}}"),
        }
    }

    /// The concrete path of a route pattern.
    fn path(&self, pattern: &str) -> String {
        pattern
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    // Apps are named, not numbered: bash is a built-in app every server has.
                    Some("app_id") => "bash".to_owned(),
                    Some("alias_id") if pattern.contains("/integrations/aliases/") => {
                        self.project_alias.to_string()
                    }
                    Some(name) => self.param(name).to_string(),
                    None => seg.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("/")
    }

    /// A body that passes validation, so that an allowed caller gets the success status.
    fn body(&self, method: &str, pattern: &str) -> Option<Value> {
        let p = self.project;
        let body = match (method, resource(pattern)) {
            ("POST", None) if pattern == "/api/projects" => json!({"name": "made in a cell"}),
            ("POST", None) if pattern == "/api/projects/restore" => {
                json!({"meta": {"name": "restored in a cell"}})
            }
            ("POST", None) if pattern == "/api/runners" => json!({"name": "made in a cell"}),
            ("POST", None) if pattern == "/api/auth/verify" => json!({"passcode": "123456"}),
            ("POST", None) if pattern == "/api/auth/recovery" => {
                json!({"recovery_code": "aaaa-bbbb-cccc-dddd"})
            }
            ("POST", None) if pattern == "/api/options" => {
                json!({"key": "matrix.option", "value": "set in a cell"})
            }
            // Changes that leave bash usable by the other cells' templates.
            ("PUT", None) if pattern.starts_with("/api/apps/") => json!({"priority": 700}),
            ("POST", None) if pattern.ends_with("/active") => json!({"active": true}),
            ("PUT", None) => json!({"id": p, "name": "renamed"}),
            ("POST", Some("users")) => json!({"user_id": self.candidate, "role": "guest"}),
            ("PUT", Some("users")) => json!({"role": "task_runner"}),
            ("POST", Some("keys")) => json!({"name": "new key", "type": "none", "project_id": p}),
            ("PUT", Some("keys")) => {
                json!({"id": self.key, "name": "renamed key", "type": "none", "project_id": p})
            }
            ("POST", Some("repositories")) => json!({"name": "new repo", "project_id": p,
                "git_url": "/srv/repo", "ssh_key_id": self.repo_key}),
            ("PUT", Some("repositories")) => json!({"id": self.repository, "name": "renamed repo",
                "project_id": p, "git_url": "/srv/other", "ssh_key_id": self.repo_key}),
            ("POST", Some("inventory")) => json!({"name": "new inventory", "project_id": p,
                "type": "static", "inventory": "localhost"}),
            ("PUT", Some("inventory")) => json!({"id": self.inventory, "name": "renamed inventory",
                "project_id": p, "type": "static", "inventory": "127.0.0.1"}),
            ("POST", Some("environment")) => {
                json!({"name": "new env", "project_id": p, "json": "{}"})
            }
            ("PUT", Some("environment")) => json!({"id": self.environment, "name": "renamed env",
                "project_id": p, "json": "{\"a\": 1}"}),
            ("POST", Some("templates")) => json!({"name": "new template", "project_id": p,
                "app": "bash", "playbook": "run.sh", "repository_id": self.template_repo}),
            ("PUT", Some("templates")) => json!({"id": self.template, "name": "renamed template",
                "project_id": p, "app": "bash", "playbook": "other.sh",
                "repository_id": self.template_repo}),
            ("POST", Some("views")) if pattern.ends_with("/positions") => {
                json!({ self.view.to_string(): 3 })
            }
            ("POST", Some("views")) => json!({"title": "new view", "project_id": p}),
            ("PUT", Some("views")) => {
                json!({"id": self.view, "title": "renamed view", "project_id": p, "position": 1})
            }
            ("POST", Some("schedules")) if pattern.ends_with("/validate") => {
                json!({"cron_format": "@hourly"})
            }
            ("POST", Some("schedules")) => json!({"name": "new schedule", "project_id": p,
                "template_id": self.template, "cron_format": "0 3 * * *"}),
            ("PUT", Some("schedules")) if pattern.ends_with("/active") => json!({"active": false}),
            ("PUT", Some("schedules")) => json!({"id": self.schedule, "name": "renamed schedule",
                "project_id": p, "template_id": self.template, "cron_format": "@daily"}),
            ("POST", Some("tasks"))
                if pattern.ends_with("/stop")
                    || pattern.ends_with("/confirm")
                    || pattern.ends_with("/reject") =>
            {
                json!({})
            }
            ("POST", Some("tasks")) => json!({"template_id": self.template}),
            ("POST", Some("integrations")) if pattern.ends_with("/aliases") => json!({}),
            ("POST" | "PUT", Some("integrations")) if pattern.contains("/matchers") => {
                json!({"id": self.matcher, "name": "m", "match_type": "header",
                       "method": "equals", "key": "X-Event", "value": "push"})
            }
            ("POST" | "PUT", Some("integrations")) if pattern.contains("/values") => {
                json!({"id": self.value, "name": "v", "value_source": "body", "key": "ref",
                       "variable": "branch"})
            }
            ("POST", Some("integrations")) => {
                json!({"name": "new integration", "template_id": self.template})
            }
            ("PUT", Some("integrations")) => json!({"id": self.integration,
                "name": "renamed integration", "template_id": self.template}),
            _ => return None,
        };
        Some(body)
    }
}

/// A server with the callers of every column and the users the fixtures need.
struct World {
    /// Kept running for the clients.
    _server: TestServer,
    /// The admin who creates (and so owns) every project; no column.
    creator: Client,
    /// One client per column, in [`CALLERS`] order.
    callers: Vec<Client>,
    /// Ids of the guest, task_runner, manager and owner callers.
    roles: [(u64, &'static str); 4],
    member: u64,
    candidate: u64,
    /// `member`'s TOTP enrolment.
    totp: u64,
}

impl World {
    async fn new() -> Self {
        // Hundreds of small durable writes: keep the database in memory where we can.
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir());
        let server = TestServer::start_in(dir.expect("temp dir"), |_| {}).await;
        let creator = server.admin().await;
        let (_, outsider) = server.user("outsider", false).await;
        let (guest_id, guest) = server.user("guest", false).await;
        let (runner_id, runner) = server.user("runner", false).await;
        let (manager_id, manager) = server.user("manager", false).await;
        let (owner_id, owner) = server.user("owner", false).await;
        let (_, root) = server.user("root", true).await;
        let (member, member_client) = server.user("member", false).await;
        let r = member_client
            .post(&format!("/api/users/{member}/2fas/totp"), json!({}))
            .await;
        assert_eq!(r.status, 201, "enable TOTP: {}", r.text());
        let totp = r.json()["id"].as_u64().expect("TOTP id");
        let (candidate, _) = server.user("candidate", false).await;
        let callers = vec![
            server.client(),
            outsider,
            guest,
            runner,
            manager,
            owner,
            root,
        ];
        Self {
            _server: server,
            creator,
            callers,
            roles: [
                (guest_id, "guest"),
                (runner_id, "task_runner"),
                (manager_id, "manager"),
                (owner_id, "owner"),
            ],
            member,
            candidate,
            totp,
        }
    }

    /// A fresh project with the callers as members and one object of each kind (or only of
    /// the kind `only` names, with what it depends on).
    async fn project(&self, only: Option<&str>) -> Fixture {
        let wants = |kind: &str| only.is_none_or(|o| o == kind);
        let a = &self.creator;
        let r = a.post("/api/projects", json!({"name": "matrix"})).await;
        assert_eq!(r.status, 201, "create project: {}", r.text());
        let p = r.json()["id"].as_u64().expect("project id");
        let base = format!("/api/project/{p}");
        for (user, role) in self.roles.iter().copied().chain([(self.member, "guest")]) {
            let r = a
                .post(
                    &format!("{base}/users"),
                    json!({"user_id": user, "role": role}),
                )
                .await;
            assert_eq!(r.status, 204, "add member: {}", r.text());
        }
        let mut fx = Fixture {
            project: p,
            member: self.member,
            candidate: self.candidate,
            runner: self.runner().await,
            totp: self.totp,
            ..Fixture::default()
        };
        if wants("keys") {
            fx.key = create(
                a,
                &base,
                "keys",
                json!({"name": "target key", "type": "none"}),
            )
            .await;
        }
        let integrations = wants("integrations");
        if wants("repositories")
            || wants("templates")
            || wants("tasks")
            || wants("schedules")
            || integrations
        {
            fx.repo_key = create(
                a,
                &base,
                "keys",
                json!({"name": "repo key", "type": "none"}),
            )
            .await;
        }
        let repo =
            |name: &str| json!({"name": name, "git_url": "/srv/repo", "ssh_key_id": fx.repo_key});
        if wants("repositories") {
            fx.repository = create(a, &base, "repositories", repo("target repo")).await;
        }
        if wants("templates") || wants("tasks") || wants("schedules") || integrations {
            fx.template_repo = create(a, &base, "repositories", repo("template repo")).await;
            fx.template = create(
                a,
                &base,
                "templates",
                json!({"name": "target template", "app": "bash", "playbook": "run.sh",
                       "repository_id": fx.template_repo}),
            )
            .await;
        }
        if wants("tasks") {
            fx.task = finished_task(a, &base, fx.template).await;
        }
        if wants("schedules") {
            fx.schedule = create(
                a,
                &base,
                "schedules",
                json!({"name": "target schedule", "template_id": fx.template,
                       "cron_format": "@hourly"}),
            )
            .await;
        }
        if integrations {
            let i = format!("{base}/integrations");
            fx.integration = create(
                a,
                &base,
                "integrations",
                json!({"name": "target integration", "template_id": fx.template}),
            )
            .await;
            let at = |part: &str| format!("{i}/{}/{part}", fx.integration);
            let made = |r: Resp| r.json()["id"].as_u64().expect("id");
            fx.matcher = made(
                a.post(
                    &at("matchers"),
                    json!({"name": "m", "match_type": "header",
                "method": "equals", "key": "X-Event", "value": "push"}),
                )
                .await,
            );
            fx.value = made(
                a.post(
                    &at("values"),
                    json!({"name": "v", "value_source": "body",
                "key": "ref", "variable": "branch"}),
                )
                .await,
            );
            fx.alias = made(a.post(&at("aliases"), json!({})).await);
            fx.project_alias = made(a.post(&format!("{i}/aliases"), json!({})).await);
        }
        if wants("inventory") {
            fx.inventory = create(
                a,
                &base,
                "inventory",
                json!({"name": "target inventory", "type": "static", "inventory": "localhost"}),
            )
            .await;
        }
        if wants("views") {
            fx.view = create(a, &base, "views", json!({"title": "target view"})).await;
        }
        if wants("environment") {
            fx.environment = create(
                a,
                &base,
                "environment",
                json!({"name": "target env", "json": "{}"}),
            )
            .await;
        }
        fx
    }

    /// A new remote runner.
    async fn runner(&self) -> u64 {
        let r = self
            .creator
            .post("/api/runners", json!({"name": "matrix runner"}))
            .await;
        assert_eq!(r.status, 201, "create runner: {}", r.text());
        r.json()["id"].as_u64().expect("runner id")
    }

    /// What a write cell on `pattern` needs: a project of its own with the objects of the
    /// pattern's resource (none for routes outside a project).
    async fn fixture_for(&self, pattern: &str) -> Fixture {
        if pattern.starts_with("/api/tasks/") {
            return self.project(Some("tasks")).await;
        }
        if !pattern.contains("{project_id}") {
            return Fixture {
                member: self.member,
                candidate: self.candidate,
                runner: self.runner().await,
                totp: self.totp,
                ..Fixture::default()
            };
        }
        self.project(Some(resource(pattern).unwrap_or("-"))).await
    }
}

/// The resource a project route is about: `keys` for `/api/project/{project_id}/keys/{key_id}`.
fn resource(pattern: &str) -> Option<&str> {
    pattern
        .strip_prefix("/api/project/{project_id}/")
        .and_then(|rest| rest.split('/').next())
}

/// Launches a task of `template` and stops it: a task that exists and has finished (only
/// finished tasks may be deleted).
async fn finished_task(a: &Client, base: &str, template: u64) -> u64 {
    let r = a
        .post(&format!("{base}/tasks"), json!({"template_id": template}))
        .await;
    assert_eq!(r.status, 201, "launch task: {}", r.text());
    let id = r.json()["id"].as_u64().expect("task id");
    let url = format!("{base}/tasks/{id}");
    let r = a.post(&format!("{url}/stop"), json!({})).await;
    assert_eq!(r.status, 204, "stop task: {}", r.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = a.get(&url).await.json()["status"].clone();
        if ["success", "error", "stopped"].contains(&status.as_str().unwrap_or_default()) {
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} still {status} after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Creates a project resource and returns its id (found by name when the API answers 204).
async fn create(a: &Client, base: &str, resource: &str, body: Value) -> u64 {
    let name = body["name"]
        .as_str()
        .or_else(|| body["title"].as_str())
        .expect("name or title")
        .to_owned();
    let url = format!("{base}/{resource}");
    let r = a.post(&url, body).await;
    match r.status {
        201 => r.json()["id"].as_u64().expect("id"),
        204 => {
            let list = a.get(&url).await.json();
            list.as_array()
                .expect("list")
                .iter()
                .find(|o| o["name"] == name.as_str())
                .and_then(|o| o["id"].as_u64())
                .unwrap_or_else(|| panic!("{resource} {name:?} not in {list}"))
        }
        _ => panic!("create {resource}: {} {}", r.status, r.text()),
    }
}

async fn send(client: &Client, fx: &Fixture, method: &str, pattern: &str) -> Resp {
    let path = fx.path(pattern);
    match fx.body(method, pattern) {
        Some(body) => {
            client
                .raw(
                    method,
                    &path,
                    Some(body.to_string().into_bytes()),
                    &[("content-type", "application/json")],
                )
                .await
        }
        None => client.raw(method, &path, None, &[]).await,
    }
}

fn mismatch(method: &str, pattern: &str, caller: usize, expected: u16, r: &Resp) -> String {
    format!(
        "{method} {pattern} as {}: expected {expected}, got {} (body: {:?})",
        CALLERS[caller],
        r.status,
        r.text()
    )
}

fn report(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} {what} cell(s) wrong:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn every_project_route_has_a_row() {
    let in_scope: BTreeSet<(String, String)> = routes()
        .iter()
        .filter(|r| {
            matches!(r.need, Need::Project(_))
                || GLOBAL_ROUTES.contains(&(r.method.as_str(), r.path))
        })
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    let table = rows();
    let mut in_table = BTreeSet::new();
    for r in &table {
        assert!(
            in_table.insert((r.method.to_owned(), r.path.to_owned())),
            "the authorization matrix has two rows for {} {}",
            r.method,
            r.path
        );
    }
    let missing: Vec<String> = in_scope
        .difference(&in_table)
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "route(s) without a row in the authorization matrix (tests/authz.rs, fn rows): {}",
        missing.join(", ")
    );
    let stale: Vec<String> = in_table
        .difference(&in_scope)
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        stale.is_empty(),
        "row(s) of the authorization matrix naming no project route in routes(): {}",
        stale.join(", ")
    );
    // Every path parameter of a project route has an object in the fixture.
    let fx = Fixture::default();
    for r in &table {
        fx.path(r.path);
    }
}

/// Reads (GET and HEAD) change nothing: every caller asks the same project.
#[tokio::test(flavor = "multi_thread")]
async fn read_routes_answer_every_caller_as_the_matrix_says() {
    let w = World::new().await;
    let fx = w.project(None).await;
    let mut failures = Vec::new();
    let mut cells = 0;
    for row in rows().iter().filter(|r| r.method == "GET") {
        for (c, client) in w.callers.iter().enumerate() {
            let get = send(client, &fx, "GET", row.path).await;
            if get.status != row.expect[c] {
                failures.push(mismatch("GET", row.path, c, row.expect[c], &get));
            }
            let head = send(client, &fx, "HEAD", row.path).await;
            if head.status != row.expect[c] || head.status != get.status {
                failures.push(format!(
                    "{} (GET gave {})",
                    mismatch("HEAD", row.path, c, row.expect[c], &head),
                    get.status
                ));
            }
            if !head.body.is_empty() {
                failures.push(format!("HEAD {} as {}: has a body", row.path, CALLERS[c]));
            }
            cells += 2;
        }
    }
    report(&format!("of {cells} read"), &failures);
}

/// Every write cell gets a project of its own, so a 403 is never a 404 from an object another
/// cell deleted.
#[tokio::test(flavor = "multi_thread")]
async fn write_routes_answer_every_caller_as_the_matrix_says() {
    let w = Arc::new(World::new().await);
    let mut columns = tokio::task::JoinSet::new();
    for c in 0..CALLERS.len() {
        let w = w.clone();
        columns.spawn(async move {
            let mut failures = Vec::new();
            let mut cells = 0;
            for row in rows().iter().filter(|r| r.method != "GET") {
                let fx = w.fixture_for(row.path).await;
                let r = send(&w.callers[c], &fx, row.method, row.path).await;
                if r.status != row.expect[c] {
                    failures.push(mismatch(row.method, row.path, c, row.expect[c], &r));
                }
                cells += 1;
            }
            (c, cells, failures)
        });
    }
    let mut results = columns.join_all().await;
    results.sort_by_key(|(c, _, _)| *c);
    let cells: usize = results.iter().map(|(_, n, _)| n).sum();
    let failures: Vec<String> = results.into_iter().flat_map(|(_, _, f)| f).collect();
    report(&format!("of {cells} write"), &failures);
}

/// The scraper's `--metrics-token` opens `/api/metrics` and nothing else; a wrong one is 401;
/// administrators' tokens keep working beside it.
#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_token_opens_the_metrics_and_nothing_else() {
    const TOKEN: &str = "scrape-7c1e0f9a4b2d8e63";
    let s = TestServer::start_with(|c| {
        c.metrics_token = Some(forge::config::Secret(TOKEN.into()));
    })
    .await;
    let scraper = s.client().with_bearer(TOKEN);
    let r = scraper.get("/api/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("semaphore_tasks_running "),
        "{}",
        r.text()
    );
    let head = scraper.raw("HEAD", "/api/metrics", None, &[]).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    for path in [
        "/api/user",
        "/api/projects",
        "/api/options",
        "/api/tasks",
        "/api/users",
    ] {
        scraper.get(path).await.assert_error(401);
    }
    let r = scraper
        .post("/api/projects", json!({"name": "by a scraper"}))
        .await;
    r.assert_error(401);
    for wrong in [&TOKEN[..TOKEN.len() - 1], "scrape-7c1e0f9a4b2d8e64", "x"] {
        s.client()
            .with_bearer(wrong)
            .get("/api/metrics")
            .await
            .assert_error(401);
    }
    s.client().get("/api/metrics").await.assert_error(401);
    let (_, user) = s.user("plain", false).await;
    user.get("/api/metrics").await.assert_error(403);
    let admin = s.admin().await;
    let admin_token = admin.new_token().await;
    let r = s
        .client()
        .with_bearer(&admin_token)
        .get("/api/metrics")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(admin.get("/api/metrics").await.status, 200);
}
