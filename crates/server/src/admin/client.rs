//! `RemoteAdmin`: the admin operations of a running server, over its admin
//! HTTP API (`--server URL --admin-key KEY`). Safe while the server runs.

use std::io::{Read, Write};

use async_trait::async_trait;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

use weft_storage::DocName;
use weft_sync::history::{HistoryPage, HistoryQuery};

use super::{
    AdminError, Backend, BackupSummary, ChangeView, DocDetail, DocSummary, Progress, RevertView,
    SnapshotView, VerifyReport,
};

#[derive(Debug, Clone)]
pub struct RemoteAdmin {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl RemoteAdmin {
    pub fn new(server: &str, admin_key: &str) -> Result<Self, AdminError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| AdminError::Failed(format!("could not set up HTTP: {e}")))?;
        Ok(RemoteAdmin {
            http,
            base: format!("{}/admin", server.trim_end_matches('/')),
            key: admin_key.to_owned(),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response, AdminError> {
        let resp = req.send().await.map_err(|e| {
            AdminError::Unavailable(format!(
                "could not reach the server at {}: {e}",
                self.base.trim_end_matches("/admin")
            ))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let message = body["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the server answered {status}"));
        Err(match status {
            StatusCode::NOT_FOUND => AdminError::NotFound(message),
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT | StatusCode::PAYLOAD_TOO_LARGE => {
                AdminError::BadRequest(message)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                AdminError::Unauthorized(format!("{message} (check --admin-key)"))
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                AdminError::Unavailable(message)
            }
            _ => AdminError::Failed(message),
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, AdminError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| AdminError::Failed(format!("the server's answer did not parse: {e}")))
    }

    async fn bytes(&self, req: RequestBuilder) -> Result<Vec<u8>, AdminError> {
        let resp = self.send(req).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| AdminError::Failed(format!("reading the answer failed: {e}")))
    }
}

#[async_trait]
impl Backend for RemoteAdmin {
    async fn list_docs(&self) -> Result<Vec<DocSummary>, AdminError> {
        self.json(self.request(Method::GET, "/docs")).await
    }

    async fn show_doc(&self, doc: &DocName) -> Result<DocDetail, AdminError> {
        self.json(self.request(Method::GET, &format!("/docs/{doc}")))
            .await
    }

    async fn delete_doc(&self, doc: &DocName) -> Result<(), AdminError> {
        self.send(self.request(Method::DELETE, &format!("/docs/{doc}")))
            .await
            .map(drop)
    }

    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotView>, AdminError> {
        self.json(self.request(Method::GET, &format!("/docs/{doc}/snapshots")))
            .await
    }

    async fn create_snapshot(&self, doc: &DocName) -> Result<SnapshotView, AdminError> {
        self.json(self.request(Method::POST, &format!("/docs/{doc}/snapshots")))
            .await
    }

    async fn state(&self, doc: &DocName, snapshot: Option<u64>) -> Result<Vec<u8>, AdminError> {
        let path = match snapshot {
            Some(id) => format!("/docs/{doc}/snapshots/{id}"),
            None => format!("/docs/{doc}/state"),
        };
        self.bytes(self.request(Method::GET, &path)).await
    }

    async fn restore(&self, doc: &DocName, snapshot: u64) -> Result<ChangeView, AdminError> {
        let req = self
            .request(Method::POST, &format!("/docs/{doc}/restore"))
            .json(&json!({ "snapshot": snapshot }));
        self.json(req).await
    }

    async fn state_at(&self, doc: &DocName, at: &str) -> Result<Vec<u8>, AdminError> {
        let req = self
            .request(Method::GET, &format!("/docs/{doc}/state"))
            .query(&[("at", at)]);
        self.bytes(req).await
    }

    async fn restore_at(&self, doc: &DocName, at: &str) -> Result<ChangeView, AdminError> {
        let req = self
            .request(Method::POST, &format!("/docs/{doc}/restore"))
            .json(&json!({ "at": at }));
        self.json(req).await
    }

    async fn revert(
        &self,
        doc: &DocName,
        author: &str,
        since: &str,
    ) -> Result<RevertView, AdminError> {
        let req = self
            .request(Method::POST, &format!("/docs/{doc}/revert"))
            .json(&json!({ "author": author, "since": since }));
        self.json(req).await
    }

    async fn import(&self, doc: &DocName, update: Vec<u8>) -> Result<ChangeView, AdminError> {
        let req = self
            .request(Method::POST, &format!("/docs/{doc}/import"))
            .body(update);
        self.json(req).await
    }

    async fn backup(
        &self,
        out: &mut (dyn Write + Send),
        progress: &dyn Progress,
    ) -> Result<BackupSummary, AdminError> {
        let resp = self.send(self.request(Method::GET, "/backup")).await?;
        progress.start(None, "bytes");
        let mut stream = resp.bytes_stream();
        let mut bytes = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| AdminError::Failed(format!("the backup download failed: {e}")))?;
            out.write_all(&chunk)
                .map_err(|e| AdminError::Failed(format!("writing the backup failed: {e}")))?;
            bytes += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
        }
        out.flush()
            .map_err(|e| AdminError::Failed(format!("writing the backup failed: {e}")))?;
        progress.finish();
        // The server streams documents without announcing a count; the CLI
        // reads the file back to check it and count them.
        Ok(BackupSummary {
            documents: 0,
            bytes,
        })
    }

    async fn restore_backup(
        &self,
        input: &mut (dyn Read + Send),
        progress: &dyn Progress,
    ) -> Result<BackupSummary, AdminError> {
        let mut body = Vec::new();
        input
            .read_to_end(&mut body)
            .map_err(|e| AdminError::Failed(format!("reading the backup failed: {e}")))?;
        progress.start(None, "uploading");
        let summary = self
            .json(self.request(Method::POST, "/backup").body(body))
            .await;
        progress.finish();
        summary
    }

    async fn verify(&self) -> Result<VerifyReport, AdminError> {
        self.json(self.request(Method::GET, "/verify")).await
    }

    async fn history(
        &self,
        doc: &DocName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, AdminError> {
        let path = format!("/docs/{doc}/history");
        self.json(self.request(Method::GET, &path).query(query))
            .await
    }
}
