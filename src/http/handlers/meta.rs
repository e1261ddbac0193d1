//! Health and server information.

use hyper::StatusCode;
use serde::Serialize;

use crate::http::body;
use crate::http::handler::HandlerResult;
use crate::http::handler::Req;

/// `GET|HEAD /api/ping`: liveness, text `pong`. No side effects, no auth.
pub async fn ping(_req: Req) -> HandlerResult {
    Ok(body::text(StatusCode::OK, "pong"))
}

/// `GET|HEAD /api/health`: `200 {"status":"ok"}`, or `503 {"status":"degraded","reason":
/// "storage"}` while the store refuses writes (a full disk) or is reopening. No auth, no side
/// effects, nothing more detailed.
pub async fn health(req: Req) -> HandlerResult {
    if req.app.services.store().healthy() {
        Ok(body::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok" }),
        ))
    } else {
        Ok(body::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "degraded", "reason": "storage" }),
        ))
    }
}

#[derive(Serialize)]
struct Info<'a> {
    version: &'a str,
    ansible: &'a str,
    web_host: &'a str,
    use_remote_runner: bool,
    schedule_timezone: &'a str,
    auth_methods: AuthMethods,
}

/// Login methods beyond the password (upstream ≥ 2.12).
#[derive(Serialize)]
struct AuthMethods {
    totp: TotpMethod,
}

/// Two-factor login: on (`--totp on`), and recovery codes accepted.
#[derive(Serialize)]
struct TotpMethod {
    enabled: bool,
    allow_recovery: bool,
}

/// `GET /api/info`: version, `ansible --version` (run once, on first request), web host,
/// `auth_methods.totp`.
pub async fn info(req: Req) -> HandlerResult {
    let ansible = req.app.ansible_version().await;
    Ok(body::json(
        StatusCode::OK,
        &Info {
            version: crate::VERSION,
            ansible,
            web_host: &req.app.config.web_host,
            use_remote_runner: false,
            schedule_timezone: req.app.services.schedule_timezone(),
            auth_methods: AuthMethods {
                totp: TotpMethod {
                    enabled: req.app.services.totp_on(),
                    allow_recovery: req.app.services.totp_on(),
                },
            },
        },
    ))
}
