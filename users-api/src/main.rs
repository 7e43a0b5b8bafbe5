//! users-api: the users service of SPEC section 2. It keeps no data: every
//! read and write goes to the orchestrator.

mod routes;
mod validate;

use std::sync::Arc;

use svc_common::http;
use svc_common::orchestrator_client::Db;
use svc_common::startup;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    startup::init_tracing();
    let addr = startup::env_or("USERS_ADDR", "127.0.0.1:8081");
    let orchestrator = startup::orchestrator_url();

    let state = Arc::new(routes::State::new(Db::new(&orchestrator, startup::admin_token())?));
    let listener = startup::listen(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, %orchestrator, "users-api listening");
    startup::serve("users-api", listener, http::routes(state, routes::handle)).await;
    Ok(())
}
