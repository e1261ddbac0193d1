//! The format version of the database file and the migrations between versions.
//!
//! `meta["schema_version"]` holds the version a file was written in. A file written before
//! versions were recorded has none: it is version 1. [`open`] checks the version read-only
//! first (a file from a newer Forge is refused and never written to), copies a non-empty file
//! that needs upgrading next to itself, then runs every pending migration and stamps the new
//! version in ONE write transaction: a migration that fails leaves the file as it was.
//!
//! Migrations rewrite records (see the checklist in [`crate::store`]): old shapes are kept
//! frozen in this module only as long as a migration decodes them, and the rest of the store
//! only ever decodes the current shapes.

use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Error, Result, codec, tables};

/// The format version this binary writes, and the newest it can open.
pub const CURRENT: u64 = 5;

/// The `META` key holding the format version.
pub const VERSION_KEY: &str = "schema_version";

/// One step from version `to - 1` to version `to`.
#[derive(Clone, Copy)]
pub struct Migration {
    /// The version the file has once this step has run.
    pub to: u64,
    /// What the step does, for the log.
    pub name: &'static str,
    /// The step; it acts only through the transaction.
    pub apply: fn(&WriteTransaction) -> Result<()>,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "migration {} ({})", self.to, self.name)
    }
}

/// Every migration, in order: `MIGRATIONS[i].to == i + 2`, and the last one's `to` is
/// [`CURRENT`]. A released step is never changed (a file it already upgraded would miss the
/// change): a fix is a new step.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 2,
        name: "record the format version in meta (version 1 files have none)",
        apply: |_| Ok(()),
    },
    Migration {
        to: 3,
        name: "clear templates' view_id where it names no view of the project; tasks gain params",
        apply: v3::apply,
    },
    Migration {
        to: 4,
        name: "templates gain runner_tag and allow_ansible_vars_in_task; tasks gain runner_id",
        apply: v4::apply,
    },
    Migration {
        to: 5,
        name: "task output moves from one row per line (task_output) to chunks of lines \
               (task_output_chunks)",
        apply: v5::apply,
    },
];

/// Version 2 → 3.
/// - Version 1 stored any `view_id` a client sent but had no views, and version 2 kept them;
///   a template's view must now exist, so a dangling one would make the template impossible to
///   save unchanged. Those are cleared; ids naming a view of the project are kept.
/// - Tasks gain `params` (app options such as terraform's `plan`, as JSON text; empty = none).
mod v3 {
    use std::collections::HashSet;

    use serde::{Deserialize, Serialize};

    use super::v4::TaskV3;
    use super::{ReadableTable, Result, WriteTransaction, rewrite, tables};
    use crate::model::TaskStatus;

    /// A template as versions 1 to 3 write it (frozen: never change it).
    #[derive(Serialize, Deserialize)]
    pub(super) struct TemplateV2 {
        pub(super) id: u64,
        pub(super) project_id: u64,
        pub(super) inventory_id: Option<u64>,
        pub(super) repository_id: u64,
        pub(super) environment_id: Option<u64>,
        pub(super) view_id: Option<u64>,
        pub(super) name: String,
        pub(super) playbook: String,
        pub(super) arguments: Option<String>,
        pub(super) allow_override_args_in_task: bool,
        pub(super) description: Option<String>,
        pub(super) kind: String,
        pub(super) start_version: Option<String>,
        pub(super) build_template_id: Option<u64>,
        pub(super) autorun: bool,
        pub(super) git_branch: Option<String>,
        pub(super) survey_vars: Vec<SurveyVarV2>,
        pub(super) vaults: Vec<TemplateVaultV2>,
        pub(super) suppress_success_alerts: bool,
        pub(super) app: String,
        pub(super) max_duration_secs: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct SurveyVarV2 {
        pub(super) name: String,
        pub(super) title: String,
        pub(super) description: String,
        pub(super) kind: String,
        pub(super) required: bool,
        pub(super) values: Vec<SurveyValueV2>,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct SurveyValueV2 {
        pub(super) name: String,
        pub(super) value: String,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct TemplateVaultV2 {
        pub(super) id: u64,
        pub(super) vault_key_id: u64,
        pub(super) name: Option<String>,
    }

    /// A task as versions 1 and 2 wrote it (frozen: never change it). It converts to the
    /// version-3 shape, which migration 4 converts on.
    #[derive(Serialize, Deserialize)]
    pub(super) struct TaskV2 {
        pub(super) id: u64,
        pub(super) project_id: u64,
        template_id: u64,
        status: TaskStatus,
        debug: bool,
        dry_run: bool,
        diff: bool,
        playbook: String,
        environment: String,
        limit: String,
        arguments: Option<String>,
        git_branch: Option<String>,
        user_id: Option<u64>,
        integration_id: Option<u64>,
        schedule_id: Option<u64>,
        created: i64,
        start: Option<i64>,
        end: Option<i64>,
        message: String,
        commit_hash: Option<String>,
        commit_message: String,
        build_task_id: Option<u64>,
        version: Option<String>,
        inventory_id: Option<u64>,
        process_group: Option<i32>,
        sealed_secret: Vec<u8>,
    }

    impl From<TaskV2> for TaskV3 {
        fn from(t: TaskV2) -> Self {
            TaskV3 {
                id: t.id,
                project_id: t.project_id,
                template_id: t.template_id,
                status: t.status,
                debug: t.debug,
                dry_run: t.dry_run,
                diff: t.diff,
                playbook: t.playbook,
                environment: t.environment,
                limit: t.limit,
                arguments: t.arguments,
                git_branch: t.git_branch,
                user_id: t.user_id,
                integration_id: t.integration_id,
                schedule_id: t.schedule_id,
                created: t.created,
                start: t.start,
                end: t.end,
                message: t.message,
                commit_hash: t.commit_hash,
                commit_message: t.commit_message,
                build_task_id: t.build_task_id,
                version: t.version,
                inventory_id: t.inventory_id,
                process_group: t.process_group,
                sealed_secret: t.sealed_secret,
                params: String::new(),
            }
        }
    }

    pub(super) fn apply(tx: &WriteTransaction) -> Result<()> {
        let mut views = HashSet::new();
        for row in tx.open_table(tables::PROJECT_VIEW)?.iter()? {
            views.insert(row?.0.value());
        }
        rewrite(tx, tables::PROJECT_TEMPLATE, |mut t: TemplateV2| {
            if t.view_id
                .is_some_and(|v| !views.contains(&(t.project_id, v)))
            {
                t.view_id = None;
            }
            t
        })?;
        rewrite(tx, tables::PROJECT_TASK, |t: TaskV2| TaskV3::from(t))?;
        Ok(())
    }
}

/// Version 3 → 4, for remote runners and the task sandbox.
/// - Templates gain `runner_tag` (none: any runner) and `allow_ansible_vars_in_task` (off: a
///   task's own variables may no longer set ansible's connection variables, which version 3
///   allowed; a template that needs it opts in).
/// - Tasks gain `runner_id` (none: the server runs them, as every version-3 task was).
mod v4 {
    use serde::{Deserialize, Serialize};

    use super::v3::{SurveyVarV2, TemplateV2, TemplateVaultV2};
    use super::{Result, WriteTransaction, rewrite, tables};
    use crate::model::{SurveyValue, SurveyVar, Task, TaskStatus, Template, TemplateVault};

    /// A task as version 3 writes it (frozen: never change it). It converts to the current
    /// [`Task`]: when that changes again, freeze the version-4 shape in the next step first.
    #[derive(Serialize, Deserialize)]
    pub(super) struct TaskV3 {
        pub(super) id: u64,
        pub(super) project_id: u64,
        pub(super) template_id: u64,
        pub(super) status: TaskStatus,
        pub(super) debug: bool,
        pub(super) dry_run: bool,
        pub(super) diff: bool,
        pub(super) playbook: String,
        pub(super) environment: String,
        pub(super) limit: String,
        pub(super) arguments: Option<String>,
        pub(super) git_branch: Option<String>,
        pub(super) user_id: Option<u64>,
        pub(super) integration_id: Option<u64>,
        pub(super) schedule_id: Option<u64>,
        pub(super) created: i64,
        pub(super) start: Option<i64>,
        pub(super) end: Option<i64>,
        pub(super) message: String,
        pub(super) commit_hash: Option<String>,
        pub(super) commit_message: String,
        pub(super) build_task_id: Option<u64>,
        pub(super) version: Option<String>,
        pub(super) inventory_id: Option<u64>,
        pub(super) process_group: Option<i32>,
        pub(super) sealed_secret: Vec<u8>,
        pub(super) params: String,
    }

    impl From<TaskV3> for Task {
        fn from(t: TaskV3) -> Self {
            Task {
                id: t.id,
                project_id: t.project_id,
                template_id: t.template_id,
                status: t.status,
                debug: t.debug,
                dry_run: t.dry_run,
                diff: t.diff,
                playbook: t.playbook,
                environment: t.environment,
                limit: t.limit,
                arguments: t.arguments,
                git_branch: t.git_branch,
                user_id: t.user_id,
                integration_id: t.integration_id,
                schedule_id: t.schedule_id,
                created: t.created,
                start: t.start,
                end: t.end,
                message: t.message,
                commit_hash: t.commit_hash,
                commit_message: t.commit_message,
                build_task_id: t.build_task_id,
                version: t.version,
                inventory_id: t.inventory_id,
                process_group: t.process_group,
                sealed_secret: t.sealed_secret,
                params: t.params,
                runner_id: None,
            }
        }
    }

    pub(super) fn apply(tx: &WriteTransaction) -> Result<()> {
        rewrite(tx, tables::PROJECT_TEMPLATE, |t: TemplateV2| {
            Template::from(t)
        })?;
        rewrite(tx, tables::PROJECT_TASK, |t: TaskV3| Task::from(t))?;
        Ok(())
    }

    impl From<SurveyVarV2> for SurveyVar {
        fn from(v: SurveyVarV2) -> Self {
            SurveyVar {
                name: v.name,
                title: v.title,
                description: v.description,
                kind: v.kind,
                required: v.required,
                values: v
                    .values
                    .into_iter()
                    .map(|c| SurveyValue {
                        name: c.name,
                        value: c.value,
                    })
                    .collect(),
            }
        }
    }

    impl From<TemplateVaultV2> for TemplateVault {
        fn from(v: TemplateVaultV2) -> Self {
            TemplateVault {
                id: v.id,
                vault_key_id: v.vault_key_id,
                name: v.name,
            }
        }
    }

    impl From<TemplateV2> for Template {
        fn from(t: TemplateV2) -> Self {
            Template {
                id: t.id,
                project_id: t.project_id,
                inventory_id: t.inventory_id,
                repository_id: t.repository_id,
                environment_id: t.environment_id,
                view_id: t.view_id,
                name: t.name,
                playbook: t.playbook,
                arguments: t.arguments,
                allow_override_args_in_task: t.allow_override_args_in_task,
                description: t.description,
                kind: t.kind,
                start_version: t.start_version,
                build_template_id: t.build_template_id,
                autorun: t.autorun,
                git_branch: t.git_branch,
                survey_vars: t.survey_vars.into_iter().map(Into::into).collect(),
                vaults: t.vaults.into_iter().map(Into::into).collect(),
                suppress_success_alerts: t.suppress_success_alerts,
                app: t.app,
                max_duration_secs: t.max_duration_secs,
                runner_tag: None,
                allow_ansible_vars_in_task: false,
            }
        }
    }
}

/// Version 4 → 5: task output is stored in chunks of consecutive lines (`store::output`)
/// instead of one row per line. The rows of `task_output` are read in key order; each task's
/// run of consecutive lines becomes chunks as an append of those lines would make them (a gap
/// in the numbers starts a new chunk, as it was), then `task_output` is deleted.
mod v5 {
    use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};

    use super::{Result, codec, tables};
    use crate::model::OutputLine;
    use crate::store::output;

    /// Version 4's output table: (task id, line number) → encoded [`OutputLine`] (frozen).
    pub(super) const TASK_OUTPUT_V4: TableDefinition<(u64, u64), &[u8]> =
        TableDefinition::new("task_output");

    /// Lines gathered before they are written: bounds the migration's memory on any file.
    const RUN: usize = 16 * output::CHUNK_LINES;

    pub(super) fn apply(tx: &WriteTransaction) -> Result<()> {
        let old = match tx.open_table(TASK_OUTPUT_V4) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut new = tx.open_table(tables::OUTPUT_CHUNK)?;
        // The run being gathered: its task, its first line, its lines.
        let mut run: (u64, u64, Vec<OutputLine>) = (0, 0, Vec::with_capacity(RUN));
        for row in old.iter()? {
            let (k, v) = row?;
            let (task, line) = k.value();
            let (t, first, lines) = &mut run;
            let follows = *t == task && *first + lines.len() as u64 == line;
            if !lines.is_empty() && (!follows || lines.len() == RUN) {
                output::insert_chunks(&mut new, *t, *first, lines)?;
                lines.clear();
            }
            if lines.is_empty() {
                (*t, *first) = (task, line);
            }
            lines.push(codec::decode(v.value())?);
        }
        let (t, first, lines) = &run;
        output::insert_chunks(&mut new, *t, *first, lines)?;
        drop((old, new));
        tx.delete_table(TASK_OUTPUT_V4)?;
        Ok(())
    }
}

/// How [`open`] upgrades a file.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// Copy a non-empty file next to itself before migrating it.
    pub backup: bool,
}

impl Default for Upgrade {
    fn default() -> Self {
        Self { backup: true }
    }
}

/// What a file says about itself, read without writing to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Its format version; `None` for a file without tables (a new database).
    pub version: Option<u64>,
    /// It holds records beyond counters and settings.
    pub has_records: bool,
}

/// Opens (creating if needed) the database at `path` and brings it to [`CURRENT`].
///
/// # Errors
/// [`Error::TooNew`] for a file from a newer Forge (left untouched); [`Error::Locked`] when
/// another process holds it; [`Error::Migration`] when a migration fails (nothing of it is
/// written); [`Error::Db`] otherwise.
pub fn open(path: &Path, upgrade: &Upgrade) -> Result<Database> {
    open_through(path, upgrade, &|| Ok(Database::create(path)?))
}

/// [`open`], with `create` opening the file for writing (the store opens it through its own
/// storage backend).
///
/// # Errors
/// As [`open`].
pub fn open_through(
    path: &Path,
    upgrade: &Upgrade,
    create: &dyn Fn() -> Result<Database>,
) -> Result<Database> {
    open_using(path, upgrade, MIGRATIONS, CURRENT, create)
}

/// [`open`] with an explicit migration list (tests inject failing ones).
#[cfg(test)]
pub(crate) fn open_with(
    path: &Path,
    upgrade: &Upgrade,
    migrations: &[Migration],
    current: u64,
) -> Result<Database> {
    open_using(path, upgrade, migrations, current, &|| {
        Ok(Database::create(path)?)
    })
}

fn open_using(
    path: &Path,
    upgrade: &Upgrade,
    migrations: &[Migration],
    current: u64,
    create: &dyn Fn() -> Result<Database>,
) -> Result<Database> {
    let mut backed_up = false;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        // Read-only first: opening for write marks the file, and a newer file must stay as is.
        match ReadOnlyDatabase::open(path) {
            Ok(db) => {
                let found = inspect(&db.begin_read()?)?;
                refuse_newer(found.version, current)?;
                if upgrade.backup && found.has_records && found.version.is_some_and(|v| v < current)
                {
                    // The shared lock held by `db` keeps writers out while the copy is made.
                    backup(path, current)?;
                    backed_up = true;
                }
                db.close()?;
            }
            // Not shut down cleanly: only a writable open repairs it. The version is checked
            // again below before anything else is written.
            Err(DatabaseError::RepairAborted) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let db = create()?;
    let pending = {
        let tx = db.begin_read()?;
        let found = inspect(&tx)?;
        refuse_newer(found.version, current)?;
        found.version.is_some_and(|v| v < current) && found.has_records
    };
    if pending && upgrade.backup && !backed_up {
        backup(path, current)?;
    }
    run(&db, migrations, current)?;
    Ok(db)
}

/// Reads the version and whether there are records, through any read transaction.
///
/// # Errors
/// Storage failures only.
pub fn inspect(tx: &ReadTransaction) -> Result<Found> {
    let mut has_meta = false;
    let mut has_records = false;
    for handle in tx.list_tables()? {
        match handle.name() {
            "meta" => has_meta = true,
            "settings" => {}
            _ => has_records |= !tx.open_untyped_table(handle)?.is_empty()?,
        }
    }
    let version = if has_meta {
        let meta = tx.open_table(tables::META)?;
        Some(meta.get(VERSION_KEY)?.map_or(1, |v| v.value()))
    } else {
        None
    };
    Ok(Found {
        version,
        has_records,
    })
}

pub(crate) fn refuse_newer(found: Option<u64>, current: u64) -> Result<()> {
    match found {
        Some(v) if v > current => Err(Error::TooNew {
            found: v,
            supported: current,
        }),
        _ => Ok(()),
    }
}

/// Copies the file to `<path>.pre-v<current>-<unix time>.bak` (through a temp name, synced).
fn backup(path: &Path, current: u64) -> Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".pre-v{current}-{now}.bak"));
    let dest = PathBuf::from(name);
    let mut tmp = dest.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |e: std::io::Error| {
        Error::Migration(format!(
            "cannot write the backup copy {} before upgrading: {e} (start with \
             --no-upgrade-backup to upgrade without one)",
            dest.display()
        ))
    };
    std::fs::copy(path, &tmp).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, &dest).map_err(io)?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    tracing::info!(backup = %dest.display(), "copied the database before upgrading it");
    Ok(dest)
}

/// Runs the pending migrations of `db` and stamps `current`, in one durable transaction. A
/// file that is already current is not written to; a new file is stamped `current`.
fn run(db: &Database, migrations: &[Migration], current: u64) -> Result<()> {
    let mut tx = db.begin_write()?;
    let Some(from) = version_in(&tx)? else {
        tx.open_table(tables::META)?.insert(VERSION_KEY, current)?;
        tx.commit()?;
        return Ok(());
    };
    refuse_newer(Some(from), current)?;
    if from == current {
        tx.abort()?;
        return Ok(());
    }
    apply(&tx, migrations, from, current, true)?;
    tx.set_durability(Durability::Immediate)?;
    tx.commit()?;
    tracing::info!(from, to = current, "upgraded the database");
    Ok(())
}

/// The version recorded in `tx`, without creating anything; `None` for a new file.
pub(crate) fn version_in(tx: &WriteTransaction) -> Result<Option<u64>> {
    if !tx.list_tables()?.any(|t| t.name() == tables::META.name()) {
        return Ok(None);
    }
    let meta = tx.open_table(tables::META)?;
    Ok(Some(meta.get(VERSION_KEY)?.map_or(1, |v| v.value())))
}

/// Applies the migrations from `from` to `current` inside `tx` and stamps `current` (without
/// committing: `forge check` runs them in a transaction it then drops, with `announce` off).
///
/// # Errors
/// [`Error::Migration`] naming the step that failed.
pub(crate) fn apply(
    tx: &WriteTransaction,
    migrations: &[Migration],
    from: u64,
    current: u64,
    announce: bool,
) -> Result<()> {
    for step in migrations.iter().filter(|m| m.to > from && m.to <= current) {
        (step.apply)(tx).map_err(|e| {
            Error::Migration(format!(
                "migration to version {} ({}) failed: {e}",
                step.to, step.name
            ))
        })?;
        if announce {
            tracing::info!(to = step.to, step = step.name, "ran database migration");
        }
    }
    tx.open_table(tables::META)?.insert(VERSION_KEY, current)?;
    Ok(())
}

/// Runs the pending migrations in `tx` without logging them, for [`crate::store::check`],
/// which reads the result and never commits it. Returns the version the file has.
///
/// # Errors
/// [`Error::TooNew`], [`Error::Migration`], storage failures.
pub(crate) fn apply_pending(tx: &WriteTransaction) -> Result<u64> {
    let from = version_in(tx)?.unwrap_or(CURRENT);
    refuse_newer(Some(from), CURRENT)?;
    if from < CURRENT {
        apply(tx, MIGRATIONS, from, CURRENT, false)?;
    }
    Ok(from)
}

/// Rewrites every record of `table` from the frozen shape `Old` to the current shape `New`:
/// the tool of a migration that adds, renames or drops a field.
///
/// # Errors
/// [`Error::Codec`] when a row is not an `Old`; storage failures.
pub fn rewrite<K, Old, New>(
    tx: &WriteTransaction,
    table: TableDefinition<K, &[u8]>,
    convert: impl Fn(Old) -> New,
) -> Result<u64>
where
    K: redb::Key + 'static,
    Old: DeserializeOwned,
    New: Serialize,
{
    let mut t = tx.open_table(table)?;
    let mut rows = 0;
    // Keys are gathered first: a table cannot be written while it is being iterated.
    let mut pending = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let new = convert(codec::decode::<Old>(v.value())?);
        pending.push((
            K::as_bytes(&k.value()).as_ref().to_vec(),
            codec::encode(&new),
        ));
    }
    for (key, value) in pending {
        t.insert(K::from_bytes(&key), value.as_slice())?;
        rows += 1;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A version-2 file upgraded to the current format: migration 3 clears a `view_id` naming
    /// no view of the project, keeps one that does, and gives every task empty `params`;
    /// migration 4 gives templates no runner tag and no `ansible_*` override, and tasks no
    /// runner. Every other field comes through unchanged.
    #[test]
    fn versions_3_and_4_upgrade_templates_and_tasks_field_for_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.redb");
        let template = |id: u64, view_id: Option<u64>| crate::model::Template {
            id,
            project_id: 2,
            inventory_id: None,
            repository_id: 1,
            environment_id: Some(3),
            view_id,
            name: format!("deploy {id}"),
            playbook: "site.yml".into(),
            arguments: None,
            allow_override_args_in_task: false,
            description: Some("d".into()),
            kind: String::new(),
            start_version: None,
            build_template_id: None,
            autorun: false,
            git_branch: None,
            survey_vars: vec![crate::model::SurveyVar {
                name: "v".into(),
                values: vec![crate::model::SurveyValue::default()],
                ..Default::default()
            }],
            vaults: vec![crate::model::TemplateVault::default()],
            suppress_success_alerts: true,
            app: "ansible".into(),
            max_duration_secs: 60,
            runner_tag: None,
            allow_ansible_vars_in_task: false,
        };
        // The shape version 2 wrote: the current one without the fields added since.
        let v2 = |t: &crate::model::Template| -> v3::TemplateV2 {
            serde_json::from_value(serde_json::to_value(t).unwrap()).unwrap()
        };
        let task: v3::TaskV2 = serde_json::from_value(serde_json::json!({
            "id": 8, "project_id": 2, "template_id": 4, "status": "Success", "debug": true,
            "dry_run": false, "diff": false, "playbook": "", "environment": "{}", "limit": "",
            "arguments": null, "git_branch": null, "user_id": 1, "integration_id": null,
            "schedule_id": null, "created": 5, "start": 6, "end": 7, "message": "m",
            "commit_hash": null, "commit_message": "", "build_task_id": null, "version": "1.2",
            "inventory_id": null, "process_group": null, "sealed_secret": [1, 2]
        }))
        .unwrap();
        {
            // A version-2 file: one view, a template in it, one naming a view that never
            // existed (as version 1 let through), one task.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            let mut meta = tx.open_table(tables::META).unwrap();
            meta.insert(VERSION_KEY, 2).unwrap();
            meta.insert("next_template_id", 6).unwrap();
            drop(meta);
            let view = crate::model::View {
                id: 7,
                project_id: 2,
                title: "prod".into(),
                position: 0,
            };
            tx.open_table(tables::PROJECT_VIEW)
                .unwrap()
                .insert((2, 7), codec::encode(&view).as_slice())
                .unwrap();
            let mut templates = tx.open_table(tables::PROJECT_TEMPLATE).unwrap();
            for t in [template(4, Some(9)), template(5, Some(7))] {
                templates
                    .insert((2, t.id), codec::encode(&v2(&t)).as_slice())
                    .unwrap();
            }
            drop(templates);
            tx.open_table(tables::PROJECT_TASK)
                .unwrap()
                .insert((2, 8), codec::encode(&task).as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let db = open(&path, &Upgrade { backup: false }).unwrap();
        let tx = db.begin_read().unwrap();
        let stored = tx.open_table(tables::PROJECT_TEMPLATE).unwrap();
        let got = |id| -> crate::model::Template {
            codec::decode(stored.get((2, id)).unwrap().unwrap().value()).unwrap()
        };
        assert_eq!(got(4), template(4, None));
        assert_eq!(got(5), template(5, Some(7)));
        let stored = tx.open_table(tables::PROJECT_TASK).unwrap();
        let got: crate::model::Task =
            codec::decode(stored.get((2, 8)).unwrap().unwrap().value()).unwrap();
        assert_eq!((got.params.as_str(), got.runner_id), ("", None));
        assert_eq!(
            (got.id, got.debug, got.version.as_deref(), got.sealed_secret),
            (8, true, Some("1.2"), vec![1, 2])
        );
    }

    /// A version-4 file's output (one row per line) becomes chunks: every line reads back
    /// with its number and time, a long run is split, a gap in a task's numbers is kept, and
    /// the old table is gone.
    #[test]
    fn version_5_moves_output_lines_into_chunks() {
        use crate::model::OutputLine;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.redb");
        let line = |task: u64, n: u64| OutputLine {
            time_us: i64::try_from(task * 100_000 + n).unwrap(),
            text: format!("task {task} line {n}"),
        };
        // Task 3: 600 lines; task 4: lines 0-4 and 10-11 (a gap); task 7: one line.
        let rows: Vec<(u64, u64)> = (0..600)
            .map(|n| (3, n))
            .chain((0..5).chain(10..12).map(|n| (4, n)))
            .chain([(7, 0)])
            .collect();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(tables::META)
                .unwrap()
                .insert(VERSION_KEY, 4)
                .unwrap();
            let mut old = tx.open_table(v5::TASK_OUTPUT_V4).unwrap();
            for &(task, n) in &rows {
                old.insert((task, n), codec::encode(&line(task, n)).as_slice())
                    .unwrap();
            }
            drop(old);
            tx.commit().unwrap();
        }
        let db = open(&path, &Upgrade { backup: false }).unwrap();
        let tx = db.begin_read().unwrap();
        assert!(matches!(
            tx.open_table(v5::TASK_OUTPUT_V4),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
        let chunks = tx.open_table(tables::OUTPUT_CHUNK).unwrap();
        let keys: Vec<(u64, u64)> = chunks
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect();
        assert_eq!(keys, [(3, 0), (3, 256), (3, 512), (4, 0), (4, 10), (7, 0)]);
        for task in [3, 4, 7] {
            let got = crate::store::output::read(&chunks, task, 0, usize::MAX).unwrap();
            let want: Vec<(u64, OutputLine)> = rows
                .iter()
                .filter(|r| r.0 == task)
                .map(|&(t, n)| (n, line(t, n)))
                .collect();
            assert_eq!(got, want, "task {task}");
        }
        assert_eq!(crate::store::output::len(&chunks, 3).unwrap(), 600);
        assert_eq!(crate::store::output::len(&chunks, 4).unwrap(), 12);
    }

    /// A record shape as an older release wrote it.
    #[derive(Debug, Serialize, Deserialize)]
    struct WidgetV1 {
        id: u64,
        name: String,
    }

    /// The same record after a field was added.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct WidgetV2 {
        id: u64,
        name: String,
        colour: Option<String>,
    }

    const WIDGETS: TableDefinition<u64, &[u8]> = TableDefinition::new("widgets");

    fn add_colour(tx: &WriteTransaction) -> Result<()> {
        rewrite(tx, WIDGETS, |old: WidgetV1| WidgetV2 {
            id: old.id,
            name: old.name,
            colour: None,
        })?;
        Ok(())
    }

    fn fail(_: &WriteTransaction) -> Result<()> {
        Err(Error::Write("on purpose".into()))
    }

    const V1_TO_3: &[Migration] = &[
        Migration {
            to: 2,
            name: "stamp",
            apply: |_| Ok(()),
        },
        Migration {
            to: 3,
            name: "widgets get a colour",
            apply: add_colour,
        },
    ];

    /// A version-1 file (no version recorded) with two widgets in the old shape.
    fn v1_file(dir: &Path) -> PathBuf {
        let path = dir.join("forge.redb");
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(tables::META)
            .unwrap()
            .insert("next_widget_id", 3)
            .unwrap();
        {
            let mut w = tx.open_table(WIDGETS).unwrap();
            for (id, name) in [(1, "one"), (2, "two")] {
                let old = WidgetV1 {
                    id,
                    name: name.into(),
                };
                w.insert(id, codec::encode(&old).as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        path
    }

    fn version(path: &Path) -> Option<u64> {
        let db = ReadOnlyDatabase::open(path).unwrap();
        inspect(&db.begin_read().unwrap()).unwrap().version
    }

    fn backups(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| Path::new(n).extension().is_some_and(|e| e == "bak"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn old_records_are_rewritten_to_the_new_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = v1_file(dir.path());
        // The old bytes are not a `WidgetV2`: without the migration they would not decode.
        {
            let db = ReadOnlyDatabase::open(&path).unwrap();
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(WIDGETS).unwrap();
            let bytes = t.get(1).unwrap().unwrap().value().to_vec();
            assert!(codec::decode::<WidgetV2>(&bytes).is_err());
        }
        let db = open_with(&path, &Upgrade::default(), V1_TO_3, 3).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(WIDGETS).unwrap();
        let got: Vec<WidgetV2> = t
            .iter()
            .unwrap()
            .map(|r| codec::decode(r.unwrap().1.value()).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                WidgetV2 {
                    id: 1,
                    name: "one".into(),
                    colour: None
                },
                WidgetV2 {
                    id: 2,
                    name: "two".into(),
                    colour: None
                },
            ]
        );
        drop((t, tx, db));
        assert_eq!(version(&path), Some(3));
        let copies = backups(dir.path());
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert!(copies[0].starts_with("forge.redb.pre-v3-"), "{copies:?}");
        // The copy is the untouched version-1 file.
        assert_eq!(version(&dir.path().join(&copies[0])), Some(1));
        // Opening again finds nothing pending: no second copy, no write.
        let before = std::fs::read(&path).unwrap();
        drop(open_with(&path, &Upgrade::default(), V1_TO_3, 3).unwrap());
        assert_eq!(backups(dir.path()).len(), 1);
        assert_eq!(std::fs::read(&path).unwrap().len(), before.len());
    }

    #[test]
    fn a_failed_migration_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = v1_file(dir.path());
        let before = std::fs::read(&path).unwrap();
        let failing = [
            V1_TO_3[0],
            V1_TO_3[1],
            Migration {
                to: 4,
                name: "breaks",
                apply: fail,
            },
        ];
        let no_backup = Upgrade { backup: false };
        let err = open_with(&path, &no_backup, &failing, 4).unwrap_err();
        assert!(
            matches!(&err, Error::Migration(m) if m.contains("version 4 (breaks)")),
            "{err}"
        );
        // Every record is as it was: still version 1, widgets in the old shape.
        assert_eq!(version(&path), Some(1));
        let db = ReadOnlyDatabase::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(WIDGETS).unwrap();
        for row in t.iter().unwrap() {
            let (_, v) = row.unwrap();
            assert!(codec::decode::<WidgetV1>(v.value()).is_ok());
            assert!(codec::decode::<WidgetV2>(v.value()).is_err());
        }
        assert_eq!(t.len().unwrap(), 2);
        drop((t, tx, db));
        assert_eq!(before.len(), std::fs::read(&path).unwrap().len());
        assert!(backups(dir.path()).is_empty(), "opted out of the copy");
    }

    #[test]
    fn a_newer_file_is_refused_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = v1_file(dir.path());
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(tables::META)
                .unwrap()
                .insert(VERSION_KEY, CURRENT + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = open(&path, &Upgrade::default()).unwrap_err();
        assert!(
            matches!(err, Error::TooNew { found, supported: CURRENT } if found == CURRENT + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "file bytes unchanged"
        );
        assert!(backups(dir.path()).is_empty());
    }

    #[test]
    fn a_file_left_unclean_by_a_crash_is_repaired_then_upgraded_with_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let clean = v1_file(dir.path());
        let path = dir.path().join("crashed.redb");
        {
            // A copy taken while the file is open is what a kill -9 leaves: marked in use.
            let _open = Database::create(&clean).unwrap();
            std::fs::copy(&clean, &path).unwrap();
        }
        assert!(matches!(
            ReadOnlyDatabase::open(&path),
            Err(DatabaseError::RepairAborted)
        ));
        drop(open_with(&path, &Upgrade::default(), V1_TO_3, 3).unwrap());
        assert_eq!(version(&path), Some(3));
        let copies = backups(dir.path());
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert!(copies[0].starts_with("crashed.redb.pre-v3-"), "{copies:?}");
    }

    #[test]
    fn a_new_file_is_stamped_current_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.redb");
        drop(open(&path, &Upgrade::default()).unwrap());
        assert_eq!(version(&path), Some(CURRENT));
        assert!(backups(dir.path()).is_empty());
    }

    #[test]
    fn an_empty_old_file_is_upgraded_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(tables::META).unwrap();
            tx.open_table(tables::USERID_USER).unwrap();
            tx.commit().unwrap();
        }
        assert_eq!(version(&path), Some(1));
        drop(open(&path, &Upgrade::default()).unwrap());
        assert_eq!(version(&path), Some(CURRENT));
        assert!(backups(dir.path()).is_empty());
    }

    #[test]
    fn migrations_are_numbered_in_order_up_to_current() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.to, i as u64 + 2, "{m:?}");
        }
        assert_eq!(MIGRATIONS.last().map_or(1, |m| m.to), CURRENT);
    }
}
