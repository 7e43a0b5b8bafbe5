//! The database orchestrator: the HTTP front of the database (`http`,
//! `dbapi`, `read_floor`), the RPC client of the workers over RabbitMQ
//! (`rpc`), and, while it leads (`leader`, `supervision`), the worker
//! supervisor (`cluster`: runtime, ZooKeeper, failover; `autoscale`), and
//! what operators watch it through (`events`, `metrics`, `status`, the page
//! in `assets/` served by `http`). Several may run: all serve the data path,
//! one supervises.
//! Why it is built this way: DESIGN.md beside this crate.

pub mod autoscale;
pub mod cluster;
pub mod config;
pub mod dbapi;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod peers;
pub mod read_floor;
pub mod rpc;
pub mod runtime;
pub mod settings;
pub mod status;
pub mod supervision;
pub mod timing;
pub mod zk_session;

use std::sync::Arc;

use anyhow::{bail, Result};
use tasks::{CancellationToken, Supervisor, TaskEnd};
use tracing::{error, info};

/// What every part reports to: the event log and the metrics. One per
/// process, shared by the RPC client, the supervisor, the autoscaler and HTTP.
#[derive(Default)]
pub struct Telemetry {
    pub events: events::Events,
    pub metrics: metrics::Metrics,
}

/// Start everything and serve HTTP until `stop` is cancelled (then finish the
/// requests in flight, close the broker connection and return) or a
/// background task ends (then return its error: a restarted orchestrator
/// adopts the running workers, so leaving is safe, and a half-alive one that
/// no longer fails over or scales is not).
pub async fn run(cfg: config::Config, stop: CancellationToken) -> Result<()> {
    // The background tasks (the broker connection, the batchers, the
    // election, supervision) have a token of their own, cancelled only once
    // the HTTP server has finished the requests in flight: those wait on the
    // broker, and cancelling it first held them until the services' client
    // timed out (a rolling restart failed requests after 20 s).
    let mut tasks = Supervisor::new(CancellationToken::new());
    let tel = Arc::new(Telemetry::default());
    let nodes = wire::broker::Nodes::parse(&cfg.amqp_url).map_err(|e| anyhow::anyhow!("AMQP_URL: {e}"))?;
    let rpc = rpc::Rpc::new(nodes, cfg.amqp_queue_type, cfg.batching(), tel.clone());
    tasks.spawn("rabbitmq connection", |t| rpc.clone().maintain(t));
    tasks.spawn("read batches", |t| rpc.clone().read_batches(t));
    tasks.spawn("write batches", |t| rpc.clone().write_batches(t));
    let floor = read_floor::ReadFloor::new(cfg.read_floor);
    tasks.spawn("read index", |t| floor.clone().run(rpc.clone(), t));
    let live = settings::Live::new(cfg.clone(), rpc.clone());
    tasks.spawn("master epoch", |t| {
        supervision::follow_master_epoch(cfg.clone(), rpc.clone(), tel.clone(), floor.clone(), live.clone(), t)
    });

    // Every orchestrator serves the data path; the one elected in ZooKeeper
    // also supervises the workers.
    let me = wire::coord::LeaderRecord { instance: rpc.instance(), url: cfg.advertised_url() };
    let (role_tx, role_rx) = tokio::sync::watch::channel(leader::Role::Unknown);
    let (zk_addr, zk_root, session) = (cfg.zk_addr.clone(), cfg.zk_root.clone(), cfg.zk_session_timeout.0);
    tasks.spawn("leader election", |t| leader::run(zk_addr, zk_root, me.clone(), session, role_tx, t));
    let sup = supervision::Supervision::new(role_rx);
    let reads = Arc::new(autoscale::ReadCounter::default());
    let record = wire::coord::OrchestratorRecord { instance: me.instance.clone(), url: me.url.clone(), reads_total: 0 };
    let (zk_addr, zk_root, role) = (cfg.zk_addr.clone(), cfg.zk_root.clone(), sup.role_watch());
    tasks.spawn("orchestrator registry", |t| peers::run(zk_addr, zk_root, record, reads.clone(), role, session, t));
    tasks.spawn("supervision", |t| {
        supervision::run(sup.clone(), cfg.clone(), live.clone(), rpc.clone(), reads.clone(), tel.clone(), t)
    });

    let app = Arc::new(http::App {
        db: dbapi::DbApi::new(rpc, floor),
        sup,
        reads,
        tel,
        admin_token: cfg.admin_token.clone(),
        feeds: http::FeedSlots::new(cfg.event_feeds_max as usize),
        stop: stop.clone(),
    });
    let http_stop = stop.clone();
    let listener = tasks::net::listen(cfg.addr)?;
    info!(addr = %listener.local_addr()?, "orchestrator listening");
    let server = warp::serve(http::routes(app)).incoming(listener).graceful(async move { http_stop.cancelled().await });
    let mut server = tokio::spawn(server.run());

    // A JoinHandle must not be polled once it has completed: whether the
    // server already ended decides whether to wait for it below.
    let mut server_ended = false;
    let ended = tokio::select! {
        exit = tasks.next_exit() => Some(exit),
        _ = stop.cancelled() => None,
        r = &mut server => {
            server_ended = true;
            Some(tasks::TaskExit { name: "http server", end: match r {
                Ok(()) => TaskEnd::Returned,
                Err(e) => TaskEnd::Panicked(e.to_string()),
            }})
        }
    };
    let failure = ended.filter(|exit| is_failure(exit, stop.is_cancelled()));
    if let Some(exit) = &failure {
        error!(task = exit.name, "{exit}; exiting (a restarted orchestrator adopts the running workers)");
    }
    stop.cancel();
    let grace = timing::SHUTDOWN_GRACE;
    if !server_ended && tokio::time::timeout(grace, &mut server).await.is_err() {
        server.abort();
    }
    // Only now: the requests in flight are answered.
    for exit in tasks.shutdown(grace).await {
        error!(task = exit.name, "{exit} while stopping");
    }
    match failure {
        Some(exit) => bail!("{exit}"),
        None => {
            info!("orchestrator stopped");
            Ok(())
        }
    }
}

/// Whether a task's end is a failure: any end while the process is not
/// stopping, and a failure or panic while it is (a loop that returns because
/// it was told to stop, racing the stop signal itself, is not one).
fn is_failure(exit: &tasks::TaskExit, stopping: bool) -> bool {
    !stopping || !matches!(exit.end, TaskEnd::Returned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_returns_while_stopping_is_no_failure() {
        let returned = tasks::TaskExit { name: "reconcile", end: TaskEnd::Returned };
        let failed = tasks::TaskExit { name: "reconcile", end: TaskEnd::Failed(anyhow::anyhow!("feed closed")) };
        let panicked = tasks::TaskExit { name: "reconcile", end: TaskEnd::Panicked("boom".into()) };
        // (exit, stopping) -> failure
        for (exit, stopping, want) in [
            (&returned, false, true),
            (&returned, true, false),
            (&failed, false, true),
            (&failed, true, true),
            (&panicked, true, true),
        ] {
            assert_eq!(is_failure(exit, stopping), want, "{exit} while stopping={stopping}");
        }
    }
}
