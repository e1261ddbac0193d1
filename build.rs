//! Stamps the binary with the git commit and build time for `/api/info`'s `version`, and
//! embeds Swagger UI: the files `/swagger/` serves come from the Swagger UI release zip that the
//! `utoipa-swagger-ui-vendored` crate ships (crates.io), not from a CDN and not from a copy in
//! this repository. Each file's deflate stream is taken from the zip as it is and wrapped as a
//! gzip member (same stream, plus the zip's CRC-32 and size), so the binary holds it compressed
//! and browsers get it with `Content-Encoding: gzip` without recompression.

use std::fmt::Write as _;
use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::process::Command;

use zip::CompressionMethod;

fn main() {
    stamp();
    swagger_ui();
    documents();
    link_order();
}

/// The forge binary is linked through `.cargo/forge-linker`, which lays its code out in the
/// order `.cargo/link-order.txt` gives: cargo does not know about either, so a change to them
/// or to the wrapper's settings must link again.
fn link_order() {
    println!("cargo:rerun-if-changed=.cargo/link-order.txt");
    println!("cargo:rerun-if-changed=.cargo/forge-linker");
    println!("cargo:rerun-if-env-changed=FORGE_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=FORGE_LINK_MAP");
}

/// The API documents (`docs/`), gzipped: the Postman collection is ~1 MB of JSON that
/// compresses ~15x, and most clients (browsers, Postman, curl --compressed) take gzip.
fn documents() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    for (source, name) in [
        ("docs/openapi.json", "openapi.json.gz"),
        (
            "docs/postman/forge.postman_collection.json",
            "postman.json.gz",
        ),
    ] {
        println!("cargo:rerun-if-changed={source}");
        let text = std::fs::read(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        std::fs::write(out.join(name), gzip(&text)).expect("write document");
    }
}

/// `data` as one gzip member (RFC 1952) at the best compression.
fn gzip(data: &[u8]) -> Vec<u8> {
    let size = u32::try_from(data.len()).expect("document under 4 GiB");
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255];
    gz.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, 9));
    gz.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    gz.extend_from_slice(&size.to_le_bytes());
    gz
}

fn stamp() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "0000000".to_owned());
    let built = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string()
    });
    println!("cargo:rustc-env=FORGE_COMMIT={commit}");
    println!("cargo:rustc-env=FORGE_BUILD_TIME={built}");
    // Only the checked-out branch's ref: a commit on another branch (a worktree's) must not
    // rebuild this one.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=.git/{branch}");
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}

/// The dist files we serve, with their content types.
const FILES: &[(&str, &str)] = &[
    ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    ("swagger-ui.css", "text/css; charset=utf-8"),
    ("favicon-32x32.png", "image/png"),
    ("favicon-16x16.png", "image/png"),
];

fn swagger_ui() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let mut archive =
        zip::ZipArchive::new(Cursor::new(utoipa_swagger_ui_vendored::SWAGGER_UI_VENDORED))
            .expect("the vendored Swagger UI zip opens");
    let root = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i)?.ok().map(|n| n.into_owned()))
        .find_map(|name| {
            name.strip_suffix("dist/swagger-ui-bundle.js")
                .map(str::to_owned)
        })
        .filter(|prefix| !prefix.contains("flavors"))
        .expect("the zip holds dist/swagger-ui-bundle.js");
    let version = root
        .trim_end_matches('/')
        .trim_start_matches("swagger-ui-")
        .to_owned();

    let mut table = String::new();
    for (name, content_type) in FILES {
        let mut entry = archive
            .by_name_raw(format!("{root}dist/{name}").as_bytes())
            .unwrap_or_else(|e| panic!("{name} in the Swagger UI zip: {e}"));
        let (method, crc, size) = (entry.compression(), entry.crc32(), entry.size());
        let mut raw = Vec::new();
        entry.read_to_end(&mut raw).expect("read zip entry");
        let (bytes, gzip) = match method {
            m if m == CompressionMethod::STORE => (raw, false),
            // Without the crate's deflate feature (we never inflate here) this is its
            // `Unsupported(8)`: the stream is copied, not decoded.
            m if m == CompressionMethod::DEFLATE => {
                let size = u32::try_from(size).expect("file under 4 GiB");
                // RFC 1952: magic, CM=8 (deflate), no flags, no mtime, XFL=0, OS=255.
                let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
                gz.extend_from_slice(&raw);
                gz.extend_from_slice(&crc.to_le_bytes());
                gz.extend_from_slice(&size.to_le_bytes());
                (gz, true)
            }
            other => panic!("{name}: unexpected compression {other:?}"),
        };
        let path = out.join(format!("swagger-{name}{}", if gzip { ".gz" } else { "" }));
        std::fs::write(&path, &bytes).expect("write asset");
        writeln!(
            table,
            "    Asset {{ name: {name:?}, content_type: {content_type:?}, gzip: {gzip}, \
             bytes: include_bytes!({path:?}), inflated: OnceLock::new() }},"
        )
        .expect("write to string");
    }
    let table = format!(
        "/// Swagger UI's files.\nstatic SWAGGER_ASSETS: [Asset; {}] = [\n{table}];\n",
        FILES.len()
    );
    std::fs::write(out.join("swagger_assets.rs"), table).expect("write table");
    std::fs::write(out.join("swagger_version.txt"), version).expect("write version");
}
