//! The continuous backup's figures (`make bench`, group `backup`; issue of
//! record: the archiver's cost and lag). On the run's own stack:
//!
//! 1. `db/write` at the highest concurrency without an archiver, then with one
//!    (`target/release/archiver` into a `file://` archive under the stack's
//!    folder): the A/B row shows what archiving costs the write path;
//! 2. during the second cell, every acknowledged write's time from its ack to
//!    the archiver's upload (`rideshare_archive_seq`, sampled every 20 ms):
//!    the archive lag, p50/p99/max;
//! 3. `archiver restore --latest` of everything the run wrote: its time.
//!
//! Figures next to each other from the same run; nothing here is a pass/fail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use systest::archiver::{restore, Archiver};

use crate::load::{self, Op};
use crate::procs::{Proc, Role};
use crate::report::{percentile_ms, Row};

/// What the group measured besides its two cells.
#[derive(Debug, Clone, Serialize)]
pub struct BackupFigures {
    pub writers: usize,
    /// Acknowledged writes whose upload was seen (the second cell's).
    pub lag_writes: usize,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Changes (seqs) the archive held when restored, and the restore's time.
    pub restored_changes: u64,
    pub restore_secs: f64,
    /// The archive's size then.
    pub archive_bytes: u64,
}

/// Acknowledged writes: (seq, when the answer came).
type Acks = Arc<Mutex<Vec<(u64, Instant)>>>;

/// `db/write` of a fresh user each time, keeping each answer's seq and time.
fn recording_write_op(http: &reqwest::Client, url: String, prefix: String, acks: Acks) -> Op {
    let http = http.clone();
    Arc::new(move |i| {
        let req = http.post(&url).json(&systest::user_write(&format!("{prefix}{i}")));
        let acks = acks.clone();
        Box::pin(async move {
            let r = req.send().await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            let seq = body["seq"].as_u64().filter(|_| status.is_success());
            let seq = seq.ok_or_else(|| format!("{status}: {body}"))?;
            acks.lock().expect("acks").push((seq, Instant::now()));
            Ok(())
        })
    })
}

/// Each acknowledged write's ack → archived time, from the archiver's
/// archived seq sampled every 20 ms until every ack is covered (at most
/// `deadline` after `done` is set).
async fn sample_lag(arch: &Archiver, acks: &Acks, done: &std::sync::atomic::AtomicBool) -> Result<Vec<u32>> {
    let mut lags_us = vec![];
    let mut finished_at: Option<Instant> = None;
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
        if finished && finished_at.is_none() {
            finished_at = Some(Instant::now());
        }
        if let Some(archived) = arch.archived_seq().await {
            let now = Instant::now();
            let mut a = acks.lock().expect("acks");
            a.sort_by_key(|(s, _)| *s);
            let upto = a.partition_point(|(s, _)| *s <= archived);
            lags_us.extend(a.drain(..upto).map(|(_, t)| now.saturating_duration_since(t).as_micros() as u32));
            if finished && a.is_empty() {
                return Ok(lags_us);
            }
        }
        if finished_at.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            bail!("writes acknowledged 60 s ago are still not archived ({})", arch.log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The A/B rows (figure: with the archiver; its ceiling: without) and the
/// lag and restore figures.
pub async fn rows(ctx: &crate::run::Ctx<'_>, rows: &mut Vec<Row>) -> Result<BackupFigures> {
    let conc = *ctx.opts.concurrency.iter().max().context("no concurrency level")?;
    let url = ctx.stack.url("/api/v1/db/write");
    let prefix = format!("bb{}-", std::process::id());
    let off_acks: Acks = Arc::default();
    let off = recording_write_op(&ctx.http, url.clone(), format!("{prefix}off-"), off_acks);
    let mut without =
        load::measure("db/write, archiver off", "reqwest", &off, conc, ctx.bounds, &ctx.procs, &ctx.counter).await;

    let archive = ctx.stack.dir.join("archive");
    let backup_url = format!("file://{}", archive.display());
    let arch = Archiver::start(ctx.stack, "archiver", &backup_url, &[("ARCHIVE_FLUSH_MS", "200".into())])?;
    arch.wait_first_snapshot().await?;
    let mut procs = ctx.procs.clone();
    procs.push(Proc { name: "archiver".into(), role: Role::Archiver, pid: arch.pid() });

    let acks: Acks = Arc::default();
    let on = recording_write_op(&ctx.http, url, format!("{prefix}on-"), acks.clone());
    let done = std::sync::atomic::AtomicBool::new(false);
    let measured = async {
        // The warm-up's acks count as well: they are archived as any others.
        let cell = load::measure("db/write, archiver on", "reqwest", &on, conc, ctx.bounds, &procs, &ctx.counter).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        cell
    };
    let (with, lags) = tokio::join!(measured, sample_lag(&arch, &acks, &done));
    let mut lags = lags?;
    lags.sort_unstable();
    without.scenario = "db/write, archiver off".into();
    let row = Row::new(with, Some(without));
    println!("{}", crate::report::row_line(&row));
    if let Some(c) = &row.ceiling {
        println!("{}", crate::report::ceiling_line(c));
    }
    rows.push(row);

    let summary = arch.summary().await.context("the archiver's summary")?;
    let (_, took) = restore(&backup_url, &["--latest"], &ctx.stack.dir.join("restored.db"), &[])?;
    let figures = BackupFigures {
        writers: conc,
        lag_writes: lags.len(),
        lag_p50_ms: percentile_ms(&lags, 0.5),
        lag_p99_ms: percentile_ms(&lags, 0.99),
        lag_max_ms: percentile_ms(&lags, 1.0),
        restored_changes: summary.seq,
        restore_secs: crate::report::round(took.as_secs_f64(), 2),
        archive_bytes: dir_bytes(&archive),
    };
    println!(
        "archive lag at {conc} writers (ack -> uploaded, {} writes, sampled every 20 ms): p50 {} ms, p99 {} ms, \
         max {} ms (target < 1000 ms)",
        figures.lag_writes, figures.lag_p50_ms, figures.lag_p99_ms, figures.lag_max_ms
    );
    println!(
        "restore --latest from the archive ({} changes, {} KiB): {} s",
        figures.restored_changes,
        figures.archive_bytes >> 10,
        figures.restore_secs
    );
    drop(arch);
    Ok(figures)
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
