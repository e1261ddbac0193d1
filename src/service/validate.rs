//! Validators for values that later reach git, the file system or a command line. Each returns
//! a message for the client on refusal.

use std::path::{Component, Path};

/// Checks a repository URL. Accepted: an absolute local path, `file://`, `https://`,
/// `http://`, `git://`, `ssh://` and scp-like `user@host:path`. Refused: anything that could
/// make git run a command or read an option (`ext::` and other `transport::` forms, a leading
/// `-` in the URL, host or path, `--upload-pack` style arguments), control characters and
/// whitespace, and `..` in local paths.
///
/// # Errors
/// A message naming the problem.
pub fn git_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("repository url {why}"));
    if url.is_empty() {
        return bad("can't be empty");
    }
    if url.len() > 2048 {
        return bad("is too long");
    }
    if url.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if url.starts_with('-') {
        return bad("must not start with '-'");
    }
    if url.contains("--")
        && url
            .split(|c: char| c == '/' || c.is_whitespace())
            .any(|p| p.starts_with("--"))
    {
        return bad("must not contain git options");
    }
    if url.starts_with('/') {
        return local_path(url);
    }
    if url.chars().any(char::is_whitespace) {
        return bad("must not contain spaces");
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let rest = match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                return local_path(rest).map_err(|_| {
                    "repository url: a file:// URL needs an absolute path without '..'".into()
                });
            }
            "https" | "http" | "git" | "ssh" => rest,
            _ => {
                return bad(
                    "must use https://, http://, git://, ssh://, file://, user@host:path or an absolute path",
                );
            }
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with('-') {
            return bad("needs a host that does not start with '-'");
        }
        if rest.split('/').skip(1).any(|seg| seg.starts_with('-')) {
            return bad("path must not start with '-'");
        }
        return Ok(());
    }
    if url.contains("::") {
        return bad("must not use a git transport helper (transport::address)");
    }
    // scp-like: [user@]host:path
    if let Some((host_part, path)) = url.split_once(':') {
        let host = host_part.rsplit('@').next().unwrap_or_default();
        let host_ok = !host.is_empty()
            && !host.starts_with('-')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']'));
        if !host_ok {
            return bad("has an invalid host");
        }
        if path.is_empty() || path.starts_with('-') {
            return bad("needs a path that does not start with '-'");
        }
        return Ok(());
    }
    bad("must use https://, http://, git://, ssh://, file://, user@host:path or an absolute path")
}

fn local_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("repository url: a local path must be absolute".into());
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("repository url: a local path must not contain '..'".into());
    }
    Ok(())
}

/// Checks a git branch name (what `git check-ref-format --branch` would accept, roughly):
/// no leading `-`, no whitespace or control characters, none of `..`, `~^:?*[\`, `@{`.
///
/// # Errors
/// A message naming the problem.
pub fn git_branch(branch: &str) -> Result<(), String> {
    let ok = !branch.is_empty()
        && branch.len() <= 255
        && !branch.starts_with('-')
        && !branch.starts_with('/')
        && !branch.ends_with('/')
        && !branch.ends_with('.')
        && !branch.to_ascii_lowercase().ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("@{")
        && !branch.contains("//")
        && !branch
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid git branch name: {branch:?}"))
    }
}

/// Checks a path that must stay inside a repository checkout: relative, no `..`, no NUL or
/// control characters.
///
/// # Errors
/// A message naming the problem.
pub fn relative_path(path: &str, what: &str) -> Result<(), String> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.chars().any(char::is_control)
        && !path.starts_with('~')
        && !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && p.components().any(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid {what} pathname. Must be: path/to/{what}."))
    }
}

/// Checks a display name: non-empty after trimming, at most 255 bytes, no control characters.
///
/// # Errors
/// `"<what> can not be empty"` and the like.
pub fn name(value: &str, what: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} can not be empty"));
    }
    if value.len() > 255 {
        return Err(format!("{what} is longer than 255 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepted_urls() {
        for url in [
            "https://github.com/semaphoreui/demo-project.git",
            "http://git.local/repo",
            "git://git.kernel.org/pub/scm/git/git.git",
            "ssh://git@example.com:2222/org/repo.git",
            "git@github.com:org/repo.git",
            "example.com:repo",
            "file:///srv/git/repo.git",
            "/srv/checkouts/my repo",
        ] {
            assert_eq!(git_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn refused_urls() {
        for url in [
            "",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "-uhelp",
            "--upload-pack=touch /tmp/x",
            "https://example.com/repo --upload-pack=x",
            "ssh://-oProxyCommand=touch /tmp/x/repo",
            "ssh://-oProxyCommand=x/repo",
            "ssh://host/-repo",
            "git@-oProxyCommand=x:repo",
            "host:-repo",
            "https://example.com/\nrepo",
            "https://exa\u{7f}mple.com/",
            "relative/path",
            "/srv/../etc",
            "file://relative",
            "file:///srv/../etc",
            "ftp://example.com/x",
            "https://",
        ] {
            assert!(git_url(url).is_err(), "accepted {url:?}");
        }
    }

    #[test]
    fn branches() {
        for b in ["main", "feature/x-1", "release-2.0", "v1.2"] {
            assert_eq!(git_branch(b), Ok(()), "{b}");
        }
        for b in [
            "",
            "-f",
            "--upload-pack=x",
            "a b",
            "a..b",
            "a~1",
            "x:y",
            "a\nb",
            "x.lock",
            "@{-1}",
        ] {
            assert!(git_branch(b).is_err(), "accepted {b:?}");
        }
    }

    #[test]
    fn relative_paths() {
        for p in ["hosts", "inventory/prod.ini", "./inv/hosts.yml"] {
            assert_eq!(relative_path(p, "inventory"), Ok(()), "{p}");
        }
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "~/x",
            "a\0b",
            ".",
            "./",
        ] {
            assert!(relative_path(p, "inventory").is_err(), "accepted {p:?}");
        }
    }

    proptest! {
        /// Whatever the input, an accepted URL never starts with '-', never holds control
        /// characters, and never uses a transport helper.
        #[test]
        fn accepted_urls_are_safe(url in "\\PC{0,60}|[-a-z:/@.]{0,30}") {
            if git_url(&url).is_ok() {
                prop_assert!(!url.starts_with('-'));
                prop_assert!(!url.chars().any(char::is_control));
                prop_assert!(url.starts_with('/') || url.contains("://") || !url.contains("::"));
            }
        }

        /// An accepted relative path, joined to a checkout, stays inside it.
        #[test]
        fn accepted_paths_stay_inside(path in "[a-z./]{0,20}") {
            if relative_path(&path, "inventory").is_ok() {
                let joined = Path::new("/checkout").join(&path);
                let mut depth = 0i32;
                for c in joined.components().skip(2) {
                    match c {
                        Component::Normal(_) => depth += 1,
                        Component::ParentDir => depth -= 1,
                        _ => {}
                    }
                    prop_assert!(depth >= 0);
                }
                prop_assert!(joined.starts_with("/checkout"));
            }
        }

        #[test]
        fn validators_never_panic(s in "\\PC{0,80}") {
            let _ = git_url(&s);
            let _ = git_branch(&s);
            let _ = relative_path(&s, "inventory");
            let _ = name(&s, "name");
        }
    }
}
