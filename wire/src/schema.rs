//! The database schema as data.
//!
//! The worker creates its tables from [`MIGRATIONS`]; the orchestrator and the
//! worker both check every table and column name of a request against
//! [`TABLES`]. Keeping the two side by side means a column cannot exist in one
//! and be unknown to the other.

/// The kind of value a column holds; requests with another kind are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Text,
}

/// One column a request may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// Filled in by the master on insert when the request leaves it out
    /// (`rides.ride_id`, never reused thanks to `AUTOINCREMENT`).
    pub generated: bool,
}

/// One table a request may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The column the master fills in on insert, if any.
    pub fn generated_column(&self) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.generated)
    }
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty, generated: false }
}

/// Every table requests may touch. Bookkeeping tables (prefixed `_`) are absent
/// on purpose: no request can read or write them.
pub const TABLES: &[Table] = &[
    Table { name: "users", columns: &[col("username", ColumnType::Text), col("password", ColumnType::Text)] },
    Table {
        name: "rides",
        columns: &[
            Column { name: "ride_id", ty: ColumnType::Integer, generated: true },
            col("created_by", ColumnType::Text),
            col("start_time", ColumnType::Integer),
            col("source", ColumnType::Integer),
            col("destination", ColumnType::Integer),
        ],
    },
    Table { name: "ride_riders", columns: &[col("ride_id", ColumnType::Integer), col("username", ColumnType::Text)] },
];

/// Tables in the order `clear` empties them (children first).
pub const CLEAR_ORDER: &[&str] = &["ride_riders", "rides", "users"];

pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// Schema migrations, applied in order; the index + 1 is the schema version
/// stored in SQLite's `user_version`.
///
/// Foreign keys with `ON DELETE CASCADE` make "deleting a user removes its
/// rides and takes it off rides it joined" one statement, identical on the
/// master and on every slave that replays it.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    username TEXT PRIMARY KEY NOT NULL,
    password TEXT NOT NULL
);
CREATE TABLE rides (
    ride_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    created_by  TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    start_time  INTEGER NOT NULL,
    source      INTEGER NOT NULL,
    destination INTEGER NOT NULL
);
CREATE INDEX rides_route ON rides(source, destination, start_time);
CREATE INDEX rides_creator ON rides(created_by);
CREATE TABLE ride_riders (
    ride_id  INTEGER NOT NULL REFERENCES rides(ride_id) ON DELETE CASCADE,
    username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    PRIMARY KEY (ride_id, username)
);
CREATE INDEX ride_riders_user ON ride_riders(username);
CREATE TABLE _state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    applied_seq INTEGER NOT NULL,
    epoch       INTEGER NOT NULL
);
INSERT INTO _state (id, applied_seq, epoch) VALUES (1, 0, 0);
CREATE TABLE _requests (
    request_id    TEXT PRIMARY KEY NOT NULL,
    seq           INTEGER NOT NULL,
    outcome       TEXT NOT NULL
);
CREATE INDEX _requests_seq ON _requests(seq);
"#,
    // 2: when each request id was applied (the master's clock, carried in the
    // change), so an id is kept for a time, not only a number of writes.
    r#"
ALTER TABLE _requests ADD COLUMN at_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX _requests_at ON _requests(at_ms);
"#,
];
