//! users-api: the users service (docs/api.md). It keeps no data: every read
//! and write goes to the orchestrator.

mod listing;
mod routes;
mod settings;
mod validate;

use std::sync::Arc;

use svc_common::http;
use svc_common::startup::{self, Service};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    startup::main(|settings: settings::Settings| async move {
        let (svc, db) = Service::start("users-api", &settings.orchestrator)?;
        let state = Arc::new(routes::State::new(db, settings.list_page));
        svc.serve(settings.addr, http::routes(state, routes::handle), "").await
    })
}
