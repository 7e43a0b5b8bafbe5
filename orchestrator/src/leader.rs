//! Which orchestrator supervises: the one whose ZooKeeper session holds the
//! ephemeral znode `<root>/leader`. Every orchestrator serves the data path
//! (`db/read`, `db/write`); only the leader runs failover, reconcile, the
//! replacement of slaves and the autoscaler (DESIGN.md, "Several orchestrators").
//!
//! Invariant: an orchestrator believes it leads only while its session is
//! connected and the znode names its session. On any doubt (the session
//! disconnected, the znode gone) it steps down at once, before the session
//! could expire and another orchestrator take the znode; it leads again
//! only after it has seen the znode is still its own.
//!
//! The decision from what ZooKeeper shows is [`role_of`] (pure, tested in a
//! table); [`run`] only keeps a session and watches.

use std::time::Duration;

use anyhow::Result;
use tasks::CancellationToken;
use tokio::sync::watch;
use tracing::{info, warn};
use wire::coord::{leader_path, LeaderRecord};
use zookeeper_client as zk;

use crate::zk_session::{self, bounded};

/// This orchestrator's part, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No session, or not yet known who leads: supervise nothing.
    Unknown,
    Leader,
    /// Another orchestrator leads (operators are sent there).
    Follower(LeaderRecord),
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Leader => "leader",
            Role::Follower(_) => "follower",
        }
    }
}

/// The role the leader znode gives a session: its owner (the session id that
/// created it) and content, or None when there is no znode.
pub fn role_of(znode: Option<(i64, Option<LeaderRecord>)>, my_session: i64) -> Role {
    match znode {
        Some((owner, _)) if owner == my_session => Role::Leader,
        Some((_, Some(rec))) => Role::Follower(rec),
        // Someone else's, unreadable: we know only that we do not lead.
        Some((_, None)) | None => Role::Unknown,
    }
}

/// Keep a session and the role it gives, published on `role`, until `stop`
/// (then the znode is deleted, so another orchestrator takes over at once).
pub async fn run(
    zk_addr: String,
    root: String,
    me: LeaderRecord,
    session_timeout: Duration,
    role: watch::Sender<Role>,
    stop: CancellationToken,
) -> Result<()> {
    // The session itself leaves on `stop` (deleting the znode if it leads).
    zk_session::keep("leader election", &stop, || async {
        let ended = session(&zk_addr, &root, &me, session_timeout, &role, &stop).await;
        set(&role, Role::Unknown);
        ended
    })
    .await;
    Ok(())
}

fn set(role: &watch::Sender<Role>, new: Role) {
    role.send_if_modified(|cur| {
        if *cur == new {
            return false;
        }
        match &new {
            Role::Leader => info!("leading: this orchestrator supervises the workers"),
            Role::Follower(l) => {
                info!(leader = %l.instance, url = %l.url, "following: another orchestrator supervises")
            }
            Role::Unknown => warn!("not leading: the leader is not known (zookeeper session not connected)"),
        }
        *cur = new;
        true
    });
}

/// One session, from connect until it ends (an error) or `stop` (Ok).
async fn session(
    addr: &str,
    root: &str,
    me: &LeaderRecord,
    session_timeout: Duration,
    role: &watch::Sender<Role>,
    stop: &CancellationToken,
) -> Result<(), zk::Error> {
    let client = zk_session::open(addr, session_timeout).await?;
    bounded(client.mkdir(root, &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()))).await?;
    let path = leader_path(root);
    let data = serde_json::to_vec(me).expect("record serializes");
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let mine = client.session_id().0;
    let mut state = client.state_watcher();
    loop {
        // Take the znode if it is free, else see whose it is, with a watch.
        let watcher = match bounded(client.create(&path, &data, &ephemeral)).await {
            Ok(_) | Err(zk::Error::NodeExists) => match bounded(client.get_and_watch_data(&path)).await {
                Ok((data, stat, w)) => {
                    set(role, role_of(Some((stat.ephemeral_owner, serde_json::from_slice(&data).ok())), mine));
                    w
                }
                Err(zk::Error::NoNode) => continue, // gone in between: try again
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        tokio::select! {
            // Deleted (its owner's session ended) or changed: look again.
            _ = watcher.changed() => {}
            s = state.changed() => {
                if s != zk::SessionState::SyncConnected {
                    set(role, Role::Unknown);
                }
                if s.is_terminated() {
                    return Err(zk::Error::SessionExpired);
                }
                // Until connected again, nothing is known.
                while client.state() != zk::SessionState::SyncConnected {
                    let s = state.changed().await;
                    if s.is_terminated() {
                        return Err(zk::Error::SessionExpired);
                    }
                }
            }
            _ = stop.cancelled() => {
                if *role.borrow() == Role::Leader {
                    let _ = bounded(client.delete(&path, None)).await;
                    info!("left the leader znode: another orchestrator takes over");
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_znode_decides_the_role() {
        let other = LeaderRecord { instance: "b".into(), url: "http://b".into() };
        type Znode = Option<(i64, Option<LeaderRecord>)>;
        let cases: [(&str, Znode, Role); 5] = [
            ("no znode: nobody is known to lead", None, Role::Unknown),
            (
                "created by my session",
                Some((7, Some(LeaderRecord { instance: "a".into(), url: "x".into() }))),
                Role::Leader,
            ),
            ("mine even if unreadable", Some((7, None)), Role::Leader),
            ("another session's", Some((8, Some(other.clone()))), Role::Follower(other)),
            ("another session's, unreadable", Some((8, None)), Role::Unknown),
        ];
        for (what, znode, want) in cases {
            assert_eq!(role_of(znode, 7), want, "{what}");
        }
    }
}
