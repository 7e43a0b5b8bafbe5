//! One benchmark run: an isolated stack of its own (process runtime, fixed
//! slave count, autoscaler out of the way, services and the nginx LB), seeded
//! data, then each scenario at each concurrency with its ceiling measured
//! right after it, one table on stdout and the JSON report. The stack, the
//! ceilings' queues and their nginx are gone when the run ends.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use systest::{Stack, StackOptions, WorkerRuntime};
use wire::Consistency;

use crate::ceilings::{ConfirmedPublish, RpcEcho, TrivialLb};
use crate::load::{self, Bounds};
use crate::opts::Opts;
use crate::procs::{self, Proc, Role};
use crate::report::{self, Cell, Report, Row, RssEntry};
use crate::scenarios::{self as sc};
use crate::wrk::{self, Paths};

/// The processes of this stack (and the shared broker, and the bench), by role.
pub async fn processes(stack: &Stack) -> Result<Vec<Proc>> {
    let mut out = vec![];
    if let Some(pid) = stack.orchestrator_pid() {
        out.push(Proc { name: "orchestrator".into(), role: Role::Orchestrator, pid });
    }
    let mut slave_n = 0;
    for pid in stack.worker_processes().await? {
        // The worker's cwd is its data directory; its log says whether it is master.
        let log = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.cwd())
            .ok()
            .and_then(|d| std::fs::read_to_string(d.join("worker.log")).ok())
            .unwrap_or_default();
        if log.contains("serving as master") {
            out.push(Proc { name: "master".into(), role: Role::Master, pid });
        } else {
            slave_n += 1;
            out.push(Proc { name: format!("slave{slave_n}"), role: Role::Slaves, pid });
        }
    }
    for pid in systest::processes_with_env("ORCHESTRATOR_URL", &stack.orchestrator) {
        let comm = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).map(|s| s.comm).unwrap_or_default();
        if comm.contains("users") || comm.contains("rides") {
            out.push(Proc { name: comm, role: Role::Services, pid });
        }
    }
    out.extend(procs::nginx(&stack.dir.join("lb/nginx.pid"), "nginx"));
    out.extend(procs::rabbitmq_nodes(stack.amqp_url.contains(',')));
    out.push(Proc { name: "bench".into(), role: Role::Bench, pid: std::process::id() });
    Ok(out)
}

fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .current_dir(systest::root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Prints a row (figure, ceiling, ratio) and its ceiling's own line; keeps it.
fn emit(rows: &mut Vec<Row>, figure: Cell, ceiling: Option<Cell>) {
    let row = Row::new(figure, ceiling);
    println!("{}", report::row_line(&row));
    if let Some(c) = &row.ceiling {
        println!("{}", report::ceiling_line(c));
    }
    rows.push(row);
}

pub async fn run(opts: Opts) -> Result<()> {
    let opts = opts.effective();
    let lb = opts.wants("lb");
    let loadavg_before = procs::loadavg();
    println!(
        "load average before: {loadavg_before} on {} cores; starting a stack with {} slave(s)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.slaves
    );
    let stack = Stack::start(StackOptions {
        runtime: WorkerRuntime::Process,
        services: lb,
        // The autoscaler must not interfere: fixed slave count, long window.
        scale_window_secs: 86_400,
        reads_per_slave: 1_000_000_000,
        min_slaves: opts.slaves,
        max_slaves: opts.slaves,
        orchestrator_env: opts
            .worker_bin
            .iter()
            .map(|b| ("WORKER_BIN".to_owned(), b.display().to_string()))
            .chain(opts.queue_type.map(|q| ("AMQP_QUEUE_TYPE".to_owned(), q.to_string())))
            .collect(),
        ha: opts.ha,
        orchestrators: opts.orchestrators as usize,
        ..StackOptions::default()
    })
    .await?;
    println!("stack {} (logs in {})", stack.name, stack.dir.display());

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(1100)
        .tcp_nodelay(true)
        .build()?;

    // Wait until every slave serves (the harness waits for the first one).
    let want = opts.slaves as usize + 1;
    systest::poll("every worker to run", Duration::from_secs(120), || {
        let stack = &stack;
        async move { (stack.worker_pids().await.ok()?.len() >= want).then_some(()) }
    })
    .await?;

    sc::seed_users(&http, &stack.orchestrator, opts.users).await?;
    if lb {
        sc::seed_rides(&http, &stack.orchestrator, opts.users).await?;
    }
    // Every slave has applied the seed once eventual reads of the last user,
    // spread by readQ over the slaves, keep finding it.
    let last = sc::user_name(opts.users - 1);
    let probe = sc::post_op(&http, stack.url("/api/v1/db/read"), eventual_read_of(&last));
    let in_a_row = 4 * opts.slaves as usize;
    systest::poll("the seed to reach every slave", Duration::from_secs(30), || {
        let probe = probe.clone();
        async move {
            for i in 0..in_a_row {
                probe(i as u64).await.ok()?;
            }
            Some(())
        }
    })
    .await?;

    let procs = processes(&stack).await?;
    println!("processes: {}", procs.iter().map(|p| format!("{}={}", p.name, p.pid)).collect::<Vec<_>>().join(" "));
    let bounds = Bounds { warmup_secs: opts.warmup_secs, secs: opts.duration_secs, max_requests: opts.max_requests };
    println!(
        "each cell: {} s warm-up + {} s measured (reqwest cells at most {} requests); ceilings: {}\n",
        opts.warmup_secs,
        opts.duration_secs,
        opts.max_requests,
        if opts.no_ceilings { "off" } else { "on" }
    );
    println!("{}", report::header());

    let ctx = Ctx { opts: &opts, stack: &stack, http, procs: procs.clone(), bounds, counter: Arc::default() };
    let mut rows: Vec<Row> = vec![];
    read_rows(&ctx, &mut rows).await?;
    if lb {
        lb_rows(&ctx, &mut rows).await?;
    }
    if opts.wants("write") {
        write_rows(&ctx, &mut rows).await?;
    }
    let backup = if opts.wants("backup") { Some(crate::backup::rows(&ctx, &mut rows).await?) } else { None };

    let peak_rss: Vec<RssEntry> = procs
        .iter()
        .filter(|p| p.role != Role::Bench)
        .map(|p| {
            let (hwm, rss) = procs::rss_kb(p.pid);
            RssEntry { name: p.name.clone(), pid: p.pid, vm_hwm_kb: hwm, vm_rss_kb: rss }
        })
        .collect();
    println!("\npeak RSS (VmHWM):");
    for r in &peak_rss {
        println!(
            "  {:<14} pid {:>7}  {:>8} KiB peak  {:>8} KiB now",
            r.name,
            r.pid,
            r.vm_hwm_kb.map_or("-".into(), |v| v.to_string()),
            r.vm_rss_kb.map_or("-".into(), |v| v.to_string())
        );
    }
    let loadavg_after = procs::loadavg();
    println!("load average after: {loadavg_after}");

    let mut cells = vec![];
    for r in &rows {
        cells.push(r.figure.clone());
        cells.extend(r.ceiling.clone());
    }
    let report = Report {
        label: opts.label.clone(),
        started_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        git_commit: git(&["rev-parse", "--short", "HEAD"]),
        git_dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_before,
        loadavg_after,
        opts: opts.clone(),
        stack: stack.name.clone(),
        processes: procs.clone(),
        cells,
        rows,
        backup,
        peak_rss,
        note: "The load generators (bench, wrk) run on the same machine as the stack; cpu values are % of one \
               core during the measured window, cpu_us_per_req CPU µs per successful request by role; \
               'other_processes' is machine busy time not from the listed processes (other work on the \
               machine). RabbitMQ is shared by every stack on the machine. Ceilings: db/read ← raw AMQP RPC \
               echo of a readQ-sized message, db/write ← raw confirmed persistent publish of a writeQ-sized \
               message, LB rows ← nginx with the LB config before a trivial handler answering a body of the \
               measured answer's size (same wrk client)."
            .into(),
    };
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("results written to {}", opts.out.display());

    if opts.hold_secs > 0 {
        println!("holding the stack for {} s", opts.hold_secs.min(600));
        tokio::time::sleep(Duration::from_secs(opts.hold_secs.min(600))).await;
    }
    drop(stack);
    Ok(())
}

/// What every scenario of one run shares.
pub struct Ctx<'a> {
    pub opts: &'a Opts,
    pub stack: &'a Stack,
    pub http: reqwest::Client,
    pub procs: Vec<Proc>,
    pub bounds: Bounds,
    /// Numbers the requests of the whole run (unique write names, round robin bodies).
    pub counter: Arc<AtomicU64>,
}

impl Ctx<'_> {
    /// The processes an AMQP ceiling loads: the broker and the bench (both ends).
    fn amqp_procs(&self) -> Vec<Proc> {
        self.procs.iter().filter(|p| matches!(p.role, Role::Rabbitmq | Role::Bench)).cloned().collect()
    }
}

/// `db/read`, strong then eventual, each next to the raw AMQP RPC echo of a
/// `readQ`-sized message (measured once per concurrency, shown on both).
async fn read_rows(ctx: &Ctx<'_>, rows: &mut Vec<Row>) -> Result<()> {
    let opts = ctx.opts;
    if !opts.wants("read") && !opts.wants("eventual") {
        return Ok(());
    }
    let echo = if opts.no_ceilings {
        None
    } else {
        Some(RpcEcho::start(&ctx.stack.amqp_url).await.context("starting the AMQP echo ceiling")?)
    };
    let echo_body = Bytes::from(ceilings_body(sc::read_msg_len()));
    let amqp_procs = ctx.amqp_procs();
    let mut echo_cells: BTreeMap<usize, Cell> = BTreeMap::new();
    let read_url = ctx.stack.url("/api/v1/db/read");
    for (what, name, consistency) in
        [("read", "db/read strong", Consistency::Strong), ("eventual", "db/read eventual", Consistency::Eventual)]
    {
        if !opts.wants(what) {
            continue;
        }
        let op = sc::post_op(&ctx.http, read_url.clone(), sc::read_bodies(opts.users, consistency));
        for &c in &opts.concurrency {
            let fig = load::measure(name, "reqwest", &op, c, ctx.bounds, &ctx.procs, &ctx.counter).await;
            let mut ceil = None;
            if let Some(e) = &echo {
                if let Entry::Vacant(slot) = echo_cells.entry(c) {
                    let label = format!("amqp rpc echo, {} B", echo_body.len());
                    let op = e.op(echo_body.clone());
                    slot.insert(load::measure(&label, "lapin", &op, c, ctx.bounds, &amqp_procs, &ctx.counter).await);
                }
                ceil = echo_cells.get(&c).cloned();
            }
            emit(rows, fig, ceil);
        }
    }
    if let Some(e) = &echo {
        e.close().await;
    }
    Ok(())
}

/// The full path through the load balancer with wrk, each next to nginx (the
/// same config) before a trivial handler answering as many bytes.
async fn lb_rows(ctx: &Ctx<'_>, rows: &mut Vec<Row>) -> Result<()> {
    let opts = ctx.opts;
    let trivial = if opts.no_ceilings {
        None
    } else {
        Some(TrivialLb::start(ctx.stack.dir.join("lb-ceiling")).await.context("starting the LB ceiling")?)
    };
    let mut ceil_procs: Vec<Proc> = trivial.as_ref().map(|t| t.procs()).unwrap_or_default();
    ceil_procs.extend(ctx.procs.iter().filter(|p| p.role == Role::Bench).cloned());
    let scripts = ctx.stack.dir.join("wrk");
    let run = async {
        std::fs::create_dir_all(&scripts)?;
        for (i, (name, paths, probe)) in sc::lb_scenarios(opts.users).into_iter().enumerate() {
            let script = scripts.join(format!("s{i}.lua"));
            std::fs::write(&script, wrk::script(&paths))?;
            let ceil_script = scripts.join(format!("s{i}-ceiling.lua"));
            std::fs::write(&ceil_script, wrk::script(&fixed_like(&paths)))?;
            // The ceiling answers a body of the size the real path answers.
            let answer = ctx.http.get(format!("{}{probe}", ctx.stack.lb)).send().await?.bytes().await?;
            for &c in &opts.lb_concurrency {
                let fig = wrk::measure(&opts.wrk, &name, &ctx.stack.lb, &script, c, ctx.bounds, &ctx.procs).await?;
                let mut ceil = None;
                if let Some(t) = &trivial {
                    t.set_body_len(answer.len());
                    let label = format!("nginx + trivial handler, {} B", answer.len());
                    ceil =
                        Some(wrk::measure(&opts.wrk, &label, &t.url, &ceil_script, c, ctx.bounds, &ceil_procs).await?);
                }
                emit(rows, fig, ceil);
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(t) = trivial {
        t.stop().await;
    }
    run
}

/// `db/write` (last: it adds users), each next to a raw confirmed publish of a
/// `writeQ`-sized persistent message.
async fn write_rows(ctx: &Ctx<'_>, rows: &mut Vec<Row>) -> Result<()> {
    let confirmed = if ctx.opts.no_ceilings {
        None
    } else {
        Some(ConfirmedPublish::start(&ctx.stack.amqp_url).await.context("starting the confirmed publish ceiling")?)
    };
    let body = Bytes::from(ceilings_body(sc::write_msg_len()));
    let amqp_procs = ctx.amqp_procs();
    let op = sc::write_op(&ctx.http, ctx.stack.url("/api/v1/db/write"), format!("bw{}-", std::process::id()));
    for &c in &ctx.opts.concurrency {
        let fig = load::measure("db/write insert", "reqwest", &op, c, ctx.bounds, &ctx.procs, &ctx.counter).await;
        let mut ceil = None;
        if let Some(p) = &confirmed {
            let label = format!("amqp confirmed publish, {} B", body.len());
            ceil = Some(
                load::measure(&label, "lapin", &p.op(body.clone()), c, ctx.bounds, &amqp_procs, &ctx.counter).await,
            );
        }
        emit(rows, fig, ceil);
    }
    if let Some(p) = &confirmed {
        p.close().await;
    }
    Ok(())
}

/// The ceiling asks for one path whatever the figure asked (the handler ignores it).
fn fixed_like(p: &Paths) -> Paths {
    match p {
        Paths::Fixed(p) => Paths::Fixed(p.clone()),
        Paths::Numbered { prefix, .. } => Paths::Fixed(format!("{prefix}000000")),
    }
}

/// A message body of `n` bytes for the AMQP ceilings.
fn ceilings_body(n: usize) -> Vec<u8> {
    crate::ceilings::json_of_len(n)
}

/// An eventual read of one user, with the name its answer must hold.
fn eventual_read_of(name: &str) -> Arc<Vec<(Bytes, String)>> {
    let mut r = wire::ReadRequest::table("users").columns(&["username"]).filter(wire::Condition::eq("username", name));
    r.consistency = Consistency::Eventual;
    Arc::new(vec![(Bytes::from(serde_json::to_vec(&r).expect("serializes")), format!("\"{name}\""))])
}
