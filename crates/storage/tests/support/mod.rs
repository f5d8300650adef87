//! Helpers shared by the storage crate's integration tests.

pub mod redis_server;
