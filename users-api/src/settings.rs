//! users-api's settings: each from the command line or its environment
//! variable (`users-api --help` lists them with their defaults), read once at
//! start; a value that does not parse stops the service there.

use std::net::SocketAddr;

use svc_common::config::OrchestratorArgs;

/// The users service (it keeps no data: everything goes to the orchestrator).
#[derive(clap::Parser, Debug)]
#[command(name = "users-api", version)]
pub struct Settings {
    /// Address to listen on (host:port).
    #[arg(long, env = "USERS_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub orchestrator: OrchestratorArgs,
}
