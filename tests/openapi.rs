//! The OpenAPI document (`docs/openapi.json`, served at `/api/openapi.json`) against the route
//! table, in both directions (issue 5): every route Forge serves is documented with the same
//! path, method, path parameters and security, and every documented operation is served. A
//! route added without documentation fails here. Also: Swagger UI at `/swagger/`, fully
//! offline, served from the assets embedded at build time.

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use forge::http::auth::Need;
use forge::http::router::routes;
use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// `(method, path)` of every operation in the spec.
fn operations(spec: &Value) -> Vec<(String, String, &Value)> {
    let paths = spec["paths"].as_object().expect("spec has paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for (key, op) in item.as_object().expect("path item is an object") {
            if METHODS.contains(&key.as_str()) {
                ops.push((key.to_uppercase(), path.clone(), op));
            }
        }
    }
    ops
}

/// Path parameters named in a template: `/a/{x}/b/{y}` → {x, y}.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// Follows a local `$ref` (`#/components/...`) once.
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

#[test]
fn every_route_is_documented_and_every_operation_is_served() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    let documented: BTreeSet<(String, String)> = operations(&spec)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "docs/openapi.json documents routes Forge does not serve: {unserved:?}"
    );
}

#[test]
fn every_operation_states_its_parameters_security_and_responses() {
    let spec = spec();
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .expect("components.securitySchemes");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["cookie"]["type"], "apiKey");
    assert_eq!(schemes["cookie"]["in"], "cookie");
    assert_eq!(schemes["cookie"]["name"], "semaphore");

    let table = routes();
    let mut operation_ids = BTreeSet::new();
    for (method, path, op) in operations(&spec) {
        let at = format!("{method} {path}");
        let route = table
            .iter()
            .find(|r| r.method.as_str() == method && r.path == path)
            .unwrap_or_else(|| panic!("{at} is not served"));

        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: operationId"));
        assert!(
            operation_ids.insert(id.to_owned()),
            "{at}: operationId {id} repeats"
        );
        assert!(op["summary"].is_string(), "{at}: summary");

        // Path parameters: exactly the template's, each required.
        let item = &spec["paths"][&path];
        let declared: BTreeSet<String> = item["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
            .map(|p| resolve(&spec, p))
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(
                    p["required"], true,
                    "{at}: path parameter {} required",
                    p["name"]
                );
                p["name"].as_str().expect("parameter name").to_owned()
            })
            .collect();
        assert_eq!(declared, template_params(&path), "{at}: path parameters");

        // Security: anonymous routes say none; the rest take a Bearer token or the cookie.
        let security = op
            .get("security")
            .or_else(|| spec.get("security"))
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{at}: security"));
        let names: BTreeSet<&str> = security
            .iter()
            .flat_map(|req| req.as_object().expect("security requirement").keys())
            .map(String::as_str)
            .collect();
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{at}: responses"));
        if route.need == Need::Anonymous {
            assert!(
                names.is_empty(),
                "{at}: anonymous route with security {names:?}"
            );
        } else {
            assert_eq!(
                names,
                BTreeSet::from(["bearer", "cookie"]),
                "{at}: security"
            );
            assert!(responses.contains_key("401"), "{at}: 401 undocumented");
        }
        if let Need::Project(_) = route.need {
            assert!(responses.contains_key("404"), "{at}: 404 undocumented");
        }
        if matches!(route.need, Need::Admin | Need::Metrics) {
            assert!(responses.contains_key("403"), "{at}: 403 undocumented");
        }

        // Responses: a success, each described; JSON ones carry a schema.
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('1')),
            "{at}: no success response"
        );
        for (status, response) in responses {
            let response = resolve(&spec, response);
            assert!(
                response["description"].is_string(),
                "{at} {status}: description"
            );
            if let Some(content) = response["content"].as_object() {
                for (media, body) in content {
                    assert!(
                        body.get("schema").is_some(),
                        "{at} {status} {media}: schema"
                    );
                }
            }
        }
        // Request bodies: a schema and an example for each JSON body, on the media type
        // (where Swagger UI and the Postman converter take it from).
        if let Some(body) = op.get("requestBody") {
            let body = resolve(&spec, body);
            let json = &body["content"]["application/json"];
            assert!(json.get("schema").is_some(), "{at}: request schema");
            assert!(
                json.get("example").is_some() || json.get("examples").is_some(),
                "{at}: request example"
            );
        }
    }
}

#[tokio::test]
async fn the_served_document_is_the_committed_one() {
    let server = TestServer::start().await;
    let r = server.client().get("/api/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.json(), spec());
    // Stored gzipped in the binary: clients that take gzip get it as it is.
    let gz = server
        .client()
        .raw(
            "GET",
            "/api/openapi.json",
            None,
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
    assert!(
        gz.body.len() * 5 < r.body.len(),
        "gzip: {} bytes",
        gz.body.len()
    );
    let inflated = miniz_oxide::inflate::decompress_to_vec(&gz.body[10..gz.body.len() - 8])
        .expect("a gzip member");
    assert_eq!(inflated, r.body.to_vec());
    let head = server
        .client()
        .raw("HEAD", "/api/openapi.json", None, &[])
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = server.client().post("/api/openapi.json", Value::Null).await;
    post.assert_error(405);
}

#[tokio::test]
async fn swagger_ui_is_served_offline_from_the_binary() {
    let server = TestServer::start().await;
    let c = server.client();

    let r = c.get("/swagger").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location").as_deref(), Some("/swagger/"));

    let page = c.get("/swagger/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no outside URL: {html}"
    );

    // Every script and stylesheet the page names is served, by this server.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("./"))
        .collect();
    assert!(assets.contains(&"./swagger-ui-bundle.js"), "{assets:?}");
    assert!(assets.contains(&"./swagger-initializer.js"), "{assets:?}");
    for asset in &assets {
        let path = format!("/swagger/{}", &asset[2..]);
        let plain = c.get(&path).await;
        assert_eq!(plain.status, 200, "{path}");
        assert!(plain.header("content-encoding").is_none(), "{path}");
        let gz = c
            .raw("GET", &path, None, &[("accept-encoding", "gzip, br")])
            .await;
        assert_eq!(gz.status, 200, "{path}");
        if gz.header("content-encoding").as_deref() == Some("gzip") {
            assert_eq!(&gz.body[..2], &[0x1f, 0x8b], "{path}: gzip magic");
            let deflate = &gz.body[10..gz.body.len() - 8];
            let inflated = miniz_oxide::inflate::decompress_to_vec(deflate).expect("inflates");
            assert_eq!(
                inflated,
                plain.body.to_vec(),
                "{path}: gzip and identity differ"
            );
        }
    }
    let bundle = c.get("/swagger/swagger-ui-bundle.js").await;
    assert!(bundle.body.len() > 1_000_000);
    assert_eq!(
        bundle.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    let init = c.get("/swagger/swagger-initializer.js").await.text();
    assert!(init.contains("url: '/api/openapi.json'"), "{init}");

    c.get("/swagger/nope.js").await.assert_error(404);
    c.get("/swagger/../api/user").await.assert_error(404);
}
