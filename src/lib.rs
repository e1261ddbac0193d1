//! Forge: a self-hosted automation server, wire-compatible with the Semaphore UI API.
//!
//! # Layout
//! - [`config`]: every setting, as flags and environment variables.
//! - [`backup`]: scheduled backups and the `forge backup` command.
//! - [`app`]: wiring of the store, services and router ([`app::App`]).
//! - [`server`]: the accept loop and graceful shutdown ([`server::serve`]).
//! - [`http`]: request pipeline, route table, auth middleware, bodies, errors, what a handler
//!   is (`http::handler`), and the handlers: one module per resource, the project resources
//!   over one generic set (`http::handlers::resources`).
//! - [`service`]: business rules: passwords, sessions, tokens, throttling, users, projects,
//!   tasks, build/deploy rules (`service::builds`), sealed secrets, apps (`service::apps`),
//!   the project resources: one module each over one generic CRUD (`service::resources`,
//!   schedules included), project backups in upstream's format
//!   (`service::project_backup`), integrations: incoming webhooks that launch templates
//!   (`service::integrations`), and two-factor login with TOTP (`service::totp`).
//! - [`runner`]: the task queue, child processes, stop/kill and live output, and the
//!   terraform/tofu plan → confirm → apply flow (`runner::terraform`); `git ls-remote` for
//!   repository-triggered schedules (`runner::remote`); the executor it shares with
//!   `forge runner` ([`agent`]): checkout, ansible's argv and secret files, start and
//!   supervision, with nothing of the store (`runner::launch`). It sees the services
//!   only through a narrow handle (`runner::Host`: the clock, opening sealed secrets, an app's
//!   command), persists through the store, and is driven by the HTTP layer through
//!   [`runner::Runner`].
//! - [`store`]: the redb file: tables, the record codec, one module per entity (build
//!   versions in `store::builds`), and the one
//!   writer thread that commits writes in groups; the reopenable file behind it, which survives
//!   a full disk (`store::disk`); format versions and migrations (`store::migrate`); snapshots
//!   for online backups (`store::backup`); pruning (`store::retention`); re-sealing for key
//!   rotation (`store::reseal`); and the offline `forge check` / `forge compact`
//!   (`store::check`, `store::compact`).
//! - [`retention`]: the background loop pruning old tasks, output and events.
//! - [`scheduler`]: the loop firing schedules, exactly once per occurrence (it sits beside the
//!   server: it uses the services and queues on the runner); [`cron`]: when they fire (cron
//!   expressions and time zones).
//! - [`notify`]: task alerts (Slack, Teams, Telegram, webhook, email) drained from the
//!   durable outbox the task writer fills (`store::outbox`), with retries and a give-up bound.
//! - [`metrics`]: Prometheus counters and histograms (atomics each layer keeps where the
//!   work happens) and the scrape that reads them all (`metrics::scrape`).
//! - [`sandbox`]: the task sandbox (Landlock through the `forge sandbox-exec` wrapper, the task
//!   user, allowed local-path repositories).
//! - [`model`]: the plain stored types. [`clock`]: injectable time, and `now_us` for output
//!   time stamps.
//!
//! Dependencies point one way: `http → runner → service → store → model` (the runner uses
//! the services' error type and path rule; the services never reach the runner).
#![forbid(unsafe_code)]
#![warn(clippy::pedantic, missing_docs)]
// Linear step sequences (a task run, a body's field rules) read best whole.
#![allow(clippy::too_many_lines)]

pub mod agent;
pub mod app;
pub mod backup;
pub mod clock;
pub mod config;
pub mod cron;
pub mod http;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod retention;
pub mod runner;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;

pub use app::App;
pub use config::Config;
pub use server::serve;

/// `<version>-<short commit>-<unix build time>`, upstream's format for `/api/info`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "-",
    env!("FORGE_COMMIT"),
    "-",
    env!("FORGE_BUILD_TIME")
);
