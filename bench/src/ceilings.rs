//! The ceilings: for each figure, the same amount of work with nothing of ours
//! in the way, measured in the same run on the same broker and machine.
//!
//! - [`RpcEcho`] bounds `db/read`: one long-lived client connection publishing
//!   to a bench-owned queue in the stack's vhost with `reply_to` and a
//!   correlation id (as orchestrator/src/rpc.rs does), an echo consumer on a
//!   second connection (as a slave) sending each body back.
//! - [`ConfirmedPublish`] bounds `db/write`: persistent messages to a durable
//!   queue, each caller waiting for the broker's publisher confirm, a
//!   consumer acking them.
//! - [`TrivialLb`] bounds the full path: nginx with the stack's load balancer
//!   config (scripts/lb.sh, both targets pointed at one handler) in front of
//!   a warp handler answering a fixed body of the measured answer's size.
//!
//! Every queue is named for this bench process and deleted (or auto-deleted)
//! when the ceiling is dropped; nginx is stopped by the same script.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::oneshot;
use warp::Filter;

use crate::load::Op;
use crate::procs::{self, Proc};

/// How long a ceiling's caller waits for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Publishing channels of a client connection (as the orchestrator's RPC client).
const PUBLISH_CHANNELS: usize = 4;
/// The echo consumer's prefetch (a slave's `readQ` prefetch).
const ECHO_PREFETCH: u16 = 64;

async fn connect(url: &str, name: &str) -> Result<Connection> {
    Connection::connect(url, ConnectionProperties::default().with_connection_name(name.into()))
        .await
        .with_context(|| format!("connecting to {url}"))
}

type Waiters = Mutex<HashMap<u64, oneshot::Sender<usize>>>;

/// The raw AMQP RPC echo (the ceiling of `db/read`).
pub struct RpcEcho {
    client: Connection,
    server: Connection,
    channels: Vec<Channel>,
    waiters: Arc<Waiters>,
    next: AtomicU64,
    next_channel: AtomicUsize,
    queue: String,
    reply_queue: String,
}

impl RpcEcho {
    pub async fn start(amqp_url: &str) -> Result<Arc<RpcEcho>> {
        let pid = std::process::id();
        let queue = format!("bench-echo-{pid}");
        let reply_queue = format!("bench-echo-replies-{pid}");
        let own = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };

        // The echo side (as a slave): take each request, send its body back, ack.
        let server = connect(amqp_url, "bench-echo").await?;
        let sch = server.create_channel().await?;
        sch.queue_declare(queue.as_str().into(), own, FieldTable::default()).await?;
        sch.basic_qos(ECHO_PREFETCH, BasicQosOptions::default()).await?;
        let mut requests = sch
            .basic_consume(queue.as_str().into(), "echo".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        tokio::spawn(async move {
            while let Some(Ok(d)) = requests.next().await {
                let ch = sch.clone();
                tokio::spawn(async move {
                    if let Some(to) = d.properties.reply_to().clone() {
                        let mut props = BasicProperties::default();
                        if let Some(id) = d.properties.correlation_id() {
                            props = props.with_correlation_id(id.clone());
                        }
                        ch.basic_publish("".into(), to, BasicPublishOptions::default(), &d.data, props).await.ok();
                    }
                    d.acker.ack(BasicAckOptions::default()).await.ok();
                });
            }
        });

        // The client side (as the orchestrator): one connection, a reply consumer.
        let client = connect(amqp_url, "bench-echo-client").await?;
        let cch = client.create_channel().await?;
        cch.queue_declare(reply_queue.as_str().into(), own, FieldTable::default()).await?;
        let mut replies = cch
            .basic_consume(
                reply_queue.as_str().into(),
                "echo-replies".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let waiters: Arc<Waiters> = Arc::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                let id = d.properties.correlation_id().as_ref().and_then(|s| s.as_str().parse::<u64>().ok());
                if let Some(tx) = id.and_then(|id| w.lock().expect("waiters").remove(&id)) {
                    let _ = tx.send(d.data.len());
                }
            }
        });
        let mut channels = vec![];
        for _ in 0..PUBLISH_CHANNELS {
            channels.push(client.create_channel().await?);
        }
        Ok(Arc::new(RpcEcho {
            client,
            server,
            channels,
            waiters,
            next: AtomicU64::new(1),
            next_channel: AtomicUsize::new(0),
            queue,
            reply_queue,
        }))
    }

    /// One round trip of `body`; the echo must come back whole.
    pub async fn call(&self, body: &[u8]) -> Result<(), String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").insert(id, tx);
        let props = BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(id.to_string().into())
            .with_expiration(CALL_TIMEOUT.as_millis().to_string().into());
        let ch = &self.channels[self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len()];
        let sent = ch.basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), body, props);
        if let Err(e) = sent.await {
            self.waiters.lock().expect("waiters").remove(&id);
            return Err(format!("publish: {e}"));
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(n)) if n == body.len() => Ok(()),
            Ok(Ok(n)) => Err(format!("echo of {n} bytes for {}", body.len())),
            Ok(Err(_)) => Err("echo consumer gone".into()),
            Err(_) => {
                self.waiters.lock().expect("waiters").remove(&id);
                Err(format!("no echo within {CALL_TIMEOUT:?}"))
            }
        }
    }

    pub fn op(self: &Arc<Self>, body: Bytes) -> Op {
        let me = self.clone();
        Arc::new(move |_| {
            let me = me.clone();
            let body = body.clone();
            Box::pin(async move { me.call(&body).await })
        })
    }

    pub async fn close(&self) {
        for c in [&self.client, &self.server] {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.close(200, "bench done".into())).await;
        }
    }
}

/// The raw confirmed publish of persistent messages (the ceiling of `db/write`).
pub struct ConfirmedPublish {
    client: Connection,
    server: Connection,
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
    queue: String,
}

impl ConfirmedPublish {
    pub async fn start(amqp_url: &str) -> Result<Arc<ConfirmedPublish>> {
        let queue = format!("bench-confirmed-{}", std::process::id());
        let server = connect(amqp_url, "bench-confirmed-consumer").await?;
        let sch = server.create_channel().await?;
        sch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
        sch.basic_qos(ECHO_PREFETCH, BasicQosOptions::default()).await?;
        let mut deliveries = sch
            .basic_consume(queue.as_str().into(), "acker".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        tokio::spawn(async move {
            while let Some(Ok(d)) = deliveries.next().await {
                d.acker.ack(BasicAckOptions::default()).await.ok();
            }
        });
        let client = connect(amqp_url, "bench-confirmed-client").await?;
        let mut channels = vec![];
        for _ in 0..PUBLISH_CHANNELS {
            let ch = client.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        Ok(Arc::new(ConfirmedPublish { client, server, channels, next_channel: AtomicUsize::new(0), queue }))
    }

    /// Publish one persistent message and wait for the broker's confirm.
    pub async fn publish(&self, body: &[u8]) -> Result<(), String> {
        let ch = &self.channels[self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len()];
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = ch
            .basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), body, props)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        match tokio::time::timeout(CALL_TIMEOUT, confirm).await {
            Ok(Ok(c)) if c.is_ack() => Ok(()),
            Ok(Ok(_)) => Err("nacked by the broker".into()),
            Ok(Err(e)) => Err(format!("confirm: {e}")),
            Err(_) => Err(format!("no confirm within {CALL_TIMEOUT:?}")),
        }
    }

    pub fn op(self: &Arc<Self>, body: Bytes) -> Op {
        let me = self.clone();
        Arc::new(move |_| {
            let me = me.clone();
            let body = body.clone();
            Box::pin(async move { me.publish(&body).await })
        })
    }

    /// Delete the durable queue and close both connections.
    pub async fn close(&self) {
        if let Ok(ch) = self.client.create_channel().await {
            ch.queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default()).await.ok();
        }
        for c in [&self.client, &self.server] {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.close(200, "bench done".into())).await;
        }
    }
}

/// nginx (the stack's LB config) in front of a handler answering a fixed body.
pub struct TrivialLb {
    /// http://127.0.0.1:port of nginx.
    pub url: String,
    dir: PathBuf,
    body: Arc<RwLock<Bytes>>,
    server: tokio::task::JoinHandle<()>,
}

impl TrivialLb {
    /// Start the handler and nginx (scripts/lb.sh) with its files under `dir`.
    pub async fn start(dir: PathBuf) -> Result<TrivialLb> {
        let body: Arc<RwLock<Bytes>> = Arc::new(RwLock::new(Bytes::from_static(b"[]")));
        let b = body.clone();
        let route = warp::any().map(move || {
            let body = b.read().expect("body").clone();
            warp::http::Response::builder().header("content-type", "application/json").body(body).expect("response")
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        let lb_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let st = tokio::process::Command::new(systest::root().join("scripts/lb.sh"))
            .arg("start")
            .env("LB_DIR", &dir)
            .env("LB_PORT", lb_port.to_string())
            .env("USERS_ADDR", addr.to_string())
            .env("RIDES_ADDR", addr.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .await?;
        if !st.success() {
            server.abort();
            bail!("scripts/lb.sh start (ceiling nginx in {}) failed", dir.display());
        }
        Ok(TrivialLb { url: format!("http://127.0.0.1:{lb_port}"), dir, body, server })
    }

    /// Answer every request with `n` bytes (a JSON array of that length).
    pub fn set_body_len(&self, n: usize) {
        *self.body.write().expect("body") = Bytes::from(json_of_len(n));
    }

    /// nginx's processes, for the CPU columns.
    pub fn procs(&self) -> Vec<Proc> {
        procs::nginx(&self.dir.join("nginx.pid"), "nginx-ceiling")
    }

    pub async fn stop(self) {
        let _ = tokio::process::Command::new(systest::root().join("scripts/lb.sh"))
            .arg("stop")
            .env("LB_DIR", &self.dir)
            .stdout(std::process::Stdio::null())
            .status()
            .await;
        self.server.abort();
    }
}

/// A JSON value exactly `n` bytes long (`[]` padded with a string when n > 4).
pub fn json_of_len(n: usize) -> Vec<u8> {
    if n < 4 {
        return b"[]".to_vec();
    }
    let mut v = Vec::with_capacity(n);
    v.extend_from_slice(b"[\"");
    v.resize(n - 2, b'x');
    v.extend_from_slice(b"\"]");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_of_a_given_length_are_json() {
        for n in [0, 3, 4, 5, 100, 25_000] {
            let b = json_of_len(n);
            assert_eq!(b.len(), if n < 4 { 2 } else { n }, "{n}");
            serde_json::from_slice::<serde_json::Value>(&b).unwrap();
        }
    }
}
