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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = Settings::command().render_long_help().to_string();
        for (env, default) in [
            ("USERS_ADDR", Some("127.0.0.1:8081")),
            ("ORCHESTRATOR_URL", Some("http://127.0.0.1:8090")),
            ("ADMIN_TOKEN", None),
        ] {
            assert!(help.contains(&format!("[env: {env}")), "{env} missing from:\n{help}");
            if let Some(d) = default {
                assert!(help.contains(&format!("[default: {d}]")), "default {d} missing from:\n{help}");
            }
        }
        assert!(help.contains("unset"), "ADMIN_TOKEN's default is unset:\n{help}");
    }

    /// Command-line values only: the process environment is shared by every
    /// test, and `tasks::config` owns the trimming and empty = unset.
    #[test]
    fn values_and_bad_values() {
        let s = Settings::try_parse_from(["users-api", "--addr", "0.0.0.0:80", "--orchestrator-url", "http://o:8090"])
            .unwrap();
        assert_eq!(s.addr.to_string(), "0.0.0.0:80");
        assert_eq!(s.orchestrator.orchestrator_url.as_str(), "http://o:8090/");
        for bad in [["--addr", "localhost"], ["--addr", "1.2.3.4:99999"], ["--orchestrator-url", "o:80"]] {
            let e = Settings::try_parse_from(["users-api", bad[0], bad[1]]).unwrap_err();
            assert!(e.to_string().contains(bad[1]), "{e}");
        }
    }
}
