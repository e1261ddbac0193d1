//! Invariant: `forge::http::body::decode` never panics on any body bytes, and
//! - a body that is not well-formed JSON (serde_json rejects it even as `IgnoredAny`, which
//!   checks syntax only) is rejected;
//! - every error carries a non-empty message for the client;
//! - when decode accepts, it agrees with serde_json's `Value` route
//!   (`from_slice::<Value>` then `from_value::<Option<T>>`) wherever that route accepts too.
//!
//! Not an invariant: "`from_slice::<Value>` rejects ⇒ decode rejects". Unknown fields are
//! skipped as Go does, and serde_json's skipping checks syntax only: it takes invalid UTF-8 in
//! strings, numbers out of `f64` range (`1e400`) and nesting past `Value`'s 128-level limit.
//!
//! The first byte picks the request type; the rest is the body.
#![no_main]

use std::fmt::Debug;

use forge::http::body::decode;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

/// `POST /api/auth/login`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct Login {
    auth: Option<String>,
    password: Option<String>,
}

/// `POST /api/users`, `PUT /api/users/{id}`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct UserBody {
    id: Option<u64>,
    name: Option<String>,
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
    admin: Option<bool>,
    alert: Option<bool>,
    external: Option<bool>,
}

/// `POST /api/users/{id}/password`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct PasswordBody {
    password: Option<String>,
}

/// A body with a nested object, a list and a signed number.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct Nested {
    name: Option<String>,
    tags: Option<Vec<String>>,
    login: Option<Login>,
    offset: Option<i64>,
}

fn check<T: DeserializeOwned + Default + Debug + PartialEq>(body: &[u8]) {
    let decoded = decode::<T>(body);
    if let Err(e) = &decoded {
        assert!(!e.0.is_empty(), "empty error message for {body:?}");
    }
    if serde_json::from_slice::<IgnoredAny>(body).is_err() {
        assert!(
            decoded.is_err(),
            "malformed JSON {body:?} decoded as {decoded:?}"
        );
    }
    if let Ok(ours) = &decoded {
        let via_value = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| serde_json::from_value::<Option<T>>(v).ok());
        if let Some(theirs) = via_value {
            assert_eq!(ours, &theirs.unwrap_or_default(), "body {body:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        check::<Login>(data);
        return;
    };
    match pick % 4 {
        0 => check::<Login>(body),
        1 => check::<UserBody>(body),
        2 => check::<PasswordBody>(body),
        _ => check::<Nested>(body),
    }
});
