//! Process setup and shutdown, the same for every service so the stack
//! scripts can treat them alike: one stop token, cancelled on SIGTERM or
//! Ctrl-C, and a server that stops taking connections when it is cancelled.
//!
//! Invariant: after the token is cancelled, requests in flight get up to
//! `timing::SHUTDOWN_GRACE` to finish; then the process goes, saying so.

use std::net::SocketAddr;

use anyhow::Context;
use tasks::CancellationToken;
use tokio::net::TcpListener;
use warp::reply::Response;
use warp::Filter;

use crate::config::OrchestratorArgs;
use crate::metrics::ServiceMetrics;
use crate::orchestrator_client::OrchestratorClient;
use crate::timing;

/// A service's `main`: its settings `S` read before any thread starts (the
/// loader normalises the environment it reads), then `run(settings)` on a
/// multi-threaded runtime.
pub fn main<S, F, Fut>(run: F) -> anyhow::Result<()>
where
    S: clap::Parser,
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let settings: S = tasks::config::load();
    tokio::runtime::Runtime::new()?.block_on(run(settings))
}

/// What every service sets up before its own parts: logs, the stop token
/// (SIGTERM and Ctrl-C reach it from here on), its metrics, and its client of
/// the orchestrator.
pub struct Service {
    pub name: &'static str,
    pub stop: CancellationToken,
    pub metrics: std::sync::Arc<ServiceMetrics>,
    orchestrator: String,
}

impl Service {
    /// The service and its client of the orchestrator.
    pub fn start(name: &'static str, orchestrator: &OrchestratorArgs) -> anyhow::Result<(Service, OrchestratorClient)> {
        tasks::init_tracing("info");
        let stop = CancellationToken::new();
        // The signal task ends with the token; nothing to watch.
        drop(tasks::cancel_on_signal(stop.clone()));
        let metrics = ServiceMetrics::new(name);
        let db = OrchestratorClient::new(orchestrator)?.with_metrics(metrics.clone());
        Ok((Service { name, stop, metrics, orchestrator: db.bases() }, db))
    }

    /// Listen on `addr`, say so (with `detail`), and serve `routes` (the
    /// service's own, instrumented here) until stopped.
    pub async fn serve<F>(self, addr: SocketAddr, routes: F, detail: &str) -> anyhow::Result<()>
    where
        F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
    {
        let listener = listen(addr).await?;
        let name = self.name;
        tracing::info!(addr = %listener.local_addr()?, orchestrator = %self.orchestrator, "{name} listening{detail}");
        let routes = crate::metrics::instrument(self.metrics, routes);
        serve(name, listener, routes, self.stop).await;
        Ok(())
    }
}

pub async fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    tasks::net::listen(addr).with_context(|| format!("cannot listen on {addr}"))
}

/// Serves until `stop` is cancelled, letting requests in flight finish. The
/// caller hands SIGTERM and Ctrl-C to `stop` (`tasks::cancel_on_signal`)
/// before it says it listens, so a stop sent right after that line is never
/// lost.
///
/// Stopping goes in two steps: for `timing::LAME_DUCK` every answer says
/// `Connection: close` (new connections are still taken), so the kept-alive
/// connections a load balancer uses are closed after an answer; then no new
/// connections, the idle ones closed, and requests in flight get
/// `timing::SHUTDOWN_GRACE` to finish.
pub async fn serve<F>(name: &str, listener: TcpListener, routes: F, stop: CancellationToken)
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    let closing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let routes = {
        let closing = closing.clone();
        routes.map(move |mut r: Response| {
            if closing.load(std::sync::atomic::Ordering::Relaxed) {
                r.headers_mut().insert(warp::http::header::CONNECTION, warp::http::HeaderValue::from_static("close"));
            }
            r
        })
    };
    let closed = CancellationToken::new();
    let server = warp::serve(routes).incoming(listener).graceful(closed.clone().cancelled_owned()).run();
    let mut server = std::pin::pin!(server);
    tokio::select! {
        () = &mut server => tracing::error!("{name}: the server ended by itself"),
        () = stop.cancelled() => {
            tracing::info!(
                lame_duck_ms = timing::LAME_DUCK.as_millis() as u64,
                "{name} stopping: answers close their connections, then no new connections; requests in flight finish"
            );
            closing.store(true, std::sync::atomic::Ordering::Relaxed);
            let ended = tokio::select! {
                () = &mut server => true,
                () = tokio::time::sleep(timing::LAME_DUCK) => false,
            };
            closed.cancel();
            if !ended && tokio::time::timeout(timing::SHUTDOWN_GRACE, &mut server).await.is_err() {
                tracing::warn!(
                    "{name}: requests still in flight after {} s; stopping anyway",
                    timing::SHUTDOWN_GRACE.as_secs()
                );
            }
        }
    }
    tracing::info!("{name} stopped");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::task::JoinSet;
    use warp::reply::Reply;

    use super::*;

    /// Cancelling the token lets the request in flight finish, takes no new
    /// connection, and then `serve` returns.
    #[tokio::test]
    async fn a_request_in_flight_finishes_then_it_stops() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let started_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(started_tx)));
        let slow = crate::http::routes(std::sync::Arc::new(()), move |_, _| {
            let started = started_tx.lock().unwrap().take();
            async move {
                if let Some(tx) = started {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                warp::reply::json(&"done").into_response()
            }
        });
        let listener = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(serve("test", listener, slow, stop.clone()));
        let client = reqwest::Client::new();
        let in_flight = client.get(&url).send();
        let in_flight = tokio::spawn(in_flight);
        tokio::time::timeout(Duration::from_secs(5), started_rx).await.unwrap().unwrap();
        stop.cancel();
        let answer = tokio::time::timeout(Duration::from_secs(5), in_flight).await.unwrap().unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "\"done\"");
        tokio::time::timeout(Duration::from_secs(5), tasks.join_next()).await.unwrap().unwrap().unwrap();
        assert!(reqwest::Client::new().get(&url).send().await.is_err(), "no new connection after stopping");
    }

    /// Stopping, the service first answers on (new connections too), each
    /// answer closing its connection; then it stops.
    #[tokio::test]
    async fn while_stopping_answers_close_their_connections() {
        let ok =
            crate::http::routes(std::sync::Arc::new(()), |_, _| async { warp::reply::json(&"ok").into_response() });
        let listener = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(serve("test", listener, ok, stop.clone()));
        let client = reqwest::Client::new();
        let before = client.get(&url).send().await.unwrap();
        assert!(before.headers().get("connection").is_none(), "kept alive while serving");
        stop.cancel();
        let started = std::time::Instant::now();
        let closing = loop {
            let r = reqwest::Client::new().get(&url).send().await.expect("new connections taken while stopping");
            if r.headers().get("connection").is_some_and(|v| v == "close") {
                break r;
            }
            assert!(started.elapsed() < timing::LAME_DUCK, "no answer said Connection: close");
        };
        assert_eq!(closing.status(), 200);
        tokio::time::timeout(timing::LAME_DUCK + Duration::from_secs(5), tasks.join_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(reqwest::Client::new().get(&url).send().await.is_err(), "no new connection after stopping");
    }
}
