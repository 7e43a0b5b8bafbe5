//! The master role: consume `writeQ`, commit, fan the change out on `syncQ`
//! with a publisher confirm, then acknowledge and answer; and serve snapshots.
//!
//! The order is what makes an acknowledged write safe: by the time the caller
//! hears "written", the change is committed here *and* the broker has
//! confirmed it was routed to every slave's queue. If this process dies in
//! between, the write is still unacknowledged on `writeQ`, the broker hands it
//! to the next master, and its request id makes the replay an answer rather
//! than a second application.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use rusqlite::Connection as Db;
use tracing::{error, info, warn};
use wire::coord::Role;
use wire::queues::{SNAPSHOT_Q, SYNC_X, WRITE_Q};
use wire::{Reply, SnapshotHeader, SyncMsg, WriteMsg};

use crate::store::{self, Applied, StoreError};
use crate::Shared;

/// Why the master loop ended without a broker error.
#[derive(Debug)]
pub enum MasterExit {
    /// The master record names another worker or a newer epoch.
    Deposed,
    /// SIGTERM: the write in hand was finished.
    Stopped,
}

/// Publish on `syncQ` and wait for the broker's confirm.
async fn publish_sync(ch: &Channel, msg: &SyncMsg) -> Result<()> {
    let body = serde_json::to_vec(msg).expect("sync messages serialize");
    let confirm = ch
        .basic_publish(SYNC_X.into(), "".into(), BasicPublishOptions::default(), &body, BasicProperties::default())
        .await?
        .await?;
    if !confirm.is_ack() {
        bail!("broker refused the change (nack)");
    }
    Ok(())
}

/// Run as master until the broker connection fails or this worker is deposed.
pub async fn run(
    conn: &Connection,
    db: Arc<Mutex<Db>>,
    shared: &Shared,
    epoch: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<MasterExit> {
    let sync_ch = conn.create_channel().await?;
    sync_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let reply_ch = conn.create_channel().await?;

    // Tell the slaves which epoch starts and where (see SyncMsg::Epoch).
    let pos = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || store::position(&db.lock().expect("db lock"))).await??
    };
    publish_sync(&sync_ch, &SyncMsg::Epoch { epoch, seq: pos.seq }).await?;
    shared.set_position(Role::Master, pos.seq, epoch);

    let snap = tokio::spawn(serve_snapshots(conn.create_channel().await?, shared.clone(), epoch));

    let write_ch = conn.create_channel().await?;
    write_ch.basic_qos(64, BasicQosOptions::default()).await?;
    let mut writes = write_ch
        .basic_consume(
            WRITE_Q.into(),
            format!("master-{}", shared.cfg.worker_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(worker = %shared.cfg.worker_id, epoch, seq = pos.seq, "serving as master");

    let mut master = shared.coord.master.clone();
    let result = loop {
        tokio::select! {
            d = writes.next() => {
                let Some(d) = d else { break Err(anyhow!("writeQ consumer closed")) };
                let d = d?;
                if let Err(e) = handle_write(&d, &db, &sync_ch, &reply_ch, shared, epoch).await {
                    break Err(e);
                }
            }
            _ = master.changed() => {
                let rec = master.borrow_and_update().clone();
                if rec.as_ref().map_or(true, |r| r.id != shared.cfg.worker_id || r.epoch != epoch) {
                    warn!(worker = %shared.cfg.worker_id, epoch, now = ?rec, "deposed: no longer master");
                    break Ok(MasterExit::Deposed);
                }
            }
            _ = stop.changed() => break Ok(MasterExit::Stopped),
        }
    };
    snap.abort();
    result
}

async fn handle_write(
    d: &lapin::message::Delivery,
    db: &Arc<Mutex<Db>>,
    sync_ch: &Channel,
    reply_ch: &Channel,
    shared: &Shared,
    epoch: u64,
) -> Result<()> {
    let msg: WriteMsg = match serde_json::from_slice(&d.data) {
        Ok(m) => m,
        Err(e) => {
            crate::broker::reply(reply_ch, &d.properties, &Reply::Invalid { error: format!("bad write message: {e}") })
                .await?;
            d.acker.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    // Fencing: a newer master record, or no fresh lease, means another
    // master may exist already.
    if !still_master(shared, epoch) {
        d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
        bail!("deposed: the master record names another worker");
    }
    if !wait_for_lease(shared).await {
        d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
        bail!("lease lost: stopped taking writes");
    }
    if wire::expired(msg.deadline_ms) {
        warn!(request_id = ?msg.write.request_id, "write past its deadline dropped (the caller got a 503)");
        d.acker.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let applied = {
        let db = db.clone();
        let req = msg.write.clone();
        tokio::task::spawn_blocking(move || store::execute_write(&mut db.lock().expect("db lock"), &req, epoch))
            .await?
    };
    let reply = match applied {
        Ok(Applied::New(change)) => {
            let outcome = change.outcome;
            publish_sync(sync_ch, &SyncMsg::Change(change)).await.context("publishing change on syncQ")?;
            shared.set_position(Role::Master, outcome.seq, epoch);
            Reply::Written { outcome, epoch }
        }
        Ok(Applied::Duplicate(outcome)) => Reply::Written { outcome, epoch },
        Err(StoreError::Conflict(e)) => Reply::Conflict { error: e, epoch },
        Err(StoreError::Invalid(e)) => Reply::Invalid { error: e.0 },
        Err(e) => {
            error!(error = %e, "write failed");
            Reply::Unavailable { error: format!("write failed: {e}") }
        }
    };
    // Checked again: the lease may have run out while we committed.
    if !shared.coord.lease.valid() || !still_master(shared, epoch) {
        d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
        bail!("lease lost while writing: stopped taking writes");
    }
    crate::broker::reply(reply_ch, &d.properties, &reply).await?;
    d.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

fn still_master(shared: &Shared, epoch: u64) -> bool {
    shared.coord.master.borrow().as_ref().is_some_and(|r| r.id == shared.cfg.worker_id && r.epoch == epoch)
}

/// A short ZooKeeper hiccup should not drop writes: wait a little for the lease.
async fn wait_for_lease(shared: &Shared) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while !shared.coord.lease.valid() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Answer snapshot requests of new slaves: header line, then the file.
async fn serve_snapshots(ch: Channel, shared: Shared, epoch: u64) -> Result<()> {
    ch.basic_qos(1, BasicQosOptions::default()).await?;
    let mut reqs = ch
        .basic_consume(
            SNAPSHOT_Q.into(),
            format!("snap-{}", shared.cfg.worker_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = reqs.next().await {
        let d = d?;
        let path = shared.cfg.db_path.clone();
        match tokio::task::spawn_blocking(move || store::snapshot(&path)).await? {
            Ok((bytes, pos)) => {
                let mut body = serde_json::to_vec(&SnapshotHeader { seq: pos.seq, epoch }).expect("serializes");
                body.push(b'\n');
                body.extend_from_slice(&bytes);
                if let Some(to) = d.properties.reply_to() {
                    let mut props = BasicProperties::default();
                    if let Some(id) = d.properties.correlation_id() {
                        props = props.with_correlation_id(id.clone());
                    }
                    ch.basic_publish("".into(), to.clone(), BasicPublishOptions::default(), &body, props).await?;
                }
                info!(seq = pos.seq, bytes = bytes.len(), "snapshot served");
                d.acker.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                error!(error = %e, "snapshot failed");
                d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
