//! The orchestrator's HTTP API (docs/api.md, the database API) on warp.
//!
//! Every error is a JSON `{"error": ...}` with a 4xx or 503 status: a bad
//! request never reaches a worker, and a missing worker never hangs a caller.
//!
//! What operators watch is open (read-only, no secrets): the page at `/`,
//! `GET /api/v1/status`, the live feed `GET /api/v1/events` (server-sent
//! events) and `GET /metrics`. Whatever changes something (crash, clear,
//! `db/write`'s `op: clear`, which empties every table as clear does,
//! maintenance) or lists pids for the crash routes needs the bearer token
//! when one is set.
//!
//! Several orchestrators may run: each serves the database API; the routes
//! about the workers (crash, worker/list, maintenance, status, events) are the leader's,
//! and another orchestrator answers them with a 307 to the leader (a 503
//! while no leader is known).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tasks::CancellationToken;
use tokio::sync::broadcast::error::RecvError;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};
use wire::{ErrorBody, WriteKind, WriteRequest};

use crate::autoscale::ReadCounter;
use crate::cluster::{AcceptedLoss, Cluster, Crashed, RecoverError, SwitchoverError};
use crate::dbapi::{DbApi, ValidRead};
use crate::error::ApiError;
use crate::leader::Role;
use crate::metrics::{outcome, route_template, SERVICE};
use crate::settings::SettingsError;
use crate::supervision::Supervision;
use crate::Telemetry;
use wire::contract::ErrorKind;

/// How often the live feed sends the status when nothing happens (lag and
/// the read count move without events).
pub const FEED_STATUS_EVERY: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("../assets/index.html");
const PAGE_JS: &str = include_str!("../assets/app.js");
const PAGE_CSS: &str = include_str!("../assets/style.css");

/// Largest request body accepted; structured requests are small.
const BODY_LIMIT: usize = 1024 * 1024;
/// Bodies up to this size are read to the end before a 413, so the client
/// sees the answer rather than a connection closed under its upload.
const BODY_DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

pub struct App {
    pub db: DbApi,
    pub sup: Arc<Supervision>,
    pub reads: Arc<ReadCounter>,
    pub tel: Arc<Telemetry>,
    pub admin_token: Option<String>,
    /// The live feeds open now, at most `EVENT_FEEDS_MAX`.
    pub feeds: FeedSlots,
    /// Ends the live feeds on shutdown (they would hold the server open).
    pub stop: CancellationToken,
}

impl App {
    /// Whether a caller with this `Authorization` header may use the operator
    /// routes (and empty the database): always without `ADMIN_TOKEN`, else
    /// only with the token (`wire::contract::bearer_matches`).
    fn authorized(&self, authorization: Option<&str>) -> bool {
        match &self.admin_token {
            None => true,
            Some(t) => wire::contract::bearer_matches(authorization, t),
        }
    }

    /// The cluster, when this orchestrator leads; else the answer that sends
    /// the caller of `path` to the leader.
    fn leading(&self, path: &warp::path::FullPath) -> Result<Arc<Cluster>, Box<warp::reply::Response>> {
        if let Some(c) = self.sup.cluster() {
            return Ok(c);
        }
        Err(Box::new(match self.sup.role() {
            Role::Follower(leader) => {
                let to = format!("{}{}", leader.url.trim_end_matches('/'), path.as_str());
                warp::reply::with_header(StatusCode::TEMPORARY_REDIRECT, "location", to).into_response()
            }
            Role::Leader => {
                error(StatusCode::SERVICE_UNAVAILABLE, "this orchestrator is taking over the workers; retry")
            }
            Role::Unknown => {
                error(StatusCode::SERVICE_UNAVAILABLE, "no orchestrator leads right now (zookeeper); retry")
            }
        }))
    }
}

/// The live feeds open at once, bounded: each holds a connection, a task and
/// an event receiver for as long as its client stays, so without a bound a
/// client opening feeds in a loop would hold the orchestrator's memory.
pub struct FeedSlots {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open feed's place; given back when the feed ends (its client left or
/// the orchestrator stops).
pub struct FeedSlot(Arc<AtomicUsize>);

impl FeedSlots {
    pub fn new(max: usize) -> FeedSlots {
        FeedSlots { open: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A place for one more feed, unless `max` are open.
    fn take(&self) -> Option<FeedSlot> {
        let max = self.max;
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(FeedSlot(self.open.clone()))
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer of `recover` and `restore`: what was done, a 409 when it was
/// refused as asked (nothing changed), a 503 when it failed on the way.
fn recovery_reply(r: Result<AcceptedLoss, RecoverError>) -> warp::reply::Response {
    match r {
        Ok(done) => json_reply(StatusCode::OK, &done),
        Err(e @ (RecoverError::NothingMissing | RecoverError::Mismatch { .. } | RecoverError::Refused(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ RecoverError::Failed(_)) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

/// An operator's POST to `route`: checks the token, then hands on the full
/// path (for a follower's redirect), the body and the app.
fn operator_post<R>(
    route: R,
    app: &Arc<App>,
) -> impl Filter<Extract = (warp::path::FullPath, Bytes, Arc<App>), Error = Rejection> + Clone
where
    R: Filter<Extract = (), Error = Rejection> + Clone,
{
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    route.and(warp::post()).and(admin(app.clone())).and(warp::path::full()).and(body()).and(with_app)
}

/// `POST /api/v1/rollout`'s body: the worker image (process runtime: the
/// worker binary's path) every worker is to run.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutRequest {
    worker_image: String,
}

/// Longest image name (or binary path) a rollout takes.
const IMAGE_MAX: usize = 512;

/// `POST /api/v1/switchover`'s body (optional): the worker to hand over to
/// (default: the lowest-pid caught-up slave).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverRequest {
    to: Option<String>,
}

/// The leader's cluster and the request's body, or the answer instead: the
/// redirect to the leader (or a 503 while none leads), a 400 for a bad body.
/// An empty body is `T::default()` where `T` has one.
fn leading_with<T: DeserializeOwned>(
    app: &App,
    path: &warp::path::FullPath,
    body: &Bytes,
    empty: Option<T>,
) -> Result<(Arc<Cluster>, T), Box<warp::reply::Response>> {
    let cluster = app.leading(path)?;
    let req = match empty {
        Some(default) if body.iter().all(u8::is_ascii_whitespace) => default,
        _ => parse(body).map_err(|e| Box::new(api_error(e)))?,
    };
    Ok((cluster, req))
}

/// `POST /api/v1/restore`'s body: how far (neither: as far as the backup reaches).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    to_seq: Option<u64>,
    to_time_ms: Option<u64>,
    /// Required when the cluster holds data: it is replaced.
    #[serde(default)]
    discard_current: bool,
}

/// `POST /api/v1/maintenance`'s body: pause or resume the supervisor's own actions.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceRequest {
    paused: bool,
    reason: Option<String>,
    /// Who asks (shown in the status and the event); default: the caller's address.
    by: Option<String>,
}

/// Longest `reason` and `by` of a maintenance request (they are shown, not parsed).
const MAINTENANCE_TEXT_MAX: usize = 500;

/// The header a crash call's answer carries while paused: the body (`[pid]`)
/// is the contract's, the header says what does not follow.
pub const MAINTENANCE_HEADER: &str = "rideshare-maintenance";

/// `POST /api/v1/config`'s body: settings to change by environment name
/// (`{"set": {"MAX_SLAVES": "4"}}`; `""` resets one to its start value).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigRequest {
    set: std::collections::BTreeMap<String, String>,
    /// Who asks (shown in the events); default: the caller's address.
    by: Option<String>,
}

/// The most settings one `POST /api/v1/config` changes, and the longest
/// name or value (the live settings are 13 short numbers and names).
const CONFIG_KEYS_MAX: usize = 32;
const CONFIG_TEXT_MAX: usize = 100;

/// Who asks, for the status and the events: the body's `by` (trimmed; blank
/// counts as absent), else the caller's address.
fn caller(by: Option<String>, remote: Option<std::net::SocketAddr>) -> String {
    by.map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| remote.map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string()))
}

/// `POST /api/v1/recover`'s body: the last write to keep, by name.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    accept_data_loss_after: u64,
}

fn json_reply<T: serde::Serialize>(status: StatusCode, body: &T) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn error(status: StatusCode, msg: impl Into<String>) -> warp::reply::Response {
    json_reply(status, &ErrorBody::new(msg))
}

fn api_error(e: ApiError) -> warp::reply::Response {
    e.into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("bad request body: {e}")))
}

/// Rejects with 401 unless the bearer token matches (when one is configured).
fn admin(app: Arc<App>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |auth: Option<String>| {
            let app = app.clone();
            async move {
                if app.authorized(auth.as_deref()) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthorized))
                }
            }
        })
        .untuple_one()
}

#[derive(Debug)]
struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

fn body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(BODY_DRAIN_LIMIT).and(warp::body::bytes()).and_then(|b: Bytes| async move {
        if b.len() > BODY_LIMIT {
            Err(warp::reject::custom(TooLarge))
        } else {
            Ok(b)
        }
    })
}

#[derive(Debug)]
struct TooLarge;
impl warp::reject::Reject for TooLarge {}

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };

    let read = warp::path!("api" / "v1" / "db" / "read").and(warp::post()).and(body()).and(with_app.clone()).then(
        |body: Bytes, app: Arc<App>| async move {
            let started = Instant::now();
            // Counted for the autoscaler only once it is a valid read
            // (docs/api.md §7): malformed ones are load of no one's.
            let r = match parse(&body).and_then(ValidRead::new) {
                Ok(req) => {
                    app.reads.count_read();
                    app.db.read(req).await
                }
                Err(e) => Err(e),
            };
            app.tel.metrics.db_read(r.as_ref().map_or_else(|e| outcome(e.kind), |_| "ok"), started.elapsed());
            match r {
                Ok(rows) => json_reply(StatusCode::OK, &rows),
                Err(e) => api_error(e),
            }
        },
    );

    // `op: clear` empties every table, as `db/clear` does: it needs the same
    // token, or the operator route would have an open back door.
    let write = warp::path!("api" / "v1" / "db" / "write")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(body())
        .and(with_app.clone())
        .then(|auth: Option<String>, body: Bytes, app: Arc<App>| async move {
            let started = Instant::now();
            let r = match parse::<WriteRequest>(&body) {
                Ok(req) if req.op == WriteKind::Clear && !app.authorized(auth.as_deref()) => {
                    tracing::warn!("db/write op clear refused: missing or wrong bearer token");
                    Err(ApiError::new(ErrorKind::Unauthorized, "op clear needs the operator's bearer token"))
                }
                Ok(req) => app.db.write(req).await,
                Err(e) => Err(e),
            };
            app.tel.metrics.db_write(r.as_ref().map_or_else(|e| outcome(e.kind), |_| "ok"), started.elapsed());
            match r {
                Ok(outcome) => json_reply(StatusCode::CREATED, &outcome),
                Err(e) => api_error(e),
            }
        });

    let clear = warp::path!("api" / "v1" / "db" / "clear")
        .and(warp::post())
        .and(admin(app.clone()))
        .and(with_app.clone())
        .then(|app: Arc<App>| async move {
            match app.db.clear().await {
                Ok(_) => json_reply(StatusCode::OK, &serde_json::json!({})),
                Err(e) => api_error(e),
            }
        });

    let crash_master = warp::path!("api" / "v1" / "crash" / "master")
        .and(warp::post())
        .and(admin(app.clone()))
        .and(warp::path::full())
        .and(with_app.clone())
        .then(|path, app: Arc<App>| async move {
            let cluster = match app.leading(&path) {
                Ok(c) => c,
                Err(elsewhere) => return *elsewhere,
            };
            app.tel.metrics.crash_request("master");
            let held = "paused: no failover or replacement follows until resume";
            pid_reply(cluster.crash_master().await, "no master to crash", held)
        });

    let crash_slave = warp::path!("api" / "v1" / "crash" / "slave")
        .and(warp::post())
        .and(admin(app.clone()))
        .and(warp::path::full())
        .and(with_app.clone())
        .then(|path, app: Arc<App>| async move {
            let cluster = match app.leading(&path) {
                Ok(c) => c,
                Err(elsewhere) => return *elsewhere,
            };
            app.tel.metrics.crash_request("slave");
            pid_reply(cluster.crash_slave().await, "no slave to crash", "paused: no replacement follows until resume")
        });

    let list = warp::path!("api" / "v1" / "worker" / "list")
        .and(warp::get())
        .and(admin(app.clone()))
        .and(warp::path::full())
        .and(with_app.clone())
        .then(|path, app: Arc<App>| async move {
            let cluster = match app.leading(&path) {
                Ok(c) => c,
                Err(elsewhere) => return *elsewhere,
            };
            match cluster.worker_pids().await {
                Ok(pids) => json_reply(StatusCode::OK, &pids),
                Err(e) => ApiError::unavailable(format!("{e:#}")).into_response(),
            }
        });

    // Maintenance mode (docs/api.md §6.1): recorded in ZooKeeper by the leader.
    let maintenance = operator_post(warp::path!("api" / "v1" / "maintenance"), &app).and(warp::addr::remote()).then(
        |path, body: Bytes, app: Arc<App>, remote: Option<std::net::SocketAddr>| async move {
            let (cluster, req): (_, MaintenanceRequest) = match leading_with(&app, &path, &body, None) {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            let text = |v: Option<String>| v.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
            let (reason, by) = (text(req.reason), text(req.by));
            if [&reason, &by].iter().any(|t| t.as_ref().is_some_and(|t| t.chars().count() > MAINTENANCE_TEXT_MAX)) {
                return api_error(ApiError::invalid(format!(
                    "reason and by take at most {MAINTENANCE_TEXT_MAX} characters"
                )));
            }
            match cluster.set_paused(req.paused, reason, caller(by, remote)).await {
                Ok(status) => json_reply(StatusCode::OK, &status),
                Err(e) => ApiError::unavailable(format!("{e:#}")).into_response(),
            }
        },
    );

    // While the data is missing: an operator accepts losing the writes past
    // the best copy's seq, naming it (0: start empty). Never automatic.
    let recover = operator_post(warp::path!("api" / "v1" / "recover"), &app).then(
        |path, body: Bytes, app: Arc<App>| async move {
            let (cluster, req): (_, RecoverRequest) = match leading_with(&app, &path, &body, None) {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            recovery_reply(cluster.accept_data_loss(req.accept_data_loss_after).await)
        },
    );

    // The continuous backup into the cluster (a fresh one, or in place with
    // discard_current): docs/api.md §8.1.
    let restore = operator_post(warp::path!("api" / "v1" / "restore"), &app).then(
        |path, body: Bytes, app: Arc<App>| async move {
            let (cluster, req): (_, RestoreRequest) = match leading_with(&app, &path, &body, None) {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            let target = match (req.to_seq, req.to_time_ms) {
                (Some(n), None) => format!("seq:{n}"),
                (None, Some(t)) => format!("time:{t}"),
                (None, None) => "latest".to_owned(),
                (Some(_), Some(_)) => return error(StatusCode::BAD_REQUEST, "give to_seq or to_time_ms, not both"),
            };
            recovery_reply(cluster.restore_cluster(&target, req.discard_current).await)
        },
    );

    // A planned switchover (docs/api.md §6.2): 409 when refused, 503 when
    // called off on the way (the old master takes writes again).
    let switchover = operator_post(warp::path!("api" / "v1" / "switchover"), &app).then(
        |path, body: Bytes, app: Arc<App>| async move {
            let (cluster, req): (_, SwitchoverRequest) =
                match leading_with(&app, &path, &body, Some(SwitchoverRequest::default())) {
                    Ok(r) => r,
                    Err(answer) => return *answer,
                };
            match cluster.switchover(req.to.as_deref()).await {
                Ok(done) => json_reply(StatusCode::OK, &done),
                Err(e @ SwitchoverError::Refused(_)) => error(StatusCode::CONFLICT, e.to_string()),
                Err(e @ SwitchoverError::Failed(_)) => ApiError::unavailable(e.to_string()).into_response(),
            }
        },
    );

    // A rolling upgrade of the workers (docs/api.md §6.3).
    let rollout = operator_post(warp::path!("api" / "v1" / "rollout"), &app).then(
        |path, body: Bytes, app: Arc<App>| async move {
            let (cluster, req): (_, RolloutRequest) = match leading_with(&app, &path, &body, None) {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            let image = req.worker_image.trim();
            if image.is_empty() || image.len() > IMAGE_MAX || image.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return api_error(ApiError::invalid(format!(
                    "worker_image: an image name or a binary path, 1-{IMAGE_MAX} characters, no spaces"
                )));
            }
            match cluster.rollout(image).await {
                Ok(done) => json_reply(StatusCode::OK, &done),
                Err(e @ SwitchoverError::Refused(_)) => error(StatusCode::CONFLICT, e.to_string()),
                Err(e @ SwitchoverError::Failed(_)) => ApiError::unavailable(e.to_string()).into_response(),
            }
        },
    );

    // Live settings (docs/api.md §6.4): the leader's view, and changes
    // recorded in ZooKeeper for every orchestrator.
    let config_show =
        warp::path!("api" / "v1" / "config").and(warp::get()).and(warp::path::full()).and(with_app.clone()).map(
            |path, app: Arc<App>| match app.leading(&path) {
                Ok(cluster) => json_reply(StatusCode::OK, &cluster.live().view()),
                Err(elsewhere) => *elsewhere,
            },
        );
    let config_set = operator_post(warp::path!("api" / "v1" / "config"), &app).and(warp::addr::remote()).then(
        |path, body: Bytes, app: Arc<App>, remote: Option<std::net::SocketAddr>| async move {
            let (cluster, req): (_, ConfigRequest) = match leading_with(&app, &path, &body, None) {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            let too_long = |t: &String| t.chars().count() > CONFIG_TEXT_MAX;
            if req.set.is_empty()
                || req.set.len() > CONFIG_KEYS_MAX
                || req.set.iter().any(|(k, v)| too_long(k) || too_long(v))
                || req.by.as_ref().is_some_and(too_long)
            {
                return api_error(ApiError::invalid(format!(
                    "set: 1-{CONFIG_KEYS_MAX} settings, names, values and by of at most {CONFIG_TEXT_MAX} characters"
                )));
            }
            match cluster.set_settings(&req.set, caller(req.by, remote)).await {
                Ok(view) => json_reply(StatusCode::OK, &view),
                Err(e @ SettingsError::Invalid(_)) => api_error(ApiError::invalid(e.to_string())),
                Err(e @ SettingsError::Conflict) => error(StatusCode::CONFLICT, e.to_string()),
                Err(e @ SettingsError::Unavailable(_)) => ApiError::unavailable(e.to_string()).into_response(),
            }
        },
    );

    let health = warp::path!("health").and(warp::get()).map(|| json_reply(StatusCode::OK, &serde_json::json!({})));

    let status =
        warp::path!("api" / "v1" / "status").and(warp::get()).and(warp::path::full()).and(with_app.clone()).map(
            |path, app: Arc<App>| match app.leading(&path) {
                Ok(cluster) => json_reply(StatusCode::OK, &cluster.status(&app.reads)),
                Err(elsewhere) => *elsewhere,
            },
        );

    let events =
        warp::path!("api" / "v1" / "events").and(warp::get()).and(warp::path::full()).and(with_app.clone()).map(
            |path, app: Arc<App>| {
                if let Err(elsewhere) = app.leading(&path) {
                    return *elsewhere;
                }
                let Some(slot) = app.feeds.take() else {
                    tracing::warn!(max = app.feeds.max, "live feed refused: EVENT_FEEDS_MAX open");
                    let msg = format!("{} live feeds already open (EVENT_FEEDS_MAX); retry later", app.feeds.max);
                    return ApiError::unavailable(msg).into_response();
                };
                let feed = live_feed(app, slot);
                warp::sse::reply(warp::sse::keep_alive().interval(Duration::from_secs(15)).stream(feed)).into_response()
            },
        );

    let metrics = warp::path!("metrics").and(warp::get()).and(with_app.clone()).map(|app: Arc<App>| {
        warp::reply::with_header(app.tel.metrics.encode(), "content-type", tasks::metrics::CONTENT_TYPE).into_response()
    });

    let page = warp::path::end().and(warp::get()).map(|| warp::reply::html(PAGE).into_response());
    let asset = |name: &'static str, body: &'static str, content_type: &'static str| {
        warp::path("assets")
            .and(warp::path(name))
            .and(warp::path::end())
            .and(warp::get())
            .map(move || warp::reply::with_header(body, "content-type", content_type).into_response())
    };
    let js = asset("app.js", PAGE_JS, "text/javascript; charset=utf-8");
    let css = asset("style.css", PAGE_CSS, "text/css; charset=utf-8");

    let tel = app.tel.clone();
    let count = warp::log::custom(move |info| {
        tel.metrics.http.observe(
            SERVICE,
            route_template(info.path()),
            info.method().as_str(),
            info.status().as_u16(),
            info.elapsed(),
        )
    });

    // Boxed in two groups: one chain of a dozen routes overflows the
    // compiler's type recursion limit in release builds.
    let database = read
        .or(write)
        .unify()
        .or(clear)
        .unify()
        .or(crash_master)
        .unify()
        .or(crash_slave)
        .unify()
        .or(list)
        .unify()
        .or(recover)
        .unify()
        .or(restore)
        .unify()
        .or(maintenance)
        .unify()
        .or(switchover)
        .unify()
        .or(rollout)
        .unify()
        .or(config_set)
        .unify()
        .or(health)
        .unify()
        .boxed();
    let watching = status
        .or(config_show)
        .unify()
        .or(events)
        .unify()
        .or(metrics)
        .unify()
        .or(page)
        .unify()
        .or(js)
        .unify()
        .or(css)
        .unify()
        .boxed();
    database.or(watching).unify().recover(rejection).unify().with(count)
}

/// The live feed of one subscriber: the status at once, then each event
/// (`event: event`) followed by the status it led to (`event: status`), and
/// the status every [`FEED_STATUS_EVERY`] in between. Ends on shutdown.
fn live_feed(
    app: Arc<App>,
    slot: FeedSlot,
) -> impl futures::Stream<Item = Result<warp::sse::Event, Infallible>> + Send + 'static {
    struct Feed {
        app: Arc<App>,
        /// Given back when the stream is dropped.
        _slot: FeedSlot,
        events: tokio::sync::broadcast::Receiver<wire::status::Event>,
        tick: tokio::time::Interval,
        ready: VecDeque<warp::sse::Event>,
    }
    /// Nothing once this orchestrator stopped leading (the feed then ends).
    fn status(app: &App) -> Option<warp::sse::Event> {
        let s = app.sup.cluster()?.status(&app.reads);
        Some(warp::sse::Event::default().event("status").json_data(&s).expect("status serializes"))
    }
    let events = app.tel.events.subscribe();
    let mut tick = tokio::time::interval(FEED_STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed { app, _slot: slot, events, tick, ready: VecDeque::new() };
    futures::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.ready.pop_front() {
                return Some((Ok(e), f));
            }
            tokio::select! {
                _ = f.app.stop.cancelled() => return None,
                _ = f.tick.tick() => f.ready.push_back(status(&f.app)?),
                e = f.events.recv() => match e {
                    Ok(e) => {
                        let sse = warp::sse::Event::default().event("event").id(e.id.to_string());
                        f.ready.push_back(sse.json_data(&e).expect("events serialize"));
                        f.ready.push_back(status(&f.app)?);
                    }
                    // Missed some: the status carries the latest events.
                    Err(RecvError::Lagged(_)) => f.ready.push_back(status(&f.app)?),
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    })
}

/// A crash call's answer: `[pid]`, with [`MAINTENANCE_HEADER`] saying `held`
/// when maintenance mode holds what would follow.
fn pid_reply(r: anyhow::Result<Option<Crashed>>, none: &str, held: &'static str) -> warp::reply::Response {
    match r {
        Ok(Some(Crashed { pid, held: false })) => json_reply(StatusCode::OK, &[pid]),
        Ok(Some(Crashed { pid, held: true })) => {
            warp::reply::with_header(json_reply(StatusCode::OK, &[pid]), MAINTENANCE_HEADER, held).into_response()
        }
        Ok(None) => ApiError::conflict(none).into_response(),
        Err(e) => ApiError::unavailable(format!("{e:#}")).into_response(),
    }
}

async fn rejection(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    Ok(if err.is_not_found() {
        error(StatusCode::NOT_FOUND, "no such route")
    } else if err.find::<Unauthorized>().is_some() {
        ApiError::new(ErrorKind::Unauthorized, "missing or wrong bearer token").into_response()
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() || err.find::<TooLarge>().is_some() {
        ApiError::new(ErrorKind::TooLarge, "request body too large").into_response()
    } else {
        ApiError::invalid(format!("bad request: {err:?}")).into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::FeedSlots;

    /// Issue 20: live feeds were unbounded. At most `max` are open; a feed
    /// that ends gives its place back.
    #[test]
    fn live_feeds_are_capped_and_give_their_place_back() {
        let slots = FeedSlots::new(2);
        let a = slots.take().expect("first");
        let b = slots.take().expect("second");
        assert!(slots.take().is_none(), "a third feed past the cap");
        drop(a);
        let c = slots.take().expect("a place given back");
        assert!(slots.take().is_none());
        drop((b, c));
        assert_eq!(slots.open.load(std::sync::atomic::Ordering::Acquire), 0);
    }
}
