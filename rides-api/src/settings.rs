//! rides-api's settings: each from the command line or its environment
//! variable (`rides-api --help` lists them with their defaults), read once at
//! start; a value that does not parse stops the service there.

use std::net::SocketAddr;

use reqwest::Url;
use svc_common::config::{http_url, OrchestratorArgs};

/// The rides service (it keeps no data: everything goes to the orchestrator;
/// user checks go to users-api through the load balancer).
#[derive(clap::Parser, Debug)]
#[command(name = "rides-api", version)]
pub struct Settings {
    /// Address to listen on (host:port).
    #[arg(long, env = "RIDES_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,
    /// The load balancer, through which the user check asks users-api.
    #[arg(long, env = "LB_URL", default_value = "http://127.0.0.1:8080", value_parser = http_url)]
    pub lb_url: Url,
    /// This service's public address, sent as the user check's Origin header.
    #[arg(long = "public-url", env = "RIDES_PUBLIC_URL", default_value = "http://127.0.0.1:8082", value_parser = http_url)]
    pub public_url: Url,
    #[command(flatten)]
    pub orchestrator: OrchestratorArgs,
}
