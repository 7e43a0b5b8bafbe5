//! The orchestrators that run, as ZooKeeper shows them: each keeps an
//! ephemeral `<root>/orchestrators/<instance>` with where it answers and how
//! many `db/read` requests it has counted. The leader adds the others' new
//! reads to its autoscaler's window, so the window counts every read of the
//! cluster once, whichever orchestrator took it (SPEC: reads are counted at
//! the orchestrator; with several, at all of them).
//!
//! Invariant: a peer's reads are counted once: only its growth since the
//! leader last saw it ([`new_reads`], pure), never its total again; a peer
//! seen for the first time counts from then on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tasks::CancellationToken;
use tokio::sync::watch;
use wire::coord::{orchestrator_path, orchestrators_path, OrchestratorRecord};
use zookeeper_client as zk;

use crate::autoscale::ReadCounter;
use crate::leader::Role;
use crate::zk_session::{self, bounded};

/// How often each orchestrator reports, and the leader collects.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The reads peers took since `seen` (updated to what `now` shows; peers
/// gone are forgotten). `me` is not a peer.
pub fn new_reads(seen: &mut HashMap<String, u64>, now: &[OrchestratorRecord], me: &str) -> u64 {
    let mut added = 0;
    let mut next = HashMap::new();
    for r in now.iter().filter(|r| r.instance != me) {
        // A peer's total only grows; seen for the first time, it counts from now.
        let before = seen.get(&r.instance).copied().unwrap_or(r.reads_total);
        added += r.reads_total.saturating_sub(before);
        next.insert(r.instance.clone(), r.reads_total.max(before));
    }
    *seen = next;
    added
}

/// Report this orchestrator and, while leading, count the peers' reads, until `stop`.
pub async fn run(
    zk_addr: String,
    root: String,
    me: OrchestratorRecord,
    reads: Arc<ReadCounter>,
    role: watch::Receiver<Role>,
    session_timeout: Duration,
    stop: CancellationToken,
) -> Result<()> {
    zk_session::keep("orchestrator registry", &stop, || async {
        tokio::select! {
            r = session(&zk_addr, &root, &me, &reads, &role, session_timeout) => r,
            _ = stop.cancelled() => Ok(()),
        }
    })
    .await;
    Ok(())
}

async fn session(
    addr: &str,
    root: &str,
    me: &OrchestratorRecord,
    reads: &ReadCounter,
    role: &watch::Receiver<Role>,
    session_timeout: Duration,
) -> Result<(), zk::Error> {
    let client = zk_session::open(addr, session_timeout).await?;
    bounded(client.mkdir(&orchestrators_path(root), &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())))
        .await?;
    let path = orchestrator_path(root, &me.instance);
    let record = |total| serde_json::to_vec(&OrchestratorRecord { reads_total: total, ..me.clone() }).expect("record");
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    match bounded(client.create(&path, &record(reads.total()), &ephemeral)).await {
        Ok(_) => {}
        // Left by this process's previous session, not expired yet.
        Err(zk::Error::NodeExists) => {
            bounded(client.delete(&path, None)).await.ok();
            bounded(client.create(&path, &record(reads.total()), &ephemeral)).await?;
        }
        Err(e) => return Err(e),
    }
    let mut seen = HashMap::new();
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        bounded(client.set_data(&path, &record(reads.total()), None)).await?;
        if *role.borrow() != Role::Leader {
            seen.clear();
            continue;
        }
        let mut now = Vec::new();
        for id in bounded(client.list_children(&orchestrators_path(root))).await? {
            if let Ok((data, _)) = bounded(client.get_data(&orchestrator_path(root, &id))).await {
                if let Ok(r) = serde_json::from_slice::<OrchestratorRecord>(&data) {
                    now.push(r);
                }
            }
        }
        reads.count_elsewhere(new_reads(&mut seen, &now, &me.instance));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(instance: &str, reads_total: u64) -> OrchestratorRecord {
        OrchestratorRecord { instance: instance.into(), url: String::new(), reads_total }
    }

    #[test]
    fn each_peer_read_is_counted_once() {
        let mut seen = HashMap::new();
        // (what, what ZooKeeper shows, reads added)
        let steps: [(&str, Vec<OrchestratorRecord>, u64); 6] = [
            ("first sight counts nothing of the past", vec![rec("me", 50), rec("b", 100)], 0),
            ("growth is counted", vec![rec("me", 60), rec("b", 130)], 30),
            ("my own reads are never added", vec![rec("me", 900), rec("b", 130)], 0),
            ("a new peer counts from its first sight", vec![rec("b", 140), rec("c", 7)], 10),
            ("a restarted peer (total went down) adds nothing", vec![rec("b", 3), rec("c", 9)], 2),
            ("a peer gone is forgotten", vec![rec("c", 9)], 0),
        ];
        for (what, now, want) in steps {
            assert_eq!(new_reads(&mut seen, &now, "me"), want, "{what}");
        }
        assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["c"]);
    }
}
