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
    /// Names per database read when listing every user: the list is streamed
    /// page by page, so this bounds the memory one listing takes in each
    /// process (at most 100000, the database API's limit).
    #[arg(long, env = "USERS_LIST_PAGE", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=wire::MAX_LIMIT as i64))]
    pub list_page: u32,
    #[command(flatten)]
    pub orchestrator: OrchestratorArgs,
}
