//! weft-server: the network face of weft.
//!
//! `weft serve` opens the store, starts the document engine ([`weft_sync`])
//! and serves it over HTTP: WebSocket for editors, Server-Sent Events for
//! read-only viewers, an HTTP document API, and health for operators.
//! Handlers are thin: they validate, then hand over to a [`weft_sync::Session`].

mod accept;
mod access;
mod admin;
mod admin_key;
mod admin_throttle;
mod api_error;
mod app;
mod auth;
mod body;
mod cli;
mod close_code;
mod config_file;
mod creation_limit;
mod direct_io;
mod doc_path;
mod docs_api;
mod edits_api;
mod event_gzip;
mod history_api;
mod hocuspocus;
mod limits;
mod origin;
mod peer;
mod read_budget;
mod refusal;
mod secret;
mod serve;
mod serve_config;
mod shutdown;
mod slow_message;
mod sse;
mod store;
mod store_health;
mod stream_conn;
mod telemetry;
mod tls;
mod token_api;
mod web;
mod webhooks;
mod ws;
mod ws_upgrade;
mod ysweet_api;

pub use admin::commands::run as run_admin;
pub use cli::{Cli, Command};
pub use config_file::print as print_config;
pub use serve::serve;
