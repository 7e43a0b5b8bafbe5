//! Declaring the spec's broker objects and reaching the broker, shared by
//! every process that talks to RabbitMQ. Idempotent: each process declares on
//! every (re)connect, so no start order between processes matters and a
//! restarted broker (or another node of a cluster) is rebuilt.
//!
//! Two invariants live here. The shared queues are declared with the same
//! arguments by every process ([`QueueType`]: RabbitMQ refuses a redeclaration
//! with other arguments, PRECONDITION_FAILED). And a client given several nodes
//! ([`Nodes`]) tries the one after the node it lost first, so a dead node
//! costs one failed attempt, not a wait for it to come back.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::queues::{READ_Q, RESPONSE_Q, SNAPSHOT_Q, SYNC_X, WRITE_Q};

/// The headers of a snapshot request from a worker that holds a copy whose
/// last change is `seq` of `epoch` ([`crate::queues::HAVE_SEQ_HEADER`]).
pub fn have_headers(seq: u64, epoch: u64) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(crate::queues::HAVE_SEQ_HEADER.into(), AMQPValue::LongLongInt(seq as i64));
    h.insert(crate::queues::HAVE_EPOCH_HEADER.into(), AMQPValue::LongLongInt(epoch as i64));
    h
}

/// The copy a snapshot request says its worker holds, as (seq, epoch): None
/// unless both headers are there as non-negative integers.
pub fn have_position(headers: Option<&FieldTable>) -> Option<(u64, u64)> {
    let h = headers?.inner();
    let get = |k: &str| match h.get(k)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        _ => None,
    };
    Some((get(crate::queues::HAVE_SEQ_HEADER)?, get(crate::queues::HAVE_EPOCH_HEADER)?))
}

/// How the shared queues (`readQ`, `writeQ`, `snapshotQ`) and each
/// slave's sync queue are kept: on one node (`classic`, the single-node
/// default) or replicated by Raft over the cluster (`quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!("'{other}' is not a queue type (classic or quorum)")),
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        })
    }
}

/// A quorum sync queue nobody consumes is deleted after this long (ms): a
/// quorum queue cannot be exclusive, so a slave that died would otherwise
/// leave a queue that grows with every change. Safe at any length: a slave
/// that comes back always starts from a snapshot.
pub const SYNC_QUEUE_EXPIRES_MS: u32 = 60_000;

/// A shared queue's declaration: durable; with `x-queue-type` only for quorum
/// (a classic queue keeps the arguments it always had, so existing
/// deployments redeclare it unchanged).
pub fn shared_queue(kind: QueueType) -> (QueueDeclareOptions, FieldTable) {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut args = FieldTable::default();
    if kind == QueueType::Quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    }
    (durable, args)
}

/// A slave's own queue on the `syncQ` fanout. Classic: exclusive and
/// auto-deleted (gone with the slave's connection; the slave resyncs by
/// snapshot). Quorum: durable and replicated, so a change the broker
/// confirmed to the master is on a majority of nodes for every slave, and
/// deleted [`SYNC_QUEUE_EXPIRES_MS`] after its last consumer left.
pub fn sync_queue(kind: QueueType) -> (QueueDeclareOptions, FieldTable) {
    match kind {
        QueueType::Classic => {
            (QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, FieldTable::default())
        }
        QueueType::Quorum => {
            let (opts, mut args) = shared_queue(kind);
            args.insert("x-expires".into(), AMQPValue::LongUInt(SYNC_QUEUE_EXPIRES_MS));
            (opts, args)
        }
    }
}

/// Durable `readQ`, `writeQ`, `snapshotQ` and the `syncQ` fanout exchange.
pub async fn declare_topology(ch: &Channel, kind: QueueType) -> lapin::Result<()> {
    for q in [READ_Q, WRITE_Q, SNAPSHOT_Q] {
        let (opts, args) = shared_queue(kind);
        ch.queue_declare(q.into(), opts, args).await?;
    }
    ch.exchange_declare(
        SYNC_X.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
}

/// The reply queue of one orchestrator process, `responseQ.<instance>`: each
/// orchestrator gets the answers to its own requests only, however many run.
pub fn reply_queue(instance: &str) -> String {
    format!("{RESPONSE_Q}.{instance}")
}

/// Declare an orchestrator's reply queue: classic, exclusive and auto-deleted,
/// so it lives on the node of the connection that consumes it and goes with
/// it (a reply to a request whose caller already heard 503 is dropped). It
/// needs no replication: when that node goes, so does the connection, and the
/// orchestrator declares a new one where it reconnects.
pub async fn declare_reply_queue(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    ch.queue_declare(name.into(), opts, FieldTable::default()).await
}

/// Declare a slave's sync queue (see [`sync_queue`]), empty: a slave
/// (re)starts from a snapshot, so what an earlier connection left in a quorum
/// queue is never needed, and applying it (an old epoch marker below the
/// snapshot) would stop the slave. Empty as a fresh exclusive queue is.
pub async fn declare_sync_queue(ch: &Channel, name: &str, kind: QueueType) -> lapin::Result<lapin::Queue> {
    let (opts, args) = sync_queue(kind);
    let q = ch.queue_declare(name.into(), opts, args).await?;
    if kind == QueueType::Quorum && q.message_count() > 0 {
        ch.queue_purge(name.into(), Default::default()).await?;
    }
    Ok(q)
}

/// The broker's nodes as a client was given them: `AMQP_URL` is one URL or a
/// comma-separated list, one per node of a cluster.
#[derive(Debug)]
pub struct Nodes {
    urls: Vec<String>,
    /// Where the next connection attempt starts.
    next: AtomicUsize,
}

impl Nodes {
    pub fn parse(list: &str) -> Result<Nodes, String> {
        let urls: Vec<String> = list.split(',').map(|u| u.trim().to_owned()).collect();
        if let Some(bad) = urls.iter().find(|u| !(u.starts_with("amqp://") || u.starts_with("amqps://"))) {
            return Err(if bad.is_empty() {
                "an empty entry in the list of broker URLs".to_owned()
            } else {
                format!("'{}' is not an amqp:// URL", redact(bad))
            });
        }
        Ok(Nodes { urls, next: AtomicUsize::new(0) })
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The node indexes to try, in order, for one connection attempt.
    pub fn attempt_order(&self) -> Vec<usize> {
        attempt_order(self.next.load(Ordering::Relaxed), self.urls.len())
    }

    /// Connected to node `i`: once that connection is lost, start at the next one.
    fn connected_to(&self, i: usize) {
        self.next.store(after_loss(i, self.urls.len()), Ordering::Relaxed);
    }

    /// Node `i` as it may be logged (no credentials).
    pub fn describe(&self, i: usize) -> String {
        redact(&self.urls[i])
    }
}

impl FromStr for Nodes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Nodes::parse(s)
    }
}

impl Clone for Nodes {
    fn clone(&self) -> Self {
        Nodes { urls: self.urls.clone(), next: AtomicUsize::new(self.next.load(Ordering::Relaxed)) }
    }
}

/// Every node once, starting at `start`.
pub fn attempt_order(start: usize, n: usize) -> Vec<usize> {
    (0..n).map(|k| (start + k) % n).collect()
}

/// Where to start after losing the connection to node `i` of `n`: the node
/// after it (the lost one is the likeliest to be down).
pub fn after_loss(i: usize, n: usize) -> usize {
    (i + 1) % n.max(1)
}

/// `user:secret@` left out of a URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Connect to the first node that answers, trying each once in
/// [`Nodes::attempt_order`]; the error is the last node's. Returns the
/// connection and the node it is on (for the log).
pub async fn connect(nodes: &Nodes, name: &str) -> lapin::Result<(Connection, String)> {
    let mut last = None;
    for i in nodes.attempt_order() {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(&nodes.urls[i], props).await {
            Ok(c) => {
                nodes.connected_to(i);
                return Ok((c, nodes.describe(i)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into()))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_snapshot_request_says_which_copy_it_holds() {
        assert_eq!(have_position(Some(&have_headers(1_000_000, 7))), Some((1_000_000, 7)));
        assert_eq!(have_position(None), None, "a request without headers holds no copy");
        assert_eq!(have_position(Some(&FieldTable::default())), None);
        let mut odd = have_headers(5, 1);
        odd.insert(crate::queues::HAVE_EPOCH_HEADER.into(), AMQPValue::LongLongInt(-1));
        assert_eq!(have_position(Some(&odd)), None, "a negative epoch is no position");
        let mut text = FieldTable::default();
        text.insert(crate::queues::HAVE_SEQ_HEADER.into(), AMQPValue::LongString("5".into()));
        text.insert(crate::queues::HAVE_EPOCH_HEADER.into(), AMQPValue::LongLongInt(1));
        assert_eq!(have_position(Some(&text)), None, "only integers count");
    }

    use super::*;

    #[test]
    fn broker_url_lists() {
        let ok = [
            ("one node", "amqp://g:p@127.0.0.1:5672/%2f?heartbeat=2", 1),
            ("three nodes", "amqp://a:1/x,amqp://b:2/x,amqp://c:3/x", 3),
            ("spaces around entries", " amqp://a:1/x , amqps://b:2/x ", 2),
        ];
        for (what, list, n) in ok {
            assert_eq!(Nodes::parse(list).map(|n| n.len()), Ok(n), "{what}");
        }
        let bad = [
            ("empty", "", "empty entry"),
            ("trailing comma", "amqp://a:1/x,", "empty entry"),
            ("not amqp", "http://a:1/x", "not an amqp:// URL"),
            ("a secret is not echoed", "http://u:secret@a:1/x", "'http://a:1/x'"),
        ];
        for (what, list, msg) in bad {
            let e = Nodes::parse(list).unwrap_err();
            assert!(e.contains(msg), "{what}: {e}");
        }
    }

    #[test]
    fn reconnects_start_after_the_lost_node() {
        // (start, nodes) -> order of one attempt
        let cases = [(0, 1, vec![0]), (0, 3, vec![0, 1, 2]), (1, 3, vec![1, 2, 0]), (2, 3, vec![2, 0, 1])];
        for (start, n, want) in cases {
            assert_eq!(attempt_order(start, n), want, "start {start} of {n}");
        }
        // (connected to, nodes) -> where the attempt after its loss starts
        for (i, n, want) in [(0, 1, 0), (0, 3, 1), (1, 3, 2), (2, 3, 0)] {
            assert_eq!(after_loss(i, n), want, "lost {i} of {n}");
        }
        let nodes = Nodes::parse("amqp://a/x,amqp://b/x,amqp://c/x").unwrap();
        nodes.connected_to(1);
        assert_eq!(nodes.attempt_order(), vec![2, 0, 1]);
    }

    #[test]
    fn queue_declarations_per_type() {
        let (o, a) = shared_queue(QueueType::Classic);
        assert!(o.durable && !o.exclusive && a.inner().is_empty(), "classic queues keep their old arguments");
        let (o, a) = shared_queue(QueueType::Quorum);
        assert!(o.durable && !o.exclusive && !o.auto_delete);
        assert_eq!(a.inner().get("x-queue-type"), Some(&AMQPValue::LongString("quorum".into())));
        let (o, a) = sync_queue(QueueType::Classic);
        assert!(o.exclusive && o.auto_delete && a.inner().is_empty());
        let (o, a) = sync_queue(QueueType::Quorum);
        assert!(o.durable && !o.exclusive && !o.auto_delete, "a quorum queue cannot be exclusive or auto-delete");
        assert_eq!(a.inner().get("x-expires"), Some(&AMQPValue::LongUInt(SYNC_QUEUE_EXPIRES_MS)));
        assert_eq!("Quorum ".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("mirrored".parse::<QueueType>().is_err());
    }

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(redact("amqp://guest:guest@127.0.0.1:5781/%2f"), "amqp://127.0.0.1:5781/%2f");
        assert_eq!(redact("amqp://127.0.0.1:5781/%2f"), "amqp://127.0.0.1:5781/%2f");
    }
}
