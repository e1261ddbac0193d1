//! The one response body type and its constructors, and request-body decoding.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every response body Forge sends.
pub type Body = BoxBody<Bytes, std::io::Error>;

fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    body.map_err(|never| match never {}).boxed()
}

/// An empty body.
#[must_use]
pub fn empty() -> Body {
    boxed(Empty::new())
}

/// A body holding `bytes`.
#[must_use]
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

/// A body streamed from a channel: each message is one chunk; the body ends when every sender
/// is gone.
#[must_use]
pub fn stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    ChannelBody(rx).boxed()
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A response with `status` and no body (204 and friends).
#[must_use]
pub fn status(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(empty());
    *res.status_mut() = status;
    res
}

/// A JSON response: `application/json`, the value, and a trailing newline as upstream sends.
#[must_use]
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let mut res = Response::new(full(json_bytes(value)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The body [`json`] sends for `value`, to keep and answer with [`json_rendered`].
#[must_use]
pub fn json_bytes<T: Serialize + ?Sized>(value: &T) -> Bytes {
    // Serializing Forge's own response types cannot fail: they hold no maps with non-string
    // keys and no failing Serialize impls.
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    bytes.push(b'\n');
    bytes.into()
}

/// A `200` JSON answer from bytes [`json`] rendered earlier (kept by `http::rendered`).
#[must_use]
pub fn json_rendered(bytes: Bytes) -> Response<Body> {
    let mut res = Response::new(full(bytes));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// A `200` JSON array streamed as it is read: `batches` gives the next elements, already
/// serialized and joined by `,` (`None` at the end). The bytes are those [`json`] writes for
/// the whole array (`[`, the elements joined by `,`, `]`, a newline), but no more than a few
/// batches are ever held. A failing read ends the body early (the caller logs why).
pub fn json_array(mut batches: impl FnMut() -> Option<Vec<u8>> + Send + 'static) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut chunk = b"[".to_vec();
        let mut empty = true;
        while let Some(batch) = batches() {
            if batch.is_empty() {
                continue;
            }
            if !empty {
                chunk.push(b',');
            }
            empty = false;
            chunk.extend_from_slice(&batch);
            if tx
                .send(Bytes::from(std::mem::take(&mut chunk)))
                .await
                .is_err()
            {
                return;
            }
        }
        chunk.extend_from_slice(b"]\n");
        let _ = tx.send(Bytes::from(chunk)).await;
    });
    let mut res = Response::new(stream(rx));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `values` serialized and joined by `,`: one batch for [`json_array`].
#[must_use]
pub fn json_elements<T: Serialize>(values: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // As in `json`: Forge's own response types always serialize.
        if serde_json::to_writer(&mut out, &v).is_err() {
            out.extend_from_slice(b"null");
        }
    }
    out
}

/// A plain-text response.
#[must_use]
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Why a request body did not decode.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Removes quoted string values from a serde message (`invalid type: string "hunter2",
/// expected ...`): a rejected field may hold a secret, and errors must not echo it.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at + "string".len()]);
        let quoted = &rest[at + "string \"".len()..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(i) = end else {
            rest = "";
            break;
        };
        rest = &quoted[i + 1..];
    }
    out.push_str(rest);
    out
}

/// Decodes a JSON request body as Go's `encoding/json` would for upstream: unknown fields are
/// ignored, missing fields take their defaults (request types use `#[serde(default)]`), and
/// `null` means "all defaults". An empty body or invalid JSON is an error that names the
/// offending field where there is one.
///
/// # Errors
/// [`DecodeError`] with a message for the client.
pub fn decode<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, DecodeError> {
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(DecodeError(
            "request body must be JSON, got an empty body".into(),
        ));
    };
    // serde would fill a struct from an array by position; Go (and so upstream) refuses.
    if !matches!(first, b'{' | b'n') {
        return Err(DecodeError("request body must be a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: Option<T> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = redact(&e.into_inner().to_string());
        if path == "." || path.is_empty() {
            DecodeError(format!("invalid JSON body: {inner}"))
        } else {
            DecodeError(format!("invalid JSON in field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| DecodeError(format!("invalid JSON body: {e}")))?;
    Ok(value.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Login {
        auth: Option<String>,
        password: Option<String>,
        admin: Option<bool>,
    }

    #[test]
    fn go_like_decoding() {
        let l: Login = decode(br#"{"auth":"a","extra":[1,2]}"#).unwrap();
        assert_eq!(l.auth.as_deref(), Some("a"));
        assert_eq!(l.password, None);
        assert_eq!(decode::<Login>(b"null").unwrap(), Login::default());
        assert_eq!(
            decode::<Login>(br#"{"auth":null}"#).unwrap(),
            Login::default()
        );
    }

    #[test]
    fn errors_never_echo_string_values() {
        let e = decode::<Login>(br#"{"admin":"hunter2 \"quoted\" x"}"#).unwrap_err();
        assert!(!e.0.contains("hunter2"), "{}", e.0);
        assert!(
            e.0.contains("`admin`") && e.0.contains("invalid type: string,"),
            "{}",
            e.0
        );
        assert_eq!(
            redact(r#"a string "x\"y" b string "z""#),
            "a string b string"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = decode::<Login>(br#"{"auth":"a","admin":"yes"}"#).unwrap_err();
        assert!(e.0.contains("`admin`"), "{}", e.0);
        assert!(decode::<Login>(b"").unwrap_err().0.contains("empty"));
        assert!(decode::<Login>(b"{").is_err());
        assert!(decode::<Login>(b"{} {}").is_err());
        assert!(decode::<Login>(b"[1]").is_err());
        assert!(decode::<Login>(br#"["a","b"]"#).is_err());
        assert!(decode::<Login>(b"[]").is_err());
        assert!(decode::<Login>(b"\"x\"").is_err());
        assert!(decode::<Login>(b"nul").is_err());
    }
}
