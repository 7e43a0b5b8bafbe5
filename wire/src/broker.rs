//! Declaring the spec's broker objects, shared by every process that talks to
//! RabbitMQ. Idempotent: each process declares on every (re)connect, so no
//! start order between processes matters and a restarted broker is rebuilt.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

use crate::queues::{READ_Q, RESPONSE_Q, SNAPSHOT_Q, SYNC_X, WRITE_Q};

/// Durable `readQ`, `writeQ`, `responseQ`, `snapshotQ` and the `syncQ` fanout exchange.
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
    .await
}
