//! Environments: created and updated with 204, `json`/`env` validated and secrets sealed; an
//! update applies the body's secret operations (only on this environment's own secrets), and
//! a delete takes the secrets with it. Views list secret names, never values.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;

use super::Routes;
use crate::http::error::ApiError;
use crate::http::handler::Req;
use crate::model::Environment;
use crate::service::resources::SecretInfo;

impl Routes for Environment {
    const ID: (&'static str, &'static str) = ("environment_id", "environment");
    const COLUMNS: &'static [&'static str] = &["name"];
    /// Secrets by environment id.
    type Extra = HashMap<u64, Vec<SecretInfo>>;

    fn extra(req: &Req) -> Result<Self::Extra, ApiError> {
        Ok(req.app.services.environment_secrets(req.access()?)?)
    }

    fn sort_key(_: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        Ok(|e: &Self, _: &str| e.name.clone())
    }

    fn view<'a>(
        _: &'a Req,
        secrets: &'a Self::Extra,
        e: &'a Self,
    ) -> Result<impl Serialize + 'a, ApiError> {
        let secrets = secrets.get(&e.id).map_or(&[][..], Vec::as_slice);
        Ok(json!({
            "id": e.id,
            "name": e.name,
            "project_id": e.project_id,
            "password": null,
            "json": e.json,
            "env": e.env,
            "secrets": secrets
                .iter()
                .map(|s| json!({"id": s.id, "type": s.kind, "name": s.name, "secret": "", "operation": ""}))
                .collect::<Vec<_>>(),
        }))
    }
}
