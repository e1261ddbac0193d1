//! Inventories: created with 201 and the inventory, updated with 204; `file` paths must stay
//! inside the checkout.

use serde::Serialize;

use super::Routes;
use crate::http::error::ApiError;
use crate::http::handler::Req;
use crate::model::Inventory;

#[derive(Serialize)]
struct InventoryView<'a> {
    id: u64,
    name: &'a str,
    project_id: u64,
    inventory: &'a str,
    ssh_key_id: Option<u64>,
    become_key_id: Option<u64>,
    #[serde(rename = "type")]
    kind: &'a str,
    holder_id: Option<u64>,
    repository_id: Option<u64>,
}

impl Routes for Inventory {
    const ID: (&'static str, &'static str) = ("inventory_id", "inventory");
    const COLUMNS: &'static [&'static str] = &["name"];
    const CREATED_WITH_BODY: bool = true;
    type Extra = ();

    fn extra(_: &Req) -> Result<(), ApiError> {
        Ok(())
    }

    fn sort_key(_: &Req) -> Result<impl Fn(&Self, &str) -> String, ApiError> {
        Ok(|i: &Self, _: &str| i.name.clone())
    }

    fn view<'a>(_: &'a Req, (): &'a (), i: &'a Self) -> Result<impl Serialize + 'a, ApiError> {
        Ok(InventoryView {
            id: i.id,
            name: &i.name,
            project_id: i.project_id,
            inventory: &i.inventory,
            ssh_key_id: i.ssh_key_id,
            become_key_id: i.become_key_id,
            kind: &i.kind,
            holder_id: i.holder_id,
            repository_id: i.repository_id,
        })
    }
}
