//! Answering `readQ`: each message is a batch of reads from one orchestrator
//! (`wire::Batch`), answered with `Reply::Batch` messages.
//!
//! Invariant: a read is answered only once this slave has applied the read's
//! floor (`min_seq`), so no answer is older than a write acknowledged before
//! the read was sent; every read still awaited gets exactly one answer. The
//! reads of a batch run in one SQLite read transaction (one snapshot, one
//! position); their answers go out in reply messages of at most
//! [`crate::amqp::REPLY_BYTES`] (a larger single answer goes alone), so a batch of large
//! answers never makes one huge message.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::Channel;
use tracing::warn;
use wire::{Batch, ReadMsg, Reply};

use crate::node::NodeCtx;
use crate::store::{ReaderPool, StoreError};

/// What to do with a batch: the answers known without reading (malformed
/// reads), the reads to run, and the floor they must wait for.
#[derive(Debug, Default)]
pub struct Plan {
    pub answered: Vec<(u32, Reply)>,
    pub reads: Vec<(u32, wire::Read)>,
    /// The highest floor among `reads`.
    pub floor: u64,
}

/// Sort a batch's reads (pure): reads past their deadline and malformed ones
/// are answered at once (503: the caller stopped waiting; 400), the others
/// are to run. Every read is answered, so the orchestrator's batch completes.
pub fn plan(batch: Batch<ReadMsg>, now_ms: u64) -> Plan {
    let mut p = Plan::default();
    for (i, msg) in batch.items.into_iter().enumerate() {
        let i = i as u32;
        if msg.deadline_ms.is_some_and(|d| now_ms > d) {
            p.answered.push((i, Reply::Unavailable { error: "read past its deadline".into() }));
            continue;
        }
        match msg.read.validate() {
            Err(e) => p.answered.push((i, Reply::Invalid { error: e.0 })),
            Ok(read) => {
                p.floor = p.floor.max(msg.min_seq);
                p.reads.push((i, read));
            }
        }
    }
    p
}

/// Answer one `readQ` message, then ack it. Not acked when the answer could
/// not be sent: the broker gives it to another slave when this channel closes.
pub async fn serve(d: Delivery, ch: Channel, pool: Arc<ReaderPool>, ctx: NodeCtx) {
    let answers = match serde_json::from_slice::<Batch<ReadMsg>>(&d.data) {
        Err(e) => {
            // One answer for the whole batch: the orchestrator hands it to each read.
            let reply = Reply::Invalid { error: format!("bad read message: {e}") };
            if let Err(e) = crate::amqp::reply(&ch, &d.properties, &reply).await {
                warn!(error = %e, "could not answer a read batch");
                return;
            }
            d.acker.ack(BasicAckOptions::default()).await.ok();
            return;
        }
        Ok(batch) => answer(plan(batch, wire::now_ms()), &pool, &ctx).await,
    };
    if let Err(e) = crate::amqp::reply_answers(&ch, &d.properties, &answers).await {
        warn!(error = %e, "could not answer a read batch");
        return;
    }
    d.acker.ack(BasicAckOptions::default()).await.ok();
}

/// Every answer of a plan, each encoded as JSON.
async fn answer(plan: Plan, pool: &Arc<ReaderPool>, ctx: &NodeCtx) -> Vec<(u32, Vec<u8>)> {
    let Plan { answered, reads, floor } = plan;
    let encode = |r: &Reply| serde_json::to_vec(r).expect("replies serialize");
    let mut out: Vec<(u32, Vec<u8>)> = answered.iter().map(|(i, r)| (*i, encode(r))).collect();
    if reads.is_empty() {
        return out;
    }
    let (index, reads): (Vec<u32>, Vec<wire::Read>) = reads.into_iter().unzip();
    let failed = |error: String| encode(&Reply::Unavailable { error });
    if !ctx.wait_applied(floor, ctx.cfg.read_wait).await {
        let behind = failed(format!("slave behind sequence {floor}"));
        out.extend(index.into_iter().map(|i| (i, behind.clone())));
        return out;
    }
    let pool = pool.clone();
    let answers: Vec<Vec<u8>> = match tokio::task::spawn_blocking(move || pool.read_many(&reads)).await {
        Ok(Ok((results, pos))) => results.into_iter().map(|r| read_answer(r, pos.seq)).collect(),
        Ok(Err(e)) => vec![failed(format!("read failed: {e}")); index.len()],
        Err(e) => vec![failed(format!("read task failed: {e}")); index.len()],
    };
    out.extend(index.into_iter().zip(answers));
    out
}

/// One read's answer, encoded: its rows; the caller's error (400) when the
/// answer would hold more rows than a read without a limit may
/// (`wire::MAX_ROWS`); else a failure of this slave (503).
fn read_answer(rows: crate::store::Result<Vec<u8>>, seq: u64) -> Vec<u8> {
    let reply = match rows {
        Ok(rows) => return Reply::encode_rows(&rows, seq),
        Err(e @ StoreError::TooManyRows(_)) => Reply::Invalid { error: e.to_string() },
        Err(e) => Reply::Unavailable { error: format!("read failed: {e}") },
    };
    serde_json::to_vec(&reply).expect("replies serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Condition, ReadRequest};

    fn read(table: &str, min_seq: u64, deadline_ms: Option<u64>) -> ReadMsg {
        let read = ReadRequest::table(table).columns(&["username"]).filter(Condition::eq("username", "ann"));
        ReadMsg { read, min_seq, deadline_ms }
    }

    #[test]
    fn a_plan_answers_late_and_bad_reads_at_once_and_waits_for_the_highest_floor() {
        let batch = Batch {
            items: vec![
                read("users", 3, Some(2_000)),
                read("users", 9, Some(500)), // past its deadline at 1,000
                read("no_such_table", 50, None),
                read("users", 7, None),
            ],
        };
        let p = plan(batch, 1_000);
        assert_eq!(p.reads.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(p.floor, 7); // not 9 (late) nor 50 (refused)
        assert!(matches!(p.answered.as_slice(), [(1, Reply::Unavailable { .. }), (2, Reply::Invalid { .. })]));
    }

    #[test]
    fn too_long_an_answer_is_the_callers_400_other_failures_a_503() {
        let decode = |b: Vec<u8>| serde_json::from_slice::<Reply>(&b).unwrap();
        assert!(matches!(decode(read_answer(Err(StoreError::TooManyRows(100_000)), 1)), Reply::Invalid { .. }));
        let busy = StoreError::Backup("busy".into());
        assert!(matches!(decode(read_answer(Err(busy), 1)), Reply::Unavailable { .. }));
        assert!(matches!(decode(read_answer(Ok(b"[]".to_vec()), 1)), Reply::Rows(_)));
    }

    #[test]
    fn an_empty_batch_plans_nothing() {
        let p = plan(Batch { items: vec![] }, 1_000);
        assert!(p.reads.is_empty() && p.answered.is_empty());
        assert_eq!(p.floor, 0);
    }
}
