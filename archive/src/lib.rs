//! The continuous backup's archive in an object store (`file:///abs/dir` or
//! `s3://bucket/prefix`): base snapshots (SQLite files) and segments of the
//! change log (`syncQ` messages as received), every object checksummed
//! (SHA-256), and what a point-in-time restore needs ([`Archive::fetch`]).
//! No SQLite here: installing a [`Plan`] into a database is the archiver's
//! (`archiver::restore`).
//!
//! Layout and names: [`layout`]. Which changes make up the history across
//! epochs: [`linear`] (pure, table-tested). Retention: [`retention`] (same).
//!
//! Time targets: a change's time is when the archiver *received* it (its
//! segment line's `at_ms`), not when the master committed it; it lags the
//! commit by the broker's delivery (milliseconds) and is resolved to the
//! archiver's flush interval at worst (`ARCHIVE_FLUSH_MS`: lines of one
//! segment are stamped as they arrive, but a restore "to time T" can only see
//! what was received by T).

pub mod layout;
pub mod linear;
pub mod retention;

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use layout::{Line, SegmentName, SnapshotMeta};
use linear::{ChangeRef, Linear, Point};

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("BACKUP_URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{object}: its SHA-256 is {got}, the archive recorded {expected}: refusing a corrupted object")]
    Checksum { object: String, expected: String, got: String },
    #[error("{object}: unreadable: {why}")]
    Corrupt { object: String, why: String },
    #[error("the archive cannot restore to {target}: {why}")]
    Unreachable { target: String, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn io(path: &FsPath) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_owned(), source }
}

/// What a restore may aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// As far as the archive reaches.
    Latest,
    /// Exactly this sequence number.
    Seq(u64),
    /// Everything the archiver had received at this time (ms since the Unix epoch).
    TimeMs(u64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => f.write_str("the latest archived change"),
            Target::Seq(n) => write!(f, "seq {n}"),
            Target::TimeMs(t) => write!(f, "time {t} ms"),
        }
    }
}

/// What a restore installs and applies, downloaded and verified.
#[derive(Debug)]
pub struct Plan {
    /// The base snapshot and its downloaded file; `None`: start from an empty database.
    pub snapshot: Option<(SnapshotMeta, PathBuf)>,
    /// The changes after the snapshot, in seq order, up to `seq`.
    pub changes: Vec<wire::Change>,
    /// The position the restored database must end at.
    pub seq: u64,
    pub epoch: u64,
}

/// What the archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Oldest first.
    pub snapshots: Vec<SnapshotMeta>,
    pub segments: u64,
    pub log_bytes: u64,
    /// The lowest seq the log mentions (0: no log).
    pub log_first_seq: u64,
    /// The newest archived position, by (epoch, seq), and the newest receipt time.
    pub seq: u64,
    pub epoch: u64,
    pub at_ms: u64,
}

/// Deleted by [`Archive::prune`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub snapshots: usize,
    pub segments: usize,
}

/// An archive at a `BACKUP_URL`.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("url", &self.url).finish()
    }
}

/// Requests to the object store: a failed one is retried a few times within
/// this long, then the caller (the archiver's loop) backs off and tries again.
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Archive {
    /// `file:///abs/dir` (created if missing) or `s3://bucket/prefix`, the
    /// latter configured from the standard variables (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL; http endpoints allowed).
    pub fn open(url: &str) -> Result<Archive> {
        let bad = |why: &str| ArchiveError::Url { url: url.to_owned(), why: why.to_owned() };
        let parsed = url::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| bad("not an absolute file path"))?;
                std::fs::create_dir_all(&dir).map_err(|e| bad(&format!("cannot create {}: {e}", dir.display())))?;
                let store = LocalFileSystem::new_with_prefix(&dir)?;
                Ok(Archive { store: Arc::new(store), prefix: Path::default(), url: url.to_owned() })
            }
            "s3" => {
                let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("no bucket"))?;
                let retry =
                    RetryConfig { backoff: BackoffConfig::default(), max_retries: 4, retry_timeout: RETRY_TIMEOUT };
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(true)
                    .with_retry(retry)
                    .with_client_options(
                        ClientOptions::new()
                            .with_allow_http(true)
                            .with_timeout(REQUEST_TIMEOUT)
                            .with_connect_timeout(Duration::from_secs(5)),
                    );
                if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
                    builder = builder.with_region("us-east-1");
                }
                let store = builder.build()?;
                let prefix = Path::from(parsed.path().trim_matches('/'));
                Ok(Archive { store: Arc::new(store), prefix, url: url.to_owned() })
            }
            other => Err(bad(&format!("scheme {other:?} is neither file nor s3"))),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, folder: &str, name: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in [folder, name] {
            p = p.child(part);
        }
        p
    }

    fn folder(&self, folder: &str) -> Path {
        self.prefix.child(folder)
    }

    /// Names (the last part) and sizes of the objects in `folder`.
    async fn list(&self, folder: &str) -> Result<Vec<(String, u64)>> {
        let metas: Vec<_> = self.store.list(Some(&self.folder(folder))).try_collect().await?;
        Ok(metas.into_iter().filter_map(|m| Some((m.location.filename()?.to_owned(), m.size))).collect())
    }

    /// Every snapshot with a manifest, oldest (lowest seq) first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotMeta>> {
        let mut out = vec![];
        for (name, _) in self.list(layout::SNAPSHOTS).await? {
            let Some((seq, epoch, true)) = layout::parse_snapshot_name(&name) else { continue };
            let path = self.path(layout::SNAPSHOTS, &name);
            let bytes = self.store.get(&path).await?.bytes().await?;
            let meta: SnapshotMeta = serde_json::from_slice(&bytes)
                .map_err(|e| ArchiveError::Corrupt { object: path.to_string(), why: e.to_string() })?;
            if (meta.seq, meta.epoch) != (seq, epoch) || !layout::is_sha256(&meta.sha256) {
                return Err(ArchiveError::Corrupt { object: path.to_string(), why: "disagrees with its name".into() });
            }
            out.push(meta);
        }
        out.sort_by_key(|m| (m.seq, m.epoch));
        Ok(out)
    }

    /// Every log segment and its size, in name order.
    pub async fn segments(&self) -> Result<Vec<(SegmentName, u64)>> {
        let mut out: Vec<_> = self
            .list(layout::LOG)
            .await?
            .into_iter()
            .filter_map(|(n, size)| Some((SegmentName::parse(&n)?, size)))
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn summary(&self) -> Result<Summary> {
        let snapshots = self.snapshots().await?;
        let segments = self.segments().await?;
        let mut s = Summary {
            segments: segments.len() as u64,
            log_bytes: segments.iter().map(|(_, b)| b).sum(),
            log_first_seq: segments.iter().map(|(n, _)| n.first_seq).min().unwrap_or(0),
            ..Summary::default()
        };
        let newest = segments
            .iter()
            .map(|(n, _)| (n.epoch, n.last_seq, n.at_ms))
            .chain(snapshots.iter().map(|m| (m.epoch, m.seq, m.at_ms)))
            .max_by_key(|&(e, seq, _)| (e, seq));
        if let Some((epoch, seq, _)) = newest {
            s.epoch = epoch;
            s.seq = seq;
        }
        s.at_ms = segments.iter().map(|(n, _)| n.at_ms).chain(snapshots.iter().map(|m| m.at_ms)).max().unwrap_or(0);
        s.snapshots = snapshots;
        Ok(s)
    }

    /// Upload a base snapshot file (streamed, multipart when large), then
    /// its manifest; the snapshot exists once the manifest does.
    pub async fn put_snapshot(&self, file: &FsPath, seq: u64, epoch: u64, at_ms: u64) -> Result<SnapshotMeta> {
        let stem = layout::snapshot_stem(seq, epoch);
        let db = self.path(layout::SNAPSHOTS, &format!("{stem}.db"));
        let mut f = tokio::fs::File::open(file).await.map_err(io(file))?;
        let mut out = object_store::buffered::BufWriter::new(self.store.clone(), db.clone());
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(io(file))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
            if let Err(e) = out.write_all(&buf[..n]).await {
                out.abort().await.ok();
                return Err(io(file)(e));
            }
        }
        out.shutdown().await.map_err(|e| ArchiveError::Io { path: PathBuf::from(db.to_string()), source: e })?;
        let meta = SnapshotMeta { seq, epoch, at_ms, bytes, sha256: hex(&hasher.finalize()) };
        let manifest = serde_json::to_vec(&meta).expect("manifests serialize");
        self.store.put(&self.path(layout::SNAPSHOTS, &format!("{stem}.json")), PutPayload::from(manifest)).await?;
        Ok(meta)
    }

    /// Upload one segment of lines (each a [`Line`] as JSON, see
    /// [`encode_line`]); `None` when they mention no seq (nothing to keep).
    pub async fn put_segment(&self, lines: &[Vec<u8>]) -> Result<Option<SegmentName>> {
        let Some(name) = segment_name(lines) else { return Ok(None) };
        let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            body.extend_from_slice(l);
            body.push(b'\n');
        }
        let name = SegmentName { sha256: sha256(&body), ..name };
        self.store.put(&self.path(layout::LOG, &name.file_name()), PutPayload::from(body)).await?;
        Ok(Some(name))
    }

    /// Download `path` into `file`, checking its SHA-256; the file is removed on a mismatch.
    async fn download(&self, path: &Path, file: &FsPath, expected: &str) -> Result<u64> {
        let mut out = tokio::fs::File::create(file).await.map_err(io(file))?;
        let mut stream = self.store.get(path).await?.into_stream();
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io(file))?;
        }
        out.sync_all().await.map_err(io(file))?;
        let got = hex(&hasher.finalize());
        if got != expected {
            let _ = tokio::fs::remove_file(file).await;
            return Err(ArchiveError::Checksum { object: path.to_string(), expected: expected.to_owned(), got });
        }
        Ok(bytes)
    }

    /// Download and verify what a restore to `target` needs into `dir` (see [`Plan`]).
    pub async fn fetch(&self, target: Target, dir: &FsPath) -> Result<Plan> {
        let unreachable = |why: String| ArchiveError::Unreachable { target: target.to_string(), why };
        let until = match target {
            Target::TimeMs(t) => t,
            _ => u64::MAX,
        };
        let log_dir = dir.join("log");
        tokio::fs::create_dir_all(&log_dir).await.map_err(io(&log_dir))?;
        let snapshots: Vec<SnapshotMeta> = self.snapshots().await?.into_iter().filter(|m| m.at_ms <= until).collect();
        let segments = self.segments().await?;

        let keys: Vec<(u64, u64)> = snapshots.iter().map(|m| (m.seq, m.epoch)).collect();
        let want = match target {
            Target::Seq(n) => Some(n),
            Target::Latest | Target::TimeMs(_) => None,
        };
        // The base a restore will most likely use: the newest snapshot at or
        // before the target. Only segments that can matter to it are read
        // (see `needed`); if it turns out not to be in the history, all are.
        let candidate = keys.iter().copied().filter(|&(seq, _)| want.is_none_or(|n| seq <= n)).max();
        let mut only = candidate;
        let (lin, hist, files) = loop {
            // 1. The segments, verified; what the history depends on (not the writes yet).
            let mut points: Vec<Point> = keys.iter().map(|&(seq, epoch)| Point::Snapshot { epoch, seq }).collect();
            let mut refs: Vec<ChangeRef> = vec![];
            let mut files = vec![];
            for (name, _) in segments.iter().filter(|(n, _)| needed(n, only)) {
                let file = log_dir.join(name.file_name());
                self.download(&self.path(layout::LOG, &name.file_name()), &file, &name.sha256).await?;
                for line in read_lines(&file).await? {
                    if line.at_ms > until {
                        continue;
                    }
                    match line.msg {
                        wire::SyncMsg::Epoch { epoch, seq } => points.push(Point::Marker { epoch, seq }),
                        wire::SyncMsg::Changes { changes } => {
                            for c in changes {
                                points.push(Point::Change { epoch: c.epoch, seq: c.seq });
                                refs.push(ChangeRef { seq: c.seq, epoch: c.epoch });
                            }
                        }
                        wire::SyncMsg::Marker { .. } => {}
                    }
                }
                files.push(file);
            }
            let lin = Linear::new(points);
            match only {
                Some((seq, epoch)) if !lin.holds(epoch, seq) => only = None,
                _ => {
                    let hist = linear::history(&lin, refs);
                    break (lin, hist, files);
                }
            }
        };
        let r = linear::resolve(&lin, &keys, &hist, want).map_err(unreachable)?;

        // 2. The changes the plan applies, from the files already verified.
        let mut picked: BTreeMap<u64, wire::Change> = BTreeMap::new();
        if r.from <= r.to {
            for file in &files {
                for line in read_lines(file).await? {
                    let wire::SyncMsg::Changes { changes } = line.msg else { continue };
                    if line.at_ms > until {
                        continue;
                    }
                    for c in changes {
                        if (r.from..=r.to).contains(&c.seq) && hist.get(&c.seq) == Some(&c.epoch) {
                            picked.entry(c.seq).or_insert(c);
                        }
                    }
                }
            }
        }
        let changes: Vec<wire::Change> = picked.into_values().collect();
        let expected = if r.from <= r.to { r.to - r.from + 1 } else { 0 };
        if changes.len() as u64 != expected {
            return Err(unreachable(format!(
                "found {} of the {expected} changes {}..={}",
                changes.len(),
                r.from,
                r.to
            )));
        }

        // 3. The base snapshot, verified.
        let snapshot = match r.snapshot {
            None => None,
            Some(i) => {
                let meta = snapshots[i].clone();
                let file = dir.join(format!("{}.db", meta.stem()));
                let bytes = self
                    .download(&self.path(layout::SNAPSHOTS, &format!("{}.db", meta.stem())), &file, &meta.sha256)
                    .await?;
                if bytes != meta.bytes {
                    return Err(ArchiveError::Corrupt {
                        object: meta.stem(),
                        why: format!("{bytes} bytes, the manifest says {}", meta.bytes),
                    });
                }
                Some((meta, file))
            }
        };
        Ok(Plan { snapshot, changes, seq: r.to, epoch: r.epoch })
    }

    /// Apply the retention (see [`retention`]): delete old snapshots (manifest
    /// first, so a half-deleted one is never listed) and the log below them.
    pub async fn prune(&self, keep: Duration) -> Result<Pruned> {
        self.prune_at(keep, wire::now_ms()).await
    }

    pub async fn prune_at(&self, keep: Duration, now_ms: u64) -> Result<Pruned> {
        let snapshots = self.snapshots().await?;
        let segments: Vec<SegmentName> = self.segments().await?.into_iter().map(|(n, _)| n).collect();
        let plan = retention::plan(&snapshots, &segments, now_ms, keep.as_millis() as u64);
        for &i in &plan.snapshots {
            let stem = snapshots[i].stem();
            self.delete(&self.path(layout::SNAPSHOTS, &format!("{stem}.json"))).await?;
            self.delete(&self.path(layout::SNAPSHOTS, &format!("{stem}.db"))).await?;
        }
        for &i in &plan.segments {
            self.delete(&self.path(layout::LOG, &segments[i].file_name())).await?;
        }
        Ok(Pruned { snapshots: plan.snapshots.len(), segments: plan.segments.len() })
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Raw access for tests and tools: overwrite an object (e.g. to corrupt it).
    pub async fn put_raw(&self, folder: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.store.put(&self.path(folder, name), PutPayload::from(bytes)).await?;
        Ok(())
    }
}

/// Whether a restore based on the snapshot `base` (`(seq, epoch)`; `None`:
/// no base, everything) needs segment `n`: it may hold changes after the base,
/// or it is of a later epoch (whose start decides whether the base and the
/// changes after it are history). A segment of the base's epoch or older,
/// wholly at or below its seq, holds nothing of either: the base holds that
/// part of the history, and an older epoch's change above the base is out of
/// it anyway (the base's epoch started at or below its seq).
pub fn needed(n: &SegmentName, base: Option<(u64, u64)>) -> bool {
    base.is_none_or(|(seq, epoch)| n.last_seq > seq || n.epoch > epoch)
}

/// One segment line: `{"at_ms":…,"msg":<the message as received>}`. The
/// message must be a `wire::SyncMsg` as JSON on one line (a body with a line
/// break is written again compactly).
pub fn encode_line(at_ms: u64, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 32);
    out.extend_from_slice(br#"{"at_ms":"#);
    out.extend_from_slice(at_ms.to_string().as_bytes());
    out.extend_from_slice(br#","msg":"#);
    if msg.contains(&b'\n') {
        let v: serde_json::Value = serde_json::from_slice(msg).unwrap_or(serde_json::Value::Null);
        out.extend_from_slice(&serde_json::to_vec(&v).expect("values serialize"));
    } else {
        out.extend_from_slice(msg);
    }
    out.push(b'}');
    out
}

/// The name of a segment of these lines, its checksum still empty: the seq
/// range and epoch they mention and the newest receipt time. `None` if they
/// mention no seq.
pub fn segment_name(lines: &[Vec<u8>]) -> Option<SegmentName> {
    let (mut first, mut last, mut epoch, mut at) = (u64::MAX, 0u64, 0u64, 0u64);
    let mut any = false;
    for l in lines {
        let Ok(line) = serde_json::from_slice::<Line>(l) else { continue };
        at = at.max(line.at_ms);
        let mut see = |e: u64, s: u64| {
            any = true;
            first = first.min(s);
            last = last.max(s);
            epoch = epoch.max(e);
        };
        match line.msg {
            wire::SyncMsg::Epoch { epoch, seq } => see(epoch, seq),
            wire::SyncMsg::Changes { changes } => changes.iter().for_each(|c| see(c.epoch, c.seq)),
            wire::SyncMsg::Marker { .. } => {}
        }
    }
    any.then(|| SegmentName { first_seq: first, last_seq: last, epoch, at_ms: at, sha256: String::new() })
}

async fn read_lines(file: &FsPath) -> Result<Vec<Line>> {
    let text = tokio::fs::read(file).await.map_err(io(file))?;
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<Line>(l)
                .map_err(|e| ArchiveError::Corrupt { object: file.display().to_string(), why: e.to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Change, SyncMsg, WriteOutcome, WriteRequest};

    fn change(seq: u64, epoch: u64) -> Change {
        Change {
            seq,
            epoch,
            write: WriteRequest::clear(),
            outcome: WriteOutcome { rows_affected: 0, last_insert_id: None, seq },
            at_ms: 0,
        }
    }

    fn msg(m: &SyncMsg) -> Vec<u8> {
        serde_json::to_vec(m).unwrap()
    }

    #[test]
    fn a_line_keeps_the_message_as_received() {
        let m = SyncMsg::Changes { changes: vec![change(3, 1), change(4, 1)] };
        let l = encode_line(17, &msg(&m));
        let back: Line = serde_json::from_slice(&l).unwrap();
        assert_eq!(back.at_ms, 17);
        assert!(matches!(back.msg, SyncMsg::Changes { changes } if changes.len() == 2));
        let pretty = serde_json::to_vec_pretty(&SyncMsg::Epoch { epoch: 2, seq: 9 }).unwrap();
        let l = encode_line(1, &pretty);
        assert!(!l.contains(&b'\n'));
        assert!(matches!(serde_json::from_slice::<Line>(&l).unwrap().msg, SyncMsg::Epoch { epoch: 2, seq: 9 }));
    }

    #[test]
    fn a_segment_is_named_by_what_it_mentions() {
        let lines = vec![
            encode_line(5, &msg(&SyncMsg::Epoch { epoch: 2, seq: 7 })),
            encode_line(9, &msg(&SyncMsg::Changes { changes: vec![change(8, 2), change(9, 2)] })),
            encode_line(11, &msg(&SyncMsg::Marker { token: "x".into() })),
        ];
        let n = segment_name(&lines).unwrap();
        assert_eq!((n.first_seq, n.last_seq, n.epoch, n.at_ms), (7, 9, 2, 11));
        assert_eq!(segment_name(&lines[2..]), None);
    }

    #[test]
    fn a_restore_reads_only_the_segments_that_can_matter_to_its_base() {
        let seg =
            |first_seq, last_seq, epoch| SegmentName { first_seq, last_seq, epoch, at_ms: 0, sha256: String::new() };
        // (segment, base (seq, epoch), needed)
        let table = [
            (seg(1, 10, 1), None, true),
            (seg(1, 10, 1), Some((10, 1)), false),
            (seg(1, 11, 1), Some((10, 1)), true),
            (seg(11, 20, 1), Some((10, 1)), true),
            (seg(5, 8, 2), Some((10, 1)), true),
            (seg(5, 8, 1), Some((10, 2)), false),
        ];
        for (s, base, want) in table {
            assert_eq!(needed(&s, base), want, "{s:?} for {base:?}");
        }
    }

    #[tokio::test]
    async fn file_archive_round_trip_and_corruption() {
        let root = std::env::temp_dir().join(format!("archive-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let a = Archive::open(&format!("file://{}", root.join("store").display())).unwrap();
        exercise(&a, &root.join("work")).await;
        let _ = std::fs::remove_dir_all(&root);
    }

    /// The same steps against any store (file here, S3 in tests/s3.rs).
    pub async fn exercise(a: &Archive, work: &FsPath) {
        crate::testkit::exercise(a, work).await
    }
}

/// Steps shared by the unit test (file://) and the S3 integration test.
#[doc(hidden)]
pub mod testkit {
    use super::*;
    use wire::{Change, SyncMsg, WriteOutcome, WriteRequest};

    fn change(seq: u64, epoch: u64) -> Change {
        Change {
            seq,
            epoch,
            write: WriteRequest::clear(),
            outcome: WriteOutcome { rows_affected: 0, last_insert_id: None, seq },
            at_ms: 0,
        }
    }

    fn line(at: u64, m: &SyncMsg) -> Vec<u8> {
        encode_line(at, &serde_json::to_vec(m).unwrap())
    }

    fn changes(at: u64, seqs: std::ops::RangeInclusive<u64>, epoch: u64) -> Vec<u8> {
        line(at, &SyncMsg::Changes { changes: seqs.map(|s| change(s, epoch)).collect() })
    }

    /// Upload snapshot + segments, summary, fetch to a seq and to a time, a
    /// corrupted object refused, prune. Panics on the first failure.
    pub async fn exercise(a: &Archive, work: &FsPath) {
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work).unwrap();
        assert_eq!(a.summary().await.unwrap(), Summary::default(), "a new archive is empty");
        let e = a.fetch(Target::Seq(1), &work.join("f0")).await.unwrap_err();
        assert!(matches!(e, ArchiveError::Unreachable { .. }), "{e}");

        // Log 1..=10 of epoch 1, a snapshot at 4, then epoch 2 restarting at 8 (an accepted loss).
        let t0 = 1_700_000_000_000u64;
        a.put_segment(&[line(t0, &SyncMsg::Epoch { epoch: 1, seq: 0 }), changes(t0 + 1, 1..=3, 1)]).await.unwrap();
        a.put_segment(&[changes(t0 + 10, 4..=6, 1)]).await.unwrap();
        a.put_segment(&[changes(t0 + 20, 7..=10, 1)]).await.unwrap();
        let snap_file = work.join("snap.db");
        std::fs::write(&snap_file, vec![7u8; 3 << 20]).unwrap(); // larger than one upload part
        let meta = a.put_snapshot(&snap_file, 4, 1, t0 + 15).await.unwrap();
        assert_eq!((meta.seq, meta.bytes), (4, 3 << 20));
        let s = a.summary().await.unwrap();
        assert_eq!((s.seq, s.epoch, s.at_ms, s.segments, s.log_first_seq), (10, 1, t0 + 20, 3, 0));
        assert_eq!(s.snapshots, vec![meta.clone()]);

        // To a seq: the snapshot at 4 and the changes 5..=7.
        let p = a.fetch(Target::Seq(7), &work.join("f1")).await.unwrap();
        assert_eq!(p.snapshot.as_ref().map(|(m, _)| m.seq), Some(4));
        assert_eq!(std::fs::read(&p.snapshot.as_ref().unwrap().1).unwrap().len(), 3 << 20);
        assert_eq!(p.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!((p.seq, p.epoch), (7, 1));
        // Before the snapshot: from the log alone.
        let p = a.fetch(Target::Seq(2), &work.join("f2")).await.unwrap();
        assert!(p.snapshot.is_none());
        assert_eq!(p.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        // Beyond the archive: a clear error.
        let e = a.fetch(Target::Seq(11), &work.join("f3")).await.unwrap_err();
        assert!(e.to_string().contains("beyond the archive, which reaches seq 10"), "{e}");
        // To a time: what had been received by then.
        let p = a.fetch(Target::TimeMs(t0 + 12), &work.join("f4")).await.unwrap();
        assert_eq!((p.seq, p.snapshot.is_none()), (6, true));

        // Epoch 2 restarts at 8: 9 and 10 of epoch 1 leave the history.
        a.put_segment(&[line(t0 + 30, &SyncMsg::Epoch { epoch: 2, seq: 8 }), changes(t0 + 31, 9..=9, 2)])
            .await
            .unwrap();
        // A snapshot of the discarded branch (epoch 1 at 10) is not a base:
        // the restore reads every segment and goes from the one at 4.
        a.put_snapshot(&snap_file, 10, 1, t0 + 25).await.unwrap();
        let p = a.fetch(Target::Latest, &work.join("f5")).await.unwrap();
        assert_eq!((p.seq, p.epoch, p.snapshot.as_ref().map(|(m, _)| m.seq)), (9, 2, Some(4)));
        assert_eq!(
            p.changes.iter().map(|c| (c.seq, c.epoch)).collect::<Vec<_>>(),
            [(5, 1), (6, 1), (7, 1), (8, 1), (9, 2)]
        );
        let s = a.summary().await.unwrap();
        assert_eq!((s.seq, s.epoch), (9, 2));

        // A corrupted segment and a corrupted snapshot are refused.
        let segs = a.segments().await.unwrap();
        let (victim, _) = segs.iter().find(|(n, _)| n.first_seq == 4).unwrap();
        a.put_raw(layout::LOG, &victim.file_name(), changes(t0 + 10, 4..=6, 9)).await.unwrap();
        let e = a.fetch(Target::Seq(7), &work.join("f6")).await.unwrap_err();
        assert!(matches!(e, ArchiveError::Checksum { .. }), "{e}");
        a.put_raw(layout::LOG, &victim.file_name(), [changes(t0 + 10, 4..=6, 1), b"\n".to_vec()].concat())
            .await
            .unwrap();
        a.fetch(Target::Seq(7), &work.join("f7")).await.unwrap();
        a.put_raw(layout::SNAPSHOTS, &format!("{}.db", meta.stem()), vec![8u8; 3 << 20]).await.unwrap();
        let e = a.fetch(Target::Seq(7), &work.join("f8")).await.unwrap_err();
        assert!(matches!(e, ArchiveError::Checksum { .. }), "{e}");
        assert!(!work.join("f8").join(format!("{}.db", meta.stem())).exists(), "a corrupted download is removed");
        a.put_snapshot(&snap_file, 4, 1, t0 + 15).await.unwrap();

        // Retention: a younger snapshot at 8 (epoch 2); at t0 + 1000 with a
        // retention of 500 all are old: the ones at 4 and 10 go with the log below 8.
        let meta8 = a.put_snapshot(&snap_file, 8, 2, t0 + 40).await.unwrap();
        let pruned = a.prune_at(Duration::from_millis(500), t0 + 1000).await.unwrap();
        assert_eq!(pruned, Pruned { snapshots: 2, segments: 2 });
        let s = a.summary().await.unwrap();
        assert_eq!(s.snapshots, vec![meta8]);
        assert_eq!(s.segments, 2);
        let p = a.fetch(Target::Latest, &work.join("f9")).await.unwrap();
        assert_eq!((p.seq, p.snapshot.as_ref().map(|(m, _)| m.seq)), (9, Some(8)));
        assert_eq!(p.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [9]);
        let _ = std::fs::remove_dir_all(work);
    }
}
