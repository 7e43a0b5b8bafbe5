//! The exit feed of a container-based runtime (Docker, Swarm): every worker
//! exit is reported once, however many paths observe it (a `kill`, a `die`
//! event, a reconciliation after an events reconnect).
//!
//! Invariant: a container reported dead is never reported again and never
//! comes back to life in the cache (a container that died before its start
//! was confirmed stays dead).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::WorkerExit;

/// How many dead container ids are remembered to drop duplicate reports.
const DEAD_MEMORY: usize = 4096;

/// What is known of a running container: its worker, its pid, and what else
/// the runtime keeps (`()` for Docker, the node id for Swarm).
#[derive(Clone, Debug)]
pub struct Seen<E> {
    pub worker: String,
    pub pid: u32,
    pub extra: E,
}

pub struct ExitFeed<E> {
    pub cluster_id: String,
    pub exits: broadcast::Sender<WorkerExit>,
    /// Names what exited in the log line ("worker container", "worker service task").
    what: &'static str,
    known: Mutex<Known<E>>,
}

struct Known<E> {
    /// container id → what was seen of it running.
    running: HashMap<String, Seen<E>>,
    /// container ids whose exit was already reported, oldest first.
    dead: HashSet<String>,
    dead_order: VecDeque<String>,
}

impl<E: Clone> ExitFeed<E> {
    pub fn new(cluster_id: String, exits: broadcast::Sender<WorkerExit>, what: &'static str) -> ExitFeed<E> {
        let known = Known { running: HashMap::new(), dead: HashSet::new(), dead_order: VecDeque::new() };
        ExitFeed { cluster_id, exits, what, known: Mutex::new(known) }
    }

    pub fn note_running(&self, cid: &str, worker: &str, pid: u32, extra: E) {
        let mut k = self.known.lock().unwrap();
        if !k.dead.contains(cid) {
            k.running.insert(cid.to_string(), Seen { worker: worker.to_string(), pid, extra });
        }
    }

    /// Reports a container's end once.
    pub fn note_dead(&self, cid: &str, worker: Option<&str>, pid_hint: u32) {
        let exit = {
            let mut k = self.known.lock().unwrap();
            if k.dead.contains(cid) {
                return;
            }
            k.dead.insert(cid.to_string());
            k.dead_order.push_back(cid.to_string());
            while k.dead_order.len() > DEAD_MEMORY {
                if let Some(old) = k.dead_order.pop_front() {
                    k.dead.remove(&old);
                }
            }
            match (k.running.remove(cid), worker) {
                (Some(seen), _) => WorkerExit { id: seen.worker, pid: seen.pid },
                (None, Some(id)) => WorkerExit { id: id.to_string(), pid: pid_hint },
                (None, None) => return,
            }
        };
        tracing::info!(cluster = %self.cluster_id, id = %exit.id, pid = exit.pid, "{} exited", self.what);
        // No receiver is fine: nobody is watching yet.
        let _ = self.exits.send(exit);
    }

    /// Container id → what was seen, for the containers seen running.
    pub fn running(&self) -> Vec<(String, Seen<E>)> {
        self.known.lock().unwrap().running.iter().map(|(cid, s)| (cid.clone(), s.clone())).collect()
    }

    /// Worker id → container id, from the cache (no engine call).
    pub fn container_ids(&self) -> HashMap<String, String> {
        self.running().into_iter().map(|(cid, s)| (s.worker, cid)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_exit_is_reported_once_and_the_dead_stay_dead() {
        let (tx, mut rx) = broadcast::channel(16);
        let feed: ExitFeed<()> = ExitFeed::new("c".into(), tx, "worker container");
        feed.note_running("c1", "w1", 10, ());
        assert_eq!(feed.container_ids(), HashMap::from([("w1".to_string(), "c1".to_string())]));
        feed.note_dead("c1", Some("w1"), 0);
        feed.note_dead("c1", Some("w1"), 0);
        let e = rx.try_recv().unwrap();
        assert_eq!((e.id.as_str(), e.pid), ("w1", 10));
        assert!(rx.try_recv().is_err(), "reported twice");
        feed.note_running("c1", "w1", 10, ());
        assert!(feed.container_ids().is_empty(), "a dead container came back");
        // Never seen running: reported with the hint; no worker, nothing to report.
        feed.note_dead("c2", Some("w2"), 7);
        assert_eq!(rx.try_recv().unwrap().pid, 7);
        feed.note_dead("c3", None, 0);
        assert!(rx.try_recv().is_err());
    }
}
