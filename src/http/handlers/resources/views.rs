//! Views: created with 201 and the view, listed in `position` order; `POST .../positions`
//! moves several at once and `GET .../{view_id}/templates` lists the templates a view shows.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;

use super::{Routes, id, no_content, render_list};
use crate::http::error::ApiError;
use crate::http::handler::{HandlerResult, Req};
use crate::model::{Template, View};

impl Routes for View {
    const ID: (&'static str, &'static str) = ("view_id", "view");
    const COLUMNS: &'static [&'static str] = &["position"];
    const DEFAULT_COLUMN: &'static str = "position";
    const CREATED_WITH_BODY: bool = true;
    type Extra = ();

    fn extra(_: &Req) -> Result<(), ApiError> {
        Ok(())
    }

    fn sort_key(_: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        Ok(|v: &Self, _: &str| position_key(v.position))
    }

    fn view<'a>(_: &'a Req, (): &'a (), v: &'a Self) -> Result<impl Serialize + 'a, ApiError> {
        Ok(json!({
            "id": v.id,
            "project_id": v.project_id,
            "title": v.title,
            "position": v.position,
        }))
    }
}

/// A position as text that sorts as the number does (negative ones first).
fn position_key(position: i64) -> String {
    format!("{:020}", position.cast_unsigned() ^ (1 << 63))
}

/// `POST /api/project/{project_id}/views/positions` `{"<view_id>": position, ...}` → 204;
/// 400 naming an id that is no view of the project, and then nothing moves.
pub async fn positions(req: Req) -> HandlerResult {
    let positions: BTreeMap<String, i64> = req.json()?;
    req.app
        .services
        .set_view_positions(req.access()?, positions)
        .await?;
    Ok(no_content())
}

/// `GET /api/project/{project_id}/views/{view_id}/templates`: the templates the view shows,
/// sorted and shaped as the templates list.
pub async fn templates(req: Req) -> HandlerResult {
    let view = id::<View>(&req)?;
    let items = req.app.services.view_templates(req.access()?, view)?;
    render_list::<Template>(&req, items)
}

#[cfg(test)]
mod tests {
    use super::position_key;

    #[test]
    fn position_keys_sort_as_numbers() {
        let mut positions = [10, -3, 2, 0, i64::MAX, i64::MIN, -20];
        let mut keys: Vec<String> = positions.iter().map(|&p| position_key(p)).collect();
        keys.sort();
        positions.sort_unstable();
        let want: Vec<String> = positions.iter().map(|&p| position_key(p)).collect();
        assert_eq!(keys, want);
    }
}
