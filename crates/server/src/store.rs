//! The store the configuration chose, and what each part of the server is
//! given of it: the engine its documents and replication, the admin API
//! what it reads (and backup restores, which only the embedded store
//! takes), webhooks their outbox (only the embedded store has one), the
//! readiness check its write probe. A part that needs a role the chosen
//! store lacks gets `None`, and startup refuses the configuration.

use std::sync::Arc;

use weft_storage::{
    DocumentStore, EngineStore, RedisStore, SledStore, StorageError, WebhookOutbox,
};
use weft_sync::Rooms;

use crate::admin::ops::LocalAdmin;

/// Why `--webhook-url` and `--redis` do not go together.
pub(crate) const WEBHOOKS_NEED_EMBEDDED: &str =
    "webhooks need the embedded store: they are not available in cluster mode (--redis) yet; \
     drop --webhook-url, or run one node with --data-dir";

/// The store `weft serve` opened.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// The embedded sled store of `--data-dir`, written by this process only.
    Embedded(Arc<SledStore>),
    /// Redis, shared by every node of a cluster (`--redis`).
    Cluster(Arc<RedisStore>),
}

impl Store {
    /// What the document engine runs on.
    pub(crate) fn engine(&self) -> Arc<dyn EngineStore> {
        match self {
            Store::Embedded(store) => store.clone(),
            Store::Cluster(store) => store.clone(),
        }
    }

    /// The admin operations on this store, through `rooms`; backups are
    /// restored only into the embedded store.
    pub(crate) fn admin(&self, rooms: Rooms) -> LocalAdmin {
        match self {
            Store::Embedded(store) => {
                LocalAdmin::new(store.clone(), rooms).with_restore(store.clone())
            }
            Store::Cluster(store) => LocalAdmin::new(store.clone(), rooms),
        }
    }

    /// Where webhook deliveries wait, if this store keeps them.
    pub(crate) fn webhook_outbox(&self) -> Option<Arc<dyn WebhookOutbox>> {
        match self {
            Store::Embedded(store) => Some(store.clone()),
            Store::Cluster(_) => None,
        }
    }

    /// What the readiness check asks whether it takes writes.
    pub(crate) fn readiness(&self) -> Arc<dyn DocumentStore> {
        match self {
            Store::Embedded(store) => store.clone(),
            Store::Cluster(store) => store.clone(),
        }
    }

    /// Stops what the store runs in the background: in cluster mode, the
    /// node's subscription to other nodes and its log followers. Called
    /// once every room has ended.
    pub(crate) async fn shut_down(&self) {
        if let Store::Cluster(store) = self {
            store.shut_down().await;
        }
    }

    /// The embedded store, whose health is watched (it can fail and recover).
    pub(crate) fn embedded(&self) -> Option<&SledStore> {
        match self {
            Store::Embedded(store) => Some(store),
            Store::Cluster(_) => None,
        }
    }
}

/// A storage error as startup reports it. Its message already says what its
/// source said, so the source is left out of the report, which would print
/// it again after it.
pub(crate) fn reported(e: StorageError) -> anyhow::Error {
    anyhow::Error::msg(e.to_string())
}
