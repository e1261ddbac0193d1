//! Serde helpers for request bodies. serde's derived structs also accept a JSON array (filled
//! by position); Go, and so every Semaphore client, only ever sends objects, and an array
//! there is a mistake to refuse, not to guess at.

use serde::de::{DeserializeOwned, Error, Unexpected};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

fn unexpected(v: &Value) -> Unexpected<'static> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(_) => Unexpected::Other("number"),
        Value::String(_) => Unexpected::Other("string"),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

fn from_object<T: DeserializeOwned, E: Error>(v: Value) -> Result<T, E> {
    match v {
        // Keep the path inside the object in the message (`private_key: invalid type ...`).
        Value::Object(_) => serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            E::custom(format!("{path}: {}", e.into_inner()))
        }),
        other => Err(E::invalid_type(unexpected(&other), &"a JSON object")),
    }
}

/// An optional nested object: `null`/missing → `None`, an object → `Some`, anything else → an
/// error.
///
/// # Errors
/// When the value is neither `null` nor an object of the right shape.
pub fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => from_object(v).map(Some),
    }
}

/// An optional list of objects: `null`/missing → `None`, an array of objects → `Some`.
///
/// # Errors
/// When the value is not `null` or an array of objects of the right shape.
pub fn objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .into_iter()
            .map(from_object)
            .collect::<Result<_, _>>()
            .map(Some),
        other => Err(D::Error::invalid_type(
            unexpected(&other),
            &"a JSON array of objects",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        a: Option<String>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Outer {
        #[serde(deserialize_with = "super::object")]
        one: Option<Inner>,
        #[serde(deserialize_with = "super::objects")]
        many: Option<Vec<Inner>>,
    }

    fn parse(s: &str) -> Result<Outer, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn objects_only() {
        assert_eq!(parse("{}").unwrap(), Outer::default());
        assert_eq!(
            parse(r#"{"one":null,"many":null}"#).unwrap(),
            Outer::default()
        );
        let o = parse(r#"{"one":{"a":"x"},"many":[{"a":"y"}]}"#).unwrap();
        assert_eq!(o.one.unwrap().a.as_deref(), Some("x"));
        assert_eq!(o.many.unwrap()[0].a.as_deref(), Some("y"));
        assert!(parse(r#"{"one":["x"]}"#).is_err());
        assert!(
            parse(r#"{"one":"secret"}"#)
                .unwrap_err()
                .contains("expected a JSON object")
        );
        assert!(parse(r#"{"many":[["y"]]}"#).is_err());
        assert!(parse(r#"{"many":{"a":"y"}}"#).is_err());
        assert!(!parse(r#"{"one":"s3cret"}"#).unwrap_err().contains("s3cret"));
    }
}
