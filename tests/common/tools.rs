//! Outside tools the suites drive (curl, ansible-playbook, schemathesis, node packages,
//! Chromium), found one way and missed under one policy: in CI (`CI=true`) a missing tool fails
//! the test; elsewhere the test prints a `SKIPPED` line, leaves a note that the test command's
//! summary counts, and passes. `.ci/install-tools.sh`
//! installs every one of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Debian's Chromium, the browser the page tests drive.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The repository root.
#[must_use]
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `program --version` runs.
#[must_use]
pub fn runs(program: &Path) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `name` as an executable that runs: from PATH first, then the build tree's own installs
/// (`.ci/venv/bin` from `PyPI`, `tests/js/node_modules/.bin` from npm). A PATH entry that does
/// not run (a pyenv shim for another Python) is passed over.
#[must_use]
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let local = [
        root().join(".ci/venv/bin"),
        root().join("tests/js/node_modules/.bin"),
    ];
    std::env::split_paths(&path)
        .chain(local)
        .map(|dir| dir.join(name))
        .find(|exe| exe.is_file() && runs(exe))
}

/// Whether the npm package `module` is installed in `tests/js/node_modules`.
#[must_use]
pub fn has_node_module(module: &str) -> bool {
    root()
        .join("tests/js/node_modules")
        .join(module)
        .join("package.json")
        .is_file()
}

/// Whether `what` may run, given the tools `missing` for it: with none missing, yes; otherwise
/// it fails under `CI=true`, and elsewhere prints a `SKIPPED` line and says no.
///
/// # Panics
/// In CI, when a tool is missing.
#[must_use]
pub fn ready(what: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} needs {missing} in CI (.ci/install-tools.sh installs it)"
    );
    eprintln!("SKIPPED: {what} needs {missing} (run .ci/install-tools.sh)");
    record_skip(what, &missing);
    false
}

/// Leaves a note for the test command's closing summary (`.ci/test` counts them): libtest has
/// no "skipped" outcome, and a skipped test's output is captured and never shown.
fn record_skip(what: &str, missing: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped");
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(name), format!("{what}: no {missing}\n"));
}

/// [`find`] `name`, or `None` after [`ready`] said why not.
#[must_use]
pub fn require(name: &str, what: &str) -> Option<PathBuf> {
    let found = find(name);
    if found.is_none() {
        let _ = ready(what, &[name.to_owned()]);
    }
    found
}

/// The tools a test in headless Chromium needs that are missing here.
#[must_use]
pub fn missing_for_browser() -> Vec<String> {
    let mut missing = Vec::new();
    if find("node").is_none() {
        missing.push("node".to_owned());
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push(CHROMIUM.to_owned());
    }
    if !has_node_module("playwright-core") {
        missing.push("tests/js/node_modules/playwright-core".to_owned());
    }
    missing
}

/// A finished command's exit status and whole output, for failure messages.
#[must_use]
pub fn show(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether this kernel enforces Landlock (every machine Forge's CI runs on does); elsewhere a
/// visible skip.
#[must_use]
pub fn landlock(what: &str) -> bool {
    match forge::sandbox::supported() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{what}: Landlock is required in CI: {why}"
            );
            eprintln!("SKIPPED: {what}: this kernel has no Landlock ({why})");
            false
        }
    }
}
