//! Looking for what a test must not find on disk.

use std::path::{Path, PathBuf};

/// Files under `dir` (recursively) whose contents hold any of `needles`.
pub fn holding(dir: &Path, needles: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                        found.push((path.clone(), (*n).to_owned()));
                    }
                }
            }
        }
    }
    found
}
