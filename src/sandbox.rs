//! The task sandbox. Every process a task starts (its app, and the git commands that fetch its
//! repository) runs under Landlock with `no_new_privs`: read-write only in the task's
//! workspace and its private directory, read-only (and executable) for the system and the tool
//! chain, and nothing else: not the database, the server key, other tasks' directories or the
//! server's own files.
//!
//! The crate forbids unsafe code, so there is no `pre_exec` hook: the server starts its own
//! binary as `forge sandbox-exec --rw DIR --ro DIR ... -- PROGRAM ARGS` ([`Jail::command`]),
//! which restricts itself and then execs the program ([`exec`]); Landlock rules are inherited
//! by everything the program starts.
//!
//! - [`Jail`]: the server's side: which paths, which user, how a task's command starts.
//! - [`ExecArgs`] and [`exec`]: the wrapper.
//! - [`LocalRepos`]: which local-path repositories are allowed (`--local-repo-roots`).

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};

use crate::config::Config;

/// The hidden subcommand of the wrapper.
pub const SUBCOMMAND: &str = "sandbox-exec";

/// The Landlock ABI whose rights the sandbox handles: v6 (every file system right up to v5,
/// plus scoping of signals and abstract UNIX sockets to the sandbox); an older kernel enforces
/// the part it knows.
const ABI_USED: ABI = ABI::V6;

/// System directories every task may read and execute from.
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/sys",
];

/// Files that `/etc` often links elsewhere (`/run/...`): a rule on the link covers its target.
const SYSTEM_FILES: &[&str] = &["/etc/resolv.conf", "/etc/localtime", "/etc/hosts"];

/// Devices a task may read and write (never a disk: that would read the database raw).
const DEVICES_RW: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// Devices a task may read.
const DEVICES_RO: &[&str] = &["/dev/random", "/dev/urandom"];

/// Shared memory, read-write for every task: Python's multiprocessing (and so ansible) makes
/// its semaphores there. It is the one place tasks share.
const SHARED_MEMORY: &str = "/dev/shm";

/// How tasks are confined (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Landlock where the kernel supports it (a warning at start where it does not).
    Landlock,
    /// No sandbox: tasks can read whatever the server can.
    Off,
}

/// Whether this kernel enforces Landlock; the error says why not.
///
/// # Errors
/// When Landlock is not built into the kernel or not enabled.
pub fn supported() -> Result<(), String> {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .and_then(Ruleset::create)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The user tasks run as (`--task-user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl TaskUser {
    /// Looks `name` up in the user database (`/etc/passwd`, or what NSS is set up to read).
    ///
    /// # Errors
    /// When there is no such user or the database cannot be read.
    pub fn resolve(name: &str) -> Result<Self, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Self {
                name: name.to_owned(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "--task-user: no user named {name:?} on this system"
            )),
            Err(e) => Err(format!("--task-user: cannot look up {name:?}: {e}")),
        }
    }
}

/// How the server starts a task's processes: through the wrapper with the task's rules (or
/// directly when the sandbox is off), as the task user when there is one.
#[derive(Debug, Clone)]
pub struct Jail {
    /// Whether commands go through the Landlock wrapper.
    landlock: bool,
    /// The forge binary that is the wrapper.
    exe: PathBuf,
    /// Read-only (and executable) paths, after leaving out every protected one.
    read_only: Vec<PathBuf>,
    /// Paths no rule may cover (each with the siblings named after it, see [`shields`]): the
    /// database, the key file, the work dir, the metrics token file, the alert secret files
    /// and the backup dir.
    protected: Vec<PathBuf>,
    /// Where tasks' directories live (made traversable for the task user).
    work_dir: PathBuf,
    /// The user tasks run as, when the server runs as root and one is set.
    user: Option<TaskUser>,
}

impl Jail {
    /// The jail `config` asks for; logs a clear warning when Landlock is asked for but the
    /// kernel does not support it (tasks then run unsandboxed).
    ///
    /// # Errors
    /// A `--task-user` that does not exist, or one given to a server not running as root.
    pub fn new(config: &Config) -> Result<Self, String> {
        let user = match &config.task_user {
            Some(name) => {
                if !nix::unistd::geteuid().is_root() {
                    return Err(format!(
                        "--task-user {name}: only a server running as root can run tasks as \
                         another user"
                    ));
                }
                Some(TaskUser::resolve(name)?)
            }
            None => None,
        };
        let exe = match &config.sandbox_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find the forge binary for the sandbox: {e}"))?,
        };
        let work_dir = config.work_dir();
        let mut protected = vec![work_dir.clone(), config.db.clone(), config.key_file()];
        protected.extend(config.metrics_token_file.iter().cloned());
        let alerts = &config.alerts;
        protected.extend(
            [
                &alerts.alert_slack_url_file,
                &alerts.alert_teams_url_file,
                &alerts.alert_telegram_token_file,
                &alerts.alert_webhook_secret_file,
                &alerts.alert_smtp_password_file,
            ]
            .into_iter()
            .flatten()
            .cloned(),
        );
        protected.extend(config.backup_dir.iter().cloned());
        Ok(Self::build(
            config.sandbox,
            user,
            exe,
            work_dir,
            &protected,
            &config.sandbox_read_only,
        ))
    }

    /// The jail of a `forge runner` (`--sandbox`): the same rules as the server's, with the
    /// runner's work dir and config file (its token) protected; tasks run as the runner's
    /// user.
    ///
    /// # Errors
    /// When the forge binary (the wrapper) cannot be found.
    pub fn for_runner(mode: Mode, work_dir: &Path, config_file: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the forge binary for the sandbox: {e}"))?;
        let protected = [work_dir.to_owned(), config_file.to_owned()];
        Ok(Self::build(
            mode,
            None,
            exe,
            work_dir.to_owned(),
            &protected,
            &[],
        ))
    }

    /// The jail of `mode` with its read-only paths (the system, the tool chain, `extra`),
    /// none of which covers a `protected` path.
    fn build(
        mode: Mode,
        user: Option<TaskUser>,
        exe: PathBuf,
        work_dir: PathBuf,
        protected: &[PathBuf],
        extra: &[PathBuf],
    ) -> Self {
        let landlock = match mode {
            Mode::Off => {
                tracing::warn!(
                    "task sandbox off (--sandbox off): tasks can read and write whatever the \
                     server can, the database and the key file included"
                );
                false
            }
            Mode::Landlock => match supported() {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(
                        "Landlock is not available on this kernel ({why}): tasks run WITHOUT \
                         the sandbox and can read the database and the key file; use a kernel \
                         with Landlock (5.13+, lsm=landlock) or say --sandbox off to silence \
                         this"
                    );
                    false
                }
            },
        };
        let protected: Vec<PathBuf> = protected.iter().map(|p| canonical(p)).collect();
        let mut wanted: Vec<PathBuf> = SYSTEM
            .iter()
            .chain(SYSTEM_FILES)
            .map(PathBuf::from)
            .collect();
        wanted.extend(tool_dirs(std::env::var_os("PATH").as_deref()));
        wanted.extend(extra.iter().cloned());
        let mut read_only = Vec::new();
        for path in wanted {
            grant(&path, &protected, &mut read_only);
        }
        // A path inside another one adds nothing.
        let covered = read_only.clone();
        read_only.retain(|p| !covered.iter().any(|c| c != p && p.starts_with(c)));
        if landlock {
            let shown: Vec<String> = read_only.iter().map(|p| p.display().to_string()).collect();
            tracing::info!(
                user = user.as_ref().map_or("(server's)", |u| u.name.as_str()),
                read_only = shown.join(","),
                "task sandbox: Landlock; tasks read-write only in their own directories"
            );
        }
        Self {
            landlock,
            exe,
            read_only,
            protected,
            work_dir,
            user,
        }
    }

    /// Whether commands run under Landlock.
    #[must_use]
    pub fn enforced(&self) -> bool {
        self.landlock
    }

    /// The read-only paths every command gets.
    #[must_use]
    pub fn read_only(&self) -> &[PathBuf] {
        &self.read_only
    }

    /// A command that runs `program` confined to read-write access in `rw` (the workspace and
    /// the task's private directory) and read access to the system, the tool chain and `ro`:
    /// through the wrapper when Landlock is on, as the task
    /// user when there is one (the directories in `rw` inside the work dir are given to that
    /// user first). The caller sets the arguments, directory and environment.
    #[must_use]
    pub fn command(&self, program: &str, rw: &[&Path], ro: &[&Path]) -> tokio::process::Command {
        if let Some(user) = &self.user {
            for dir in rw {
                self.hand_over(dir, user);
            }
        }
        let mut cmd = if self.landlock {
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.arg(SUBCOMMAND);
            for dir in rw {
                cmd.arg("--rw").arg(dir);
            }
            let mut read_only = self.read_only.clone();
            for dir in ro {
                grant(dir, &self.protected, &mut read_only);
            }
            // An admin's app path (`apps.<id>.path`) outside the system paths.
            if let Some(dir) = Path::new(program).parent().filter(|d| d.is_absolute()) {
                grant(dir, &self.protected, &mut read_only);
            }
            for dir in &read_only {
                cmd.arg("--ro").arg(dir);
            }
            cmd.arg("--").arg(program);
            cmd
        } else {
            tokio::process::Command::new(program)
        };
        if let Some(user) = &self.user {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// Gives `dir` (inside the work dir) and everything in it to `user`, and lets that user
    /// pass through the work dir's folders on the way to it (search only, no listing).
    fn hand_over(&self, dir: &Path, user: &TaskUser) {
        if !dir.starts_with(&self.work_dir) {
            return;
        }
        for folder in dir.ancestors().skip(1) {
            if !folder.starts_with(&self.work_dir) {
                break;
            }
            if let Ok(meta) = std::fs::metadata(folder)
                && meta.mode() & 0o011 != 0o011
            {
                let mode = (meta.mode() & 0o7777) | 0o011;
                let _ = std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode));
            }
        }
        chown_tree(dir, user);
    }
}

/// Gives `path` and everything below it to `user`, never following a symbolic link.
fn chown_tree(path: &Path, user: &TaskUser) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if (meta.uid() != user.uid || meta.gid() != user.gid)
        && let Err(e) = std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
    {
        tracing::warn!(path = %path.display(), error = %e,
            "cannot give a task file to the task user");
    }
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            chown_tree(&entry.path(), user);
        }
    }
}

/// `path` with symbolic links resolved when it exists, else made absolute lexically.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize()
        .unwrap_or_else(|_| normalize(&std::path::absolute(path).unwrap_or_else(|_| path.into())))
}

/// `path` without `.` and `..` components (lexically).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The tool chain on `PATH`: each absolute directory on it, and the root of a Python virtual
/// environment whose `bin` is on it (its libraries live beside `bin`).
fn tool_dirs(path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for dir in std::env::split_paths(path.unwrap_or_default()) {
        if !dir.is_absolute() {
            continue;
        }
        if let Some(root) = dir.parent()
            && let Ok(cfg) = std::fs::read_to_string(root.join("pyvenv.cfg"))
        {
            dirs.push(root.to_path_buf());
            // The Python the venv was made from (`home = <prefix>/bin`): its standard library.
            let home = cfg.lines().find_map(|l| {
                let (key, value) = l.split_once('=')?;
                (key.trim() == "home").then(|| PathBuf::from(value.trim()))
            });
            if let Some(prefix) = home.as_deref().and_then(Path::parent)
                && prefix.is_absolute()
                && prefix != Path::new("/")
            {
                dirs.push(prefix.to_path_buf());
            }
        }
        dirs.push(dir);
    }
    dirs
}

/// Whether protected path `p` shields `path`: `path` is `p`, a sibling named after it (the
/// database's `<db>.key`, `<db>.work`, `<db>.pre-v4-*.bak`; the key's `<key>.old`), or lies
/// inside one of those.
fn shields(p: &Path, path: &Path) -> bool {
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return path.starts_with(p);
    };
    match path
        .strip_prefix(dir)
        .ok()
        .and_then(|r| r.components().next())
    {
        Some(Component::Normal(first)) => first
            .as_encoded_bytes()
            .starts_with(name.as_encoded_bytes()),
        _ => false,
    }
}

/// Adds `path` to `out` unless a protected path shields it; when it holds one, adds its other
/// entries instead (recursively), so no rule ever covers a protected path.
fn grant(path: &Path, protected: &[PathBuf], out: &mut Vec<PathBuf>) {
    let Ok(path) = path.canonicalize() else {
        return;
    };
    if protected.iter().any(|p| shields(p, &path)) {
        return;
    }
    if !protected
        .iter()
        .any(|p| p.parent().is_some_and(|dir| dir.starts_with(&path)))
    {
        if !out.contains(&path) {
            out.push(path);
        }
        return;
    }
    if let Ok(entries) = std::fs::read_dir(&path) {
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            // A link out of the protected tree is reached through its own path elsewhere.
            if entry.is_symlink() {
                continue;
            }
            grant(&entry, protected, out);
        }
    }
}

/// The wrapper's arguments: `forge sandbox-exec [--rw PATH]... [--ro PATH]... -- PROGRAM
/// [ARGS]...`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// A directory (or file) the program may read, write, create in and delete from.
    #[arg(long = "rw", value_name = "PATH")]
    pub rw: Vec<PathBuf>,
    /// A directory (or file) the program may read and execute.
    #[arg(long = "ro", value_name = "PATH")]
    pub ro: Vec<PathBuf>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<OsString>,
}

/// The wrapper: restricts this process (Landlock rules from `args` and `no_new_privs`, both
/// inherited by every descendant), then execs the program. Returns only on failure: 126 when
/// the sandbox cannot be set up (the program never runs unconfined), 127 when the program
/// cannot be found; the reason goes to stderr, which is the task's output.
#[must_use]
pub fn exec(args: &ExecArgs) -> ExitCode {
    if let Err(e) = restrict(&args.rw, &args.ro) {
        eprintln!("forge sandbox: cannot confine the task, so it does not run: {e}");
        return ExitCode::from(126);
    }
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("forge sandbox: no program to run");
        return ExitCode::from(126);
    };
    let e = std::process::Command::new(program).args(rest).exec();
    eprintln!(
        "forge sandbox: cannot run {}: {e}",
        program.to_string_lossy()
    );
    ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// Applies the rules to this process; fails unless Landlock enforces them and
/// `no_new_privs` is set.
fn restrict(rw: &[PathBuf], ro: &[PathBuf]) -> Result<(), String> {
    let all = AccessFs::from_all(ABI_USED);
    let read = AccessFs::from_read(ABI_USED);
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let rules = ro
        .iter()
        .map(|p| (p.as_path(), read))
        .chain(rw.iter().map(|p| (p.as_path(), all)))
        .chain(DEVICES_RW.iter().map(|d| (Path::new(*d), device)))
        .chain(
            DEVICES_RO
                .iter()
                .map(|d| (Path::new(*d), AccessFs::ReadFile.into())),
        )
        .chain([(Path::new(SHARED_MEMORY), all)])
        .filter_map(|(path, access)| rule(path, access));
    let status = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.scope(Scope::from_all(ABI_USED)))
        .and_then(Ruleset::create)
        .and_then(|r| r.add_rules(rules.map(Ok::<_, RulesetError>)))
        .and_then(landlock::RulesetCreated::restrict_self)
        .map_err(|e| e.to_string())?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("this kernel does not enforce Landlock".into());
    }
    if !status.no_new_privs {
        return Err("no_new_privs could not be set".into());
    }
    Ok(())
}

/// A rule giving `access` beneath `path` (only the file rights when it is not a directory);
/// `None` when the path does not exist here.
fn rule(path: &Path, access: BitFlags<AccessFs>) -> Option<PathBeneath<PathFd>> {
    let is_dir = path.is_dir();
    let fd = PathFd::new(path).ok()?;
    let access = if is_dir {
        access
    } else {
        access & AccessFs::from_file(ABI_USED)
    };
    Some(PathBeneath::new(fd, access))
}

/// The folder a repository URL names on this machine: a local path (used in place) or a
/// `file://` URL (cloned from there); `None` for a remote URL.
#[must_use]
pub fn local_path(url: &str) -> Option<&str> {
    if url.starts_with('/') {
        return Some(url);
    }
    let (scheme, rest) = url.split_once("://")?;
    scheme.eq_ignore_ascii_case("file").then_some(rest)
}

/// Refuses a task `environment` (a JSON object of extra variables) that sets one of ansible's
/// own variables (`ansible_*`: connection, user, SSH arguments, interpreter...) unless
/// `template` allows it: otherwise anyone who may run a task could point the connection
/// elsewhere or run commands through `ansible_ssh_common_args`.
///
/// # Errors
/// The message names the variable.
pub fn check_task_vars(template: &crate::model::Template, environment: &str) -> Result<(), String> {
    if template.allow_ansible_vars_in_task {
        return Ok(());
    }
    let Ok(serde_json::Value::Object(vars)) = serde_json::from_str(environment) else {
        return Ok(());
    };
    match vars
        .keys()
        .find(|k| k.trim().to_ascii_lowercase().starts_with("ansible_"))
    {
        Some(key) => Err(format!(
            "environment: {key} is an ansible variable, which a task may set only when its \
             template allows it (allow_ansible_vars_in_task)"
        )),
        None => Ok(()),
    }
}

/// Which local-path repositories may be used (`--local-repo-roots`): only paths under one of
/// the roots, and never one that holds, or lies inside, the database, the key file or the work
/// dir.
#[derive(Debug, Clone, Default)]
pub struct LocalRepos {
    /// Allowed roots (resolved).
    roots: Vec<PathBuf>,
    /// The database, the key file, the work dir (resolved).
    protected: Vec<PathBuf>,
}

impl LocalRepos {
    /// The rules `config` sets.
    #[must_use]
    pub fn new(config: &Config) -> Self {
        Self {
            roots: config
                .local_repo_roots
                .iter()
                .filter(|r| !r.as_os_str().is_empty())
                .map(|r| canonical(r))
                .collect(),
            protected: [config.db.clone(), config.key_file(), config.work_dir()]
                .iter()
                .map(|p| canonical(p))
                .collect(),
        }
    }

    /// The resolved path of local repository `path` when it is allowed.
    ///
    /// # Errors
    /// Why it is refused, for the user.
    pub fn check(&self, path: &str) -> Result<PathBuf, String> {
        if self.roots.is_empty() {
            return Err(format!(
                "local-path repository {path} refused: this server allows no local-path \
                 repositories (an administrator can allow folders with --local-repo-roots); \
                 use a git URL"
            ));
        }
        if !Path::new(path).is_absolute() {
            return Err(format!(
                "local-path repository {path} refused: the path must be absolute"
            ));
        }
        let resolved = canonical(Path::new(path));
        if self
            .protected
            .iter()
            .any(|p| p.starts_with(&resolved) || shields(p, &resolved))
        {
            return Err(format!(
                "local-path repository {path} refused: it holds (or lies inside) Forge's own \
                 database, key or work dir"
            ));
        }
        if !self.roots.iter().any(|r| resolved.starts_with(r)) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(format!(
                "local-path repository {path} refused: it is not under an allowed root ({})",
                roots.join(", ")
            ));
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_never_covers_a_protected_path() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().canonicalize().unwrap();
        for dir in [
            "tools/bin",
            "tools/share",
            "data/forge.redb.work",
            "data/other",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("tools/x"), "").unwrap();
        let protected = vec![root.join("data")];
        let mut out = Vec::new();
        grant(&root, &protected, &mut out);
        out.sort();
        assert_eq!(out, [root.join("tools")]);
        let mut out = Vec::new();
        grant(&root.join("data/other"), &protected, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // A protected path deeper down: its siblings and the other branches are granted.
        let protected = vec![root.join("tools/bin")];
        let mut out = Vec::new();
        grant(&root, &protected, &mut out);
        out.sort();
        assert_eq!(
            out,
            [
                root.join("data"),
                root.join("tools/share"),
                root.join("tools/x")
            ]
        );
        // A database: its directory's other entries are granted, never what is named after it.
        std::fs::write(root.join("data/forge.redb"), "").unwrap();
        std::fs::write(root.join("data/forge.redb.pre-v4-1.bak"), "").unwrap();
        let protected = vec![root.join("data/forge.redb")];
        let mut out = Vec::new();
        grant(&root.join("data"), &protected, &mut out);
        assert_eq!(out, [root.join("data/other")]);
    }

    #[test]
    fn a_virtual_environment_on_path_brings_its_root() {
        let top = tempfile::tempdir().unwrap();
        let venv = top.path().join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(
            venv.join("pyvenv.cfg"),
            "home = /opt/python/bin\nversion = 3\n",
        )
        .unwrap();
        let path =
            std::env::join_paths([venv.join("bin"), "relative".into(), "/usr/bin".into()]).unwrap();
        assert_eq!(
            tool_dirs(Some(&path)),
            [
                venv.clone(),
                PathBuf::from("/opt/python"),
                venv.join("bin"),
                PathBuf::from("/usr/bin")
            ]
        );
    }

    fn local(roots: &[&Path], data: &Path) -> LocalRepos {
        let mut config = Config::with_db(data.join("forge.redb"));
        config.local_repo_roots = roots.iter().map(|r| r.to_path_buf()).collect();
        LocalRepos::new(&config)
    }

    #[test]
    fn local_repositories_only_under_a_root_and_never_over_forge_data() {
        let top = tempfile::tempdir().unwrap();
        let top = top.path().canonicalize().unwrap();
        let (repos, data) = (top.join("repos"), top.join("repos/forge-data"));
        std::fs::create_dir_all(repos.join("app")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let none = local(&[], &data);
        let err = none.check(repos.join("app").to_str().unwrap()).unwrap_err();
        assert!(err.contains("--local-repo-roots"), "{err}");
        let rules = local(&[&repos], &data);
        assert_eq!(
            rules.check(repos.join("app").to_str().unwrap()),
            Ok(repos.join("app"))
        );
        for bad in [
            top.join("elsewhere"),
            repos.join("app/../../elsewhere"),
            PathBuf::from("/etc"),
        ] {
            let err = rules.check(bad.to_str().unwrap()).unwrap_err();
            assert!(err.contains("not under an allowed root"), "{bad:?}: {err}");
        }
        for bad in [
            repos.clone(),
            data.clone(),
            data.join("forge.redb.work/repos/repository_1_1"),
        ] {
            let err = rules.check(bad.to_str().unwrap()).unwrap_err();
            assert!(err.contains("Forge's own"), "{bad:?}: {err}");
        }
        // A link into a protected place is judged by where it leads.
        std::os::unix::fs::symlink(&data, repos.join("link")).unwrap();
        assert!(rules.check(repos.join("link").to_str().unwrap()).is_err());
    }
}
