//! What Forge serves besides the JSON API: its API documents (the OpenAPI spec and the Postman
//! collection, both kept in `docs/` and embedded at build time), Swagger UI at `/swagger/`
//! (assets from the Swagger UI release in the `utoipa-swagger-ui-vendored` crate, see
//! `build.rs`), and the web page in `web/` at `/` and every other non-API path.

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, LOCATION, VARY,
};
use hyper::{HeaderMap, Response, StatusCode};

use crate::http::body::{self, Body};
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;

/// The OpenAPI 3.1 document: the one source, `docs/openapi.json` (gzipped by `build.rs`).
static OPENAPI: Asset = Asset {
    name: "openapi.json",
    content_type: "application/json",
    gzip: true,
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json.gz")),
    inflated: OnceLock::new(),
};
/// The Postman v2.1 collection generated from it (`docs/postman/generate.sh`).
static POSTMAN: Asset = Asset {
    name: "postman.json",
    content_type: "application/json",
    gzip: true,
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/postman.json.gz")),
    inflated: OnceLock::new(),
};
/// The Swagger UI release the assets come from.
#[cfg(test)]
const SWAGGER_UI_VERSION: &str = include_str!(concat!(env!("OUT_DIR"), "/swagger_version.txt"));

const INDEX_HTML: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/index.html"));
const APP_JS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/app.js"));
const APP_CSS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/app.css"));
/// The console (projects, templates, tasks, live output): JS modules loaded by the page.
const CONSOLE_JS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/console.js"));
const LOG_VIEW_JS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/logview.js"));

/// The web page's policy: our own files only, no inline code, never framed.
const PAGE_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";
/// Swagger UI's: the same, but its React components set inline styles.
const SWAGGER_CSP: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const SWAGGER_INDEX: &str = concat!(
    r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="generator" content="Swagger UI "#,
    include_str!(concat!(env!("OUT_DIR"), "/swagger_version.txt")),
    r#"">
  <title>Forge API — Swagger UI</title>
  <link rel="stylesheet" href="./swagger-ui.css">
  <link rel="icon" type="image/png" href="./favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="./favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="./swagger-ui-bundle.js" charset="UTF-8"></script>
  <script src="./swagger-initializer.js" charset="UTF-8"></script>
</body>
</html>
"#
);

/// Points Swagger UI at this instance's spec. "Try it out" calls the same origin (the spec's
/// server is `/`); the Bearer token entered under "Authorize" is kept across reloads.
const SWAGGER_INITIALIZER: &str = r"window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: '/api/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    persistAuthorization: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout'
  });
};
";

/// A file embedded by `build.rs`, stored gzipped (or as it is when it does not compress).
struct Asset {
    name: &'static str,
    content_type: &'static str,
    /// `bytes` is a gzip member (else the file as it is).
    gzip: bool,
    bytes: &'static [u8],
    /// The file, inflated on first use by a client that does not take gzip.
    inflated: OnceLock<Bytes>,
}

include!(concat!(env!("OUT_DIR"), "/swagger_assets.rs"));

/// `GET /api/openapi.json`: the OpenAPI document.
pub async fn openapi(req: Req) -> HandlerResult {
    Ok(asset_response(&OPENAPI, &req.headers))
}

/// `GET /api/postman.json`: the Postman collection.
pub async fn postman(req: Req) -> HandlerResult {
    Ok(asset_response(&POSTMAN, &req.headers))
}

fn with_type(mut res: Response<Body>, content_type: &'static str) -> Response<Body> {
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// Serves a non-API `GET`/`HEAD` path (`raw_path` as the client sent it, trailing slash kept):
/// Swagger UI under `/swagger/`, the page's files, and the page itself for anything else.
#[must_use]
pub fn page(raw_path: &str, headers: &HeaderMap) -> Response<Body> {
    if raw_path == "/swagger" {
        let mut res = body::status(StatusCode::MOVED_PERMANENTLY);
        res.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/swagger/"));
        return res;
    }
    if let Some(file) = raw_path.strip_prefix("/swagger/") {
        return swagger(file, headers);
    }
    let res = match raw_path {
        "/app.js" => with_type(
            Response::new(body::full(APP_JS)),
            "text/javascript; charset=utf-8",
        ),
        "/console.js" => with_type(
            Response::new(body::full(CONSOLE_JS)),
            "text/javascript; charset=utf-8",
        ),
        "/logview.js" => with_type(
            Response::new(body::full(LOG_VIEW_JS)),
            "text/javascript; charset=utf-8",
        ),
        "/app.css" => with_type(
            Response::new(body::full(APP_CSS)),
            "text/css; charset=utf-8",
        ),
        "/favicon.ico" => return swagger("favicon-32x32.png", headers),
        _ => with_type(
            Response::new(body::full(INDEX_HTML)),
            "text/html; charset=utf-8",
        ),
    };
    secure(res, PAGE_CSP)
}

fn swagger(file: &str, headers: &HeaderMap) -> Response<Body> {
    let res = match file {
        "" | "index.html" => with_type(
            Response::new(body::full(SWAGGER_INDEX)),
            "text/html; charset=utf-8",
        ),
        "swagger-initializer.js" => with_type(
            Response::new(body::full(SWAGGER_INITIALIZER)),
            "text/javascript; charset=utf-8",
        ),
        _ => match SWAGGER_ASSETS.iter().find(|a| a.name == file) {
            Some(asset) => asset_response(asset, headers),
            None => return crate::http::error::ApiError::NotFound.into_response(),
        },
    };
    secure(res, SWAGGER_CSP)
}

/// An embedded asset: as stored (gzip) when the client accepts gzip, else inflated once and
/// kept.
fn asset_response(asset: &'static Asset, headers: &HeaderMap) -> Response<Body> {
    let mut res = if !asset.gzip {
        Response::new(body::full(asset.bytes))
    } else if accepts_gzip(headers) {
        let mut res = Response::new(body::full(asset.bytes));
        res.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        res
    } else {
        Response::new(body::full(inflated(asset)))
    };
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    res
}

/// The asset's file, from its gzip member (header of 10 bytes, trailer of 8).
fn inflated(asset: &'static Asset) -> Bytes {
    asset
        .inflated
        .get_or_init(|| {
            let deflate = &asset.bytes[10..asset.bytes.len() - 8];
            // The build wrote (or took from the zip, under its CRC) this very stream; a failure
            // here would be a corrupt build, served as an empty file.
            Bytes::from(miniz_oxide::inflate::decompress_to_vec(deflate).unwrap_or_default())
        })
        .clone()
}

/// Whether `Accept-Encoding` lists gzip with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// Headers every HTML page and its files get: a content policy, no framing, no referrer.
fn secure(mut res: Response<Body>, csp: &'static str) -> Response<Body> {
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(csp));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_encoding(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&with_encoding("gzip, deflate, br")));
        assert!(accepts_gzip(&with_encoding("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&with_encoding("*")));
        assert!(!accepts_gzip(&with_encoding("gzip;q=0")));
        assert!(!accepts_gzip(&with_encoding("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn every_swagger_asset_inflates_to_its_file() {
        let bundle = SWAGGER_ASSETS
            .iter()
            .find(|a| a.name == "swagger-ui-bundle.js")
            .expect("the bundle is embedded");
        assert!(bundle.gzip);
        let js = inflated(bundle);
        assert!(js.len() > 1_000_000, "bundle is {} bytes", js.len());
        assert!(std::str::from_utf8(&js).is_ok_and(|s| s.contains("SwaggerUIBundle")));
        for asset in SWAGGER_ASSETS.iter().filter(|a| a.gzip) {
            let trailer = &asset.bytes[asset.bytes.len() - 4..];
            let size = u32::from_le_bytes(trailer.try_into().unwrap());
            assert_eq!(inflated(asset).len(), size as usize, "{}", asset.name);
        }
        assert!(SWAGGER_UI_VERSION.starts_with('5'), "{SWAGGER_UI_VERSION}");
    }
}
