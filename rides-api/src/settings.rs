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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = Settings::command().render_long_help().to_string();
        for (env, default) in [
            ("RIDES_ADDR", Some("127.0.0.1:8082")),
            ("LB_URL", Some("http://127.0.0.1:8080")),
            ("RIDES_PUBLIC_URL", Some("http://127.0.0.1:8082")),
            ("ORCHESTRATOR_URL", Some("http://127.0.0.1:8090")),
            ("ADMIN_TOKEN", None),
        ] {
            assert!(help.contains(&format!("[env: {env}")), "{env} missing from:\n{help}");
            if let Some(d) = default {
                assert!(help.contains(&format!("[default: {d}]")), "default {d} missing from:\n{help}");
            }
        }
    }

    /// Command-line values only: the process environment is shared by every
    /// test, and `tasks::config` owns the trimming and empty = unset.
    #[test]
    fn values_and_bad_values() {
        let s = Settings::try_parse_from([
            "rides-api",
            "--addr",
            "0.0.0.0:80",
            "--lb-url",
            "http://lb:80",
            "--public-url",
            "http://rides:80",
        ])
        .unwrap();
        assert_eq!(s.addr.to_string(), "0.0.0.0:80");
        assert_eq!(s.lb_url.host_str(), Some("lb"));
        for bad in [
            ["--addr", "rides:80"],
            ["--lb-url", "lb:80"],
            ["--public-url", "rides"],
            ["--orchestrator-url", "ftp://o"],
        ] {
            let e = Settings::try_parse_from(["rides-api", bad[0], bad[1]]).unwrap_err();
            assert!(e.to_string().contains(bad[1]), "{e}");
        }
    }
}
