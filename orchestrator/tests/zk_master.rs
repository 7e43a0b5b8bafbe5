#![cfg(feature = "e2e")]
//! The master record against a real ZooKeeper (`make test` starts one on
//! 127.0.0.1:2181, or `ZK_ADDR`): every write is a compare-and-set on the
//! version this orchestrator last read or wrote, so a leader that was paused
//! while another took over writes nothing when it wakes up.
//!
//! Run with `cargo test --release -p orchestrator --features e2e --test zk_master`.

use std::sync::Arc;
use std::time::Duration;

use orchestrator::cluster::zk::{Zk, ZkError};
use orchestrator::Telemetry;
use wire::coord::MasterRecord;

fn zk(root: &str) -> Zk {
    let addr = std::env::var("ZK_ADDR").unwrap_or_else(|_| "127.0.0.1:2181".into());
    Zk::new(&addr, root, Duration::from_secs(4), Arc::new(Telemetry::default()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_leader_cannot_write_the_master_record() {
    let root = format!("/rttest-cas-{}-{:x}", std::process::id(), rand::random::<u32>());
    let (a, b) = (zk(&root), zk(&root));

    // A brand-new root: the first leader creates the record.
    assert_eq!(a.master().await.unwrap(), None);
    a.set_master(&MasterRecord::named("w1", 1)).await.unwrap();
    a.set_master(&MasterRecord::named("w1", 2)).await.expect("its own last write is the version it holds");

    // A second orchestrator takes over: it reads the record, then fails over.
    assert_eq!(b.master().await.unwrap(), Some(MasterRecord::named("w1", 2)));
    b.set_master(&MasterRecord::named("w2", 3)).await.unwrap();

    // The first wakes up and acts on what it knew: refused, nothing written.
    assert!(matches!(a.set_master(&MasterRecord::named("w3", 3)).await, Err(ZkError::Superseded)));
    assert_eq!(b.master().await.unwrap(), Some(MasterRecord::named("w2", 3)), "the newer leader's record stands");
    b.set_master(&MasterRecord::named("w2", 4)).await.expect("the newer leader goes on");

    // A leader that starts on a root where another created the record
    // meanwhile (it read none) does not overwrite it either.
    let root2 = format!("{root}-fresh");
    let (c, d) = (zk(&root2), zk(&root2));
    assert_eq!(c.master().await.unwrap(), None);
    assert_eq!(d.master().await.unwrap(), None);
    d.set_master(&MasterRecord::named("x1", 1)).await.unwrap();
    assert!(matches!(c.set_master(&MasterRecord::named("y1", 1)).await, Err(ZkError::Superseded)));
    assert_eq!(c.master().await.unwrap(), Some(MasterRecord::named("x1", 1)));
}
