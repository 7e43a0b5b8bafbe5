//! Client of the orchestrator's `/api/v1/db/*` API, and the one mapping from
//! what the orchestrator answered to what the service answers.
//!
//! The services hold no data of their own; every read and write goes through
//! here. One pooled client with timeouts (`crate::timing`), so a stuck
//! orchestrator turns into a 503 instead of a request that hangs.
//!
//! Invariant: an orchestrator status becomes a [`DbError`] through
//! `wire::contract::ErrorKind` and a [`DbError`] becomes the service's status
//! in [`DbError::status`], nowhere else.

use std::sync::Arc;
use std::time::Instant;

use serde::{de::DeserializeOwned, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;
use wire::contract::ErrorKind;
use wire::{ErrorBody, ReadRequest, Row, WriteOutcome, WriteRequest};

use crate::metrics::{self, ServiceMetrics};
use crate::{config, http, timing};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The orchestrator found the request malformed (a bug of this service,
    /// or a client value too big to pass on).
    #[error("refused by the database: {0}")]
    Refused(String),
    /// The orchestrator refused this service's `ADMIN_TOKEN`: an operator's
    /// misconfiguration, reported as what it is.
    #[error("the orchestrator refused this service's ADMIN_TOKEN: {0}")]
    Unauthorized(String),
    /// A constraint said no (duplicate key, unknown foreign key).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database failed: {0}")]
    Failed(String),
}

impl DbError {
    /// The error for an orchestrator answer of `status` saying `msg`.
    pub fn from_status(status: StatusCode, msg: String) -> DbError {
        match ErrorKind::from_status(status.as_u16()) {
            // Too big for the orchestrator is too big, i.e. a bad request.
            ErrorKind::Invalid | ErrorKind::TooLarge => DbError::Refused(msg),
            ErrorKind::Unauthorized => DbError::Unauthorized(msg),
            ErrorKind::Conflict => DbError::Conflict(msg),
            ErrorKind::Unavailable => DbError::Unavailable(msg),
            ErrorKind::Failed => DbError::Failed(format!("{status}: {msg}")),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            DbError::Refused(_) => ErrorKind::Invalid,
            DbError::Unauthorized(_) => ErrorKind::Unauthorized,
            DbError::Conflict(_) => ErrorKind::Conflict,
            DbError::Unavailable(_) => ErrorKind::Unavailable,
            DbError::Failed(_) => ErrorKind::Failed,
        }
    }

    /// What the service answers when it cannot do better than pass the error
    /// on: the contract's status for the kind, except that a broken peer is a
    /// 502 at a service (the orchestrator, not the service, failed).
    pub fn status(&self) -> StatusCode {
        let code = match self.kind() {
            ErrorKind::Failed => 502,
            kind => kind.status(),
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    /// One log line for what an operator must see (a refused token, a broken
    /// or missing orchestrator); client mistakes are the client's.
    pub fn log(&self) {
        match self.kind() {
            ErrorKind::Unauthorized => {
                tracing::error!("{self} (the service's ADMIN_TOKEN must match the orchestrator's)")
            }
            ErrorKind::Failed => tracing::error!("database call failed: {self}"),
            ErrorKind::Unavailable => tracing::warn!("database call failed: {self}"),
            ErrorKind::Invalid | ErrorKind::TooLarge | ErrorKind::Conflict => {
                tracing::debug!("database call refused: {self}")
            }
        }
    }

    /// Logged, then answered with its status and a JSON error body.
    pub fn into_response(self) -> Response {
        self.log();
        http::error(self.status(), self.to_string())
    }
}

pub struct OrchestratorClient {
    http: reqwest::Client,
    base: String,
    /// The orchestrator's operator token (`ADMIN_TOKEN`), which `db/clear` needs when it is set.
    admin_token: Option<String>,
    /// Where each call is counted (`rideshare_db_calls_total`), when set.
    metrics: Option<Arc<ServiceMetrics>>,
}

impl OrchestratorClient {
    pub fn new(args: &config::OrchestratorArgs) -> anyhow::Result<OrchestratorClient> {
        Self::with_base(&config::base(&args.orchestrator_url), args.admin_token.clone())
    }

    pub fn with_base(base: &str, admin_token: Option<String>) -> anyhow::Result<OrchestratorClient> {
        let http = reqwest::Client::builder()
            .timeout(timing::CLIENT_TIMEOUT)
            .connect_timeout(timing::CONNECT_TIMEOUT)
            .build()?;
        Ok(OrchestratorClient { http, base: base.trim_end_matches('/').to_owned(), admin_token, metrics: None })
    }

    /// Count every call, its outcome and duration, in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ServiceMetrics>) -> OrchestratorClient {
        self.metrics = Some(metrics);
        self
    }

    /// Where this client sends its calls (for the start-up log line).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn read(&self, req: &ReadRequest) -> Result<Vec<Row>, DbError> {
        self.read_as(req).await
    }

    /// A read whose rows are decoded straight into `T` (a struct with the
    /// read's columns as fields): no map per row on a long listing.
    pub async fn read_as<T: DeserializeOwned>(&self, req: &ReadRequest) -> Result<Vec<T>, DbError> {
        #[derive(serde::Deserialize)]
        struct Rows<T> {
            rows: Vec<T>,
        }
        let r: Rows<T> = self.post("/api/v1/db/read", req).await?;
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
        let started = Instant::now();
        let r = self.call(path, body).await;
        if let Some(m) = &self.metrics {
            m.db_call(metrics::outcome(r.as_ref().map(|_| ())), started.elapsed());
        }
        r
    }

    async fn call<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R, DbError> {
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
        Err(DbError::from_status(status, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::task::JoinSet;
    use warp::Filter;

    /// A fake orchestrator with one kind of answer per path, and a
    /// `db/clear` whose answer depends on the bearer token it is given. The
    /// server task belongs to the returned set: it ends with the test.
    async fn fake() -> (String, JoinSet<()>) {
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
        let big = warp::path!("api" / "v1" / "too-big").map(|| {
            warp::reply::with_status(warp::reply::json(&ErrorBody::new("too large")), StatusCode::PAYLOAD_TOO_LARGE)
        });
        let boom = warp::any().map(|| warp::reply::with_status("plain text", StatusCode::INTERNAL_SERVER_ERROR));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = JoinSet::new();
        server.spawn(warp::serve(write.or(read).or(clear).or(big).or(boom)).incoming(listener).run());
        (format!("http://{addr}/"), server)
    }

    #[tokio::test]
    async fn statuses_map_to_errors() {
        let (base, _server) = fake().await;
        let db = OrchestratorClient::with_base(&base, Some("s3cret".into())).unwrap();
        assert_eq!(db.count(&ReadRequest::table("rides").counting()).await.unwrap(), 3);
        db.clear().await.unwrap();
        let e = db.write(&WriteRequest::delete("users", vec![])).await.unwrap_err();
        assert!(matches!(&e, DbError::Conflict(m) if m == "UNIQUE constraint failed"));
        assert_eq!(e.status(), StatusCode::CONFLICT);

        // A wrong ADMIN_TOKEN is the operator's mistake and says so: 401,
        // not a 400 that blames the client.
        let wrong = OrchestratorClient::with_base(&base, Some("nope".into())).unwrap();
        let e = wrong.clear().await.unwrap_err();
        assert!(matches!(&e, DbError::Unauthorized(m) if m == "bad token"), "{e:?}");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(e.to_string().contains("refused this service's ADMIN_TOKEN"), "{e}");

        let none = OrchestratorClient::with_base(&base, None).unwrap();
        let e = none.clear().await.unwrap_err();
        assert!(matches!(&e, DbError::Unavailable(m) if m == "no leader"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);

        let e = none.post::<_, serde_json::Value>("/api/v1/too-big", &()).await.unwrap_err();
        assert!(matches!(&e, DbError::Refused(m) if m == "too large"), "{e:?}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let e = none.post::<_, serde_json::Value>("/elsewhere", &()).await.unwrap_err();
        assert!(matches!(&e, DbError::Failed(m) if m == "500 Internal Server Error: plain text"), "{e:?}");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    /// Every kind a status can stand for, and the status the service gives it.
    #[test]
    fn one_table_from_orchestrator_status_to_service_status() {
        for (orchestrator, service) in [
            (400, 400),
            (404, 400),
            (413, 400),
            (401, 401),
            (403, 401),
            (409, 409),
            (503, 503),
            (504, 503),
            (500, 502),
            (502, 502),
            (418, 502),
        ] {
            let e = DbError::from_status(StatusCode::from_u16(orchestrator).unwrap(), "m".into());
            assert_eq!(e.status().as_u16(), service, "orchestrator {orchestrator}: {e:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_is_unavailable() {
        let db = OrchestratorClient::with_base("http://127.0.0.1:9", None).unwrap();
        let e = db.clear().await.unwrap_err();
        assert!(matches!(e, DbError::Unavailable(_)), "{e:?}");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
