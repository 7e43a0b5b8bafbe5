//! Client of the orchestrator's `/api/v1/db/*` API, and the one mapping from
//! what the orchestrator answered to what the service answers.
//!
//! The services hold no data of their own; every read and write goes through
//! here. One pooled client with timeouts (`crate::timing`), so a stuck
//! orchestrator turns into a 503 instead of a request that hangs.
//!
//! With several orchestrators (`ORCHESTRATOR_URL=a,b`), calls stick to one
//! that answers and move to the next when it is unreachable, times out or
//! answers 503 (`crate::failover` decides), each orchestrator tried at most
//! once per call and the whole call within `timing::CLIENT_TIMEOUT`.
//!
//! Invariant: an orchestrator status becomes a [`DbError`] through
//! `wire::contract::ErrorKind` and a [`DbError`] becomes the service's status
//! in [`DbError::status`], nowhere else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;
use wire::contract::ErrorKind;
use wire::{ErrorBody, ReadRequest, Row, WriteOutcome, WriteRequest};

use crate::failover::{self, Outcome};
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
    /// Every orchestrator's base URL, in the order configured (never empty).
    bases: Vec<String>,
    /// The index into `bases` that calls start with (`crate::failover::next`).
    current: AtomicUsize,
    /// The orchestrator's operator token (`ADMIN_TOKEN`), which `db/clear` needs when it is set.
    admin_token: Option<String>,
    /// Where each call is counted (`rideshare_db_calls_total`), when set.
    metrics: Option<Arc<ServiceMetrics>>,
}

impl OrchestratorClient {
    pub fn new(args: &config::OrchestratorArgs) -> anyhow::Result<OrchestratorClient> {
        Self::with_bases(args.orchestrator_url.bases(), args.admin_token.clone())
    }

    /// A client of one orchestrator.
    pub fn with_base(base: &str, admin_token: Option<String>) -> anyhow::Result<OrchestratorClient> {
        Self::with_bases(vec![base.to_owned()], admin_token)
    }

    /// A client of several orchestrators, tried in this order.
    pub fn with_bases(bases: Vec<String>, admin_token: Option<String>) -> anyhow::Result<OrchestratorClient> {
        anyhow::ensure!(!bases.is_empty(), "no orchestrator URL");
        let http = reqwest::Client::builder()
            .timeout(timing::CLIENT_TIMEOUT)
            .connect_timeout(timing::CONNECT_TIMEOUT)
            .build()?;
        let bases = bases.iter().map(|b| b.trim_end_matches('/').to_owned()).collect();
        Ok(OrchestratorClient { http, bases, current: AtomicUsize::new(0), admin_token, metrics: None })
    }

    /// Count every call, its outcome and duration, in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ServiceMetrics>) -> OrchestratorClient {
        self.metrics = Some(metrics);
        self
    }

    /// Whether a caller with this `Authorization` header may empty the
    /// database through this service: always without `ADMIN_TOKEN` (the
    /// contract's open clear), else only with the token itself. The service
    /// clears with its own token, so it must check the caller's first.
    pub fn authorizes(&self, authorization: Option<&str>) -> bool {
        match &self.admin_token {
            None => true,
            Some(t) => wire::contract::bearer_matches(authorization, t),
        }
    }

    /// Where this client sends its calls, comma-separated (for the start-up log line).
    pub fn bases(&self) -> String {
        self.bases.join(",")
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

    /// The request on the orchestrator in use, then on the next ones while
    /// `failover::retry` says so, within one `timing::CLIENT_TIMEOUT`.
    async fn call<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R, DbError> {
        let deadline = Instant::now() + timing::CLIENT_TIMEOUT;
        let count = self.bases.len();
        let mut at = self.current.load(Ordering::Relaxed) % count;
        let mut tried = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (result, outcome) = self.attempt(&self.bases[at], path, body, left).await;
            tried += 1;
            let next = failover::next(at, count, outcome);
            if next != at {
                self.move_on(at, next, outcome, &result);
            }
            let time_left = Instant::now() < deadline;
            if !failover::retry(tried, count, outcome, time_left) {
                return result;
            }
            at = next;
        }
    }

    /// Calls start at `next` from now on, unless another call moved already;
    /// the one that moves says so.
    fn move_on<R>(&self, from: usize, next: usize, outcome: Outcome, result: &Result<R, DbError>) {
        if self.current.compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let error = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
            tracing::warn!(
                from = %self.bases[from],
                to = %self.bases[next],
                %error,
                "orchestrator {}: moving to the next one",
                outcome.as_str()
            );
        }
    }

    /// One attempt on the orchestrator at `base`, given `left` of the call's time.
    async fn attempt<B: Serialize, R: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &B,
        left: Duration,
    ) -> (Result<R, DbError>, Outcome) {
        let url = format!("{base}{path}");
        let mut req = self.http.post(&url).json(body).timeout(left);
        if let Some(t) = &self.admin_token {
            req = req.bearer_auth(t);
        }
        let cut = |e: reqwest::Error, what: &str| {
            let outcome = if e.is_timeout() { Outcome::TimedOut } else { Outcome::Unreachable };
            (Err(DbError::Unavailable(format!("orchestrator {what}: {e}"))), outcome)
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return cut(e, "unreachable"),
        };
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return cut(e, "answer cut off"),
        };
        if status.is_success() {
            let r = serde_json::from_slice(&bytes)
                .map_err(|e| DbError::Failed(format!("orchestrator answered unreadable JSON: {e}")));
            return (r, Outcome::Answered);
        }
        let msg = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
        let outcome = if status == StatusCode::SERVICE_UNAVAILABLE { Outcome::Unavailable } else { Outcome::Answered };
        (Err(DbError::from_status(status, msg)), outcome)
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

    /// An orchestrator that answers every call 503 (no master, say).
    async fn unavailable() -> (String, JoinSet<()>) {
        let all = warp::any().map(|| {
            warp::reply::with_status(warp::reply::json(&ErrorBody::new("no master")), StatusCode::SERVICE_UNAVAILABLE)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = JoinSet::new();
        server.spawn(warp::serve(all).incoming(listener).run());
        (format!("http://{addr}"), server)
    }

    #[tokio::test]
    async fn moves_past_a_dead_orchestrator_and_stays_on_the_live_one() {
        let (live, _server) = fake().await;
        let db = OrchestratorClient::with_bases(vec!["http://127.0.0.1:9".into(), live], None).unwrap();
        assert_eq!(db.count(&ReadRequest::table("rides").counting()).await.unwrap(), 3);
        assert_eq!(db.current.load(Ordering::Relaxed), 1, "calls now start at the live one");
        // A write moves as well (it carries a request id), and an answer that
        // is an error of the orchestrator's meaning (409) is not moved past.
        let db = OrchestratorClient::with_bases(vec!["http://127.0.0.1:9".into(), db.bases[1].clone()], None).unwrap();
        let e = db.write(&WriteRequest::delete("users", vec![])).await.unwrap_err();
        assert!(matches!(e, DbError::Conflict(_)), "{e:?}");
        assert_eq!(db.current.load(Ordering::Relaxed), 1);
        assert!(matches!(db.write(&WriteRequest::delete("users", vec![])).await, Err(DbError::Conflict(_))));
        assert_eq!(db.current.load(Ordering::Relaxed), 1, "a 409 is an answer: no move");
    }

    #[tokio::test]
    async fn a_503_moves_to_the_next_and_all_503_is_503() {
        let (busy, _s1) = unavailable().await;
        let (live, _s2) = fake().await;
        let db = OrchestratorClient::with_bases(vec![busy.clone(), live], Some("s3cret".into())).unwrap();
        db.clear().await.unwrap();
        assert_eq!(db.current.load(Ordering::Relaxed), 1);

        let (busy2, _s3) = unavailable().await;
        let db = OrchestratorClient::with_bases(vec![busy, "http://127.0.0.1:9".into(), busy2], None).unwrap();
        let e = db.count(&ReadRequest::table("rides").counting()).await.unwrap_err();
        assert!(matches!(&e, DbError::Unavailable(m) if m == "no master"), "the last answer: {e:?}");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn unreachable_is_unavailable() {
        let db = OrchestratorClient::with_base("http://127.0.0.1:9", None).unwrap();
        let e = db.clear().await.unwrap_err();
        assert!(matches!(e, DbError::Unavailable(_)), "{e:?}");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
