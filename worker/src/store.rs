//! The worker's SQLite file: schema, reads, idempotent writes, snapshots.
//!
//! One file per worker, in WAL mode so reads on the reader connections never
//! wait for the write connection. The bookkeeping lives in the same file as
//! the data so that a change, its sequence number and its request id commit
//! together or not at all:
//! - `_state(applied_seq, epoch)`: how far this copy has got;
//! - `_requests(request_id, seq, outcome, at_ms)`: the answer to give if a
//!   write is delivered again (broker redelivery, failover replay, a client
//!   resending with its `Idempotency-Key`), kept as [`REQUEST_IDS`] says.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use thiserror::Error;
use wire::{Change, Read, Value, Write, WriteOutcome, WriteRequest};

use crate::{sql, timing};

/// How long request ids are kept (docs/api.md §2.1), in a bounded table.
#[derive(Debug, Clone, Copy)]
struct Retention {
    /// Every id of the last this many writes is kept, however old.
    min_writes: u64,
    /// Every id applied within this long is kept (unless `max_writes` says otherwise).
    min_age_ms: u64,
    /// Never more than the ids of the last this many writes: the bound on the
    /// table (and on the file a new slave copies), whatever the write rate.
    max_writes: u64,
}

/// 24 hours (Stripe's window for an idempotency key) up to a million writes
/// a day (11.5 writes/s on average); at a higher rate, the last million
/// writes (~300 MB at most). The old bound, 200,000 writes, was ~28 s at
/// full speed. Pruned every [`PRUNE_EVERY`] writes.
const REQUEST_IDS: Retention = Retention { min_writes: 200_000, min_age_ms: 24 * 3600 * 1000, max_writes: 1_000_000 };
const PRUNE_EVERY: u64 = 1000;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A constraint of the schema refused the write (duplicate key, unknown
    /// foreign key). Nothing was changed.
    #[error("{0}")]
    Conflict(String),
    #[error("invalid request: {0}")]
    Invalid(#[from] wire::Invalid),
    /// A replicated change does not follow the last one applied.
    #[error("change {got} does not follow applied sequence {applied}")]
    Gap { applied: u64, got: u64 },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("snapshot file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The source stayed locked past the busy timeout.
    #[error("backup did not finish in one step: {0}")]
    Backup(String),
    #[error("stored outcome unreadable: {0}")]
    Json(#[from] serde_json::Error),
    /// A read without a limit would answer more than its cap (`wire::MAX_ROWS`).
    #[error("the answer holds more than {0} rows: give a limit (at most {max}) and page with a where on the order column", max = wire::MAX_LIMIT)]
    TooManyRows(u32),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How far a copy of the database has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub seq: u64,
    pub epoch: u64,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(timing::SQLITE_BUSY)?;
    // Readers never write; the write connection sets its own `synchronous`.
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
}

/// Open (creating if needed) the write connection and bring the schema up to date.
///
/// `synchronous=FULL` in WAL mode: every commit is fsynced to the WAL before
/// it returns, so a change the master acknowledged survives a kernel crash or
/// a power loss of its machine, not only the loss of the process (NORMAL
/// would lose the commits since the last checkpoint then). docs/guarantees.md
/// §"What survives what" has the whole table.
pub fn open_writer(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// The copy of the database at `path`, as found when the worker starts:
/// None when there is no file; otherwise its position and whether it passed
/// `PRAGMA quick_check` (a torn or corrupt file is reported, never served).
/// Read-only: the file is not changed.
pub fn inspect_copy(path: &Path) -> Option<wire::coord::DiskCopy> {
    if !path.exists() {
        return None;
    }
    let broken = |problem: String| wire::coord::DiskCopy { seq: 0, epoch: 0, intact: false, problem: Some(problem) };
    let check = || -> Result<std::result::Result<Position, String>> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(timing::SQLITE_BUSY)?;
        let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if verdict != "ok" {
            return Ok(Err(format!("quick_check: {verdict}")));
        }
        Ok(Ok(position(&conn)?))
    };
    Some(match check() {
        Ok(Ok(pos)) => wire::coord::DiskCopy { seq: pos.seq, epoch: pos.epoch, intact: true, problem: None },
        Ok(Err(problem)) => broken(problem),
        Err(e) => broken(e.to_string()),
    })
}

/// Set a damaged file aside (renamed with a `.corrupt` suffix, kept for
/// inspection) so that the worker starts without it.
pub fn set_aside(path: &Path) -> Result<PathBuf> {
    let aside = PathBuf::from(format!("{}.corrupt", path.display()));
    remove_db_files(&aside)?;
    std::fs::rename(path, &aside).map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
    for ext in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    Ok(aside)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, m) in wire::schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Where the database at `path` ends, read on a connection of its own (the
/// last committed change: WAL readers never wait for the writer).
pub fn position_at(path: &Path) -> Result<Position> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(timing::SQLITE_BUSY)?;
    position(&conn)
}

pub fn position(conn: &Connection) -> Result<Position> {
    Ok(conn.query_row("SELECT applied_seq, epoch FROM _state WHERE id = 1", [], |r| {
        Ok(Position { seq: r.get::<_, i64>(0)? as u64, epoch: r.get::<_, i64>(1)? as u64 })
    })?)
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

/// What the master did with a write.
#[derive(Debug)]
pub enum Applied {
    /// Newly committed; `change` is what to fan out on `syncQ`.
    New(Change),
    /// Seen before (same request id): the outcome recorded then.
    Duplicate(WriteOutcome),
}

/// Master path: run a write in one transaction with its sequence number and
/// request id. A constraint failure rolls everything back and returns
/// [`StoreError::Conflict`] without using a sequence number.
#[cfg(test)]
pub fn execute_write(conn: &mut Connection, req: &WriteRequest, epoch: u64) -> Result<Applied> {
    execute_writes(conn, std::slice::from_ref(req), epoch)?.pop().expect("one outcome per write")
}

/// Group commit: several writes in one SQLite transaction, each in a savepoint
/// of its own so that a refused write leaves the others intact. Outcomes come
/// back in order; sequence numbers are consecutive over the new changes. If
/// the transaction itself fails, none of them happened.
pub fn execute_writes(conn: &mut Connection, reqs: &[WriteRequest], epoch: u64) -> Result<Vec<Result<Applied>>> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(reqs.len());
    for req in reqs {
        out.push(execute_in(&mut tx, req, epoch));
    }
    tx.commit()?;
    Ok(out)
}

fn execute_in(tx: &mut rusqlite::Transaction, req: &WriteRequest, epoch: u64) -> Result<Applied> {
    let request_id = req.request_id.clone().unwrap_or_default();
    if let Some(outcome) = recorded_outcome(tx, &request_id)? {
        return Ok(Applied::Duplicate(outcome));
    }
    let write = req.validate()?;
    let sp = tx.savepoint()?;
    let pos = position(&sp)?;
    let mut rows_affected = 0u64;
    for st in sql::write(&write) {
        let mut stmt = sp.prepare_cached(&st.sql)?;
        match stmt.execute(rusqlite::params_from_iter(st.params.iter())) {
            Ok(n) => rows_affected += n as u64,
            // Dropping the savepoint rolls this write back, and only it.
            Err(e) if is_constraint(&e) => return Err(StoreError::Conflict(e.to_string())),
            Err(e) => return Err(e.into()),
        }
    }
    // Replay must give the same rows: put generated ids into the change.
    let mut executed = req.clone();
    let mut last_insert_id = None;
    if let Write::Insert { table, values } = &write {
        if let Some(gen) = table.generated_column() {
            let id = match values.iter().find(|(c, _)| *c == gen.name) {
                Some((_, Value::Int(given))) => *given,
                _ => sp.last_insert_rowid(),
            };
            executed.values.insert(gen.name.to_owned(), Value::Int(id));
            last_insert_id = Some(id);
        }
    }
    let seq = pos.seq + 1;
    let outcome = WriteOutcome { rows_affected, last_insert_id, seq };
    let at_ms = wire::now_ms();
    record(&sp, &request_id, seq, epoch, at_ms, &outcome)?;
    sp.commit()?;
    Ok(Applied::New(Change { seq, epoch, write: executed, outcome, at_ms }))
}

fn recorded_outcome(conn: &Connection, request_id: &str) -> Result<Option<WriteOutcome>> {
    if request_id.is_empty() {
        return Ok(None);
    }
    let json: Option<String> = conn
        .prepare_cached("SELECT outcome FROM _requests WHERE request_id = ?")?
        .query_row([request_id], |r| r.get(0))
        .optional()?;
    Ok(match json {
        Some(j) => Some(serde_json::from_str(&j)?),
        None => None,
    })
}

fn record(tx: &Connection, request_id: &str, seq: u64, epoch: u64, at_ms: u64, outcome: &WriteOutcome) -> Result<()> {
    tx.prepare_cached("UPDATE _state SET applied_seq = ?, epoch = ? WHERE id = 1")?
        .execute(params![seq as i64, epoch as i64])?;
    if !request_id.is_empty() {
        tx.prepare_cached("INSERT OR REPLACE INTO _requests (request_id, seq, outcome, at_ms) VALUES (?, ?, ?, ?)")?
            .execute(params![request_id, seq as i64, serde_json::to_string(outcome)?, at_ms as i64])?;
    }
    if seq.is_multiple_of(PRUNE_EVERY) {
        prune_requests(tx, seq, at_ms, REQUEST_IDS)?;
    }
    Ok(())
}

/// Drops the request ids `keep` no longer covers, as of write `seq` applied
/// at `at_ms`: those older than both `min_writes` writes and `min_age_ms`,
/// and any older than `max_writes` writes. Ids are applied in seq order (and
/// at_ms order, one master's clock at a time), so each is one range of seq.
fn prune_requests(tx: &Connection, seq: u64, at_ms: u64, keep: Retention) -> Result<()> {
    let Some(by_count) = seq.checked_sub(keep.min_writes) else { return Ok(()) };
    // The oldest id young enough to keep (one step down the at_ms index):
    // everything before it is old.
    let young: Option<i64> = tx
        .prepare_cached("SELECT seq FROM _requests WHERE at_ms >= ? ORDER BY at_ms LIMIT 1")?
        .query_row([at_ms.saturating_sub(keep.min_age_ms) as i64], |r| r.get(0))
        .optional()?;
    let by_age = young.map_or(seq, |s| (s as u64).saturating_sub(1));
    let mut cut = by_count.min(by_age);
    if let Some(bound) = seq.checked_sub(keep.max_writes) {
        cut = cut.max(bound);
    }
    if cut > 0 {
        tx.prepare_cached("DELETE FROM _requests WHERE seq <= ?")?.execute([cut as i64])?;
    }
    Ok(())
}

/// Slave path: apply replicated changes in one transaction, in order,
/// skipping those already applied (redelivery after a reconnect). Returns
/// the position reached.
pub fn apply_changes(conn: &mut Connection, changes: &[Change]) -> Result<Position> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut pos = position(&tx)?;
    for ch in changes {
        if ch.seq <= pos.seq {
            continue;
        }
        if ch.seq != pos.seq + 1 {
            return Err(StoreError::Gap { applied: pos.seq, got: ch.seq });
        }
        let write = ch.write.validate_executed()?;
        for st in sql::write(&write) {
            tx.prepare_cached(&st.sql)?.execute(rusqlite::params_from_iter(st.params.iter()))?;
        }
        record(&tx, ch.write.request_id.as_deref().unwrap_or(""), ch.seq, ch.epoch, ch.at_ms, &ch.outcome)?;
        pos = Position { seq: ch.seq, epoch: ch.epoch };
    }
    tx.commit()?;
    Ok(pos)
}

/// Read connections, one per concurrent query; SQLite connections are not
/// shareable across threads at once, and opening one per read is too slow.
///
/// The number of connections is capped (`READER_CONNECTIONS`, see
/// `config`; default twice the cores, at least 4): each one keeps its own page cache, so
/// one per read in flight (up to the `readQ` prefetch, 64) cost tens of MB of
/// RSS while two cores cannot run more than two queries at once anyway. A read
/// that finds every connection busy waits for one to be handed back.
pub struct ReaderPool {
    path: PathBuf,
    max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Connection>,
    /// Connections that exist (idle, in use or being opened).
    open: usize,
}

impl ReaderPool {
    /// A pool of at most `max` connections (at least one).
    pub fn new(path: &Path, max: usize) -> Self {
        ReaderPool {
            path: path.to_owned(),
            max: max.max(1),
            state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }),
            returned: Condvar::new(),
        }
    }

    /// Run a read on a pooled connection (blocking: call from `spawn_blocking`).
    #[cfg(test)]
    pub fn read(&self, r: &Read) -> Result<(Vec<wire::Row>, Position)> {
        let (mut rows, pos) = self.read_many(std::slice::from_ref(r))?;
        let json = rows.pop().expect("one result per read")?;
        Ok((serde_json::from_slice(&json).expect("rows are JSON"), pos))
    }

    /// Run reads in one read transaction on a pooled connection (blocking:
    /// call from `spawn_blocking`): each read's rows or error, and the
    /// position they all saw.
    pub fn read_many(&self, reads: &[Read]) -> Result<(Vec<Result<Vec<u8>>>, Position)> {
        let conn = self.take()?;
        let result = read_many_on(&conn, reads);
        self.state.lock().expect("pool lock").idle.push(conn);
        self.returned.notify_one();
        result
    }

    fn take(&self) -> Result<Connection> {
        let mut st = self.state.lock().expect("pool lock");
        loop {
            if let Some(c) = st.idle.pop() {
                return Ok(c);
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                let opened = Self::open(&self.path);
                if opened.is_err() {
                    self.state.lock().expect("pool lock").open -= 1;
                    self.returned.notify_one();
                }
                return opened;
            }
            st = self.returned.wait(st).expect("pool lock");
        }
    }

    fn open(path: &Path) -> Result<Connection> {
        let c = Connection::open(path)?;
        c.busy_timeout(timing::SQLITE_BUSY)?;
        c.execute_batch("PRAGMA query_only=ON;")?;
        Ok(c)
    }
}

fn read_many_on(conn: &Connection, reads: &[Read]) -> Result<(Vec<Result<Vec<u8>>>, Position)> {
    // One transaction so that the rows and the position agree; an error drops
    // it, which rolls it back (the pooled connection is left with none open).
    let tx = conn.unchecked_transaction()?;
    let pos = position(&tx)?;
    let rows = reads.iter().map(|r| rows_json(&tx, r)).collect();
    tx.commit()?;
    Ok((rows, pos))
}

/// The rows of one read, inside the caller's transaction, as the JSON array
/// the answer carries (`[{"column": value, ...}, ...]`, columns in the order
/// asked), written straight from SQLite's values: no map per row, and a
/// batch of long listings holds only their encoded bytes.
fn rows_json(tx: &Connection, r: &Read) -> Result<Vec<u8>> {
    let st = sql::select(r);
    let names: Vec<String> =
        if r.count { vec!["count".to_owned()] } else { r.columns.iter().map(|c| c.to_string()).collect() };
    // Each column's `"name":` once, escaped.
    let keys: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            let mut k = serde_json::to_vec(n).expect("strings serialize");
            k.push(b':');
            k
        })
        .collect();
    let mut out = vec![b'['];
    let mut stmt = tx.prepare_cached(&st.sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(st.params.iter()))?;
    let mut first = true;
    let mut n = 0u32;
    while let Some(row) = rows.next()? {
        n += 1;
        if r.row_cap.is_some_and(|cap| n > cap) {
            return Err(StoreError::TooManyRows(n - 1));
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'{');
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            write_json_value(&mut out, row.get_ref(i)?);
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok(out)
}

fn write_json_value(out: &mut Vec<u8>, v: rusqlite::types::ValueRef<'_>) {
    use rusqlite::types::ValueRef::*;
    let written = match v {
        Null => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Integer(i) => serde_json::to_writer(&mut *out, &i),
        // NaN and infinities print as null, as serde_json's Value would hold them.
        Real(f) => serde_json::to_writer(&mut *out, &f),
        Text(t) | Blob(t) => serde_json::to_writer(&mut *out, &String::from_utf8_lossy(t)),
    };
    written.expect("writing JSON to memory cannot fail");
}

/// Copy the database at `db` to the file `dst` (replaced) and return the
/// position the copy holds. SQLite's online backup in a single step is one
/// read transaction on the source: the copy is one committed state, however
/// the master writes meanwhile (in WAL mode the writer is never blocked). In
/// smaller steps, every write by the master between two steps would restart
/// the copy, and under steady writes a large one might never finish. Pages
/// go through SQLite's page cache a few at a time, never the whole file.
pub fn backup_to(db: &Path, dst: &Path) -> Result<Position> {
    let src = Connection::open(db)?;
    src.busy_timeout(timing::SQLITE_BUSY)?;
    remove_db_files(dst)?;
    {
        let mut out = Connection::open(dst)?;
        let backup = rusqlite::backup::Backup::new(&src, &mut out)?;
        // Busy/Locked only if the source is locked past its busy timeout.
        match backup.step(-1)? {
            rusqlite::backup::StepResult::Done => {}
            other => return Err(StoreError::Backup(format!("{other:?}"))),
        }
    }
    let pos = position(&Connection::open(dst)?)?;
    Ok(pos)
}

/// fsync the folder holding `file`, so a rename or a removal in it is durable.
pub fn sync_dir(file: &Path) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io { path: dir.to_owned(), source })
}

/// Remove a database file and its WAL companions, if there.
fn remove_db_files(db: &Path) -> Result<()> {
    for ext in ["", "-wal", "-shm", "-journal"] {
        let p = PathBuf::from(format!("{}{ext}", db.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path: p, source }),
        }
    }
    Ok(())
}

/// Replace the database file with a received snapshot file (moved, not
/// copied: `staged` must be in the same folder) and open it for writing.
///
/// The staged file was fsynced when it was assembled; the rename is made
/// durable by an fsync of the folder, so after a power loss the folder holds
/// either no database (the worker asks again) or the whole new one.
pub fn install_snapshot(db: &Path, staged: &Path) -> Result<(Connection, Position)> {
    remove_db_files(db)?;
    std::fs::rename(staged, db).map_err(|source| StoreError::Io { path: staged.to_owned(), source })?;
    sync_dir(db)?;
    let conn = open_writer(db)?;
    let pos = position(&conn)?;
    Ok((conn, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Condition, ReadRequest, Row};

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("store-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.db");
        let _ = install_snapshot_cleanup(&p);
        p
    }
    fn install_snapshot_cleanup(p: &Path) -> std::io::Result<()> {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        Ok(())
    }
    fn with_id(mut w: WriteRequest, id: &str) -> WriteRequest {
        w.request_id = Some(id.into());
        w
    }
    fn user(name: &str) -> WriteRequest {
        WriteRequest::insert("users", [("username", name.into()), ("password", "p".into())])
    }

    #[test]
    fn a_copy_on_disk_is_inspected_before_it_counts() {
        let db = temp_db("inspect");
        assert_eq!(inspect_copy(&db), None, "no file, no copy");
        let mut c = open_writer(&db).unwrap();
        execute_write(&mut c, &user("ann"), 3).unwrap();
        drop(c);
        let copy = inspect_copy(&db).expect("a copy");
        assert!(copy.intact, "{copy:?}");
        assert_eq!((copy.seq, copy.epoch), (1, 3));
        // A torn file: the header survives, the pages do not.
        let bytes = std::fs::read(&db).unwrap();
        let mut torn = bytes[..100].to_vec();
        torn.resize(bytes.len(), 0xAB);
        std::fs::write(&db, torn).unwrap();
        let copy = inspect_copy(&db).expect("still a file");
        assert!(!copy.intact, "a garbled file is not intact: {copy:?}");
        let aside = set_aside(&db).unwrap();
        assert!(aside.exists() && !db.exists());
        std::fs::write(&db, b"not a database at all, just text").unwrap();
        assert!(!inspect_copy(&db).unwrap().intact);
    }

    #[test]
    fn same_request_id_is_applied_once() {
        let db = temp_db("dup");
        let mut c = open_writer(&db).unwrap();
        let w = with_id(user("ann"), "r1");
        let Applied::New(ch) = execute_write(&mut c, &w, 1).unwrap() else { panic!("first is new") };
        assert_eq!(ch.seq, 1);
        let Applied::Duplicate(o) = execute_write(&mut c, &w, 1).unwrap() else { panic!("second is dup") };
        assert_eq!(o.seq, 1);
        assert_eq!(position(&c).unwrap().seq, 1);
    }

    #[test]
    fn a_group_commit_keeps_the_good_writes_around_a_refused_one() {
        let db = temp_db("group");
        let mut c = open_writer(&db).unwrap();
        let reqs = [with_id(user("a"), "1"), with_id(user("a"), "2"), with_id(user("b"), "3"), with_id(user("b"), "3")];
        let out = execute_writes(&mut c, &reqs, 1).unwrap();
        assert!(matches!(&out[0], Ok(Applied::New(ch)) if ch.seq == 1));
        assert!(matches!(&out[1], Err(StoreError::Conflict(_))));
        assert!(matches!(&out[2], Ok(Applied::New(ch)) if ch.seq == 2));
        assert!(matches!(&out[3], Ok(Applied::Duplicate(o)) if o.seq == 2));
        assert_eq!(position(&c).unwrap().seq, 2);
    }

    #[test]
    fn conflict_uses_no_sequence_number() {
        let db = temp_db("conflict");
        let mut c = open_writer(&db).unwrap();
        execute_write(&mut c, &with_id(user("ann"), "a"), 1).unwrap();
        let err = execute_write(&mut c, &with_id(user("ann"), "b"), 1).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(position(&c).unwrap().seq, 1);
    }

    #[test]
    fn replay_on_a_slave_gives_the_same_rows() {
        let (m, s) = (temp_db("m"), temp_db("s"));
        let mut master = open_writer(&m).unwrap();
        let mut slave = open_writer(&s).unwrap();
        let mut changes = vec![];
        for (i, w) in [
            user("ann"),
            WriteRequest::insert(
                "rides",
                [
                    ("created_by", "ann".into()),
                    ("start_time", 5.into()),
                    ("source", 1.into()),
                    ("destination", 2.into()),
                ],
            ),
            WriteRequest::clear(),
            user("bob"),
            WriteRequest::insert(
                "rides",
                [
                    ("created_by", "bob".into()),
                    ("start_time", 5.into()),
                    ("source", 1.into()),
                    ("destination", 2.into()),
                ],
            ),
        ]
        .into_iter()
        .enumerate()
        {
            if let Applied::New(ch) = execute_write(&mut master, &with_id(w, &i.to_string()), 1).unwrap() {
                changes.push(ch);
            }
        }
        // ride ids are never reused, even after clear.
        assert_eq!(changes[4].outcome.last_insert_id, Some(2));
        apply_changes(&mut slave, &changes[..2]).unwrap();
        apply_changes(&mut slave, &changes).unwrap(); // overlap is skipped
        let pool = ReaderPool::new(&s, 4);
        let (rows, pos) = pool.read(&ReadRequest::table("rides").validate().unwrap()).unwrap();
        assert_eq!(pos.seq, 5);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["ride_id"], 2);
        assert!(matches!(
            apply_changes(&mut slave, &[Change { seq: 9, ..changes[0].clone() }]),
            Err(StoreError::Gap { .. })
        ));
    }

    #[test]
    fn deleting_a_user_cascades() {
        let db = temp_db("cascade");
        let mut c = open_writer(&db).unwrap();
        for w in [
            user("ann"),
            user("bob"),
            WriteRequest::insert(
                "rides",
                [
                    ("created_by", "ann".into()),
                    ("start_time", 5.into()),
                    ("source", 1.into()),
                    ("destination", 2.into()),
                ],
            ),
            WriteRequest::insert("ride_riders", [("ride_id", 1.into()), ("username", "bob".into())]),
            WriteRequest::delete("users", vec![Condition::eq("username", "ann")]),
        ] {
            execute_write(&mut c, &w, 1).unwrap();
        }
        let pool = ReaderPool::new(&db, 4);
        let count =
            |t: &str| pool.read(&ReadRequest::table(t).counting().validate().unwrap()).unwrap().0[0]["count"].clone();
        assert_eq!(count("rides"), 0);
        assert_eq!(count("ride_riders"), 0);
        assert_eq!(count("users"), 1);
    }

    #[test]
    fn rows_are_written_as_json_in_the_order_asked() {
        let db = temp_db("rows-json");
        let mut c = open_writer(&db).unwrap();
        execute_write(&mut c, &user("a\"quote\\ é\n"), 1).unwrap();
        execute_write(&mut c, &user("bob"), 1).unwrap();
        let reader = ReaderPool::open(&db).unwrap();
        let read = ReadRequest::table("users").columns(&["username", "password"]).order("username", false);
        let json = rows_json(&reader, &read.validate().unwrap()).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.starts_with(r#"[{"username":"a\"quote\\ é\n","password":"#), "{text}");
        let rows: Vec<Row> = serde_json::from_slice(&json).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["username"], "bob");
        let count = rows_json(&reader, &ReadRequest::table("rides").counting().validate().unwrap()).unwrap();
        assert_eq!(count, br#"[{"count":0}]"#);
        let none = ReadRequest::table("users").filter(Condition::eq("username", "nobody"));
        assert_eq!(rows_json(&reader, &none.validate().unwrap()).unwrap(), b"[]");
    }

    /// Issue 20: a read without a limit used to bring a whole table into
    /// memory (slave, broker, orchestrator). Its answer now holds at most
    /// `MAX_ROWS` rows; one more is a refusal naming the way out (paging).
    #[test]
    fn a_read_without_a_limit_answers_at_most_max_rows() {
        let db = temp_db("row-cap");
        let c = open_writer(&db).unwrap();
        let fill = |n: u32| {
            c.execute("DELETE FROM users", []).unwrap();
            c.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
                 INSERT INTO users (username, password) SELECT 'u' || i, 'p' FROM n",
                [n],
            )
            .unwrap();
        };
        let reader = ReaderPool::open(&db).unwrap();
        let all = ReadRequest::table("users").columns(&["username"]).validate().unwrap();
        fill(wire::MAX_ROWS);
        let rows: Vec<Row> = serde_json::from_slice(&rows_json(&reader, &all).unwrap()).unwrap();
        assert_eq!(rows.len(), wire::MAX_ROWS as usize);
        fill(wire::MAX_ROWS + 1);
        let err = rows_json(&reader, &all).unwrap_err();
        assert!(matches!(err, StoreError::TooManyRows(n) if n == wire::MAX_ROWS), "{err}");
        assert!(err.to_string().contains("give a limit"), "{err}");
        // A page, and a count, are not capped.
        let page = ReadRequest::table("users").columns(&["username"]).order("username", false).limit(10);
        let rows: Vec<Row> = serde_json::from_slice(&rows_json(&reader, &page.validate().unwrap()).unwrap()).unwrap();
        assert_eq!(rows.len(), 10);
        let count = rows_json(&reader, &ReadRequest::table("users").counting().validate().unwrap()).unwrap();
        assert_eq!(count, format!(r#"[{{"count":{}}}]"#, wire::MAX_ROWS + 1).into_bytes());
    }

    /// Issue 20: the ids were kept for 200,000 writes, ~28 s at full speed, so a
    /// client retrying a minute later could apply its write twice. An id is now
    /// kept 24 hours, within a bound of a million writes.
    #[test]
    fn a_request_id_is_kept_a_day_within_a_bounded_table() {
        let db = temp_db("retention");
        let mut c = open_writer(&db).unwrap();
        let keyed = with_id(user("ann"), "users-api PUT /api/v1/users key-1");
        let Applied::New(first) = execute_write(&mut c, &keyed, 1).unwrap() else { panic!("first is new") };
        let outcome = first.outcome;
        let ids = |c: &Connection| c.query_row("SELECT COUNT(*) FROM _requests", [], |r| r.get::<_, i64>(0)).unwrap();
        // 250,000 more writes within the next minute: more than the old window.
        let tx = c.transaction().unwrap();
        for seq in 2..=250_001u64 {
            record(&tx, &format!("r{seq}"), seq, 1, first.at_ms + 60_000, &outcome).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(ids(&c), 250_001, "nothing a day old yet, under the bound");
        let Applied::Duplicate(again) = execute_write(&mut c, &keyed, 1).unwrap() else {
            panic!("the key sent again a minute and 250,000 writes later was applied twice")
        };
        assert_eq!(again, first.outcome);
        // A day later, what is older than a day and than 200,000 writes goes.
        let day = 24 * 3600 * 1000;
        let tx = c.transaction().unwrap();
        for seq in 250_002..=251_000u64 {
            record(&tx, &format!("r{seq}"), seq, 1, first.at_ms + 60_000 + day + 1, &outcome).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(ids(&c), 200_000);
        assert!(matches!(execute_write(&mut c, &keyed, 1), Err(StoreError::Conflict(_))), "applied again: a new write");
        // The bound holds whatever the age: never more than max_writes ids.
        let tx = c.transaction().unwrap();
        let small = Retention { min_writes: 10, min_age_ms: 10 * day, max_writes: 100_000 };
        prune_requests(&tx, 251_000, first.at_ms + 60_000 + day + 1, small).unwrap();
        tx.commit().unwrap();
        assert_eq!(ids(&c), 100_000);
    }

    #[test]
    fn a_failed_read_leaves_no_transaction_open() {
        let db = temp_db("read-err");
        let mut c = open_writer(&db).unwrap();
        execute_write(&mut c, &user("ann"), 1).unwrap();
        let reader = ReaderPool::open(&db).unwrap();
        let users = ReadRequest::table("users").validate().unwrap();
        let rides = ReadRequest::table("rides").validate().unwrap();
        let (rows, _) = read_many_on(&reader, std::slice::from_ref(&users)).unwrap();
        let rows: Vec<Row> = serde_json::from_slice(rows[0].as_ref().unwrap()).unwrap();
        assert_eq!(rows.len(), 1);
        // The table goes under the reader: its next read fails, the others of its batch do not.
        c.execute_batch("PRAGMA foreign_keys=OFF; DROP TABLE users;").unwrap();
        let (rows, _) = read_many_on(&reader, &[users.clone(), rides.clone()]).unwrap();
        assert!(rows[0].is_err());
        assert!(rows[1].is_ok());
        assert!(reader.is_autocommit(), "no transaction left open");
        // The connection goes on serving.
        assert!(read_many_on(&reader, &[rides]).unwrap().0[0].is_ok());
    }

    #[test]
    fn snapshot_round_trip() {
        let (m, s) = (temp_db("snap-m"), temp_db("snap-s"));
        let mut c = open_writer(&m).unwrap();
        for i in 0..50 {
            execute_write(&mut c, &with_id(user(&format!("u{i}")), &format!("r{i}")), 3).unwrap();
        }
        let copy = m.with_extension("copy");
        let pos = backup_to(&m, &copy).unwrap();
        assert_eq!(pos, Position { seq: 50, epoch: 3 });
        let staged = s.with_extension("incoming");
        std::fs::rename(&copy, &staged).unwrap();
        let (conn, got) = install_snapshot(&s, &staged).unwrap();
        assert_eq!(got, pos);
        let users: i64 = conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0)).unwrap();
        assert_eq!(users, 50);
    }
}
