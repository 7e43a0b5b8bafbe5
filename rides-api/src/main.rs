//! rides-api: the rides service (docs/api.md). It keeps no data: every read
//! and write goes to the orchestrator, and user checks go to the users
//! service through the load balancer.

mod areas;
mod routes;
mod settings;
mod timestamp;
mod user_check;

use std::sync::Arc;

use svc_common::config;
use svc_common::http;
use svc_common::metrics::ServiceMetrics;
use svc_common::orchestrator_client::OrchestratorClient;
use svc_common::startup;

fn main() -> anyhow::Result<()> {
    // Before any thread starts: it normalises the environment it reads.
    let settings: settings::Settings = tasks::config::load();
    tokio::runtime::Runtime::new()?.block_on(run(settings))
}

async fn run(settings: settings::Settings) -> anyhow::Result<()> {
    tasks::init_tracing("info");
    let stop = tasks::CancellationToken::new();
    // Signals reach the token from here on (the task ends with it).
    drop(tasks::cancel_on_signal(stop.clone()));
    let metrics = ServiceMetrics::new("rides-api");
    let db = OrchestratorClient::new(&settings.orchestrator)?.with_metrics(metrics.clone());
    let orchestrator = db.base().to_owned();
    let lb = config::base(&settings.lb_url);
    let users = user_check::UserCheck::new(&lb, &settings.public_url)?;
    let origin = users.origin().to_owned();
    let state = Arc::new(routes::State::new(db, users));
    let listener = startup::listen(settings.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, %orchestrator, %lb, %origin, "rides-api listening");
    let routes = svc_common::metrics::instrument(metrics, http::routes(state, routes::handle));
    startup::serve("rides-api", listener, routes, stop).await;
    Ok(())
}
