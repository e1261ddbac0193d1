//! Route handlers: parse, call a service, render. One module per resource.

pub mod meta;
pub mod session;
pub mod tokens;
pub mod users;
