//! Route handlers: parse, call a service, render. One module per resource; the project
//! resources share one generic set (`resources`).

pub mod apps;
pub mod backup;
pub mod confirm;
pub mod integrations;
pub mod meta;
pub mod metrics;
pub mod notifications;
pub mod options;
pub mod project_backup;
pub mod projects;
pub mod resources;
pub mod runners;
pub mod session;
pub mod site;
pub mod tasks;
pub mod tokens;
pub mod totp;
pub mod users;
pub mod ws;

use crate::http::handler::Req;

/// A sortable column: its `sort` name and the key it sorts by.
pub type Column<'a, T> = (&'a str, &'a dyn Fn(&T) -> String);

/// Sorts a list as upstream does: `?sort=<column>` (unknown or missing → `default`),
/// `?order=desc` reverses, anything else is ascending. Ties keep id order.
pub fn sort_list<T>(req: &Req, items: &mut [T], columns: &[Column<'_, T>], default: &str) {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    sort_by(req, items, &names, default, |item, column| {
        columns
            .iter()
            .find(|(name, _)| *name == column)
            .map(|(_, key)| key(item))
            .unwrap_or_default()
    });
}

/// [`sort_list`] with one key function over every column: `key(item, column)`.
pub fn sort_by<T>(
    req: &Req,
    items: &mut [T],
    columns: &[&str],
    default: &str,
    key: impl Fn(&T, &str) -> String,
) {
    let wanted = req.query_param("sort").unwrap_or_default();
    let column = columns
        .iter()
        .find(|name| **name == wanted)
        .or_else(|| columns.iter().find(|name| **name == default));
    if let Some(column) = column {
        items.sort_by_cached_key(|item| key(item, column).to_lowercase());
    }
    if req.query_param("order").as_deref() == Some("desc") {
        items.reverse();
    }
}
