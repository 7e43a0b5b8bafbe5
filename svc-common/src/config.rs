//! The settings both services share, as a clap `Args` struct each service
//! flattens into its own (read through `tasks::config::load`, so empty means
//! unset and values are trimmed), and the parsers for the kinds of value the
//! services take.
//!
//! Invariant: a setting that does not parse stops the service at start with
//! a message naming it; nothing is parsed again later.

use reqwest::Url;

/// How a service reaches the orchestrator.
#[derive(clap::Args, Debug, Clone)]
pub struct OrchestratorArgs {
    /// Base URL of the orchestrator, whose /api/v1/db/* API holds all data;
    /// several, comma-separated, for several orchestrators: the service sticks
    /// to one that answers and moves to the next when it does not.
    #[arg(long, env = "ORCHESTRATOR_URL", default_value = "http://127.0.0.1:8090", value_parser = http_urls)]
    pub orchestrator_url: Urls,
    /// The orchestrator's operator token, sent as a bearer token (db/clear
    /// needs it when the orchestrator has one); when set, a caller's
    /// `POST /api/v1/db/clear` must carry it too (else 401) [default: unset].
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// An absolute `http` or `https` URL with a host.
pub fn http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} is not an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not carry a query or fragment"));
    }
    Ok(url)
}

/// One or more URLs, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls(pub Vec<Url>);

impl Urls {
    /// Each as a base for paths ([`base`]).
    pub fn bases(&self) -> Vec<String> {
        self.0.iter().map(base).collect()
    }
}

/// A comma-separated list of [`http_url`]s (spaces around each are
/// ignored); at least one, none empty.
pub fn http_urls(s: &str) -> Result<Urls, String> {
    let urls = s.split(',').map(|u| http_url(u.trim())).collect::<Result<Vec<_>, _>>()?;
    Ok(Urls(urls))
}

/// A base URL as a prefix for paths: no trailing slash.
pub fn base(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn urls() {
        for ok in ["http://127.0.0.1:8090", "https://orch.example", "http://orchestrator:80/", "http://h/prefix"] {
            assert!(http_url(ok).is_ok(), "{ok}");
        }
        for bad in ["", "127.0.0.1:8090", "orchestrator", "ftp://h", "http://", "http://h?x=1", "http://h#f"] {
            assert!(http_url(bad).is_err(), "{bad:?}");
        }
        assert_eq!(base(&http_url("http://h:1/").unwrap()), "http://h:1");
        assert_eq!(base(&http_url("http://h:1/p/").unwrap()), "http://h:1/p");
    }

    #[test]
    fn url_lists() {
        assert_eq!(http_urls("http://a:1/").unwrap().bases(), ["http://a:1"]);
        assert_eq!(http_urls("http://a:1, http://b:2/").unwrap().bases(), ["http://a:1", "http://b:2"]);
        for bad in ["", "http://a:1,", ",http://a:1", "http://a:1,,http://b:2", "http://a:1,ftp://b"] {
            assert!(http_urls(bad).is_err(), "{bad:?}");
        }
    }

    #[derive(Parser, Debug)]
    struct Service {
        #[command(flatten)]
        orchestrator: OrchestratorArgs,
    }

    /// Command-line values only: the environment is left alone (it is shared
    /// by every test of this process); `tasks::config` owns its normalising.
    #[test]
    fn flattened_options() {
        let s = Service::try_parse_from(["svc", "--orchestrator-url", "http://o:1/", "--admin-token", "t"]).unwrap();
        assert_eq!(s.orchestrator.orchestrator_url.bases(), ["http://o:1"]);
        assert_eq!(s.orchestrator.admin_token.as_deref(), Some("t"));
        let s = Service::try_parse_from(["svc", "--orchestrator-url", "http://o:1,http://p:2"]).unwrap();
        assert_eq!(s.orchestrator.orchestrator_url.bases(), ["http://o:1", "http://p:2"]);
        let e = Service::try_parse_from(["svc", "--orchestrator-url", "nowhere"]).unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
    }
}
