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
use wire::status::{ClusterStatus, WorkerRole, WorkerState};

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
