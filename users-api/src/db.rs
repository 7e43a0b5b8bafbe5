//! Client of the orchestrator's `/api/v1/db/*` API.
//!
//! The service holds no data of its own; every read and write goes through
//! here. One pooled client with timeouts, so a stuck orchestrator turns into a
//! 503 instead of a request that hangs.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use warp::http::StatusCode;
use wire::{ErrorBody, ReadRequest, ReadResponse, Row, WriteOutcome, WriteRequest};

/// Long enough for a write sent during a master failover to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A constraint said no (duplicate key, unknown foreign key).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("refused by the database: {0}")]
    Invalid(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database failed: {0}")]
    Failed(String),
}

impl DbError {
    /// What the service answers when it cannot do better than pass the error on.
    pub fn status(&self) -> StatusCode {
        match self {
            DbError::Conflict(_) => StatusCode::CONFLICT,
            DbError::Invalid(_) => StatusCode::BAD_REQUEST,
            DbError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            DbError::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

pub struct Db {
    http: reqwest::Client,
    base: String,
    /// The orchestrator's operator token (`ADMIN_TOKEN`), which `db/clear` needs when it is set.
    admin_token: Option<String>,
}

impl Db {
    pub fn new(base: &str, admin_token: Option<String>) -> anyhow::Result<Db> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Db {
            http,
            base: base.trim_end_matches('/').to_owned(),
            admin_token,
        })
    }

    pub async fn read(&self, req: &ReadRequest) -> Result<Vec<Row>, DbError> {
        let r: ReadResponse = self.post("/api/v1/db/read", req).await?;
        Ok(r.rows)
    }

    pub async fn write(&self, req: &WriteRequest) -> Result<WriteOutcome, DbError> {
        self.post("/api/v1/db/write", req).await
    }

    pub async fn clear(&self) -> Result<(), DbError> {
        let _: serde_json::Value = self
            .post("/api/v1/db/clear", &serde_json::json!({}))
            .await?;
        Ok(())
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, DbError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.post(&url).json(body);
        if let Some(t) = &self.admin_token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| DbError::Unavailable(format!("orchestrator unreachable: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DbError::Unavailable(format!("orchestrator answer cut off: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                DbError::Failed(format!("orchestrator answered unreadable JSON: {e}"))
            });
        }
        let msg = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
            });
        Err(match status.as_u16() {
            409 => DbError::Conflict(msg),
            400..=499 => DbError::Invalid(msg),
            503 | 504 => DbError::Unavailable(msg),
            _ => DbError::Failed(format!("{status}: {msg}")),
        })
    }
}
