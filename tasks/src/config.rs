//! One way for every binary to read its settings: a clap derive struct whose
//! arguments name their environment variable (`#[arg(long, env = "...")]`),
//! so `--help` lists every setting with its default.
//!
//! Invariant: an empty or whitespace-only variable counts as unset, and a
//! padded value counts as its trimmed self, for every setting of every
//! binary; a value that does not parse is an error at start.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

/// Parse `T` from the command line and the environment, after normalising
/// the environment variables `T` declares (see the module doc). Call it from
/// a synchronous `main`, before any thread starts: it edits the process
/// environment. Exits with clap's message and status 2 on a bad setting.
pub fn load<T: Parser>() -> T {
    normalise_env::<T>();
    T::parse()
}

/// Like [`load`], returning the error instead of exiting (for tests).
pub fn try_load_from<T: Parser, I: IntoIterator<Item = String>>(args: I) -> Result<T, clap::Error> {
    normalise_env::<T>();
    T::try_parse_from(args)
}

/// The variables `T` reads: trimmed, and removed when empty.
fn normalise_env<T: Parser>() {
    let cmd = T::command();
    for name in env_names(&cmd) {
        let Some(value) = std::env::var_os(&name) else { continue };
        let Some(value) = value.to_str() else { continue }; // not UTF-8: clap reports it
        let trimmed = value.trim();
        if trimmed.is_empty() {
            std::env::remove_var(&name);
        } else if trimmed.len() != value.len() {
            std::env::set_var(&name, trimmed);
        }
    }
}

fn env_names(cmd: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> =
        cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    for sub in cmd.get_subcommands() {
        names.extend(env_names(sub));
    }
    names
}

/// A duration given in milliseconds (`READ_TIMEOUT_MS=5000`), printed the
/// same way in `--help`; use it as `default_value_t = Millis(..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub Duration);

/// A duration given in seconds, fractions allowed (`SCALE_WINDOW_SECS=0.5`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Secs(pub Duration);

impl FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<u64>()
            .map(|v| Millis(Duration::from_millis(v)))
            .map_err(|e| format!("{s:?} is not a number of milliseconds: {e}"))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_millis())
    }
}

impl FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(Secs(Duration::from_secs_f64(v))),
            _ => Err(format!("{s:?} is not a positive number of seconds")),
        }
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Settings {
        #[arg(long, env = "TASKS_TEST_ADDR", default_value = "127.0.0.1:1")]
        addr: std::net::SocketAddr,
        #[arg(long, env = "TASKS_TEST_TOKEN")]
        token: Option<String>,
        #[arg(long, env = "TASKS_TEST_COUNT", default_value_t = 3)]
        count: u32,
    }

    /// One test for all cases: the environment is process-wide.
    #[test]
    fn empty_is_unset_padded_is_trimmed_bad_is_an_error() {
        std::env::set_var("TASKS_TEST_ADDR", "   ");
        std::env::set_var("TASKS_TEST_TOKEN", "");
        std::env::set_var("TASKS_TEST_COUNT", " 7 ");
        let s: Settings = try_load_from(["t".to_string()]).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.1:1");
        assert_eq!(s.token, None);
        assert_eq!(s.count, 7);

        std::env::set_var("TASKS_TEST_TOKEN", "  secret\n");
        let s: Settings = try_load_from(["t".to_string()]).unwrap();
        assert_eq!(s.token.as_deref(), Some("secret"));

        std::env::set_var("TASKS_TEST_COUNT", "seven");
        let e = try_load_from::<Settings, _>(["t".to_string()]).unwrap_err();
        assert!(e.to_string().contains("seven"), "{e}");
        std::env::remove_var("TASKS_TEST_COUNT");
        std::env::set_var("TASKS_TEST_ADDR", "nowhere");
        assert!(try_load_from::<Settings, _>(["t".to_string()]).is_err());
        std::env::remove_var("TASKS_TEST_ADDR");
    }

    #[test]
    fn durations_read_and_print_alike() {
        assert_eq!("1500".parse::<Millis>().unwrap(), Millis(Duration::from_millis(1500)));
        assert_eq!(Millis(Duration::from_secs(15)).to_string(), "15000");
        assert!("1.5".parse::<Millis>().is_err());
        assert_eq!("0.5".parse::<Secs>().unwrap(), Secs(Duration::from_millis(500)));
        assert_eq!(Secs(Duration::from_secs(120)).to_string(), "120");
        for bad in ["0", "-1", "inf", "NaN", "soon"] {
            assert!(bad.parse::<Secs>().is_err(), "{bad}");
        }
    }
}
