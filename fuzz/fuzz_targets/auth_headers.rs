//! Invariant: the credential parsers never panic on any header bytes, and what they return is
//! a piece of the header itself.
//! - `parse_authorization`: a Bearer token is non-empty, has no ASCII whitespace or control
//!   bytes, and is a suffix of the header value (nothing after it was dropped).
//! - `parse_cookie`: a value is a sub-slice of the header and holds no `;` (it never spans two
//!   cookies).
//!
//! The first byte picks the cookie name: the session cookie's, the empty name, or a name cut
//! from the input, so odd names (with `=`, `;`, spaces) are covered too.
#![no_main]

use forge::http::auth::{SESSION_COOKIE, parse_authorization, parse_cookie};
use libfuzzer_sys::fuzz_target;

/// Whether `part` lies inside `whole` in memory (a sub-slice, not an equal copy).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= end
}

fn check_authorization(value: &[u8]) {
    if let Some(Ok(token)) = parse_authorization(value) {
        let t = token.as_bytes();
        assert!(!t.is_empty(), "empty token from {value:?}");
        assert!(
            t.iter()
                .all(|b| !b.is_ascii_whitespace() && !b.is_ascii_control()),
            "whitespace or control byte in token {token:?}"
        );
        assert!(
            value.ends_with(t),
            "token {token:?} is not a suffix of {value:?}"
        );
        assert!(
            within(value, t),
            "token {token:?} is not taken from the input"
        );
    }
}

fn check_cookie(header: &[u8], name: &str) {
    if let Some(v) = parse_cookie(header, name) {
        assert!(
            within(header, v.as_bytes()),
            "cookie {v:?} is not taken from {header:?}"
        );
        assert!(!v.contains(';'), "cookie {v:?} spans a ';'");
    }
}

fuzz_target!(|data: &[u8]| {
    check_authorization(data);

    let Some((&pick, rest)) = data.split_first() else {
        check_cookie(data, SESSION_COOKIE);
        return;
    };
    match pick % 4 {
        0 | 1 => check_cookie(rest, SESSION_COOKIE),
        2 => check_cookie(rest, ""),
        _ => {
            // Name = the first `len` bytes (when UTF-8), header = the rest.
            let len = usize::from(pick >> 2).min(rest.len());
            let (name, header) = rest.split_at(len);
            if let Ok(name) = std::str::from_utf8(name) {
                check_cookie(header, name);
            }
        }
    }
});
