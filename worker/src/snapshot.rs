//! Snapshots as a stream of chunks: the master copies its database to a file
//! of its own, hashes it and sends it in numbered chunks; the slave writes
//! them to a file of its own as they arrive and keeps it only if it is whole.
//!
//! Invariant: a slave installs a copy only if it received every chunk the
//! header announced, each once, in order, each of the announced length, and
//! the file it wrote has the header's size and SHA-256; anything else aborts
//! the copy (and the slave asks again). Neither side ever holds more than a
//! few chunks in memory: the master reads the copy from disk one chunk at a
//! time, with at most [`IN_FLIGHT`] chunks unconfirmed by the broker; the slave
//! takes at most [`PREFETCH`] chunks from the broker before writing them.
//!
//! The frames are [`wire::SnapshotFrame`]; the order, the lengths and the
//! checksum are decided here without I/O ([`Stage`], [`check_chunk`]) and the
//! file work is plain blocking I/O ([`prepare`], [`ChunkReader`],
//! [`Assembler`]), so all of it is tested without a broker.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;
use wire::{SnapshotFrame, SnapshotHeader};

use crate::store;
use crate::timing;

/// Bytes per chunk: far below the broker's message size limit (128 MiB by
/// default, often set lower), large enough that per-message costs vanish.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Chunks the master publishes before it waits for the broker's confirm of
/// the oldest: keeps the pipe full on a fast broker and bounds the master's
/// memory (and what it pushes at a slow broker) to a few chunks.
pub const IN_FLIGHT: usize = 4;
/// Chunks a slave takes from the broker before acknowledging them (its
/// consumer prefetch): the rest waits in the broker, not in the slave's memory.
pub const PREFETCH: u16 = 4;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("chunk {got} arrived where chunk {expected} was due")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("chunk {index} has {got} bytes, the header announced {expected}")]
    ChunkLength { index: u64, expected: u64, got: u64 },
    #[error("the file is incomplete: {got} of {expected} chunks")]
    Incomplete { expected: u64, got: u64 },
    #[error("the file is {got} bytes, the header announced {expected}")]
    Size { expected: u64, got: u64 },
    #[error("the file's SHA-256 is {got}, the header announced {expected}")]
    Checksum { expected: String, got: String },
    #[error("inconsistent header: {0}")]
    Header(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_owned(), source }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many chunks a file of `size` bytes takes.
pub fn chunk_count(size: u64, chunk_bytes: u64) -> u64 {
    size.div_ceil(chunk_bytes)
}

/// The length chunk `index` must have (`None`: there is no such chunk).
pub fn chunk_len(size: u64, chunk_bytes: u64, index: u64) -> Option<u64> {
    let start = index.checked_mul(chunk_bytes)?;
    (start < size).then(|| chunk_bytes.min(size - start))
}

/// A header a slave can receive into: the chunk count and length agree with
/// the size, and the checksum is a SHA-256 in hex.
pub fn check_header(h: &SnapshotHeader) -> Result<()> {
    let bad = |why: String| Err(SnapshotError::Header(why));
    if h.chunk_bytes == 0 {
        return bad("chunk_bytes is 0".into());
    }
    if h.chunks != chunk_count(h.size, h.chunk_bytes) {
        return bad(format!("{} chunks of {} bytes cannot hold {} bytes", h.chunks, h.chunk_bytes, h.size));
    }
    if h.sha256.len() != 64 || !h.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return bad(format!("{:?} is not a SHA-256 in lower-case hex", h.sha256));
    }
    Ok(())
}

/// Whether chunk `index` of `len` bytes may come now that chunk `expected` is due.
pub fn check_chunk(h: &SnapshotHeader, expected: u64, index: u64, len: u64) -> Result<()> {
    if index != expected {
        return Err(SnapshotError::OutOfOrder { expected, got: index });
    }
    match chunk_len(h.size, h.chunk_bytes, index) {
        // Past the last chunk: the header announced no bytes for it.
        None => Err(SnapshotError::ChunkLength { index, expected: 0, got: len }),
        Some(want) if want != len => Err(SnapshotError::ChunkLength { index, expected: want, got: len }),
        Some(_) => Ok(()),
    }
}

/// Where a slave is in receiving a snapshot; each stage has its own bounded wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Asked; no master has taken the request yet.
    Requested,
    /// A master took it and is copying its database.
    Preparing,
    /// The header came; chunks are arriving.
    Receiving,
    /// The master answered that the requester's own copy is its own
    /// (`SnapshotFrame::Current`): nothing more comes.
    Kept,
}

impl Stage {
    /// The longest wait for the next message in this stage.
    pub fn wait(self) -> Duration {
        match self {
            Stage::Requested => timing::SNAPSHOT_WAIT,
            Stage::Preparing => timing::SNAPSHOT_PREPARE_WAIT,
            Stage::Receiving | Stage::Kept => timing::SNAPSHOT_CHUNK_WAIT,
        }
    }

    /// The stage after `frame`, or why the frame aborts the snapshot.
    pub fn after(self, frame: &SnapshotFrame) -> Result<Stage, String> {
        match (self, frame) {
            (_, SnapshotFrame::Failed { error }) => Err(format!("the master could not copy its database: {error}")),
            (Stage::Requested, SnapshotFrame::Started) => Ok(Stage::Preparing),
            (Stage::Requested, SnapshotFrame::Current { .. }) => Ok(Stage::Kept),
            (Stage::Requested | Stage::Preparing, SnapshotFrame::Header(_)) => Ok(Stage::Receiving),
            (Stage::Receiving, SnapshotFrame::Chunk { .. }) => Ok(Stage::Receiving),
            (stage, frame) => Err(format!("unexpected {} while {stage:?}", kind(frame))),
        }
    }
}

fn kind(frame: &SnapshotFrame) -> String {
    match frame {
        SnapshotFrame::Started => "start".into(),
        SnapshotFrame::Header(_) => "header".into(),
        SnapshotFrame::Chunk { index } => format!("chunk {index}"),
        SnapshotFrame::Failed { .. } => "failure".into(),
        SnapshotFrame::Current { .. } => "\"your copy is current\"".into(),
    }
}

/// The master's copy of its database, on disk, removed when dropped.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub header: SnapshotHeader,
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copy the database at `db` to `tmp` (SQLite's online backup, one read
/// transaction, so a committed state however the master writes meanwhile),
/// then size and hash the copy for a header of `epoch`.
pub fn prepare(db: &Path, tmp: PathBuf, epoch: u64, chunk_bytes: u64) -> Result<SnapshotFile> {
    let position = store::backup_to(db, &tmp)?;
    // From here on the file is ours: removed if anything below fails.
    let mut file = SnapshotFile {
        header: SnapshotHeader { seq: position.seq, epoch, size: 0, chunks: 0, chunk_bytes, sha256: String::new() },
        path: tmp,
    };
    let (size, sha256) = hash_file(&file.path, chunk_bytes)?;
    file.header.size = size;
    file.header.chunks = chunk_count(size, chunk_bytes);
    file.header.sha256 = sha256;
    Ok(file)
}

/// Size and SHA-256 of a file, read a buffer at a time.
pub fn hash_file(path: &Path, buf_bytes: u64) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; buf_bytes.clamp(4096, CHUNK_BYTES) as usize];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Reads a snapshot file chunk by chunk, as its header numbers them.
pub struct ChunkReader {
    file: File,
    path: PathBuf,
    size: u64,
    chunk_bytes: u64,
    next: u64,
}

impl ChunkReader {
    pub fn open(path: &Path, header: &SnapshotHeader) -> Result<ChunkReader> {
        Ok(ChunkReader {
            file: File::open(path).map_err(io(path))?,
            path: path.to_owned(),
            size: header.size,
            chunk_bytes: header.chunk_bytes,
            next: 0,
        })
    }

    /// The next chunk and its number; `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(len) = chunk_len(self.size, self.chunk_bytes, self.next) else { return Ok(None) };
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact(&mut buf).map_err(io(&self.path))?;
        let index = self.next;
        self.next += 1;
        Ok(Some((index, buf)))
    }
}

/// A slave's file being written from chunks; removed when dropped unless
/// [`finish`](Self::finish) found it whole.
pub struct Assembler {
    header: SnapshotHeader,
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    next: u64,
    written: u64,
}

impl Assembler {
    /// Start writing `path` (replacing what is there) for the file `header` announces.
    pub fn create(path: PathBuf, header: SnapshotHeader) -> Result<Assembler> {
        check_header(&header)?;
        let file = File::create(&path).map_err(io(&path))?;
        Ok(Assembler { header, path, file: Some(file), hasher: Sha256::new(), next: 0, written: 0 })
    }

    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Every announced chunk has been written.
    pub fn is_complete(&self) -> bool {
        self.next >= self.header.chunks
    }

    /// Write chunk `index`, which must be the next one and of its announced length.
    pub fn push(&mut self, index: u64, bytes: &[u8]) -> Result<()> {
        check_chunk(&self.header, self.next, index, bytes.len() as u64)?;
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(bytes).map_err(io(&self.path))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// The file, if it is whole: every chunk, the announced size and checksum.
    pub fn finish(mut self) -> Result<PathBuf> {
        if !self.is_complete() {
            return Err(SnapshotError::Incomplete { expected: self.header.chunks, got: self.next });
        }
        let file = self.file.take().expect("open until finished");
        file.sync_data().map_err(io(&self.path))?;
        drop(file);
        let on_disk = std::fs::metadata(&self.path).map_err(io(&self.path))?.len();
        if self.written != self.header.size || on_disk != self.header.size {
            return Err(SnapshotError::Size { expected: self.header.size, got: on_disk.max(self.written) });
        }
        let got = hex(&std::mem::take(&mut self.hasher).finalize());
        if got != self.header.sha256 {
            return Err(SnapshotError::Checksum { expected: self.header.sha256.clone(), got });
        }
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for Assembler {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Position;

    type Chunks = Vec<(u64, Vec<u8>)>;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapshot-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Every chunk of a file as the master would send it.
    fn chunks_of(path: &Path, header: &SnapshotHeader) -> Chunks {
        let mut r = ChunkReader::open(path, header).unwrap();
        std::iter::from_fn(|| r.next_chunk().unwrap()).collect()
    }

    fn header_for(path: &Path, chunk_bytes: u64) -> SnapshotHeader {
        let (size, sha256) = hash_file(path, chunk_bytes).unwrap();
        SnapshotHeader { seq: 1, epoch: 1, size, chunks: chunk_count(size, chunk_bytes), chunk_bytes, sha256 }
    }

    /// Feed chunks to an assembler; the first error (at a push or at the end).
    fn receive(d: &Path, header: &SnapshotHeader, chunks: &Chunks) -> Result<Vec<u8>> {
        let mut a = Assembler::create(d.join("incoming"), header.clone())?;
        for (i, bytes) in chunks {
            a.push(*i, bytes)?;
        }
        let path = a.finish()?;
        Ok(std::fs::read(path).unwrap())
    }

    #[test]
    fn chunk_arithmetic() {
        let table: [(u64, u64, u64, [Option<u64>; 4]); 5] = [
            (0, 4, 0, [None, None, None, None]),
            (1, 4, 1, [Some(1), None, None, None]),
            (4, 4, 1, [Some(4), None, None, None]),
            (9, 4, 3, [Some(4), Some(4), Some(1), None]),
            (12, 4, 3, [Some(4), Some(4), Some(4), None]),
        ];
        for (size, cb, count, lens) in table {
            assert_eq!(chunk_count(size, cb), count, "{size}/{cb}");
            for (i, want) in lens.iter().enumerate() {
                assert_eq!(chunk_len(size, cb, i as u64), *want, "{size}/{cb} chunk {i}");
            }
        }
        assert_eq!(chunk_len(u64::MAX, 4, u64::MAX), None, "no overflow");
    }

    #[test]
    fn a_file_of_known_checksum_is_chunked_and_reassembled() {
        let d = dir("known");
        let src = d.join("src");
        std::fs::write(&src, b"abc").unwrap();
        let h = header_for(&src, 1);
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(h.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!((h.size, h.chunks), (3, 3));
        let chunks = chunks_of(&src, &h);
        assert_eq!(chunks, vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]);
        assert_eq!(receive(&d, &h, &chunks).unwrap(), b"abc");

        // A larger file whose last chunk is short.
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let h = header_for(&src, 4096);
        assert_eq!(h.chunks, 3);
        let chunks = chunks_of(&src, &h);
        assert_eq!(chunks.iter().map(|(_, c)| c.len()).collect::<Vec<_>>(), [4096, 4096, 1808]);
        assert_eq!(receive(&d, &h, &chunks).unwrap(), bytes);
    }

    #[test]
    fn a_corrupted_missing_duplicate_or_reordered_chunk_is_detected_and_the_file_removed() {
        let d = dir("bad");
        let src = d.join("src");
        std::fs::write(&src, (0..100u8).collect::<Vec<_>>()).unwrap();
        let h = header_for(&src, 10);
        let good = chunks_of(&src, &h);
        assert_eq!(good.len(), 10);
        let with = |f: &dyn Fn(&mut Chunks)| {
            let mut c = good.clone();
            f(&mut c);
            c
        };
        type Detected = fn(&SnapshotError) -> bool;
        let cases: Vec<(&str, Chunks, Detected)> = vec![
            ("corrupted", with(&|c| c[4].1[3] ^= 0xff), |e| matches!(e, SnapshotError::Checksum { .. })),
            ("missing", with(&|c| drop(c.remove(4))), |e| {
                matches!(e, SnapshotError::OutOfOrder { expected: 4, got: 5 })
            }),
            ("missing last", with(&|c| drop(c.pop())), |e| {
                matches!(e, SnapshotError::Incomplete { expected: 10, got: 9 })
            }),
            ("reordered", with(&|c| c.swap(2, 3)), |e| matches!(e, SnapshotError::OutOfOrder { expected: 2, got: 3 })),
            ("duplicate", with(&|c| c.insert(3, c[2].clone())), |e| {
                matches!(e, SnapshotError::OutOfOrder { expected: 3, got: 2 })
            }),
            ("short", with(&|c| c[5].1.truncate(9)), |e| {
                matches!(e, SnapshotError::ChunkLength { index: 5, expected: 10, got: 9 })
            }),
            ("extra", with(&|c| c.push((10, vec![0]))), |e| matches!(e, SnapshotError::ChunkLength { index: 10, .. })),
        ];
        for (what, chunks, expected) in cases {
            let err = receive(&d, &h, &chunks).unwrap_err();
            assert!(expected(&err), "{what}: {err}");
            assert!(!d.join("incoming").exists(), "{what}: the partial file is removed");
        }
        // A header whose numbers disagree is refused before anything is written.
        for bad in [
            SnapshotHeader { chunks: 9, ..h.clone() },
            SnapshotHeader { chunk_bytes: 0, ..h.clone() },
            SnapshotHeader { sha256: "ABC".into(), ..h.clone() },
        ] {
            assert!(matches!(Assembler::create(d.join("incoming"), bad), Err(SnapshotError::Header(_))));
        }
        assert_eq!(receive(&d, &h, &good).unwrap(), (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn the_stages_take_frames_in_order_only() {
        use SnapshotFrame::*;
        let h = SnapshotHeader { seq: 1, epoch: 1, size: 1, chunks: 1, chunk_bytes: 1, sha256: String::new() };
        let failed = Failed { error: "disk".into() };
        let current = Current { seq: 1, copy_epoch: 1, epoch: 2 };
        let table: [(Stage, SnapshotFrame, Option<Stage>); 14] = [
            (Stage::Requested, Started, Some(Stage::Preparing)),
            (Stage::Requested, current.clone(), Some(Stage::Kept)),
            (Stage::Preparing, current.clone(), None),
            (Stage::Receiving, current, None),
            (Stage::Requested, Header(h.clone()), Some(Stage::Receiving)),
            (Stage::Preparing, Header(h.clone()), Some(Stage::Receiving)),
            (Stage::Receiving, Chunk { index: 0 }, Some(Stage::Receiving)),
            (Stage::Requested, Chunk { index: 0 }, None),
            (Stage::Preparing, Chunk { index: 0 }, None),
            (Stage::Preparing, Started, None),
            (Stage::Receiving, Started, None),
            (Stage::Receiving, Header(h.clone()), None),
            (Stage::Preparing, failed.clone(), None),
            (Stage::Receiving, failed, None),
        ];
        for (stage, frame, want) in table {
            assert_eq!(stage.after(&frame).ok(), want, "{stage:?} then {frame:?}");
        }
        // Every wait is bounded; the copy may take longer than one chunk.
        assert!(Stage::Preparing.wait() >= Stage::Receiving.wait());
    }

    #[test]
    fn a_database_copied_while_written_streams_and_installs_whole() {
        let d = dir("db");
        let (m, s) = (d.join("m.db"), d.join("s.db"));
        let mut c = store::open_writer(&m).unwrap();
        let pad = "x".repeat(200);
        for i in 0..300 {
            let w = wire::WriteRequest::insert(
                "users",
                [("username", format!("u{i}-{pad}").into()), ("password", "p".repeat(40).into())],
            );
            store::execute_writes(&mut c, &[w], 3).unwrap();
        }
        let snap = prepare(&m, d.join("m.snapshot"), 5, 4096).unwrap();
        assert_eq!((snap.header.seq, snap.header.epoch), (300, 5));
        assert!(snap.header.chunks > 10, "{:?}", snap.header);
        check_header(&snap.header).unwrap();

        let mut a = Assembler::create(d.join("s.incoming"), snap.header.clone()).unwrap();
        let mut r = ChunkReader::open(&snap.path, &snap.header).unwrap();
        while let Some((i, bytes)) = r.next_chunk().unwrap() {
            a.push(i, &bytes).unwrap();
        }
        let staged = a.finish().unwrap();
        let snap_path = snap.path.clone();
        drop(snap);
        assert!(!snap_path.exists(), "the master's copy is removed once sent");
        let (_conn, pos) = store::install_snapshot(&s, &staged).unwrap();
        assert_eq!(pos, Position { seq: 300, epoch: 3 });
        assert!(!staged.exists(), "the staged file became the database");
    }
}
