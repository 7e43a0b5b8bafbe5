//! Client of the orchestrator's `/api/v1/db/*` API.
//!
//! The services hold no data of their own; every read and write goes through
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
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).connect_timeout(CONNECT_TIMEOUT).build()?;
        Ok(Db { http, base: base.trim_end_matches('/').to_owned(), admin_token })
    }

    pub async fn read(&self, req: &ReadRequest) -> Result<Vec<Row>, DbError> {
        let r: ReadResponse = self.post("/api/v1/db/read", req).await?;
        Ok(r.rows)
    }

    pub async fn write(&self, req: &WriteRequest) -> Result<WriteOutcome, DbError> {
        self.post("/api/v1/db/write", req).await
    }

    /// The number in a `counting()` read's single row.
    pub async fn count(&self, req: &ReadRequest) -> Result<u64, DbError> {
        let rows = self.read(req).await?;
        rows.first()
            .and_then(|r| r.get("count"))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| DbError::Failed("count read without a count".into()))
    }

    pub async fn clear(&self) -> Result<(), DbError> {
        let _: serde_json::Value = self.post("/api/v1/db/clear", &serde_json::json!({})).await?;
        Ok(())
    }

    async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R, DbError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.post(&url).json(body);
        if let Some(t) = &self.admin_token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| DbError::Unavailable(format!("orchestrator unreachable: {e}")))?;
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|e| DbError::Unavailable(format!("orchestrator answer cut off: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| DbError::Failed(format!("orchestrator answered unreadable JSON: {e}")));
        }
        let msg = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
        Err(match status.as_u16() {
            409 => DbError::Conflict(msg),
            400..=499 => DbError::Invalid(msg),
            503 | 504 => DbError::Unavailable(msg),
            _ => DbError::Failed(format!("{status}: {msg}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::Filter;

    /// A fake orchestrator with one kind of answer per path, and a
    /// `db/clear` whose answer depends on the bearer token it is given.
    async fn fake() -> String {
        let write = warp::path!("api" / "v1" / "db" / "write").map(|| {
            warp::reply::with_status(
                warp::reply::json(&ErrorBody::new("UNIQUE constraint failed")),
                StatusCode::CONFLICT,
            )
        });
        let read = warp::path!("api" / "v1" / "db" / "read")
            .map(|| warp::reply::json(&serde_json::json!({"rows": [{"count": 3}], "seq": 1})));
        let clear = warp::path!("api" / "v1" / "db" / "clear")
            .and(warp::header::optional::<String>("authorization"))
            .map(|auth: Option<String>| match auth.as_deref() {
                Some("Bearer s3cret") => {
                    warp::reply::with_status(warp::reply::json(&serde_json::json!({})), StatusCode::OK)
                }
                Some(_) => {
                    warp::reply::with_status(warp::reply::json(&ErrorBody::new("bad token")), StatusCode::UNAUTHORIZED)
                }
                None => warp::reply::with_status(
                    warp::reply::json(&ErrorBody::new("no leader")),
                    StatusCode::SERVICE_UNAVAILABLE,
                ),
            });
        let boom = warp::any().map(|| warp::reply::with_status("plain text", StatusCode::INTERNAL_SERVER_ERROR));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(write.or(read).or(clear).or(boom)).incoming(listener).run());
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn statuses_map_to_errors() {
        let base = fake().await;
        let db = Db::new(&base, Some("s3cret".into())).unwrap();
        assert_eq!(db.count(&ReadRequest::table("rides").counting()).await.unwrap(), 3);
        db.clear().await.unwrap();
        let e = db.write(&WriteRequest::delete("users", vec![])).await.unwrap_err();
        assert!(matches!(&e, DbError::Conflict(m) if m == "UNIQUE constraint failed"));
        assert_eq!(e.status(), StatusCode::CONFLICT);

        let wrong = Db::new(&base, Some("nope".into())).unwrap();
        let e = wrong.clear().await.unwrap_err();
        assert!(matches!(&e, DbError::Invalid(m) if m == "bad token"));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let none = Db::new(&base, None).unwrap();
        let e = none.clear().await.unwrap_err();
        assert!(matches!(&e, DbError::Unavailable(m) if m == "no leader"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);

        let e = none.post::<_, serde_json::Value>("/elsewhere", &()).await.unwrap_err();
        assert!(matches!(&e, DbError::Failed(m) if m == "500 Internal Server Error: plain text"), "{e:?}");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn unreachable_is_unavailable() {
        let db = Db::new("http://127.0.0.1:9", None).unwrap();
        let e = db.clear().await.unwrap_err();
        assert!(matches!(e, DbError::Unavailable(_)), "{e:?}");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
