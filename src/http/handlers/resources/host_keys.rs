//! Pinned SSH host keys (Forge extension): listed by host and forgotten one at a time.

use serde::Serialize;
use serde_json::json;

use super::Routes;
use crate::http::error::ApiError;
use crate::http::handler::Req;
use crate::model::HostKey;

impl Routes for HostKey {
    const ID: (&'static str, &'static str) = ("host_key_id", "host key");
    const COLUMNS: &'static [&'static str] = &["host", "created"];
    const DEFAULT_COLUMN: &'static str = "host";
    type Extra = ();

    fn extra(_: &Req) -> Result<(), ApiError> {
        Ok(())
    }

    fn sort_key(_: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        Ok(|k: &Self, column: &str| match column {
            "created" => format!("{:020}", k.created.max(0)),
            _ => k.host.to_lowercase(),
        })
    }

    fn view<'a>(_: &'a Req, (): &'a (), k: &'a Self) -> Result<impl Serialize + 'a, ApiError> {
        Ok(json!({
            "id": k.id,
            "project_id": k.project_id,
            "host": k.host,
            "type": k.key_type,
            "key": k.key,
            "task_id": k.task_id,
            "created": crate::clock::rfc3339(k.created),
        }))
    }
}
