//! The RabbitMQ side of a worker: one connection, the spec's topology, replies.

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use wire::queues::{READ_Q, RESPONSE_Q, SNAPSHOT_Q, SYNC_X, WRITE_Q};
use wire::Reply;

pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default().with_connection_name(name.into())).await
}

/// Declare every shared broker object. Idempotent; every process calls it on
/// each (re)connect, so no start order between processes matters.
pub async fn declare_topology(ch: &Channel) -> lapin::Result<()> {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    for q in [READ_Q, WRITE_Q, RESPONSE_Q, SNAPSHOT_Q] {
        ch.queue_declare(q.into(), durable, FieldTable::default()).await?;
    }
    ch.exchange_declare(
        SYNC_X.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Answer an RPC on its `reply_to` queue with its correlation id.
pub async fn reply(ch: &Channel, props: &BasicProperties, reply: &Reply) -> lapin::Result<()> {
    let Some(to) = props.reply_to() else { return Ok(()) };
    let body = serde_json::to_vec(reply).expect("replies serialize");
    let mut out = BasicProperties::default().with_content_type("application/json".into());
    if let Some(id) = props.correlation_id() {
        out = out.with_correlation_id(id.clone());
    }
    ch.basic_publish("".into(), to.clone(), BasicPublishOptions::default(), &body, out).await?;
    Ok(())
}
