//! The database orchestrator: the HTTP front of the database (`http`,
//! `dbapi`), the RPC client of the workers over RabbitMQ (`rpc`), and the
//! worker supervisor (`cluster`: runtime, ZooKeeper, failover; `autoscale`).

pub mod autoscale;
pub mod cluster;
pub mod config;
pub mod dbapi;
pub mod http;
pub mod rpc;
pub mod runtime;

use std::sync::Arc;

use anyhow::Result;
use tracing::info;

/// Start everything and serve HTTP until the process ends.
pub async fn run(cfg: config::Config) -> Result<()> {
    let rpc = rpc::Rpc::start(cfg.amqp_url.clone());
    let cluster = cluster::Cluster::start(cfg.clone(), rpc.clone()).await?;
    let reads = Arc::new(autoscale::ReadCounter::default());
    tokio::spawn(autoscale::run(reads.clone(), cluster.clone(), cfg.scale));
    let app = Arc::new(http::App {
        db: dbapi::DbApi::new(rpc, cfg.read_timeout, cfg.write_timeout, cluster.adopted_seq()),
        cluster,
        reads,
        admin_token: cfg.admin_token.clone(),
    });
    let server = warp::serve(http::routes(app)).bind(cfg.addr).await;
    info!(addr = %cfg.addr, "orchestrator listening");
    server.run().await;
    Ok(())
}
