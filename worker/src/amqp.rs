//! The worker's RabbitMQ connection: connect (to the next node of a cluster
//! that answers), declare the topology (defined once in `wire::broker`),
//! answer RPCs. Replies always carry the request's
//! correlation id and go to its `reply_to` queue, never anywhere else.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use wire::broker::Nodes;
use wire::Reply;

/// Worker `id`'s own queue on the `syncQ` fanout, declared and bound: from
/// here on it receives every change the master publishes. Its name.
pub async fn bind_sync_queue(ch: &Channel, id: &str, kind: wire::broker::QueueType) -> lapin::Result<String> {
    use lapin::options::QueueBindOptions;
    let queue = wire::queues::sync_queue_for(id);
    declare_sync_queue(ch, &queue, kind).await?;
    let (x, opts) = (wire::queues::SYNC_X.into(), QueueBindOptions::default());
    ch.queue_bind(queue.as_str().into(), x, "".into(), opts, lapin::types::FieldTable::default()).await?;
    Ok(queue)
}

/// A connection to the first node that answers, starting after the node of
/// the connection lost last; and that node (for the log).
pub async fn connect(nodes: &Nodes, name: &str) -> lapin::Result<(Connection, String)> {
    wire::broker::connect(nodes, name).await
}

pub use wire::broker::{declare_sync_queue, declare_topology};

/// Returns once `conn` is gone for good, its calls possibly never to
/// answer (closed, or failed on a hard error from the broker), looking
/// every `CONNECTION_WATCH_EVERY`: raced against a role, it ends a role that
/// waits on a dead connection.
pub async fn lost(conn: &Connection) -> anyhow::Error {
    loop {
        tokio::time::sleep(crate::timing::CONNECTION_WATCH_EVERY).await;
        let status = conn.status();
        if status.closed() || status.errored() {
            return anyhow::anyhow!("the broker connection is {}", if status.errored() { "failed" } else { "closed" });
        }
    }
}

/// Answer an RPC on its `reply_to` queue with its correlation id.
pub async fn reply(ch: &Channel, props: &BasicProperties, reply: &Reply) -> lapin::Result<()> {
    let body = serde_json::to_vec(reply).expect("replies serialize");
    reply_bytes(ch, props, &body, BasicProperties::default().with_content_type("application/json".into())).await
}

/// The most bytes of answers in one reply message (a larger single answer
/// goes alone).
pub const REPLY_BYTES: usize = 1 << 20;

/// Answer a batch (`wire::Batch`): the answers, each encoded as JSON with
/// its index in the batch, in `Reply::Batch` messages of at most
/// [`REPLY_BYTES`] each.
pub async fn reply_answers(ch: &Channel, props: &BasicProperties, answers: &[(u32, Vec<u8>)]) -> lapin::Result<()> {
    let sizes: Vec<usize> = answers.iter().map(|(_, a)| a.len()).collect();
    for range in wire::split_by_size(&sizes, REPLY_BYTES) {
        let body = Reply::encode_batch(answers[range].iter().map(|(i, a)| (*i, &a[..])));
        let out = BasicProperties::default().with_content_type("application/json".into());
        reply_bytes(ch, props, &body, out).await?;
    }
    Ok(())
}

/// Send `body` to a request's `reply_to` queue, with its correlation id added
/// to `out` (nothing is sent for a request that asked for no answer).
pub async fn reply_bytes(
    ch: &Channel,
    props: &BasicProperties,
    body: &[u8],
    mut out: BasicProperties,
) -> lapin::Result<()> {
    let Some(to) = props.reply_to() else { return Ok(()) };
    if let Some(id) = props.correlation_id() {
        out = out.with_correlation_id(id.clone());
    }
    ch.basic_publish("".into(), to.clone(), BasicPublishOptions::default(), body, out).await?;
    Ok(())
}
