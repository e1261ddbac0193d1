//! Invariant: the validators for values that reach git and the file system never panic, and
//! what they accept is safe to hand on:
//! - an accepted git URL never starts with `-` (git would read it as an option), holds no
//!   control characters, and uses no `transport::` helper (`ext::` runs commands);
//! - an accepted branch never starts with `-` and holds no whitespace or `..`;
//! - an accepted relative path, joined to a checkout directory, never leaves it.
#![no_main]

use std::path::{Component, Path};

use forge::service::validate::{git_branch, git_url, relative_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if git_url(s).is_ok() {
        assert!(!s.starts_with('-'), "accepted option-like url {s:?}");
        assert!(
            !s.chars().any(char::is_control),
            "accepted control chars in {s:?}"
        );
        let transport_helper = !s.starts_with('/') && !s.contains("://") && s.contains("::");
        assert!(!transport_helper, "accepted transport helper {s:?}");
    }

    if git_branch(s).is_ok() {
        assert!(!s.starts_with('-'), "accepted option-like branch {s:?}");
        assert!(
            !s.chars().any(char::is_whitespace),
            "accepted whitespace in {s:?}"
        );
        assert!(!s.contains(".."), "accepted '..' in {s:?}");
    }

    if relative_path(s, "inventory").is_ok() {
        let root = Path::new("/checkout");
        let joined = root.join(s);
        let mut depth = 0usize;
        for c in joined.components().skip(2) {
            match c {
                Component::Normal(_) => depth += 1,
                Component::ParentDir => {
                    assert!(depth > 0, "path {s:?} escapes the checkout");
                    depth -= 1;
                }
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => panic!("path {s:?} is absolute"),
            }
        }
        assert!(joined.starts_with(root), "path {s:?} escapes the checkout");
    }
});
