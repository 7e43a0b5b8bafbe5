//! rides-api: the rides service of SPEC section 3. It keeps no data: every
//! read and write goes to the orchestrator, and user checks go to the users
//! service through the load balancer.

mod areas;
mod routes;
mod timestamp;
mod user_check;

use std::sync::Arc;

use svc_common::http;
use svc_common::orchestrator_client::Db;
use svc_common::startup;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    startup::init_tracing();
    let addr = startup::env_or("RIDES_ADDR", "127.0.0.1:8082");
    let orchestrator = startup::orchestrator_url();
    let lb = startup::env_or("LB_URL", "http://127.0.0.1:8080");
    let public = startup::env_or("RIDES_PUBLIC_URL", "http://127.0.0.1:8082");

    let state = Arc::new(routes::State::new(
        Db::new(&orchestrator, startup::admin_token())?,
        user_check::UserCheck::new(&lb, &public)?,
    ));
    let listener = startup::listen(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, %orchestrator, lb = %lb, origin = %public, "rides-api listening");
    startup::serve("rides-api", listener, http::routes(state, routes::handle)).await;
    Ok(())
}
