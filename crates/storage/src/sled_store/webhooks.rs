//! The embedded store's webhook outbox: change notifications waiting to be
//! delivered, in the `webhooks` tree under ids sled hands out in order, so
//! each URL's queue is delivered oldest first and survives restarts.

use async_trait::async_trait;

use super::{io, suffix_u64, SledStore};
use crate::disk_guard::Op;
use crate::record::{self, WebhookRecord, SCHEMA_VERSION};
use crate::{StorageError, WebhookDelivery, WebhookOutbox};

#[async_trait]
impl WebhookOutbox for SledStore {
    async fn enqueue_webhooks(&self, deliveries: &[WebhookDelivery]) -> Result<(), StorageError> {
        let deliveries = deliveries.to_vec();
        self.run(Op::Write, "queueing webhooks", move |store| {
            let mut batch = sled::Batch::default();
            for delivery in deliveries {
                let id = store.db.generate_id().map_err(io("queueing webhooks"))?;
                let rec = WebhookRecord {
                    version: SCHEMA_VERSION,
                    delivery,
                };
                batch.insert(&id.to_be_bytes()[..], record::encode(&rec)?);
            }
            store
                .webhooks
                .apply_batch(batch)
                .map_err(io("queueing webhooks"))?;
            store.flush("flushing the webhook queue")?;
            Ok(())
        })
        .await
    }

    async fn webhook_queue(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<Vec<(u64, WebhookDelivery)>, StorageError> {
        let url = url.to_owned();
        self.run(Op::Read, "reading the webhook queue", move |store| {
            let mut out = Vec::new();
            for item in store.webhooks.iter() {
                let (k, v) = item.map_err(io("reading the webhook queue"))?;
                let id = suffix_u64(&k);
                let rec: WebhookRecord = record::decode(&format!("webhook {id}"), &v)?;
                if rec.delivery.url == url {
                    out.push((id, rec.delivery));
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ack_webhook(&self, id: u64) -> Result<(), StorageError> {
        self.run(Op::Write, "acknowledging a webhook", move |store| {
            store
                .webhooks
                .remove(&id.to_be_bytes()[..])
                .map_err(io("acknowledging a webhook"))?;
            store.flush("flushing the webhook queue")?;
            Ok(())
        })
        .await
    }
}
