//! Git for tests that build repositories: one identity, no signing.

use std::path::Path;
use std::process::Command;

/// Runs `git ARGS` in `dir` as a test identity with commit signing off; panics (with git's
/// output) on failure; returns its stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        super::tools::show(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
