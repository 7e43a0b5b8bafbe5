//! rides-api: the rides service (docs/api.md). It keeps no data: every read
//! and write goes to the orchestrator, and user checks go to the users
//! service through the load balancer.

mod areas;
mod routes;
mod settings;
mod timestamp;
mod user_check;

use std::sync::Arc;

use svc_common::startup::{self, Service};
use svc_common::{config, http};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    startup::main(|settings: settings::Settings| async move {
        let (svc, db) = Service::start("rides-api", &settings.orchestrator)?;
        let lb = config::base(&settings.lb_url);
        let users = user_check::UserCheck::new(&lb, &settings.public_url)?;
        let detail = format!(" lb={lb} origin={}", users.origin());
        let state = Arc::new(routes::State::new(db, users));
        svc.serve(settings.addr, http::routes(state, routes::handle), &detail).await
    })
}
