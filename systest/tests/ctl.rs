#![cfg(feature = "e2e")]
//! The operator's CLI (`target/release/rideshare-ctl`) against a real stack
//! with an admin token: what an operator types and reads, exit statuses
//! included.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use systest::{poll, root, Stack, StackOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wire::status::{ClusterStatus, EventKind, WorkerRole, WorkerState};

const TOKEN: &str = "ctl-test-token";
const DEADLINE: Duration = Duration::from_secs(60);

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `rideshare-ctl` aimed at `orchestrator` with `token`, nothing inherited
/// from the caller's environment for either.
fn ctl(orchestrator: &str, token: Option<&str>) -> Command {
    let mut c = Command::new(root().join("target/release/rideshare-ctl"));
    c.env_remove("ADMIN_TOKEN").env("ORCHESTRATOR_URL", orchestrator).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(t) = token {
        c.env("ADMIN_TOKEN", t);
    }
    c
}

async fn run(mut c: Command, args: &[&str]) -> Result<Run> {
    let out = tokio::time::timeout(Duration::from_secs(30), c.args(args).output())
        .await
        .with_context(|| format!("rideshare-ctl {args:?} did not finish in 30s"))?
        .context("running target/release/rideshare-ctl (cargo build --release -p ctl)")?;
    Ok(Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The table row of `pid` (`| w-… | pid | role | state | …`), split into cells.
fn row_of(table: &str, pid: u32) -> Option<Vec<String>> {
    table.lines().find_map(|l| {
        let cells: Vec<String> = l.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect();
        (cells.len() == 9 && cells[1] == pid.to_string()).then_some(cells)
    })
}

#[tokio::test]
async fn an_operator_sees_crashes_and_a_wrong_token_changes_nothing() -> Result<()> {
    let stack = Stack::start(StackOptions { admin_token: Some(TOKEN.into()), ..Default::default() }).await?;
    let auth = format!("Bearer {TOKEN}");
    let o = stack.orchestrator.as_str();

    // status: both workers, each with its role, master first.
    let (master, slave) = poll("a master and a serving slave in the status", DEADLINE, || async {
        let s: ClusterStatus = Stack::http().get(stack.url("/api/v1/status")).send().await.ok()?.json().await.ok()?;
        let m = s.workers.iter().find(|w| w.role == WorkerRole::Master)?.pid;
        let sl = s.workers.iter().find(|w| w.role == WorkerRole::Slave && w.state == WorkerState::Serving)?.pid;
        Some((m, sl))
    })
    .await?;
    let st = run(ctl(o, Some(TOKEN)), &["status"]).await?;
    ensure!(st.ok, "status failed: {}", st.stderr);
    let m = row_of(&st.stdout, master).with_context(|| format!("no row for master {master}:\n{}", st.stdout))?;
    let s = row_of(&st.stdout, slave).with_context(|| format!("no row for slave {slave}:\n{}", st.stdout))?;
    ensure!(m[2] == "master" && s[2] == "slave", "roles:\n{}", st.stdout);
    let first_row = st.stdout.lines().position(|l| row_of(l, master).is_some()).unwrap();
    let slave_row = st.stdout.lines().position(|l| row_of(l, slave).is_some()).unwrap();
    ensure!(first_row < slave_row, "master is not listed first:\n{}", st.stdout);
    ensure!(st.stdout.starts_with(&format!("Cluster: {} (runtime process)", stack.name)), "{}", st.stdout);
    ensure!(st.stdout.contains(&format!("master: {} pid {master}", m[0])), "{}", st.stdout);
    println!("rideshare-ctl status:\n{}", st.stdout);

    // status --json is the status API's answer.
    let js = run(ctl(o, None), &["status", "--json"]).await?;
    ensure!(js.ok, "status --json failed: {}", js.stderr);
    let parsed: ClusterStatus = serde_json::from_str(&js.stdout).context("status --json is a ClusterStatus")?;
    ensure!(parsed.cluster_id == stack.name && parsed.workers.len() >= 2, "{}", js.stdout);

    // workers: the pids of worker/list.
    let w = run(ctl(o, Some(TOKEN)), &["workers"]).await?;
    ensure!(w.ok, "workers failed: {}", w.stderr);
    let listed: Vec<u32> = w.stdout.lines().map(|l| l.trim().parse()).collect::<Result<_, _>>()?;
    ensure!(listed == stack.worker_pids_with(&auth).await, "workers printed {listed:?}");

    // A wrong token: refused, non-zero, and no worker killed.
    let before = stack.worker_pids_with(&auth).await;
    let bad = run(ctl(o, Some("not-the-token")), &["crash", "slave"]).await?;
    ensure!(!bad.ok, "crash with a wrong token succeeded: {}", bad.stdout);
    ensure!(
        bad.stderr.contains("the orchestrator refused the token: set ADMIN_TOKEN or --token"),
        "stderr: {}",
        bad.stderr
    );
    let none = run(ctl(o, None), &["workers"]).await?;
    ensure!(!none.ok && none.stderr.contains("refused the token"), "workers without a token: {}", none.stderr);
    ensure!(stack.worker_pids_with(&auth).await == before, "a refused crash changed the workers");

    // The right token: the slave's pid, and it goes away.
    let crash = run(ctl(o, Some(TOKEN)), &["crash", "slave"]).await?;
    ensure!(crash.ok, "crash slave failed: {}", crash.stderr);
    let pid: u32 = crash
        .stdout
        .trim()
        .strip_prefix("crashed slave: pid ")
        .with_context(|| format!("crash printed {:?}", crash.stdout))?
        .parse()?;
    ensure!(before.contains(&pid) && pid != master, "crashed pid {pid} was not a slave of {before:?}");
    poll("the crashed slave gone from worker/list", DEADLINE, || async {
        (!stack.worker_pids_with(&auth).await.contains(&pid)).then_some(())
    })
    .await?;

    // events: the crash is there, with its pid.
    let crashed_line = poll("the crash in `rideshare-ctl events`", DEADLINE, || async {
        let ev = run(ctl(o, None), &["events"]).await.ok()?;
        ev.stdout.lines().find(|l| l.contains(" crashed ") && l.contains(&format!("pid={pid} "))).map(str::to_owned)
    })
    .await?;
    ensure!(crashed_line.contains("role=slave"), "{crashed_line}");

    // events --follow: a master crash streams in as it happens.
    let mut follow = ctl(o, None);
    follow.args(["events", "--follow"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = follow.spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    // The recent events come first; the crash above is among them.
    let mut seen_recent = false;
    while let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        if l == crashed_line {
            seen_recent = true;
            break;
        }
    }
    ensure!(seen_recent, "events --follow did not print the recent crash first");
    let r = Stack::http().post(stack.url("/api/v1/crash/master")).header("authorization", &auth).send().await?;
    ensure!(r.status() == 200, "crash/master: {}", r.status());
    let promoted = tokio::time::timeout(DEADLINE, async {
        while let Some(l) = lines.next_line().await? {
            if l.contains(" promoted ") || l.contains(" recovered ") {
                return Ok::<_, anyhow::Error>(Some(l));
            }
        }
        Ok(None)
    })
    .await
    .context("no promotion streamed within the deadline")??;
    ensure!(promoted.is_some(), "the feed ended without a promotion");
    let _ = child.kill().await;

    // An orchestrator that is not there: non-zero, and says where it looked.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let gone = run(ctl(&nowhere, Some(TOKEN)), &["status"]).await?;
    ensure!(!gone.ok, "status against {nowhere} succeeded");
    ensure!(gone.stderr.contains(&format!("cannot reach the orchestrator at {nowhere}: ")), "stderr: {}", gone.stderr);
    Ok(())
}

/// The status through the open API (no token needed).
async fn status_of(stack: &Stack) -> Option<ClusterStatus> {
    Stack::http().get(stack.url("/api/v1/status")).send().await.ok()?.json().await.ok()
}

/// The slaves that run and serve reads.
fn serving_slaves(s: &ClusterStatus) -> Vec<u32> {
    s.workers.iter().filter(|w| w.role == WorkerRole::Slave && w.state == WorkerState::Serving).map(|w| w.pid).collect()
}

/// `rideshare_maintenance_paused`'s value in the orchestrator's metrics.
async fn paused_gauge(url: &str) -> Option<i64> {
    let text = Stack::http().get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("rideshare_maintenance_paused ")?.trim().parse().ok())
}

/// Watch the status for `hold`: the check must hold on every look (every
/// 100 ms), or the first status that breaks it is the error.
async fn holds_for(stack: &Stack, hold: Duration, what: &str, ok: impl Fn(&ClusterStatus) -> bool) -> Result<usize> {
    let end = std::time::Instant::now() + hold;
    let mut looks = 0;
    while std::time::Instant::now() < end {
        if let Some(s) = status_of(stack).await {
            ensure!(ok(&s), "{what} broken after {looks} looks: {s:#?}");
            looks += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(looks >= 10, "only {looks} status answers in {hold:?}");
    Ok(looks)
}

/// Maintenance mode end to end through the CLI: paused, a crashed slave is
/// not replaced and a crashed master not failed over (for several times
/// the time a replacement takes unpaused), and status, `rideshare-ctl
/// status`, the metric and the events say so; on resume both happen and
/// writes work again.
#[tokio::test]
async fn a_paused_cluster_holds_failover_and_replacement_until_resumed() -> Result<()> {
    let stack = Stack::start(StackOptions { admin_token: Some(TOKEN.into()), ..Default::default() }).await?;
    let o = stack.orchestrator.as_str();
    let first = poll("a master and a serving slave", DEADLINE, || async {
        let s = status_of(&stack).await?;
        (s.master.is_some() && !serving_slaves(&s).is_empty()).then_some(s)
    })
    .await?;
    ensure!(!first.maintenance.paused && paused_gauge(o).await == Some(0), "{:?}", first.maintenance);

    // Unpaused, for comparison: how long a crashed slave takes to be replaced.
    let t0 = std::time::Instant::now();
    let crash = run(ctl(o, Some(TOKEN)), &["crash", "slave"]).await?;
    ensure!(crash.ok && !crash.stdout.contains("maintenance"), "{} {}", crash.stdout, crash.stderr);
    let gone = serving_slaves(&first);
    poll("a replacement slave serving", DEADLINE, || async {
        let s = status_of(&stack).await?;
        serving_slaves(&s).iter().any(|p| !gone.contains(p)).then_some(())
    })
    .await?;
    let normal = t0.elapsed();
    let hold = (normal * 5).max(Duration::from_secs(6));
    println!("unpaused: a crashed slave replaced and serving after {normal:?}; holding paused for {hold:?}");

    // Pause (a wrong token changes nothing).
    let refused = run(ctl(o, Some("not-the-token")), &["pause"]).await?;
    ensure!(!refused.ok && refused.stderr.contains("refused the token"), "{}", refused.stderr);
    ensure!(!status_of(&stack).await.context("status")?.maintenance.paused, "a refused pause paused");
    let p = run(ctl(o, Some(TOKEN)), &["pause", "--reason", "disk swap", "--by", "ann"]).await?;
    ensure!(p.ok, "pause failed: {}", p.stderr);
    ensure!(p.stdout.starts_with("paused: no failover, replacement slave, scaling"), "{}", p.stdout);
    let s = status_of(&stack).await.context("status")?;
    ensure!(s.maintenance.paused, "{:?}", s.maintenance);
    ensure!(s.maintenance.reason.as_deref() == Some("disk swap") && s.maintenance.by.as_deref() == Some("ann"));
    ensure!(paused_gauge(o).await == Some(1), "rideshare_maintenance_paused is not 1");
    let page = Stack::http().get(stack.url("/")).send().await?.text().await?;
    ensure!(page.contains(r#"id="maintenance""#) && page.contains("PAUSED"), "the page has no PAUSED badge");

    // A slave crashed while paused: the answer says nothing follows, and nothing does.
    let before = status_of(&stack).await.context("status")?;
    let crash = run(ctl(o, Some(TOKEN)), &["crash", "slave"]).await?;
    ensure!(crash.ok, "crash slave: {}", crash.stderr);
    ensure!(
        crash.stdout.contains("maintenance mode paused: no replacement follows until resume"),
        "crash slave while paused printed {:?}",
        crash.stdout
    );
    let pids: Vec<u32> = before.workers.iter().map(|w| w.pid).collect();
    let looks = holds_for(&stack, hold, "no new worker while paused", |s| {
        s.maintenance.paused && s.workers.iter().all(|w| pids.contains(&w.pid)) && s.workers.len() < pids.len() + 1
    })
    .await?;
    let s = status_of(&stack).await.context("status")?;
    ensure!(s.workers.len() == 1 && s.master.is_some(), "only the master runs: {:?}", s.workers);
    ensure!(s.maintenance.held == ["start 1 replacement slave"], "held: {:?}", s.maintenance.held);
    let st = run(ctl(o, None), &["status"]).await?;
    let line = st.stdout.lines().nth(1).unwrap_or_default();
    ensure!(
        line.starts_with("Maintenance: PAUSED since ")
            && line.contains(" by ann (disk swap): ")
            && line.ends_with("held: start 1 replacement slave"),
        "rideshare-ctl status:\n{}",
        st.stdout
    );
    println!(
        "paused, slave crashed: no worker started in {hold:?} ({looks} looks); rideshare-ctl status:\n{}",
        st.stdout
    );

    // Resume: the replacement comes.
    let r = run(ctl(o, Some(TOKEN)), &["resume", "--by", "ann"]).await?;
    ensure!(
        r.ok && r.stdout.trim() == "resumed: now acting on what was held: start 1 replacement slave",
        "{r:?}",
        r = r.stdout
    );
    let t1 = std::time::Instant::now();
    poll("a replacement slave after resume", DEADLINE, || async {
        let s = status_of(&stack).await?;
        (!s.maintenance.paused && !serving_slaves(&s).is_empty()).then_some(())
    })
    .await?;
    println!("resumed: replacement serving after {:?}", t1.elapsed());
    ensure!(paused_gauge(o).await == Some(0), "rideshare_maintenance_paused is not 0 after resume");

    // Pause, crash the master: no failover while paused, writes wait.
    let p = run(ctl(o, Some(TOKEN)), &["pause", "--reason", "master maintenance"]).await?;
    ensure!(p.ok, "pause: {}", p.stderr);
    let before = status_of(&stack).await.context("status")?;
    let old = before.master.clone().context("a master")?;
    let crash = run(ctl(o, Some(TOKEN)), &["crash", "master"]).await?;
    ensure!(crash.ok, "crash master: {}", crash.stderr);
    ensure!(crash.stdout.contains(&format!("crashed master: pid {}", old.pid)), "{}", crash.stdout);
    ensure!(crash.stdout.contains("no failover or replacement follows until resume"), "{}", crash.stdout);
    holds_for(&stack, hold, "no failover while paused", |s| {
        s.master.is_none() && s.workers.iter().all(|w| w.role == WorkerRole::Slave && w.pid != old.pid)
    })
    .await?;
    let s = status_of(&stack).await.context("status")?;
    ensure!(
        s.maintenance.held.first().map(String::as_str) == Some("failover: no master"),
        "held: {:?}",
        s.maintenance.held
    );
    ensure!(!s.events.iter().any(|e| matches!(e.what, EventKind::Promoted { .. }) && e.at_ms >= before.at_ms));

    // Resume: a failover names a new master under the next epoch, writes work.
    let r = run(ctl(o, Some(TOKEN)), &["resume"]).await?;
    ensure!(r.ok && r.stdout.contains("failover: no master"), "{}", r.stdout);
    let t1 = std::time::Instant::now();
    let new = poll("a new master after resume", DEADLINE, || async {
        status_of(&stack).await?.master.filter(|m| m.epoch > old.epoch)
    })
    .await?;
    ensure!(new.pid != old.pid && new.epoch == old.epoch + 1, "{new:?} after {old:?}");
    let (code, body) = poll("a write accepted", DEADLINE, || async {
        stack.write(&systest::user_write("after-resume")).await.ok().filter(|(c, _)| *c == 201)
    })
    .await?;
    println!(
        "resumed: new master {} (epoch {}) and a write accepted after {:?}: {code} {body}",
        new.id,
        new.epoch,
        t1.elapsed()
    );

    // The event feed told all of it, with who and why.
    let s = poll("a replacement slave after the failover", DEADLINE, || async {
        let s = status_of(&stack).await?;
        (!serving_slaves(&s).is_empty()).then_some(s)
    })
    .await?;
    let kinds = |f: fn(&EventKind) -> bool| s.events.iter().filter(|e| f(&e.what)).count();
    ensure!(
        kinds(
            |k| matches!(k, EventKind::Paused { by, reason } if by == "ann" && reason.as_deref() == Some("disk swap"))
        ) == 1
    );
    ensure!(
        kinds(|k| matches!(k, EventKind::Paused { .. })) == 2 && kinds(|k| matches!(k, EventKind::Resumed { .. })) == 2
    );
    ensure!(kinds(|k| matches!(k, EventKind::Held { what } if what.starts_with("replacement of slave"))) == 1);
    ensure!(
        kinds(|k| matches!(k, EventKind::Held { what } if what.starts_with("failover and replacement after master")))
            == 1
    );
    let ev = run(ctl(o, None), &["events"]).await?;
    ensure!(ev.stdout.lines().any(|l| l.contains("  paused by=ann reason=\"disk swap\"")), "{}", ev.stdout);
    ensure!(ev.stdout.lines().any(|l| l.contains("  resumed by=ann paused_secs=")), "{}", ev.stdout);
    Ok(())
}
