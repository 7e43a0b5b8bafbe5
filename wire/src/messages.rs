//! HTTP answers of `/api/v1/db/*` and the messages carried by the broker.

use serde::{Deserialize, Serialize};

use crate::query::{ReadRequest, WriteRequest};

/// A result row: column name → value, in the order requested.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// 200 answer of `/api/v1/db/read`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadResponse {
    pub rows: Vec<Row>,
    /// The sequence number the answering slave had applied.
    pub seq: u64,
}

/// A [`ReadResponse`] as the orchestrator forwards it: the rows exactly as
/// the slave encoded them, never decoded and encoded again on the way (a
/// listing of a thousand rows would otherwise be parsed into a thousand maps
/// only to be printed back). Serializes exactly like a [`ReadResponse`].
#[derive(Debug, Clone, Serialize)]
pub struct RawReadResponse {
    pub rows: Box<serde_json::value::RawValue>,
    pub seq: u64,
}

/// 201 answer of `/api/v1/db/write` (and 200 of `db/clear` carries `{}` instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    pub rows_affected: u64,
    /// Insert into `rides`: the new `ride_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_insert_id: Option<i64>,
    /// The change's sequence number; reads passing it as their floor see it.
    pub seq: u64,
}

/// Error body of every 4xx/5xx: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(msg: impl Into<String>) -> Self {
        ErrorBody { error: msg.into() }
    }
}

/// What one message on `readQ` or `writeQ` carries: the requests one
/// orchestrator had waiting when it sent it (one when it is idle, up to its
/// batch limit under load). A message per request would cost the broker a
/// publish, a delivery and an ack each; a batch costs them once.
///
/// Answered on `reply_to` by one or more [`Reply::Batch`] messages with the
/// batch's correlation id; each answers some of the requests by their index,
/// and together they answer every request exactly once (a batch is split over
/// several replies only when the answers are large).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch<M> {
    pub items: Vec<M>,
}

/// A read, one item of a [`Batch`] on `readQ`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadMsg {
    pub read: ReadRequest,
    /// The slave must have applied at least this sequence number (0 for eventual reads).
    pub min_seq: u64,
    /// Unix time (ms) after which the caller no longer waits: skip the work.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// One item of a [`Batch`] on `writeQ`: a write (its `request_id` always set
/// by the orchestrator), or, when `write` is `None`, a read index: the master
/// answers [`Reply::ReadIndex`] with the highest sequence number it has
/// committed, which covers every write any orchestrator has acknowledged
/// before the question reached it (the floor of a strong read, docs/guarantees.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteMsg {
    pub write: Option<WriteRequest>,
    /// Unix time (ms) after which the caller got a 503: the write must not be
    /// applied any more (RabbitMQ's TTL only covers messages not yet delivered).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch, for deadlines.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// True once a message's deadline has passed.
pub fn expired(deadline_ms: Option<u64>) -> bool {
    deadline_ms.is_some_and(|d| now_ms() > d)
}

/// What a worker answers on `responseQ`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Rows(ReadResponse),
    Written {
        outcome: WriteOutcome,
        /// The epoch of the master that committed it; the orchestrator drops
        /// answers from a master older than the current one (fencing).
        epoch: u64,
    },
    /// A constraint said no (duplicate key, unknown foreign key): 409.
    Conflict {
        error: String,
        epoch: u64,
    },
    /// The request was malformed after all: 400.
    Invalid {
        error: String,
    },
    /// The worker could not serve it now (behind, shutting down): 503.
    Unavailable {
        error: String,
    },
    /// The master's answer to a read index (a [`WriteMsg`] without a write):
    /// every change up to `seq` is committed and on every slave's sync queue.
    ReadIndex {
        seq: u64,
        epoch: u64,
    },
    /// Answers to some requests of a [`Batch`]: (index in the batch, answer).
    Batch {
        answers: Vec<(u32, Reply)>,
    },
}

impl Reply {
    /// The body of a [`Reply::Rows`] whose rows are already a JSON array
    /// (a slave writes them straight from the database).
    pub fn encode_rows(rows_json: &[u8], seq: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(rows_json.len() + 40);
        body.extend_from_slice(br#"{"kind":"rows","rows":"#);
        body.extend_from_slice(rows_json);
        body.extend_from_slice(br#","seq":"#);
        body.extend_from_slice(seq.to_string().as_bytes());
        body.push(b'}');
        body
    }

    /// The body of a [`Reply::Batch`] holding `answers`, each already encoded
    /// as JSON (so a worker can size its reply messages before sending them).
    pub fn encode_batch<'a>(answers: impl IntoIterator<Item = (u32, &'a [u8])>) -> Vec<u8> {
        let mut body = br#"{"kind":"batch","answers":["#.to_vec();
        for (n, (i, answer)) in answers.into_iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.push(b'[');
            body.extend_from_slice(i.to_string().as_bytes());
            body.push(b',');
            body.extend_from_slice(answer);
            body.push(b']');
        }
        body.extend_from_slice(b"]}");
        body
    }
}

/// Splits answers of these encoded sizes into reply messages of at most
/// `limit` bytes each (an answer larger than `limit` goes alone): the index
/// ranges, in order, covering every answer once.
pub fn split_by_size(sizes: &[usize], limit: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        if i > start && bytes + size > limit {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// One committed change, fanned out on `syncQ` to every slave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub epoch: u64,
    /// The write as the master executed it, generated ids filled in, so a
    /// replay on a slave gives the same rows.
    pub write: WriteRequest,
    pub outcome: WriteOutcome,
    /// When the master applied it (Unix ms, its clock): every copy records
    /// the write's request id with this time, so all of them keep and drop
    /// the id alike. 0 in changes from before it was carried.
    #[serde(default)]
    pub at_ms: u64,
}

/// A message on a slave's sync queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SyncMsg {
    /// Put by a slave on its own queue: once it reaches it, everything queued
    /// before has been applied (catch-up done; safe to promote).
    Marker { token: String },
    /// Changes of one group commit, in order (one message instead of one each;
    /// a large group is split over several, see [`SyncMsg::encode_changes`]).
    Changes { changes: Vec<Change> },
    /// First message of a new master: it holds every change up to `seq`.
    /// After it, changes of older epochs are refused (a deposed master's), and
    /// a slave already past `seq` has applied such a change and must reload.
    Epoch { epoch: u64, seq: u64 },
}

impl SyncMsg {
    /// The body of a [`SyncMsg::Changes`] holding these changes, each already
    /// encoded as JSON (so the master can size its messages before sending).
    pub fn encode_changes<'a>(changes: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut body = br#"{"kind":"changes","changes":["#.to_vec();
        for (n, change) in changes.into_iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(change);
        }
        body.extend_from_slice(b"]}");
        body
    }
}

/// What a snapshot reply's [`SnapshotFrame::Header`] says about the file that follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The last change the file holds.
    pub seq: u64,
    /// The serving master's epoch (newer than the file's own after a promotion).
    pub epoch: u64,
    /// The file's length in bytes.
    pub size: u64,
    /// How many [`SnapshotFrame::Chunk`]s follow, numbered from 0.
    pub chunks: u64,
    /// The length of every chunk but the last (which holds the rest, at least one byte).
    pub chunk_bytes: u64,
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
}

/// One message of a snapshot reply. The master answers a request on
/// `snapshotQ` with a sequence of them on the request's `reply_to` queue, each
/// with the request's correlation id: [`Started`](Self::Started),
/// [`Header`](Self::Header), then the chunks in order; or
/// [`Failed`](Self::Failed) instead of the header. No message carries the
/// whole file, so the broker's message size limit never caps the database.
///
/// On the wire a message is this enum as one JSON line, then `\n`, then the
/// chunk's bytes (nothing for the other kinds): [`encode`](Self::encode),
/// [`decode`](Self::decode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SnapshotFrame {
    /// The master took the request and is copying the database (a large
    /// file takes a while before the header can say its size and checksum).
    Started,
    Header(SnapshotHeader),
    /// Chunk `index` of the file; its bytes follow the JSON line.
    Chunk {
        index: u64,
    },
    /// The master could not copy the database; the slave asks again.
    Failed {
        error: String,
    },
    /// Instead of `Started`: the request said the worker's own copy ends at
    /// `seq` with a change of epoch `copy_epoch` (the headers in
    /// [`crate::queues::HAVE_SEQ_HEADER`]), and so does the master's. The same
    /// last change means the same history: the worker keeps its file and
    /// applies what follows from its sync queue. `epoch` is the master's.
    Current {
        seq: u64,
        copy_epoch: u64,
        epoch: u64,
    },
}

impl SnapshotFrame {
    /// The message body: this frame's JSON line, `\n`, then `payload`.
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut body = serde_json::to_vec(self).expect("snapshot frames serialize");
        body.reserve_exact(1 + payload.len());
        body.push(b'\n');
        body.extend_from_slice(payload);
        body
    }

    /// A message body split into its frame and its payload.
    pub fn decode(body: &[u8]) -> Result<(SnapshotFrame, &[u8]), String> {
        let nl = body.iter().position(|b| *b == b'\n').ok_or("snapshot message without a frame line")?;
        let frame = serde_json::from_slice(&body[..nl]).map_err(|e| format!("unreadable snapshot frame: {e}"))?;
        Ok((frame, &body[nl + 1..]))
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn an_encoded_batch_reply_decodes() {
        let rows = serde_json::to_vec(&Reply::Rows(ReadResponse { rows: vec![], seq: 4 })).unwrap();
        let gone = serde_json::to_vec(&Reply::Unavailable { error: "behind".into() }).unwrap();
        let body = Reply::encode_batch([(0, &rows[..]), (7, &gone[..])]);
        let Reply::Batch { answers } = serde_json::from_slice(&body).unwrap() else { panic!("not a batch") };
        assert_eq!(answers.len(), 2);
        assert!(matches!(answers[0], (0, Reply::Rows(ReadResponse { seq: 4, .. }))));
        assert!(matches!(&answers[1], (7, Reply::Unavailable { error }) if error == "behind"));
        let empty: Reply = serde_json::from_slice(&Reply::encode_batch([])).unwrap();
        assert!(matches!(empty, Reply::Batch { answers } if answers.is_empty()));
    }

    #[test]
    fn encoded_rows_are_a_rows_reply() {
        let body = Reply::encode_rows(br#"[{"username":"ann"},{"username":"bob"}]"#, 12);
        let Reply::Rows(r) = serde_json::from_slice(&body).unwrap() else { panic!("not rows") };
        assert_eq!((r.rows.len(), r.seq), (2, 12));
        assert_eq!(r.rows[1]["username"], "bob");
    }

    #[test]
    fn encoded_changes_decode_in_order() {
        let change = |seq| Change {
            seq,
            epoch: 1,
            write: WriteRequest::clear(),
            outcome: WriteOutcome { rows_affected: 0, last_insert_id: None, seq },
            at_ms: 0,
        };
        let parts: Vec<Vec<u8>> = [5, 6].map(|s| serde_json::to_vec(&change(s)).unwrap()).into();
        let msg: SyncMsg = serde_json::from_slice(&SyncMsg::encode_changes(parts.iter().map(|p| &p[..]))).unwrap();
        let SyncMsg::Changes { changes } = msg else { panic!("not changes") };
        assert_eq!(changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn answers_are_split_into_messages_by_size() {
        // (sizes, limit, the messages as (first, end) index pairs)
        type Case = (&'static [usize], usize, &'static [(usize, usize)]);
        let table: &[Case] = &[
            (&[], 10, &[]),
            (&[3], 10, &[(0, 1)]),
            (&[3, 3, 3], 10, &[(0, 3)]),
            (&[3, 3, 3, 3], 10, &[(0, 3), (3, 4)]),
            (&[20], 10, &[(0, 1)]),
            (&[1, 20, 1], 10, &[(0, 1), (1, 2), (2, 3)]),
            (&[5, 5, 5], 10, &[(0, 2), (2, 3)]),
        ];
        for (sizes, limit, want) in table {
            let got: Vec<(usize, usize)> = split_by_size(sizes, *limit).into_iter().map(|r| (r.start, r.end)).collect();
            assert_eq!(got, *want, "sizes {sizes:?} limit {limit}");
        }
    }
}

#[cfg(test)]
mod snapshot_frame_tests {
    use super::*;

    #[test]
    fn a_frame_and_its_bytes_round_trip() {
        let header = SnapshotHeader { seq: 7, epoch: 2, size: 5, chunks: 2, chunk_bytes: 3, sha256: "ab".into() };
        for (frame, payload) in [
            (SnapshotFrame::Started, &b""[..]),
            (SnapshotFrame::Header(header), b""),
            (SnapshotFrame::Chunk { index: 1 }, b"bytes\n\0with a newline"),
            (SnapshotFrame::Failed { error: "disk full".into() }, b""),
            (SnapshotFrame::Current { seq: 9, copy_epoch: 2, epoch: 3 }, b""),
        ] {
            let body = frame.encode(payload);
            assert_eq!(SnapshotFrame::decode(&body).unwrap(), (frame, payload));
        }
        assert_eq!(
            String::from_utf8(SnapshotFrame::Chunk { index: 3 }.encode(b"x")).unwrap(),
            "{\"kind\":\"chunk\",\"index\":3}\nx"
        );
    }

    #[test]
    fn a_body_without_a_frame_line_is_refused() {
        assert!(SnapshotFrame::decode(b"raw sqlite bytes").is_err());
        assert!(SnapshotFrame::decode(b"{\"seq\":1,\"epoch\":1}\nold single-message reply").is_err());
    }
}
