//! users-api: the users service (docs/api.md). It keeps no data: every read
//! and write goes to the orchestrator.

mod routes;
mod settings;
mod validate;

use std::sync::Arc;

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
    let metrics = ServiceMetrics::new("users-api");
    let db = OrchestratorClient::new(&settings.orchestrator)?.with_metrics(metrics.clone());
    let orchestrator = db.base().to_owned();
    let state = Arc::new(routes::State::new(db));
    let listener = startup::listen(settings.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, %orchestrator, "users-api listening");
    let routes = svc_common::metrics::instrument(metrics, http::routes(state, routes::handle));
    startup::serve("users-api", listener, routes, stop).await;
    Ok(())
}
