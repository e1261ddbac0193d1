//! Server options (`/api/options`): string values kept in `SETTINGS` under
//! [`OPTION_PREFIX`], so that no option key can name one of Forge's own settings.

use redb::{Durability, ReadableTable};

use super::{Result, Store, tables};

/// What every option's row name starts with.
pub const OPTION_PREFIX: &str = "option.";
/// The first row name after every option's (`'/'` follows `'.'`).
const OPTION_END: &str = "option/";

impl Store {
    /// Every option, as (key, value), by key.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn options(&self) -> Result<Vec<(String, String)>> {
        let tx = self.read()?;
        let table = tx.open_table(tables::SETTINGS)?;
        table
            .range(OPTION_PREFIX..OPTION_END)?
            .map(|row| {
                let (name, value) = row?;
                let key = name.value().strip_prefix(OPTION_PREFIX).unwrap_or_default();
                Ok((
                    key.to_owned(),
                    String::from_utf8_lossy(value.value()).into_owned(),
                ))
            })
            .collect()
    }

    /// Sets option `key` to `value`, durably.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn set_option(&self, key: &str, value: &str) -> Result<()> {
        let name = format!("{OPTION_PREFIX}{key}");
        let value = value.to_owned();
        self.write_async(Durability::Immediate, move |tx| {
            tx.open_table(tables::SETTINGS)?
                .insert(name.as_str(), value.as_bytes())?;
            Ok(())
        })
        .await
    }
    /// Sets every (key, value) of `options` and removes every option whose key starts with
    /// `remove_prefix` and is not among them (when given), durably, in one transaction.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn replace_options(
        &self,
        remove_prefix: Option<&str>,
        options: Vec<(String, String)>,
    ) -> Result<()> {
        let prefix = remove_prefix.map(|p| format!("{OPTION_PREFIX}{p}"));
        self.write_async(Durability::Immediate, move |tx| {
            let mut table = tx.open_table(tables::SETTINGS)?;
            if let Some(prefix) = &prefix {
                let mut stale = Vec::new();
                for row in table.range(prefix.as_str()..)? {
                    let (name, _) = row?;
                    if !name.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    stale.push(name.value().to_owned());
                }
                for name in stale {
                    table.remove(name.as_str())?;
                }
            }
            for (key, value) in &options {
                let name = format!("{OPTION_PREFIX}{key}");
                table.insert(name.as_str(), value.as_bytes())?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::test_support::temp_store;

    /// Options come back without their prefix; Forge's own settings never show among them.
    #[tokio::test]
    async fn options_are_their_own_rows() {
        let (_dir, store) = temp_store();
        store
            .set_setting("secret_key_check", b"x")
            .expect("setting");
        store.set_setting("optionx", b"near").expect("setting");
        store.set_option("b.c", "2").await.expect("set");
        store.set_option("a", "1").await.expect("set");
        store.set_option("a", "one").await.expect("overwrite");
        assert_eq!(
            store.options().expect("options"),
            [("a".into(), "one".into()), ("b.c".into(), "2".into())]
        );
        assert_eq!(
            store.setting("secret_key_check").expect("read").as_deref(),
            Some(b"x".as_slice())
        );
    }
}
