//! Access keys: created and updated with 204; the secret is sealed before it is stored, and on
//! update only replaced with `override_secret`.

use serde::Serialize;
use serde_json::json;

use super::Routes;
use crate::http::error::ApiError;
use crate::http::handler::Req;
use crate::model::AccessKey;
use crate::service::resources::needs_secret;

impl Routes for AccessKey {
    const ID: (&'static str, &'static str) = ("key_id", "key");
    const COLUMNS: &'static [&'static str] = &["name", "type"];
    type Extra = ();

    fn extra(_: &Req) -> Result<(), ApiError> {
        Ok(())
    }

    fn sort_key(_: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        Ok(|k: &Self, column: &str| match column {
            "type" => k.kind.as_str().to_owned(),
            _ => k.name.clone(),
        })
    }

    /// Upstream's default backend sends exactly these fields (no `empty`): strict clients build
    /// their `Key` from them and fail on any other. Secrets never: empty placeholders. Forge's
    /// `needs_secret: true` is added only to a key still lacking its secret (restored from a
    /// backup), so keys made through the API keep upstream's exact shape.
    fn view<'a>(_: &'a Req, (): &'a (), k: &'a Self) -> Result<impl Serialize + 'a, ApiError> {
        let mut view = json!({
            "id": k.id,
            "name": k.name,
            "type": k.kind.as_str(),
            "project_id": k.project_id,
            "string": "",
            "login_password": {"login": "", "password": ""},
            "ssh": {"login": "", "passphrase": "", "private_key": ""},
            "override_secret": false,
        });
        if needs_secret(k) {
            view["needs_secret"] = json!(true);
        }
        Ok(view)
    }
}
