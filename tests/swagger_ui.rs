//! Swagger UI (`/swagger/`, embedded in the binary) in a real headless Chromium against a real
//! `forge serve` process, by `tests/js/swagger.mjs` (playwright-core): the spec loads from the
//! instance, "Authorize" takes an API token for the `bearer` scheme, and "Try it out" on
//! `GET /api/user` gets 200 from the same instance, sent with that token. No request leaves the
//! instance and the page runs under its Content-Security-Policy. A screenshot is kept in
//! `target/test-artifacts/swagger-try-it-out.png`.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/js/node_modules/playwright-core`, installed by
//! `.ci/install-tools.sh`. Without them the test fails in CI (`CI=true`) and is skipped
//! elsewhere.

mod common;

use std::process::{Command, Stdio};

use common::process::ServerProcess;
use common::tools::{self, root};
use common::{ADMIN, ADMIN_PASSWORD};

#[tokio::test(flavor = "multi_thread")]
async fn try_it_out_with_a_bearer_token_reaches_the_same_instance() {
    if !tools::ready("the Swagger UI browser test", &tools::missing_for_browser()) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&dir.path().join("forge.redb"), &[]);
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = admin.new_token().await;
    let base = format!("http://{}", server.addr);
    let shot = root().join("target/test-artifacts/swagger-try-it-out.png");

    let output = tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            Command::new("node")
                .arg(root().join("tests/js/swagger.mjs"))
                .args([base.as_str(), token.as_str(), ADMIN])
                .arg(&shot)
                .current_dir(root())
                .stdin(Stdio::null())
                .output()
                .expect("run node tests/js/swagger.mjs")
        }
    })
    .await
    .expect("join");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "swagger.mjs failed ({}):\n{log}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&server.log())
    );
    assert!(log.contains("GET /api/user → 200 as admin"), "{log}");
    assert!(shot.is_file(), "screenshot {}", shot.display());
    eprintln!("{log}screenshot: {}", shot.display());
}
