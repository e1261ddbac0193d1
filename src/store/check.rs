//! `forge check`: an offline audit of a database file. redb's own integrity check, then every
//! record of every table decoded (after the pending migrations, run in a transaction that is
//! dropped, so the file is judged as this binary will read it and is not upgraded), every
//! secondary index compared with its primary table in both directions, every id counter ahead
//! of the ids it handed out, and every sealed secret opened with the server key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Debug, Display};
use std::path::Path;

use redb::{Database, Key, ReadableTable, TableDefinition, Value, WriteTransaction};
use serde::de::DeserializeOwned;

use super::tables::{
    ACTIVE_TASK, ADMIN_USERID, EMAIL_USERID, EVENTID_EVENT, META, OUTPUT_CHUNK,
    PROJECT_BUILDVERSION, PROJECT_ENVIRONMENT, PROJECT_EVENTID, PROJECT_INVENTORY, PROJECT_KEY,
    PROJECT_REPOSITORY, PROJECT_TASK, PROJECT_TEMPLATE, PROJECT_VIEW, PROJECTID_PROJECT,
    PROJECTUSER_ROLE, PURGE_TASK, SESSIONHASH_SESSION, SETTINGS, TASKID_PROJECT, TEMPLATE_TASK,
    TOKENHASH_TOKEN, USERID_SESSIONHASH, USERID_TOKENHANDLE, USERID_USER, USERNAME_USERID,
    USERPROJECT,
};
use super::{Error, Result, codec, migrate, output};
use crate::model::{
    AccessKey, ApiToken, BuildVersion, Environment, Event, Inventory, KeySecret, Project,
    Repository, Session, Task, Template, User, View,
};

/// The `SETTINGS` row holding the server key's sealed check value (written by
/// `service::secrets`, which the store does not depend on).
pub const CHECK_SETTING: &str = "secret_key_check";

/// Most problems listed per kind before the rest are only counted.
const LIST_AT_MOST: usize = 20;

/// Opens sealed secrets for the check; implemented by the server's cipher (the store cannot
/// depend on the service layer that owns it).
pub trait Unseal {
    /// The plaintext of `sealed`, or `None` when the key does not open it.
    fn unseal(&self, sealed: &[u8]) -> Option<Vec<u8>>;
    /// Whether `sealed` is the check value this key sealed (`settings.secret_key_check`).
    fn is_check_value(&self, sealed: &[u8]) -> bool;
}

/// What `forge check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// The file's format version (before any pending migration).
    pub version: u64,
    /// Rows per table, in table order.
    pub counts: Vec<(&'static str, u64)>,
    /// Sealed secrets the key opened.
    pub secrets_opened: u64,
    /// Everything wrong, one line each.
    pub problems: Vec<String>,
}

impl Report {
    /// No problem found.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, text: impl Into<String>) {
        self.problems.push(text.into());
    }
}

impl Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format version {}", self.version)?;
        if self.version < migrate::CURRENT {
            writeln!(
                f,
                "  (upgraded to {} the next time a server opens it)",
                migrate::CURRENT
            )?;
        }
        for (table, n) in &self.counts {
            writeln!(f, "{table:<20} {n:>10}")?;
        }
        writeln!(f, "sealed secrets opened {:>9}", self.secrets_opened)?;
        if self.problems.is_empty() {
            writeln!(f, "no problems found")
        } else {
            writeln!(f, "{} problem(s):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
            Ok(())
        }
    }
}

/// Checks the database file at `path` (the server must be stopped). With `key`, every sealed
/// secret must open; without, secrets are not checked and that is reported as a problem when
/// there are any.
///
/// # Errors
/// [`Error::Locked`] when a server holds the file; [`Error::TooNew`]; open failures. Problems
/// in the data are in the [`Report`], not errors.
pub fn check_file(path: &Path, key: Option<&dyn Unseal>) -> Result<Report> {
    if !path.is_file() {
        return Err(Error::Db(redb::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} does not exist", path.display()),
        ))));
    }
    // Refuse a newer file before the writable open below marks it.
    match redb::ReadOnlyDatabase::open(path) {
        Ok(ro) => {
            let found = migrate::inspect(&redb::ReadableDatabase::begin_read(&ro)?)?;
            migrate::refuse_newer(found.version, migrate::CURRENT)?;
            ro.close()?;
        }
        Err(redb::DatabaseError::RepairAborted) => {}
        Err(e) => return Err(e.into()),
    }
    let mut db = Database::open(path)?;
    let mut report = Report::default();
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => report.problem("redb integrity check failed (repaired in memory)"),
        Err(e) => {
            report.problem(format!("redb integrity check failed: {e}"));
            return Ok(report);
        }
    }
    let tx = db.begin_write()?;
    match migrate::apply_pending(&tx) {
        Ok(version) => report.version = version,
        // A record the upgrade cannot read is damage to report, not a reason to give up.
        Err(Error::Migration(e)) => {
            report.version = migrate::version_in(&tx)?.unwrap_or(migrate::CURRENT);
            report.problem(format!("the pending upgrade would fail: {e}"));
            return Ok(report);
        }
        Err(e) => return Err(e),
    }
    check_tx(&tx, key, &mut report)?;
    // Dropped, never committed: checking does not upgrade or otherwise change the file.
    tx.abort()?;
    Ok(report)
}

/// Visits every row of `table`.
fn each<K, V>(
    tx: &WriteTransaction,
    table: TableDefinition<K, V>,
    mut visit: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>),
) -> Result<u64>
where
    K: Key + 'static,
    V: Value + 'static,
{
    let opened = tx.open_table(table)?;
    let mut rows = 0;
    for row in opened.iter()? {
        let (key, value) = row?;
        visit(key.value(), value.value());
        rows += 1;
    }
    Ok(rows)
}

/// Lists the differences between what an index should hold and what it holds.
fn compare<T: Ord + Debug>(
    report: &mut Report,
    index: &str,
    expected: &BTreeSet<T>,
    actual: &BTreeSet<T>,
) {
    let missing: Vec<&T> = expected.difference(actual).collect();
    let stale: Vec<&T> = actual.difference(expected).collect();
    for (rows, what) in [(missing, "missing from"), (stale, "stale in")] {
        for row in rows.iter().take(LIST_AT_MOST) {
            report.problem(format!("{index}: {row:?} {what} the index"));
        }
        if rows.len() > LIST_AT_MOST {
            report.problem(format!(
                "{index}: {} more rows {what} the index",
                rows.len() - LIST_AT_MOST
            ));
        }
    }
}

/// Counts problems of one kind, listing the first few.
struct Tally {
    what: &'static str,
    seen: usize,
}

impl Tally {
    fn new(what: &'static str) -> Self {
        Self { what, seen: 0 }
    }

    fn add(&mut self, report: &mut Report, text: String) {
        self.seen += 1;
        if self.seen <= LIST_AT_MOST {
            report.problem(text);
        }
    }

    fn finish(self, report: &mut Report) {
        if self.seen > LIST_AT_MOST {
            report.problem(format!(
                "{}: {} more like the above",
                self.what,
                self.seen - LIST_AT_MOST
            ));
        }
    }
}

fn decode<T: DeserializeOwned>(
    report: &mut Report,
    table: &str,
    key: impl Debug,
    bytes: &[u8],
) -> Option<T> {
    match codec::decode(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            report.problem(format!("{table}[{key:?}]: {e}"));
            None
        }
    }
}

/// Every check below the file level, on the tables as `tx` sees them.
pub(crate) fn check_tx(
    tx: &WriteTransaction,
    key: Option<&dyn Unseal>,
    report: &mut Report,
) -> Result<()> {
    let mut sealed: Vec<(String, Vec<u8>, bool)> = Vec::new();
    let users = check_users(tx, report)?;
    check_sessions_and_tokens(tx, report, &users)?;
    check_totp(tx, report, &users, &mut sealed)?;
    let projects = check_projects(tx, report, &users)?;
    check_scoped(tx, report, &projects, &mut sealed)?;
    check_integrations(tx, report, &projects)?;
    check_events(tx, report, &projects)?;
    check_tasks(tx, report, &projects, &mut sealed)?;
    check_counters(tx, report)?;
    check_outbox(tx, report)?;
    super::runners::check(tx, report)?;
    check_secrets(tx, report, key, &sealed)?;
    Ok(())
}

fn check_users(tx: &WriteTransaction, report: &mut Report) -> Result<BTreeMap<u64, User>> {
    let mut users = BTreeMap::new();
    let mut rows = Vec::new();
    let n = each(tx, USERID_USER, |id, bytes| rows.push((id, bytes.to_vec())))?;
    for (id, bytes) in rows {
        if let Some(u) = decode::<User>(report, "users", id, &bytes) {
            if u.id != id {
                report.problem(format!("users[{id}]: record says id {}", u.id));
            }
            users.insert(id, u);
        }
    }
    report.counts.push(("users", n));
    for (table, field) in [
        (USERNAME_USERID, "users_by_username"),
        (EMAIL_USERID, "users_by_email"),
    ] {
        let expected: BTreeSet<(String, u64)> = users
            .values()
            .map(|u| {
                let v = if field == "users_by_username" {
                    &u.username
                } else {
                    &u.email
                };
                (v.to_lowercase(), u.id)
            })
            .collect();
        let mut actual = BTreeSet::new();
        let n = each(tx, table, |k, v| {
            actual.insert((k.to_owned(), v));
        })?;
        report.counts.push((field, n));
        compare(report, field, &expected, &actual);
    }
    let expected: BTreeSet<u64> = users.values().filter(|u| u.admin).map(|u| u.id).collect();
    let mut actual = BTreeSet::new();
    let n = each(tx, ADMIN_USERID, |k, ()| {
        actual.insert(k);
    })?;
    report.counts.push(("admins", n));
    compare(report, "admins", &expected, &actual);
    Ok(users)
}

fn check_sessions_and_tokens(
    tx: &WriteTransaction,
    report: &mut Report,
    users: &BTreeMap<u64, User>,
) -> Result<()> {
    let mut rows = Vec::new();
    let n = each(tx, SESSIONHASH_SESSION, |h, b| rows.push((h, b.to_vec())))?;
    report.counts.push(("sessions", n));
    let mut expected = BTreeSet::new();
    for (hash, bytes) in rows {
        let short = format!(
            "{:02x}{:02x}{:02x}{:02x}",
            hash[0], hash[1], hash[2], hash[3]
        );
        if let Some(s) = decode::<Session>(report, "sessions", &short, &bytes) {
            if !users.contains_key(&s.user_id) {
                report.problem(format!(
                    "sessions[{short}…]: user {} does not exist",
                    s.user_id
                ));
            }
            expected.insert((s.user_id, hash));
        }
    }
    let mut actual = BTreeSet::new();
    let n = each(tx, USERID_SESSIONHASH, |k, ()| {
        actual.insert(k);
    })?;
    report.counts.push(("sessions_by_user", n));
    compare(report, "sessions_by_user", &expected, &actual);

    let mut rows = Vec::new();
    let n = each(tx, TOKENHASH_TOKEN, |h, b| rows.push((h, b.to_vec())))?;
    report.counts.push(("tokens", n));
    let mut expected = BTreeSet::new();
    for (hash, bytes) in rows {
        if let Some(t) = decode::<ApiToken>(report, "tokens", &t_handle(&bytes), &bytes) {
            if !users.contains_key(&t.user_id) {
                report.problem(format!(
                    "tokens[{}]: user {} does not exist",
                    t.handle, t.user_id
                ));
            }
            expected.insert((t.user_id, t.handle, hash));
        }
    }
    let mut actual = BTreeSet::new();
    let n = each(tx, USERID_TOKENHANDLE, |(user, handle), hash| {
        actual.insert((user, handle.to_owned(), hash));
    })?;
    report.counts.push(("tokens_by_user", n));
    compare(report, "tokens_by_user", &expected, &actual);
    Ok(())
}

/// A token's handle for messages, if its record decodes at all.
fn t_handle(bytes: &[u8]) -> String {
    codec::decode::<ApiToken>(bytes).map_or_else(|_| "?".into(), |t| t.handle)
}

/// TOTP enrolments: each decodes, sits under its own user, who exists; its secret is sealed
/// (opened with the others); its id is below the counter. Each pending session row names an
/// existing session of the same user.
fn check_totp(
    tx: &WriteTransaction,
    report: &mut Report,
    users: &BTreeMap<u64, User>,
    sealed: &mut Vec<(String, Vec<u8>, bool)>,
) -> Result<()> {
    use super::tables::{SESSIONHASH_PENDING, USERID_TOTP};
    let mut rows = Vec::new();
    let n = each(tx, USERID_TOTP, |user, b| rows.push((user, b.to_vec())))?;
    report.counts.push(("user_totp", n));
    let mut max_id = None;
    for (user, bytes) in rows {
        let Some(t) = decode::<crate::model::UserTotp>(report, "user_totp", user, &bytes) else {
            continue;
        };
        if t.user_id != user || !users.contains_key(&user) {
            report.problem(format!(
                "user_totp[{user}]: enrolment of user {} (no such user here)",
                t.user_id
            ));
        }
        max_id = max_id.max(Some(t.id));
        sealed.push((
            format!("TOTP secret of user {user}"),
            t.sealed_secret,
            false,
        ));
    }
    let next = tx
        .open_table(META)?
        .get("next_totp_id")?
        .map_or(1, |v| v.value());
    if let Some(max) = max_id.filter(|&m| m >= next) {
        report.problem(format!(
            "meta.next_totp_id is {next} but id {max} is taken: new records would collide"
        ));
    }
    let mut pending = Vec::new();
    let n = each(tx, SESSIONHASH_PENDING, |h, user| pending.push((h, user)))?;
    report.counts.push(("sessions_pending_totp", n));
    let sessions = tx.open_table(SESSIONHASH_SESSION)?;
    for (hash, user) in pending {
        let owner = match sessions.get(&hash)? {
            Some(b) => codec::decode::<Session>(b.value()).ok().map(|s| s.user_id),
            None => None,
        };
        if owner != Some(user) {
            report.problem(format!(
                "sessions_pending_totp[{:02x}{:02x}{:02x}{:02x}…]: no session of user {user}",
                hash[0], hash[1], hash[2], hash[3]
            ));
        }
    }
    Ok(())
}

fn check_projects(
    tx: &WriteTransaction,
    report: &mut Report,
    users: &BTreeMap<u64, User>,
) -> Result<BTreeSet<u64>> {
    let mut rows = Vec::new();
    let n = each(tx, PROJECTID_PROJECT, |id, b| rows.push((id, b.to_vec())))?;
    report.counts.push(("projects", n));
    let mut projects = BTreeSet::new();
    for (id, bytes) in rows {
        if let Some(p) = decode::<Project>(report, "projects", id, &bytes)
            && p.id != id
        {
            report.problem(format!("projects[{id}]: record says id {}", p.id));
        }
        projects.insert(id);
    }
    let mut members = BTreeSet::new();
    let mut bad = Vec::new();
    let n = each(tx, PROJECTUSER_ROLE, |(p, u), role| {
        members.insert((u, p));
        if role > 3 {
            bad.push(format!("project_members[{p}, {u}]: unknown role {role}"));
        }
    })?;
    report.counts.push(("project_members", n));
    for text in bad {
        report.problem(text);
    }
    for &(u, p) in &members {
        if !projects.contains(&p) {
            report.problem(format!(
                "project_members[{p}, {u}]: project {p} does not exist"
            ));
        }
        if !users.contains_key(&u) {
            report.problem(format!(
                "project_members[{p}, {u}]: user {u} does not exist"
            ));
        }
    }
    let mut actual = BTreeSet::new();
    let n = each(tx, USERPROJECT, |k, ()| {
        actual.insert(k);
    })?;
    report.counts.push(("user_projects", n));
    compare(report, "user_projects", &members, &actual);
    Ok(projects)
}

/// Decodes every row of a project-scoped table as `T`, checking its key against its fields.
fn scoped<T: DeserializeOwned>(
    tx: &WriteTransaction,
    report: &mut Report,
    table: TableDefinition<(u64, u64), &[u8]>,
    name: &'static str,
    projects: &BTreeSet<u64>,
    ids: impl Fn(&T) -> (u64, u64),
) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    let n = each(tx, table, |k, b| rows.push((k, b.to_vec())))?;
    report.counts.push((name, n));
    let mut orphans = Tally::new(name);
    let mut out = Vec::with_capacity(rows.len());
    for ((p, id), bytes) in rows {
        if !projects.contains(&p) {
            orphans.add(
                report,
                format!("{name}[{p}, {id}]: project {p} does not exist"),
            );
        }
        if let Some(r) = decode::<T>(report, name, (p, id), &bytes) {
            if ids(&r) != (p, id) {
                report.problem(format!(
                    "{name}[{p}, {id}]: record says project {}, id {}",
                    ids(&r).0,
                    ids(&r).1
                ));
            }
            out.push(r);
        }
    }
    orphans.finish(report);
    Ok(out)
}

fn check_scoped(
    tx: &WriteTransaction,
    report: &mut Report,
    projects: &BTreeSet<u64>,
    sealed: &mut Vec<(String, Vec<u8>, bool)>,
) -> Result<()> {
    let keys = scoped::<AccessKey>(tx, report, PROJECT_KEY, "keys", projects, |k| {
        (k.project_id, k.id)
    })?;
    for k in keys.into_iter().filter(|k| !k.sealed_secret.is_empty()) {
        sealed.push((format!("key {} ({})", k.id, k.name), k.sealed_secret, true));
    }
    scoped::<Repository>(
        tx,
        report,
        PROJECT_REPOSITORY,
        "repositories",
        projects,
        |r| (r.project_id, r.id),
    )?;
    scoped::<Inventory>(
        tx,
        report,
        PROJECT_INVENTORY,
        "inventories",
        projects,
        |i| (i.project_id, i.id),
    )?;
    let envs = scoped::<Environment>(
        tx,
        report,
        PROJECT_ENVIRONMENT,
        "environments",
        projects,
        |e| (e.project_id, e.id),
    )?;
    for e in envs.into_iter().filter(|e| !e.sealed_password.is_empty()) {
        sealed.push((
            format!("environment {} password", e.id),
            e.sealed_password,
            false,
        ));
    }
    let templates = scoped::<Template>(tx, report, PROJECT_TEMPLATE, "templates", projects, |t| {
        (t.project_id, t.id)
    })?;
    let templates: BTreeSet<(u64, u64)> = templates.iter().map(|t| (t.project_id, t.id)).collect();
    let builds = scoped::<BuildVersion>(
        tx,
        report,
        PROJECT_BUILDVERSION,
        "build_versions",
        projects,
        |b| (b.project_id, b.template_id),
    )?;
    for b in builds {
        if !templates.contains(&(b.project_id, b.template_id)) {
            report.problem(format!(
                "build_versions[{}, {}]: template {} does not exist",
                b.project_id, b.template_id, b.template_id
            ));
        }
    }
    scoped::<View>(tx, report, PROJECT_VIEW, "views", projects, |v| {
        (v.project_id, v.id)
    })?;
    scoped::<crate::model::HostKey>(
        tx,
        report,
        crate::store::tables::PROJECT_HOSTKEY,
        "host_keys",
        projects,
        |k| (k.project_id, k.id),
    )?;
    let schedules = scoped::<crate::model::Schedule>(
        tx,
        report,
        crate::store::tables::PROJECT_SCHEDULE,
        "schedules",
        projects,
        |s| (s.project_id, s.id),
    )?;
    let templates = tx.open_table(PROJECT_TEMPLATE)?;
    for s in schedules {
        if templates.get((s.project_id, s.template_id))?.is_none() {
            report.problem(format!(
                "schedules[{}, {}]: template {} does not exist",
                s.project_id, s.id, s.template_id
            ));
        }
    }
    Ok(())
}

/// Integrations and their parts: each refers to a template or integration of its project;
/// the alias hash index holds exactly the aliases' hashes; deliveries belong to an integration.
fn check_integrations(
    tx: &WriteTransaction,
    report: &mut Report,
    projects: &BTreeSet<u64>,
) -> Result<()> {
    use crate::model::{
        Delivery, Integration, IntegrationAlias, IntegrationMatcher, IntegrationValue,
    };
    use crate::store::tables::{
        ALIASHASH_ALIAS, INTEGRATION_DELIVERY, PROJECT_INTEGRATION, PROJECT_INTEGRATION_ALIAS,
        PROJECT_INTEGRATION_MATCHER, PROJECT_INTEGRATION_VALUE,
    };
    use sha2::Digest;
    let integrations = scoped::<Integration>(
        tx,
        report,
        PROJECT_INTEGRATION,
        "integrations",
        projects,
        |i| (i.project_id, i.id),
    )?;
    let templates = tx.open_table(PROJECT_TEMPLATE)?;
    for i in &integrations {
        if templates.get((i.project_id, i.template_id))?.is_none() {
            report.problem(format!(
                "integrations[{}, {}]: template {} does not exist",
                i.project_id, i.id, i.template_id
            ));
        }
    }
    let known: BTreeSet<(u64, u64)> = integrations.iter().map(|i| (i.project_id, i.id)).collect();
    let mut parts: Vec<(&str, u64, u64, Option<u64>)> = Vec::new();
    for m in scoped::<IntegrationMatcher>(
        tx,
        report,
        PROJECT_INTEGRATION_MATCHER,
        "integration_matchers",
        projects,
        |m| (m.project_id, m.id),
    )? {
        parts.push((
            "integration_matchers",
            m.project_id,
            m.id,
            Some(m.integration_id),
        ));
    }
    for v in scoped::<IntegrationValue>(
        tx,
        report,
        PROJECT_INTEGRATION_VALUE,
        "integration_values",
        projects,
        |v| (v.project_id, v.id),
    )? {
        parts.push((
            "integration_values",
            v.project_id,
            v.id,
            Some(v.integration_id),
        ));
    }
    let aliases = scoped::<IntegrationAlias>(
        tx,
        report,
        PROJECT_INTEGRATION_ALIAS,
        "integration_aliases",
        projects,
        |a| (a.project_id, a.id),
    )?;
    let mut expected = BTreeSet::new();
    for a in &aliases {
        parts.push(("integration_aliases", a.project_id, a.id, a.integration_id));
        let hash: [u8; 32] = sha2::Sha256::digest(a.alias.as_bytes()).into();
        expected.insert((hash, (a.project_id, a.id)));
    }
    for (table, p, id, integration) in parts {
        if let Some(i) = integration.filter(|&i| !known.contains(&(p, i))) {
            report.problem(format!(
                "{table}[{p}, {id}]: integration {i} does not exist"
            ));
        }
    }
    let mut actual = BTreeSet::new();
    let n = each(tx, ALIASHASH_ALIAS, |h, target| {
        actual.insert((h, target));
    })?;
    report.counts.push(("integration_aliases_by_hash", n));
    compare(report, "integration_aliases_by_hash", &expected, &actual);
    let mut rows = Vec::new();
    let n = each(tx, INTEGRATION_DELIVERY, |k, b| rows.push((k, b.to_vec())))?;
    report.counts.push(("integration_deliveries", n));
    for ((p, i, id), bytes) in rows {
        if !known.contains(&(p, i)) {
            report.problem(format!(
                "integration_deliveries[{p}, {i}, {id}]: integration {i} does not exist"
            ));
        }
        decode::<Delivery>(report, "integration_deliveries", (p, i, id), &bytes);
    }
    Ok(())
}

fn check_events(
    tx: &WriteTransaction,
    report: &mut Report,
    projects: &BTreeSet<u64>,
) -> Result<()> {
    let mut rows = Vec::new();
    let n = each(tx, EVENTID_EVENT, |id, b| rows.push((id, b.to_vec())))?;
    report.counts.push(("events", n));
    let mut expected = BTreeSet::new();
    let mut orphans = Tally::new("events");
    for (id, bytes) in rows {
        if let Some(e) = decode::<Event>(report, "events", id, &bytes) {
            if e.id != id {
                report.problem(format!("events[{id}]: record says id {}", e.id));
            }
            if let Some(p) = e.project_id {
                if !projects.contains(&p) {
                    orphans.add(report, format!("events[{id}]: project {p} does not exist"));
                }
                expected.insert((p, id));
            }
        }
    }
    orphans.finish(report);
    let mut actual = BTreeSet::new();
    let n = each(tx, PROJECT_EVENTID, |k, ()| {
        actual.insert(k);
    })?;
    report.counts.push(("events_by_project", n));
    compare(report, "events_by_project", &expected, &actual);
    Ok(())
}

fn check_tasks(
    tx: &WriteTransaction,
    report: &mut Report,
    projects: &BTreeSet<u64>,
    sealed: &mut Vec<(String, Vec<u8>, bool)>,
) -> Result<()> {
    let tasks = scoped::<Task>(tx, report, PROJECT_TASK, "tasks", projects, |t| {
        (t.project_id, t.id)
    })?;
    let mut by_id = BTreeSet::new();
    let mut to_project = BTreeSet::new();
    let mut by_template = BTreeSet::new();
    let mut active = BTreeSet::new();
    for t in tasks {
        by_id.insert(t.id);
        to_project.insert((t.id, t.project_id));
        by_template.insert((t.project_id, t.template_id, t.id));
        if !t.status.is_finished() {
            active.insert(t.id);
        }
        if !t.sealed_secret.is_empty() {
            sealed.push((format!("task {} secret", t.id), t.sealed_secret, false));
        }
    }
    let mut actual = BTreeSet::new();
    let n = each(tx, TASKID_PROJECT, |k, v| {
        actual.insert((k, v));
    })?;
    report.counts.push(("task_projects", n));
    compare(report, "task_projects", &to_project, &actual);
    let mut actual = BTreeSet::new();
    let n = each(tx, TEMPLATE_TASK, |k, ()| {
        actual.insert(k);
    })?;
    report.counts.push(("tasks_by_template", n));
    compare(report, "tasks_by_template", &by_template, &actual);
    let mut actual = BTreeSet::new();
    let n = each(tx, ACTIVE_TASK, |k, ()| {
        actual.insert(k);
    })?;
    report.counts.push(("active_tasks", n));
    compare(report, "active_tasks", &active, &actual);

    // Tasks retention removed whose output is still being deleted: their rows are no orphans,
    // but such a task must be gone.
    let mut purging = BTreeSet::new();
    let n = each(tx, PURGE_TASK, |k, ()| {
        purging.insert(k);
    })?;
    report.counts.push(("tasks_purging", n));
    for task in purging.intersection(&by_id).take(LIST_AT_MOST) {
        report.problem(format!(
            "tasks_purging: task {task} is queued for purging but exists"
        ));
    }

    // Output may be millions of chunks: streamed, never held. A task's chunks must follow
    // each other from line 0 without gap or overlap (a purging task's may start later).
    let mut orphans: HashMap<u64, u64> = HashMap::new();
    let mut undecodable = Tally::new("task_output_chunks");
    let mut broken = Tally::new("task_output_chunks");
    let mut bad = Vec::new();
    let mut gaps = Vec::new();
    let mut lines = 0;
    // The task of the previous chunk and the line its next chunk must start at (unknown
    // after a chunk that did not decode).
    let mut next: Option<(u64, Option<u64>)> = None;
    let n = each(tx, OUTPUT_CHUNK, |(task, first), bytes| {
        let len = match output::decode_chunk(bytes) {
            Ok(chunk) => Some(chunk.len() as u64),
            Err(e) => {
                bad.push(format!("task_output_chunks[{task}, {first}]: {e}"));
                None
            }
        };
        let count = len.unwrap_or(1);
        lines += count;
        let exists = by_id.contains(&task);
        if !exists && !purging.contains(&task) {
            *orphans.entry(task).or_default() += count;
        }
        let expected = match next {
            Some((t, at)) if t == task => at,
            _ => exists.then_some(0),
        };
        if let Some(at) = expected.filter(|&at| at != first) {
            gaps.push(format!(
                "task_output_chunks[{task}, {first}]: task {task}'s output should go on at \
                 line {at}"
            ));
        }
        next = Some((task, len.map(|l| first + l)));
    })?;
    for text in bad {
        undecodable.add(report, text);
    }
    undecodable.finish(report);
    for text in gaps {
        broken.add(report, text);
    }
    broken.finish(report);
    report.counts.push(("task_output_chunks", n));
    report.counts.push(("output lines", lines));
    let mut orphans: Vec<_> = orphans.into_iter().collect();
    orphans.sort_unstable();
    for (task, lines) in orphans.iter().take(LIST_AT_MOST) {
        report.problem(format!(
            "task_output: {lines} line(s) of task {task}, which does not exist"
        ));
    }
    if orphans.len() > LIST_AT_MOST {
        report.problem(format!(
            "task_output: lines of {} more missing tasks",
            orphans.len() - LIST_AT_MOST
        ));
    }
    Ok(())
}

/// Undelivered alerts decode, and their ids are below the `next_alert_id` counter. (Their
/// task may be gone: a row is a snapshot and is still sent.)
fn check_outbox(tx: &WriteTransaction, report: &mut Report) -> Result<()> {
    let mut bad = Vec::new();
    let mut largest = 0;
    let n = each(tx, super::tables::CHANNEL_ALERT, |(channel, id), bytes| {
        largest = largest.max(id);
        if let Err(e) = codec::decode::<super::outbox::Alert>(bytes) {
            bad.push(format!("alert_outbox[{channel}, {id}]: {e}"));
        }
    })?;
    report.counts.push(("alert_outbox", n));
    let mut undecodable = Tally::new("alert_outbox");
    for text in bad {
        undecodable.add(report, text);
    }
    undecodable.finish(report);
    let next = tx
        .open_table(META)?
        .get(super::outbox::ALERT_COUNTER)?
        .map_or(1, |v| v.value());
    if n > 0 && largest >= next {
        report.problem(format!(
            "meta: next_alert_id is {next} but alert_outbox holds id {largest}"
        ));
    }
    Ok(())
}

/// Every `META` id counter is past the largest id of its table.
fn check_counters(tx: &WriteTransaction, report: &mut Report) -> Result<()> {
    let meta = tx.open_table(META)?;
    let next = |name: &str| -> Result<u64> { Ok(meta.get(name)?.map_or(1, |v| v.value())) };
    let last_key = |t: TableDefinition<u64, &[u8]>| -> Result<Option<u64>> {
        Ok(tx.open_table(t)?.last()?.map(|(k, _)| k.value()))
    };
    let mut highest: Vec<(&str, Option<u64>)> = vec![
        ("next_user_id", last_key(USERID_USER)?),
        ("next_project_id", last_key(PROJECTID_PROJECT)?),
        ("next_event_id", last_key(EVENTID_EVENT)?),
    ];
    for (table, counter) in [
        (PROJECT_KEY, "next_key_id"),
        (PROJECT_REPOSITORY, "next_repository_id"),
        (PROJECT_INVENTORY, "next_inventory_id"),
        (PROJECT_ENVIRONMENT, "next_environment_id"),
        (PROJECT_TEMPLATE, "next_template_id"),
        (PROJECT_TASK, "next_task_id"),
        (PROJECT_VIEW, "next_view_id"),
        (crate::store::tables::PROJECT_SCHEDULE, "next_schedule_id"),
        (crate::store::tables::PROJECT_HOSTKEY, "next_host_key_id"),
        (
            crate::store::tables::PROJECT_INTEGRATION,
            "next_integration_id",
        ),
        (
            crate::store::tables::PROJECT_INTEGRATION_MATCHER,
            "next_integration_matcher_id",
        ),
        (
            crate::store::tables::PROJECT_INTEGRATION_VALUE,
            "next_integration_value_id",
        ),
        (
            crate::store::tables::PROJECT_INTEGRATION_ALIAS,
            "next_integration_alias_id",
        ),
    ] {
        let mut max = None;
        each(tx, table, |(_, id), _| max = max.max(Some(id)))?;
        highest.push((counter, max));
    }
    for (counter, max) in highest {
        if let Some(max) = max {
            let n = next(counter)?;
            if n <= max {
                report.problem(format!(
                    "meta.{counter} is {n} but id {max} is taken: new records would collide"
                ));
            }
        }
    }
    Ok(())
}

fn check_secrets(
    tx: &WriteTransaction,
    report: &mut Report,
    key: Option<&dyn Unseal>,
    sealed: &[(String, Vec<u8>, bool)],
) -> Result<()> {
    let check_value = tx
        .open_table(SETTINGS)?
        .get(CHECK_SETTING)?
        .map(|v| v.value().to_vec());
    let Some(key) = key else {
        if check_value.is_some() || !sealed.is_empty() {
            report.problem(format!(
                "no server key given: {} sealed secret(s) not checked",
                sealed.len()
            ));
        }
        return Ok(());
    };
    if let Some(v) = &check_value
        && !key.is_check_value(v)
    {
        report.problem("the server key is not the one that sealed this database's secrets");
    }
    let mut failed = Tally::new("secrets");
    for (what, bytes, is_key) in sealed {
        match key.unseal(bytes) {
            Some(plain) if *is_key && serde_json::from_slice::<KeySecret>(&plain).is_err() => {
                failed.add(report, format!("{what}: opens but is not a key secret"));
            }
            Some(_) => report.secrets_opened += 1,
            None => failed.add(report, format!("{what}: the server key does not open it")),
        }
    }
    failed.finish(report);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::many_single_char_names)]
    use super::*;
    use crate::model::{KeyKind, OutputLine, TaskStatus};
    use crate::service::secrets::Cipher;
    use std::path::PathBuf;

    const KEY: [u8; 32] = [7; 32];

    fn user() -> User {
        User {
            id: 1,
            created: 0,
            username: "Ada".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            admin: true,
            external: false,
            alert: false,
            password_hash: String::new(),
        }
    }

    fn task(status: TaskStatus) -> Task {
        Task {
            id: 5,
            status,
            user_id: Some(1),
            ..Task::waiting(2, 4, 0)
        }
    }

    /// A small, consistent database written row by row, as the store writes it.
    fn populated() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.redb");
        drop(migrate::open(&path, &migrate::Upgrade::default()).unwrap());
        let cipher = Cipher::new(&KEY);
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let u = user();
            tx.open_table(USERID_USER)
                .unwrap()
                .insert(1, codec::encode(&u).as_slice())
                .unwrap();
            tx.open_table(USERNAME_USERID)
                .unwrap()
                .insert("ada", 1)
                .unwrap();
            tx.open_table(EMAIL_USERID)
                .unwrap()
                .insert("ada@example.com", 1)
                .unwrap();
            tx.open_table(ADMIN_USERID).unwrap().insert(1, ()).unwrap();
            let s = Session {
                user_id: 1,
                created: 0,
                last_active: 0,
                ip: String::new(),
                user_agent: String::new(),
            };
            tx.open_table(SESSIONHASH_SESSION)
                .unwrap()
                .insert([1; 32], codec::encode(&s).as_slice())
                .unwrap();
            tx.open_table(USERID_SESSIONHASH)
                .unwrap()
                .insert((1, [1; 32]), ())
                .unwrap();
            let t = ApiToken {
                user_id: 1,
                handle: "h1".into(),
                created: 0,
                expired: false,
            };
            tx.open_table(TOKENHASH_TOKEN)
                .unwrap()
                .insert([2; 32], codec::encode(&t).as_slice())
                .unwrap();
            tx.open_table(USERID_TOKENHANDLE)
                .unwrap()
                .insert((1, "h1"), [2; 32])
                .unwrap();
            let p = Project {
                id: 2,
                name: "p".into(),
                created: 0,
                alert: false,
                alert_chat: None,
                max_parallel_tasks: 0,
                kind: String::new(),
            };
            tx.open_table(PROJECTID_PROJECT)
                .unwrap()
                .insert(2, codec::encode(&p).as_slice())
                .unwrap();
            tx.open_table(PROJECTUSER_ROLE)
                .unwrap()
                .insert((2, 1), 0)
                .unwrap();
            tx.open_table(USERPROJECT)
                .unwrap()
                .insert((1, 2), ())
                .unwrap();
            let secret = KeySecret {
                password: "pw".into(),
                ..KeySecret::default()
            };
            let k = AccessKey {
                id: 3,
                project_id: 2,
                name: "k".into(),
                kind: KeyKind::LoginPassword,
                sealed_secret: cipher.seal(&serde_json::to_vec(&secret).unwrap()),
                environment_id: None,
            };
            tx.open_table(PROJECT_KEY)
                .unwrap()
                .insert((2, 3), codec::encode(&k).as_slice())
                .unwrap();
            let e = Event {
                id: 6,
                user_id: Some(1),
                project_id: Some(2),
                object_id: None,
                object_type: "project".into(),
                description: "made".into(),
                created: 0,
            };
            tx.open_table(EVENTID_EVENT)
                .unwrap()
                .insert(6, codec::encode(&e).as_slice())
                .unwrap();
            tx.open_table(PROJECT_EVENTID)
                .unwrap()
                .insert((2, 6), ())
                .unwrap();
            let t = task(TaskStatus::Success);
            tx.open_table(PROJECT_TASK)
                .unwrap()
                .insert((2, 5), codec::encode(&t).as_slice())
                .unwrap();
            tx.open_table(TASKID_PROJECT).unwrap().insert(5, 2).unwrap();
            tx.open_table(TEMPLATE_TASK)
                .unwrap()
                .insert((2, 4, 5), ())
                .unwrap();
            let line = OutputLine {
                time_us: 0,
                text: "hi".into(),
            };
            tx.open_table(OUTPUT_CHUNK)
                .unwrap()
                .insert((5, 0), codec::encode(&vec![line.clone(), line]).as_slice())
                .unwrap();
            let mut meta = tx.open_table(META).unwrap();
            for (c, n) in [
                ("next_user_id", 2),
                ("next_project_id", 3),
                ("next_key_id", 4),
                ("next_task_id", 6),
                ("next_event_id", 7),
            ] {
                meta.insert(c, n).unwrap();
            }
            tx.open_table(SETTINGS)
                .unwrap()
                .insert(
                    CHECK_SETTING,
                    cipher.seal(b"forge secret key check v1").as_slice(),
                )
                .unwrap();
        }
        tx.commit().unwrap();
        (dir, path)
    }

    fn damaged(corrupt: fn(&WriteTransaction)) -> Report {
        let (_dir, path) = populated();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            corrupt(&tx);
            tx.commit().unwrap();
        }
        check_file(&path, Some(&Cipher::new(&KEY))).unwrap()
    }

    #[test]
    fn a_consistent_database_is_clean() {
        let (_dir, path) = populated();
        let report = check_file(&path, Some(&Cipher::new(&KEY))).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.version, migrate::CURRENT);
        assert_eq!(report.secrets_opened, 1);
        let count = |t| report.counts.iter().find(|(n, _)| *n == t).unwrap().1;
        assert_eq!(count("users"), 1);
        assert_eq!(count("task_output_chunks"), 1);
        assert_eq!(count("output lines"), 2);
        assert!(report.to_string().contains("no problems found"));
    }

    /// Stores a chunk of `lines` lines "x" under `key`.
    fn put_chunk(tx: &WriteTransaction, key: (u64, u64), lines: usize) {
        let line = OutputLine {
            time_us: 0,
            text: "x".into(),
        };
        tx.open_table(OUTPUT_CHUNK)
            .unwrap()
            .insert(key, codec::encode(&vec![line; lines]).as_slice())
            .unwrap();
    }

    #[test]
    fn every_kind_of_damage_is_reported() {
        type Case = (&'static str, fn(&WriteTransaction), &'static str);
        let cases: &[Case] = &[
            (
                "username index row gone",
                |tx| {
                    drop(
                        tx.open_table(USERNAME_USERID)
                            .unwrap()
                            .remove("ada")
                            .unwrap(),
                    );
                },
                r#"users_by_username: ("ada", 1) missing from the index"#,
            ),
            (
                "admin flag without index row",
                |tx| drop(tx.open_table(ADMIN_USERID).unwrap().remove(1).unwrap()),
                "admins: 1 missing from the index",
            ),
            (
                "stale session index row",
                |tx| {
                    drop(
                        tx.open_table(USERID_SESSIONHASH)
                            .unwrap()
                            .insert((1, [9; 32]), ())
                            .unwrap(),
                    );
                },
                "sessions_by_user",
            ),
            (
                "token index row gone",
                |tx| {
                    drop(
                        tx.open_table(USERID_TOKENHANDLE)
                            .unwrap()
                            .remove((1, "h1"))
                            .unwrap(),
                    );
                },
                "tokens_by_user",
            ),
            (
                "reverse membership gone",
                |tx| drop(tx.open_table(USERPROJECT).unwrap().remove((1, 2)).unwrap()),
                "user_projects: (1, 2) missing from the index",
            ),
            (
                "event index row gone",
                |tx| {
                    drop(
                        tx.open_table(PROJECT_EVENTID)
                            .unwrap()
                            .remove((2, 6))
                            .unwrap(),
                    );
                },
                "events_by_project: (2, 6) missing",
            ),
            (
                "finished task marked active",
                |tx| drop(tx.open_table(ACTIVE_TASK).unwrap().insert(5, ()).unwrap()),
                "active_tasks: 5 stale in the index",
            ),
            (
                "task id index gone",
                |tx| drop(tx.open_table(TASKID_PROJECT).unwrap().remove(5).unwrap()),
                "task_projects: (5, 2) missing",
            ),
            (
                "template index gone",
                |tx| {
                    drop(
                        tx.open_table(TEMPLATE_TASK)
                            .unwrap()
                            .remove((2, 4, 5))
                            .unwrap(),
                    );
                },
                "tasks_by_template",
            ),
            (
                "output of a missing task",
                |tx| put_chunk(tx, (99, 0), 1),
                "task_output: 1 line(s) of task 99, which does not exist",
            ),
            (
                "a gap in a task's output",
                |tx| put_chunk(tx, (5, 3), 1),
                "task_output_chunks[5, 3]: task 5's output should go on at line 2",
            ),
            (
                "an empty output chunk",
                |tx| put_chunk(tx, (5, 2), 0),
                "task_output_chunks[5, 2]: undecodable record: an empty output chunk",
            ),
            (
                "resource of a missing project",
                |tx| {
                    let k = codec::decode::<AccessKey>(
                        tx.open_table(PROJECT_KEY)
                            .unwrap()
                            .get((2, 3))
                            .unwrap()
                            .unwrap()
                            .value(),
                    )
                    .unwrap();
                    let k = AccessKey {
                        project_id: 42,
                        ..k
                    };
                    let bytes = codec::encode(&k);
                    drop(
                        tx.open_table(PROJECT_KEY)
                            .unwrap()
                            .insert((42, 3), bytes.as_slice())
                            .unwrap(),
                    );
                },
                "keys[42, 3]: project 42 does not exist",
            ),
            (
                "schedule of a template that is gone",
                |tx| {
                    let s = crate::model::Schedule {
                        id: 9,
                        project_id: 2,
                        template_id: 999,
                        cron_format: "@hourly".into(),
                        name: "orphan".into(),
                        active: true,
                        repository_id: None,
                        kind: String::new(),
                        run_at: None,
                        delete_after_run: false,
                        task_params: String::new(),
                        timezone: String::new(),
                        catch_up: false,
                        done_until: 0,
                        last_commit: String::new(),
                    };
                    let bytes = codec::encode(&s);
                    drop(
                        tx.open_table(crate::store::tables::PROJECT_SCHEDULE)
                            .unwrap()
                            .insert((2, 9), bytes.as_slice())
                            .unwrap(),
                    );
                },
                "schedules[2, 9]: template 999 does not exist",
            ),
            (
                "undecodable record",
                |tx| {
                    drop(
                        tx.open_table(USERID_USER)
                            .unwrap()
                            .insert(1, [1u8, 200, 3].as_slice())
                            .unwrap(),
                    );
                },
                "users[1]: undecodable record",
            ),
            (
                "counter behind the ids",
                |tx| {
                    drop(
                        tx.open_table(META)
                            .unwrap()
                            .insert("next_task_id", 5)
                            .unwrap(),
                    );
                },
                "meta.next_task_id is 5 but id 5 is taken",
            ),
            (
                "tampered secret",
                |tx| {
                    let mut k = codec::decode::<AccessKey>(
                        tx.open_table(PROJECT_KEY)
                            .unwrap()
                            .get((2, 3))
                            .unwrap()
                            .unwrap()
                            .value(),
                    )
                    .unwrap();
                    *k.sealed_secret.last_mut().unwrap() ^= 1;
                    let bytes = codec::encode(&k);
                    drop(
                        tx.open_table(PROJECT_KEY)
                            .unwrap()
                            .insert((2, 3), bytes.as_slice())
                            .unwrap(),
                    );
                },
                "key 3 (k): the server key does not open it",
            ),
        ];
        for (name, corrupt, expected) in cases {
            let report = damaged(*corrupt);
            assert!(
                report.problems.iter().any(|p| p.contains(expected)),
                "{name}: expected {expected:?} in\n{report}"
            );
            assert!(!report.is_clean());
        }
    }

    #[test]
    fn a_wrong_or_missing_key_is_reported() {
        let (_dir, path) = populated();
        let report = check_file(&path, Some(&Cipher::new(&[8; 32]))).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("not the one that sealed")),
            "{report}"
        );
        let report = check_file(&path, None).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("no server key given")),
            "{report}"
        );
    }

    /// The version-1 upgrade fixture (made by the first release): check runs the pending
    /// migrations in a transaction it never commits, finds the file sound, and leaves it at
    /// version 1.
    #[test]
    fn checking_does_not_change_an_old_file() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.redb");
        std::fs::copy(fixture.join("forge.redb"), &path).unwrap();
        let hex = std::fs::read_to_string(fixture.join("forge.redb.key")).unwrap();
        let hex = hex.trim();
        let key: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let cipher = Cipher::new(&key.try_into().unwrap());
        let report = check_file(&path, Some(&cipher)).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.version, 1);
        assert!(report.secrets_opened > 0, "{report}");
        let db = redb::ReadOnlyDatabase::open(&path).unwrap();
        let found = migrate::inspect(&redb::ReadableDatabase::begin_read(&db).unwrap()).unwrap();
        assert_eq!(
            found.version,
            Some(1),
            "still version 1: check never upgrades"
        );
    }
}
