//! The one encoding of stored records: a format byte, then bincode 2 (standard config) of the
//! serde form. Swapping the encoding means changing only this module (and bumping the byte).
//!
//! bincode is positional: a record carries no field names, so bytes decode only into the exact
//! shape that wrote them. Changing a stored type therefore needs a migration that rewrites its
//! table; follow the checklist in [`crate::store`] ("Versions and shape changes").

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First byte of every record; lets a later format coexist with this one.
const FORMAT_V1: u8 = 1;

/// A record could not be decoded (corrupt or from an unknown format).
#[derive(Debug, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct CodecError(String);

impl CodecError {
    /// A record that decoded but breaks a rule of its shape.
    #[must_use]
    pub fn new(why: &str) -> Self {
        CodecError(why.to_owned())
    }
}

/// Encodes a record.
///
/// # Panics
/// Never for Forge's model types: bincode's serde encoder only fails on types it cannot
/// represent (unsized sequences), which the model does not contain.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Encodes a record into `out` (cleared first), reusing its allocation: the same bytes as
/// [`encode`], for loops that encode many records.
///
/// # Panics
/// As [`encode`].
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT_V1);
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .expect("model types are always bincode-encodable");
}

/// Decodes a record written by [`encode`].
///
/// # Errors
/// [`CodecError`] when the bytes are not a record of type `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            let (value, used) =
                bincode::serde::decode_from_slice(rest, bincode::config::standard())
                    .map_err(|e| CodecError(e.to_string()))?;
            if used == rest.len() {
                Ok(value)
            } else {
                Err(CodecError("trailing bytes".into()))
            }
        }
        Some((v, _)) => Err(CodecError(format!("unknown format {v}"))),
        None => Err(CodecError("empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;

    fn user() -> User {
        User {
            id: 7,
            created: 1_700_000_000,
            username: "ada".into(),
            name: "Ada Ł".into(),
            email: "ada@example.com".into(),
            admin: true,
            external: false,
            alert: false,
            password_hash: "$scrypt$...".into(),
        }
    }

    #[test]
    fn round_trips() {
        let u = user();
        assert_eq!(decode::<User>(&encode(&u)).unwrap(), u);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(decode::<User>(&[]).is_err());
        assert!(decode::<User>(&[9, 1, 2]).is_err());
        let mut bytes = encode(&user());
        bytes.push(0);
        assert!(decode::<User>(&bytes).is_err());
        bytes.truncate(5);
        assert!(decode::<User>(&bytes).is_err());
    }
}
