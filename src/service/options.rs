//! Server options (`/api/options`, system administrators only), as upstream: string values
//! under keys of letters, digits, `_` and `.` (`^[\w.]+$`). They live apart from Forge's own
//! settings, so no key can reach one of those.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Error, Result, Services};

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A `POST /api/options` body. A missing or `null` value is stored as `""` (Go's zero value).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OptionInput {
    /// The option's key.
    pub key: Option<String>,
    /// Its new value.
    pub value: Option<String>,
}

/// Whether `key` is a valid option key: `^[\w.]+$` with `\w` as in Go (ASCII), at most
/// [`MAX_KEY_LEN`] bytes.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

impl Services {
    /// Every option, by key.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn options(&self) -> Result<BTreeMap<String, String>> {
        Ok(self.store.options()?.into_iter().collect())
    }

    /// Sets an option, durably; answers the stored (key, value).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a key that is not `^[\w.]+$`.
    pub async fn set_option(&self, input: OptionInput) -> Result<(String, String)> {
        let key = input.key.unwrap_or_default();
        if !valid_key(&key) {
            return Err(Error::Invalid(format!(
                "key must match ^[\\w.]+$ (letters, digits, '_' and '.', at most \
                 {MAX_KEY_LEN} bytes): {key:?}"
            )));
        }
        let value = input.value.unwrap_or_default();
        self.store.set_option(&key, &value).await?;
        Ok((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_word_characters_and_dots() {
        for ok in ["a", "apps.ansible.path", "_x.9", &"k".repeat(MAX_KEY_LEN)] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a-b",
            "é",
            "a\n",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
