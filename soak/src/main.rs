//! `soak`: for a chosen number of minutes, writers, readers and
//! read-after-write clients run through the load balancer of a running
//! (redundant) stack while a nemesis injects one fault at a time; then, once
//! the stack has healed, the final state is read back and a checker over the
//! recorded history prints the report (`scripts/soak.sh` brings the stack up
//! and down around it; `make soak`).
//!
//! Exit status: 0 only when no acknowledged write was lost, none was applied
//! twice, no read was stale and at least `--min-faults` faults were injected.

mod check;
mod clients;
mod history;
mod nemesis;
mod procs;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rand::SeedableRng;
use tracing::{info, warn};

use crate::clients::{Load, Retry};
use crate::history::{FaultKind, Recorder};
use crate::nemesis::{Injected, Nemesis};
use crate::procs::StackFiles;

#[derive(Parser, Debug)]
#[command(about = "Load through the LB while a nemesis kills parts of the stack; then check the history")]
struct Args {
    /// How long the load and the nemesis run.
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 3.0)]
    minutes: f64,
    /// Fewer faults than this fails the run (default: 10 a minute).
    #[arg(long, env = "SOAK_MIN_FAULTS")]
    min_faults: Option<usize>,
    /// Fault kinds to inject (comma-separated): all, or any of rabbit-node,
    /// zk-leader, zk-follower, orchestrator, service, master, slave, pause,
    /// broker-restart.
    #[arg(long, env = "SOAK_KINDS", value_delimiter = ',', default_value = "all")]
    kinds: Vec<String>,
    /// The load balancer clients use.
    #[arg(long, env = "SOAK_LB_URL", default_value = "http://127.0.0.1:18080")]
    lb_url: String,
    /// Orchestrators to ask for the cluster status (comma-separated).
    #[arg(
        long,
        env = "SOAK_ORCHESTRATORS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:18090,http://127.0.0.1:18091"
    )]
    orchestrators: Vec<String>,
    /// Writers that only write.
    #[arg(long, env = "SOAK_WRITERS", default_value_t = 3)]
    writers: u32,
    /// Writers that read each acknowledged write back at once.
    #[arg(long, env = "SOAK_READ_BACK", default_value_t = 2)]
    read_back: u32,
    /// Clients that only read.
    #[arg(long, env = "SOAK_READERS", default_value_t = 2)]
    readers: u32,
    /// The stack's VAR_DIR (pid files in run/, the LB's in lb/).
    #[arg(long, env = "VAR_DIR", default_value = "var/soak")]
    var_dir: PathBuf,
    /// scripts/ha.sh's folder for this stack's broker nodes and ZooKeeper servers.
    #[arg(long, env = "HA_DIR", default_value = "var/soak/ha")]
    ha_dir: PathBuf,
    /// The stack's cluster id (its workers carry it in RIDESHARE_CLUSTER).
    #[arg(long, env = "CLUSTER_ID", default_value = "soak")]
    cluster_id: String,
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seed of the nemesis's choices and the readers' (default: from the clock).
    #[arg(long, env = "SOAK_SEED")]
    seed: Option<u64>,
    /// How long a paused worker stays stopped.
    #[arg(long, env = "SOAK_PAUSE_SECS", default_value_t = 3)]
    pause_secs: u64,
    /// How long the stack has after a fault is healed to serve again.
    #[arg(long, env = "SOAK_RECOVER_SECS", default_value_t = 60)]
    recover_secs: u64,
    /// How long the final reads may take to succeed once the load stopped.
    #[arg(long, env = "SOAK_HEAL_SECS", default_value_t = 120)]
    heal_secs: u64,
    /// After the faults, a rolling upgrade of every part under the load
    /// (`scripts/stack.sh rollout`), during which no request may fail.
    #[arg(long, env = "SOAK_ROLLOUT", default_value_t = true, action = clap::ArgAction::Set)]
    rollout: bool,
    /// Each HTTP request's timeout.
    #[arg(long, env = "SOAK_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// A write's attempts (under one key) before it is abandoned.
    #[arg(long, env = "SOAK_WRITE_ATTEMPTS", default_value_t = 40)]
    write_attempts: u32,
    /// A write's time budget, first attempt to last.
    #[arg(long, env = "SOAK_WRITE_BUDGET_SECS", default_value_t = 60)]
    write_budget_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let kinds: Vec<FaultKind> = if a.kinds.iter().any(|k| k == "all") {
        FaultKind::ALL.to_vec()
    } else {
        a.kinds.iter().map(|k| FaultKind::from_name(k.trim())).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?
    };
    let min_faults = a.min_faults.unwrap_or((a.minutes * 10.0).ceil() as usize);
    let abs = |p: &PathBuf| if p.is_absolute() { p.clone() } else { systest::root().join(p) };
    let files = StackFiles { var_dir: abs(&a.var_dir), ha_dir: abs(&a.ha_dir), cluster_id: a.cluster_id.clone() };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(a.request_timeout_ms))
        .pool_max_idle_per_host(64)
        .build()?;
    let rec = Arc::new(Recorder::new());
    let run = format!("s{:x}", seed & 0xffff_ffff);
    let retry = Retry { max_attempts: a.write_attempts, budget: Duration::from_secs(a.write_budget_secs) };
    let load = Arc::new(
        Load::new(a.lb_url.clone(), http.clone(), rec.clone(), run, a.writers + a.read_back, retry)
            .with_admin_token(a.admin_token.clone()),
    );
    let mut nemesis = Nemesis::new(
        files.clone(),
        systest::root(),
        a.orchestrators.clone(),
        a.admin_token.clone(),
        http.clone(),
        rand::rngs::StdRng::seed_from_u64(seed),
        &kinds,
    );
    for k in FaultKind::ALL.into_iter().filter(|k| !kinds.contains(k)) {
        rec.skip(k, "not selected (SOAK_KINDS)".to_owned());
    }
    nemesis.pause = Duration::from_secs(a.pause_secs);
    nemesis.recover = Duration::from_secs(a.recover_secs);

    let procs_start = files.snapshot();
    load.prepare().await.context("preparing the run (clear, ride owners)")?;
    info!(seed, minutes = a.minutes, lb = %a.lb_url, "soak: load and nemesis start");

    rec.history.lock().unwrap().load_start = rec.now();
    let mut clients = vec![];
    for w in 0..a.writers + a.read_back {
        clients.push(tokio::spawn(load.clone().writer(w, w >= a.writers)));
    }
    for r in 0..a.readers {
        clients.push(tokio::spawn(load.clone().reader(seed.wrapping_add(u64::from(r) + 1))));
    }

    let run_for = Duration::from_secs_f64(a.minutes * 60.0);
    let t0 = Instant::now();
    while t0.elapsed() < run_for {
        let Some(kind) = nemesis.choose(t0.elapsed().as_secs_f64() / run_for.as_secs_f64()) else {
            // Nothing left to inject: the load runs on to the end.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        match nemesis.inject(kind, &rec).await {
            Ok(Injected::Fault(f)) => {
                info!(kind = %f.kind, target = %f.target, heal_ms = f.healed - f.injected, "fault injected and healed");
                rec.fault(f);
            }
            Ok(Injected::Skipped(why)) => {
                info!(kind = %kind, reason = %why, "fault kind skipped");
                rec.skip(kind, why);
                continue;
            }
            Err(e) => warn!(kind = %kind, error = %format!("{e:#}"), "fault not injected"),
        }
        if let Err(e) = nemesis.await_recovery(&load).await {
            warn!(error = %format!("{e:#}"), "the stack did not recover in time; going on");
        }
    }

    if a.rollout {
        info!("planned rollout of every part under the load: scripts/stack.sh rollout");
        let start = rec.now();
        let done = nemesis.rollout().await;
        let end = rec.now();
        info!(took_ms = end - start, ok = done.is_ok(), "rollout ended");
        let error = done.err().map(|e| format!("{e:#}"));
        rec.history.lock().unwrap().rollout = Some(history::Planned { start, end, error });
    }

    load.stop.store(true, Ordering::Relaxed);
    rec.history.lock().unwrap().load_end = rec.now();
    info!("load stopped; waiting for writes in retry to end");
    for c in clients {
        c.await?;
    }
    let heal = Duration::from_secs(a.heal_secs);
    if let Err(e) =
        systest::poll("the stack to serve after the run", heal, || async { load.serves().await.then_some(()) }).await
    {
        warn!(error = %format!("{e:#}"), "the stack does not serve after the run");
    }
    match load.final_state(heal).await {
        Ok(f) => rec.history.lock().unwrap().final_state = Some(f),
        Err(e) => warn!(error = %format!("{e:#}"), "the final state could not be read"),
    }
    let procs_end = files.snapshot();

    let history = rec.history.lock().unwrap().clone();
    let verdict = check::check(&history);
    let setup = report::Setup {
        minutes: a.minutes,
        seed,
        writers: a.writers,
        read_back: a.read_back,
        readers: a.readers,
        min_faults,
    };
    print!("{}", report::render(&setup, &history, &verdict, &procs_start, &procs_end));
    let failures = verdict.failures(min_faults);
    if failures.is_empty() {
        println!("PASS");
        Ok(())
    } else {
        println!("FAIL: {}", failures.join("; "));
        std::process::exit(1);
    }
}
