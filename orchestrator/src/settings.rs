//! Live settings: the autoscaler's bounds, policy and targets and the
//! database API's timeouts, changed while the orchestrators run
//! (`rideshare-ctl config set KEY=VALUE`, `POST /api/v1/config`) and kept in
//! ZooKeeper (`<root>/settings`), so that every orchestrator, and the next
//! leader, applies them. Flags and environment give the start values.
//!
//! Invariant: the settings in force always passed the checks a start does
//! (each value its flag's parser, then the whole `Config::check`: the
//! bounds' order and the timing order), because [`merge`] is the only way
//! to make them, and a record that fails it is not applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::sync::RwLock;

use clap::{CommandFactory, Parser, ValueEnum};
use tracing::{info, warn};
use wire::coord::SettingsRecord;
use wire::status::{SettingView, SettingsView};

use crate::config::{Config, ScaleConfig, Timeouts};
use crate::rpc::Rpc;

/// Why a `config set` changed nothing (mapped to 400, 409 and 503 in `http`).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Invalid(String),
    #[error("the settings were changed by another call meanwhile; look again and retry")]
    Conflict,
    #[error("{0}")]
    Unavailable(String),
}

/// The flags that may change at run time, parsed exactly as at start.
#[derive(Debug, Clone, Copy, Parser)]
#[command(name = "settings")]
struct LiveArgs {
    #[command(flatten)]
    scale: ScaleConfig,
    #[command(flatten)]
    timeouts: Timeouts,
}

/// Parsed with the others but set at start only: the autoscaler's window
/// clock runs from its start.
const FIXED: &[&str] = &["SCALE_WINDOW_SECS"];

/// One setting of [`LiveArgs`]: its environment name, flag and help.
struct Key {
    env: String,
    long: String,
    help: String,
}

fn all_keys() -> Vec<Key> {
    LiveArgs::command()
        .get_arguments()
        .filter_map(|a| {
            Some(Key {
                env: a.get_env()?.to_str()?.to_owned(),
                long: a.get_long()?.to_owned(),
                help: a.get_help().map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// The names `config set` takes, in `--help`'s order.
pub fn live_keys() -> Vec<String> {
    all_keys().into_iter().map(|k| k.env).filter(|k| !FIXED.contains(&k.as_str())).collect()
}

/// Every setting of [`LiveArgs`] in `cfg`, written as its flag takes it.
fn render(cfg: &Config) -> BTreeMap<String, String> {
    let (s, t) = (&cfg.scale, &cfg.timeouts);
    let policy = s.policy.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
    [
        ("SCALE_WINDOW_SECS", s.window.to_string()),
        ("READS_PER_SLAVE", s.reads_per_slave.to_string()),
        ("MIN_SLAVES", s.min_slaves.to_string()),
        ("MAX_SLAVES", s.max_slaves.to_string()),
        ("SCALE_POLICY", policy),
        ("SCALE_TARGET_P99_MS", s.target_p99_ms.to_string()),
        ("SCALE_TARGET_QUEUE", s.scale_target_queue.to_string()),
        ("SCALE_CPU_MAX", s.scale_cpu_max.to_string()),
        ("SCALE_TOLERANCE", s.scale_tolerance.to_string()),
        ("SCALE_OUT_COOLDOWN_SECS", s.out_cooldown_secs.to_string()),
        ("SCALE_IN_COOLDOWN_SECS", s.in_cooldown_secs.to_string()),
        ("READ_TIMEOUT_MS", t.read.to_string()),
        ("WRITE_TIMEOUT_MS", t.write.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `base` with `values` (environment name → value) applied, checked as a
/// start checks it; Err says what is wrong, naming the setting.
pub fn merge(base: &Config, values: &BTreeMap<String, String>) -> Result<Config, String> {
    let keys = all_keys();
    let mut all = render(base);
    for (k, v) in values {
        if FIXED.contains(&k.as_str()) {
            return Err(format!("{k} is set at start only (a restart changes it)"));
        }
        if !keys.iter().any(|key| key.env == *k) {
            return Err(format!("{k} is not a live setting; these are: {}", live_keys().join(", ")));
        }
        all.insert(k.clone(), v.trim().to_owned());
    }
    let args = keys.iter().map(|k| format!("--{}={}", k.long, all.get(&k.env).map_or("", String::as_str)));
    let parsed = LiveArgs::try_parse_from(std::iter::once("settings".to_owned()).chain(args))
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned())?;
    let mut cfg = base.clone();
    cfg.scale = ScaleConfig { window: base.scale.window, ..parsed.scale };
    cfg.timeouts = parsed.timeouts;
    cfg.check().map_err(|e| format!("{e:#}"))?;
    Ok(cfg)
}

/// What a `config set` changes: each setting whose value in force differs,
/// with its value before and after.
pub fn changes(before: &Config, after: &Config) -> Vec<(String, String, String)> {
    let (b, a) = (render(before), render(after));
    a.into_iter()
        .filter_map(|(k, after)| {
            let before = b.get(&k).cloned().unwrap_or_default();
            (before != after).then_some((k, before, after))
        })
        .collect()
}

/// A record's values with `set` applied: an empty value resets the setting
/// to its start value.
pub fn updated(record: Option<&SettingsRecord>, set: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut values = record.map(|r| r.values.clone()).unwrap_or_default();
    for (k, v) in set {
        let k = k.trim().to_ascii_uppercase();
        match v.trim() {
            "" => values.remove(&k),
            v => values.insert(k, v.to_owned()),
        };
    }
    values
}

/// What the settings in force are made of.
#[derive(Debug, Clone)]
struct InForce {
    cfg: Config,
    record: Option<SettingsRecord>,
}

/// This orchestrator's settings in force: its start settings with the
/// record's values over them. The RPC client's timeouts follow them.
pub struct Live {
    base: Config,
    now: RwLock<InForce>,
    rpc: Arc<Rpc>,
}

impl Live {
    pub fn new(base: Config, rpc: Arc<Rpc>) -> Arc<Live> {
        let now = RwLock::new(InForce { cfg: base.clone(), record: None });
        Arc::new(Live { base, now, rpc })
    }

    /// The autoscaler's settings in force.
    pub fn scale(&self) -> ScaleConfig {
        self.now.read().expect("settings lock").cfg.scale
    }

    /// The settings in force with `set` applied over the record, as a start
    /// checks them: what a `config set` would make, or why not.
    pub fn plan(&self, record: Option<&SettingsRecord>, set: &BTreeMap<String, String>) -> Result<Config, String> {
        merge(&self.base, &updated(record, set))
    }

    /// The settings in force under `record` (from ZooKeeper, or just
    /// written). One that fails the checks is not applied (an orchestrator
    /// of another version may have written it): said, and Err.
    pub fn apply(&self, record: Option<SettingsRecord>) -> Result<(), String> {
        if self.now.read().expect("settings lock").record == record {
            return Ok(());
        }
        let values = record.as_ref().map(|r| r.values.clone()).unwrap_or_default();
        let cfg = merge(&self.base, &values).inspect_err(|e| {
            warn!(error = %e, "the live settings in ZooKeeper fail the checks; keeping the ones in force");
        })?;
        self.install(cfg, record);
        Ok(())
    }

    /// Put `cfg`, made by [`merge`] from `record`, in force: each change
    /// said once (with who made it), the RPC client's timeouts set.
    pub fn install(&self, cfg: Config, record: Option<SettingsRecord>) {
        let mut now = self.now.write().expect("settings lock");
        let by = record.as_ref().map_or("-", |r| r.by.as_str());
        for (key, before, after) in changes(&now.cfg, &cfg) {
            info!(%key, %before, %after, by, "live setting in force");
        }
        self.rpc.set_timeouts(cfg.timeouts.read.0, cfg.timeouts.write.0);
        *now = InForce { cfg, record };
    }

    /// `GET /api/v1/config`.
    pub fn view(&self) -> SettingsView {
        let now = self.now.read().expect("settings lock");
        let (values, start) = (render(&now.cfg), render(&self.base));
        let settings = all_keys()
            .into_iter()
            .filter(|k| !FIXED.contains(&k.env.as_str()))
            .map(|k| SettingView {
                value: values.get(&k.env).cloned().unwrap_or_default(),
                start: start.get(&k.env).cloned().unwrap_or_default(),
                help: k.help,
                key: k.env,
            })
            .collect();
        SettingsView {
            settings,
            by: now.record.as_ref().map(|r| r.by.clone()),
            at_ms: now.record.as_ref().map(|r| r.at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn base(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("orchestrator").chain(args.iter().copied())).unwrap()
    }

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_setting_renders_as_its_flag_parses_it() {
        // Non-default values everywhere: a setting missing from `render`
        // would come back as its default.
        let c = base(&[
            "--reads-per-slave=7",
            "--min-slaves=2",
            "--max-slaves=9",
            "--scale-policy=target",
            "--scale-target-p99-ms=12.5",
            "--scale-target-queue=3",
            "--scale-cpu-max=0.5",
            "--scale-tolerance=0.2",
            "--scale-out-cooldown-secs=4",
            "--scale-in-cooldown-secs=6",
            "--read-timeout-ms=900",
            "--write-timeout-ms=7000",
            "--scale-window-secs=1.5",
        ]);
        let again =
            merge(&base(&[]), &render(&c).into_iter().filter(|(k, _)| !FIXED.contains(&k.as_str())).collect()).unwrap();
        assert_eq!(again.scale, ScaleConfig { window: base(&[]).scale.window, ..c.scale });
        assert_eq!(again.timeouts, c.timeouts);
        assert_eq!(render(&c).len(), all_keys().len(), "render covers every live flag");
        assert_eq!(live_keys().len(), all_keys().len() - FIXED.len());
    }

    #[test]
    fn changes_are_checked_as_at_start() {
        let b = base(&["--max-slaves=4"]);
        // (set, Ok: what changes | Err: a word the error must contain)
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: &[(Pairs, Result<Pairs, &str>)] = &[
            (&[("MAX_SLAVES", "6")], Ok(&[("MAX_SLAVES", "6")])),
            (&[("MIN_SLAVES", " 2 ")], Ok(&[("MIN_SLAVES", "2")])),
            (
                &[("READ_TIMEOUT_MS", "750"), ("SCALE_POLICY", "target")],
                Ok(&[("READ_TIMEOUT_MS", "750"), ("SCALE_POLICY", "target")]),
            ),
            (&[("MAX_SLAVES", "4")], Ok(&[])),
            (&[("MIN_SLAVES", "5")], Err("MIN_SLAVES <= MAX_SLAVES")),
            (&[("MIN_SLAVES", "0")], Err("--min-slaves")),
            (&[("MAX_SLAVES", "many")], Err("--max-slaves")),
            (&[("SCALE_CPU_MAX", "1.5")], Err("fraction")),
            (&[("WRITE_TIMEOUT_MS", "60000")], Err("WRITE_TIMEOUT_MS")),
            (&[("SCALE_POLICY", "hpa")], Err("--scale-policy")),
            (
                &[("SCALE_POLICY", "target"), ("SCALE_TARGET_P99_MS", "0"), ("SCALE_TARGET_QUEUE", "0")],
                Err("SCALE_POLICY=target"),
            ),
            (&[("SCALE_WINDOW_SECS", "5")], Err("at start only")),
            (&[("ZK_ADDR", "10.0.0.1:2181")], Err("not a live setting")),
            (&[("ADMIN_TOKEN", "x")], Err("not a live setting")),
        ];
        for (s, want) in cases {
            let got = merge(&b, &set(s));
            match (want, got) {
                (Ok(diff), Ok(after)) => {
                    let got: Vec<_> = changes(&b, &after).into_iter().map(|(k, _, a)| (k, a)).collect();
                    let want: Vec<_> = diff.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                    assert_eq!(got, want, "{s:?}");
                }
                (Err(word), Err(e)) => assert!(e.contains(word), "{s:?}: {e:?} lacks {word:?}"),
                (want, got) => panic!("{s:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn an_empty_value_resets_and_keys_are_case_blind() {
        let rec = SettingsRecord { values: set(&[("MAX_SLAVES", "6"), ("MIN_SLAVES", "2")]), ..Default::default() };
        let v = updated(Some(&rec), &set(&[("min_slaves", ""), ("READ_TIMEOUT_MS", "800")]));
        assert_eq!(v, set(&[("MAX_SLAVES", "6"), ("READ_TIMEOUT_MS", "800")]));
        let c = merge(&base(&[]), &v).unwrap();
        assert_eq!((c.scale.min_slaves, c.scale.max_slaves, c.timeouts.read.0), (1, 6, Duration::from_millis(800)));
    }

    #[tokio::test]
    async fn a_record_that_fails_the_checks_is_not_applied() {
        let nodes = wire::broker::Nodes::parse("amqp://127.0.0.1:1/%2f").unwrap();
        let cfg = base(&[]);
        let rpc = Rpc::new(nodes, cfg.amqp_queue_type, cfg.batching(), Default::default());
        let live = Live::new(cfg, rpc.clone());
        let good =
            SettingsRecord { values: set(&[("READ_TIMEOUT_MS", "800"), ("MAX_SLAVES", "3")]), ..Default::default() };
        live.apply(Some(good)).unwrap();
        assert_eq!((live.scale().max_slaves, rpc.read_timeout()), (3, Duration::from_millis(800)));
        let bad = SettingsRecord { values: set(&[("MIN_SLAVES", "9"), ("MAX_SLAVES", "3")]), by: "x".into(), at_ms: 1 };
        assert!(live.apply(Some(bad)).is_err());
        assert_eq!((live.scale().max_slaves, rpc.read_timeout()), (3, Duration::from_millis(800)), "kept");
        let view = live.view();
        let max = view.settings.iter().find(|s| s.key == "MAX_SLAVES").unwrap();
        assert_eq!((max.value.as_str(), max.start.as_str()), ("3", "10"));
        assert!(!view.settings.iter().any(|s| s.key == "SCALE_WINDOW_SECS"));
        live.apply(None).unwrap();
        assert_eq!(live.scale().max_slaves, 10, "no record: the start values");
    }
}
