//! The archiver's HTTP API: `GET /health`, `GET /metrics`,
//! `GET /api/v1/backups` (the archive's summary), `POST /api/v1/backup` (a
//! base snapshot now; answers its seq).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::snap;
use crate::state::State;

pub struct App {
    pub archive: archive::Archive,
    pub state: Arc<State>,
    pub snapshots: mpsc::Sender<snap::Request>,
}

/// The answer of `POST /api/v1/backup`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct BackupTaken {
    pub seq: u64,
    pub epoch: u64,
    pub bytes: u64,
    pub sha256: String,
}

const ANSWER_WAIT: Duration = Duration::from_secs(60);
const BACKUP_WAIT: Duration = Duration::from_secs(600);

fn json<T: Serialize>(status: StatusCode, body: &T) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn error(status: StatusCode, msg: impl Into<String>) -> warp::reply::Response {
    json(status, &wire::ErrorBody::new(msg))
}

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_app = warp::any().map(move || app.clone());
    let health =
        warp::path!("health").and(warp::get()).map(|| json(StatusCode::OK, &serde_json::json!({"status": "ok"})));
    let metrics = warp::path!("metrics").and(warp::get()).and(with_app.clone()).map(|app: Arc<App>| {
        warp::reply::with_header(app.state.encode(), "content-type", tasks::metrics::CONTENT_TYPE).into_response()
    });
    let backups =
        warp::path!("api" / "v1" / "backups").and(warp::get()).and(with_app.clone()).then(|app: Arc<App>| async move {
            match tokio::time::timeout(ANSWER_WAIT, app.archive.summary()).await {
                Ok(Ok(s)) => json(StatusCode::OK, &s),
                Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the object store did not answer in time"),
            }
        });
    let backup =
        warp::path!("api" / "v1" / "backup").and(warp::post()).and(with_app).then(|app: Arc<App>| async move {
            let (tx, rx) = oneshot::channel();
            if app.snapshots.try_send(tx).is_err() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "a base snapshot is already being taken or asked for");
            }
            match tokio::time::timeout(BACKUP_WAIT, rx).await {
                Ok(Ok(Ok(m))) => json(
                    StatusCode::CREATED,
                    &BackupTaken { seq: m.seq, epoch: m.epoch, bytes: m.bytes, sha256: m.sha256 },
                ),
                Ok(Ok(Err(e))) => error(StatusCode::SERVICE_UNAVAILABLE, e),
                Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the snapshot task is not running"),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "no base snapshot within 10 minutes"),
            }
        });
    let other = warp::any().map(|| error(StatusCode::NOT_FOUND, "no such route"));
    health.or(metrics).unify().or(backups).unify().or(backup).unify().or(other).unify()
}
