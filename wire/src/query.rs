//! The structured read and write requests of `/api/v1/db/read` and `/api/v1/db/write`.
//!
//! A request arrives as loose JSON ([`ReadRequest`], [`WriteRequest`]) and is
//! turned by `validate()` into a checked form ([`Read`], [`Write`]) whose table
//! and column names are known to exist in [`crate::schema`] and whose values
//! have the column's type. Only the checked form is ever executed.
//!
//! Invariant: a caller never chooses a generated key. `rides.ride_id` is the
//! master's to fill in ([`WriteRequest::validate`] refuses it in an insert's
//! or an update's values), so no request can push the id sequence to its end
//! (one insert of ride 2^63-1 would make every later insert fail). Only a
//! change the master executed, replayed on a slave or from the backup, carries
//! it ([`WriteRequest::validate_executed`]).
//!
//! Example read, the upcoming rides from area 3 to area 7:
//! ```json
//! {"table": "rides", "columns": ["ride_id", "created_by", "start_time"],
//!  "where": [{"column": "source", "op": "=", "value": 3},
//!            {"column": "destination", "op": "=", "value": 7},
//!            {"column": "start_time", "op": ">", "value": 1767225600}],
//!  "order_by": [{"column": "start_time"}]}
//! ```
//! Example write:
//! ```json
//! {"op": "insert", "table": "users", "values": {"username": "ann", "password": "ab12..."}}
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::schema::{self, ColumnType, Table};

/// A column value: SQL NULL, a 64-bit integer or a string. Floats, booleans,
/// arrays and integers outside i64 are refused at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Text(_) => "string",
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

/// A comparison operator of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    /// The SQL operator; a fixed string from this closed set, never user text.
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// `column op value`; the conditions of a request are ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    pub value: Value,
}

impl Condition {
    pub fn eq(column: &str, value: impl Into<Value>) -> Self {
        Condition { column: column.to_owned(), op: Op::Eq, value: value.into() }
    }
    pub fn new(column: &str, op: Op, value: impl Into<Value>) -> Self {
        Condition { column: column.to_owned(), op, value: value.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub column: String,
    #[serde(default)]
    pub desc: bool,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Sees every write acknowledged before the read started (the default).
    #[default]
    Strong,
    /// Whatever the slave has applied; never waits.
    Eventual,
}

/// A read as it arrives on `/api/v1/db/read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    pub table: String,
    /// Columns to return; empty means every column of the table.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return one row `{"count": n}` instead of the rows.
    #[serde(default)]
    pub count: bool,
    #[serde(default)]
    pub consistency: Consistency,
}

impl ReadRequest {
    /// A plain select of every column of `table`.
    pub fn table(table: &str) -> Self {
        ReadRequest {
            table: table.to_owned(),
            columns: vec![],
            conditions: vec![],
            order_by: vec![],
            limit: None,
            count: false,
            consistency: Consistency::Strong,
        }
    }
    pub fn columns(mut self, cols: &[&str]) -> Self {
        self.columns = cols.iter().map(|c| c.to_string()).collect();
        self
    }
    pub fn filter(mut self, c: Condition) -> Self {
        self.conditions.push(c);
        self
    }
    pub fn order(mut self, column: &str, desc: bool) -> Self {
        self.order_by.push(OrderBy { column: column.to_owned(), desc });
        self
    }
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }
    pub fn counting(mut self) -> Self {
        self.count = true;
        self
    }
}

/// The kind of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    Insert,
    Update,
    Delete,
    /// Empty every table (rideIds are still never reused).
    Clear,
}

/// A write as it arrives on `/api/v1/db/write` (and as it travels on `syncQ`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    pub op: WriteKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Insert: the new row. Update: the columns to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, Value>,
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Idempotency key: a write sent twice with the same id is applied once.
    /// The orchestrator makes one up when the caller gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl WriteRequest {
    pub fn insert(table: &str, values: impl IntoIterator<Item = (&'static str, Value)>) -> Self {
        WriteRequest {
            op: WriteKind::Insert,
            table: Some(table.to_owned()),
            values: values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            conditions: vec![],
            request_id: None,
        }
    }
    pub fn delete(table: &str, conditions: Vec<Condition>) -> Self {
        WriteRequest {
            op: WriteKind::Delete,
            table: Some(table.to_owned()),
            values: BTreeMap::new(),
            conditions,
            request_id: None,
        }
    }
    pub fn clear() -> Self {
        WriteRequest {
            op: WriteKind::Clear,
            table: None,
            values: BTreeMap::new(),
            conditions: vec![],
            request_id: None,
        }
    }
}

/// Why a request was refused before reaching the database (always a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Invalid {}

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// Upper bounds that keep one request from exhausting a worker (and keep
/// SQLite's own limits, 2,000 result columns, from answering for us with an
/// error that is not the caller's 400).
pub const MAX_CONDITIONS: usize = 16;
pub const MAX_LIMIT: u32 = 100_000;
/// The most rows one answer holds. A read with a `limit` is bounded by it
/// (at most [`MAX_LIMIT`]); a read without one whose answer would hold more
/// is refused (400) rather than carried whole through the slave, the broker
/// and the orchestrator: a caller pages instead, with a `limit` and a `where`
/// on its order column (as the users service lists every user).
pub const MAX_ROWS: u32 = MAX_LIMIT;
/// The most `columns` a read may list (every table has at most 5; repeats allowed).
pub const MAX_COLUMNS: usize = 16;
/// The most `order_by` keys a read may give.
pub const MAX_ORDER_BY: usize = 8;

fn known_table(name: &str) -> Result<&'static Table, Invalid> {
    schema::table(name).ok_or_else(|| Invalid(format!("unknown table {:?}", truncate(name))))
}

fn known_column(t: &Table, name: &str) -> Result<&'static str, Invalid> {
    t.column(name)
        .map(|c| c.name)
        .ok_or_else(|| Invalid(format!("unknown column {:?} of table {}", truncate(name), t.name)))
}

fn typed_value(t: &Table, column: &str, v: &Value) -> Result<(), Invalid> {
    let col = t.column(column).expect("column checked before");
    match (col.ty, v) {
        (_, Value::Null) | (ColumnType::Integer, Value::Int(_)) | (ColumnType::Text, Value::Text(_)) => Ok(()),
        (ty, v) => invalid(format!("column {} takes {:?}, got {}", column, ty, v.kind())),
    }
}

/// Error messages echo names back; keep a hostile megabyte-long name out of them.
fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        s.to_owned()
    } else {
        let mut end = 64;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// A condition whose column is known and whose value has the column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCondition {
    pub column: &'static str,
    pub op: Op,
    pub value: Value,
}

fn check_conditions(t: &Table, conds: &[Condition]) -> Result<Vec<CheckedCondition>, Invalid> {
    if conds.len() > MAX_CONDITIONS {
        return invalid(format!("at most {MAX_CONDITIONS} conditions"));
    }
    conds
        .iter()
        .map(|c| {
            let column = known_column(t, &c.column)?;
            typed_value(t, column, &c.value)?;
            if c.value == Value::Null {
                return invalid("conditions cannot compare with null");
            }
            Ok(CheckedCondition { column, op: c.op, value: c.value.clone() })
        })
        .collect()
}

/// A read whose every name is in the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub table: &'static Table,
    pub columns: Vec<&'static str>,
    pub conditions: Vec<CheckedCondition>,
    pub order_by: Vec<(&'static str, bool)>,
    pub limit: Option<u32>,
    pub count: bool,
    /// A read without a `limit` (and not a count): the most rows its answer
    /// may hold, [`MAX_ROWS`]; more is the caller's error, not a longer answer.
    pub row_cap: Option<u32>,
}

impl ReadRequest {
    pub fn validate(&self) -> Result<Read, Invalid> {
        let table = known_table(&self.table)?;
        if self.columns.len() > MAX_COLUMNS {
            return invalid(format!("at most {MAX_COLUMNS} columns (got {})", self.columns.len()));
        }
        if self.order_by.len() > MAX_ORDER_BY {
            return invalid(format!("at most {MAX_ORDER_BY} order_by keys (got {})", self.order_by.len()));
        }
        let columns = if self.columns.is_empty() {
            table.columns.iter().map(|c| c.name).collect()
        } else {
            self.columns.iter().map(|c| known_column(table, c)).collect::<Result<_, _>>()?
        };
        let conditions = check_conditions(table, &self.conditions)?;
        let order_by = self
            .order_by
            .iter()
            .map(|o| Ok((known_column(table, &o.column)?, o.desc)))
            .collect::<Result<_, Invalid>>()?;
        if let Some(l) = self.limit {
            if l > MAX_LIMIT {
                return invalid(format!("limit above {MAX_LIMIT}"));
            }
        }
        let row_cap = (self.limit.is_none() && !self.count).then_some(MAX_ROWS);
        Ok(Read { table, columns, conditions, order_by, limit: self.limit, count: self.count, row_cap })
    }
}

/// Who a write comes from: a caller may not set a generated column; the
/// master's executed change carries the value it generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Client,
    Master,
}

/// A write whose every name is in the schema, in the shape the worker executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Insert { table: &'static Table, values: Vec<(&'static str, Value)> },
    Update { table: &'static Table, values: Vec<(&'static str, Value)>, conditions: Vec<CheckedCondition> },
    Delete { table: &'static Table, conditions: Vec<CheckedCondition> },
    Clear,
}

impl WriteRequest {
    /// A caller's write, as the orchestrator and the master take it: every
    /// name known, every value typed, and no value for a generated column.
    pub fn validate(&self) -> Result<Write, Invalid> {
        self.check(Caller::Client)
    }

    /// A write as the master executed it (its generated ids filled in), for
    /// replaying a change: a slave applying `syncQ`, a restore from the backup.
    pub fn validate_executed(&self) -> Result<Write, Invalid> {
        self.check(Caller::Master)
    }

    fn check(&self, caller: Caller) -> Result<Write, Invalid> {
        if let Some(id) = &self.request_id {
            if id.is_empty() || id.len() > 128 {
                return invalid("request_id must be 1 to 128 characters");
            }
        }
        if self.op == WriteKind::Clear {
            if self.table.is_some() || !self.values.is_empty() || !self.conditions.is_empty() {
                return invalid("clear takes no table, values or conditions");
            }
            return Ok(Write::Clear);
        }
        let Some(name) = &self.table else { return invalid("missing table") };
        let table = known_table(name)?;
        let values = || -> Result<Vec<(&'static str, Value)>, Invalid> {
            if self.values.is_empty() {
                return invalid("missing values");
            }
            self.values
                .iter()
                .map(|(k, v)| {
                    let c = known_column(table, k)?;
                    if caller == Caller::Client && table.column(c).is_some_and(|col| col.generated) {
                        return invalid(format!("{}.{c} is chosen by the database: leave it out", table.name));
                    }
                    typed_value(table, c, v)?;
                    Ok((c, v.clone()))
                })
                .collect()
        };
        let conditions = || -> Result<Vec<CheckedCondition>, Invalid> {
            if self.conditions.is_empty() {
                return invalid("update and delete need at least one condition (use clear to empty everything)");
            }
            check_conditions(table, &self.conditions)
        };
        match self.op {
            WriteKind::Insert => {
                if !self.conditions.is_empty() {
                    return invalid("insert takes no conditions");
                }
                Ok(Write::Insert { table, values: values()? })
            }
            WriteKind::Update => Ok(Write::Update { table, values: values()?, conditions: conditions()? }),
            WriteKind::Delete => {
                if !self.values.is_empty() {
                    return invalid("delete takes no values");
                }
                Ok(Write::Delete { table, conditions: conditions()? })
            }
            WriteKind::Clear => unreachable!("handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<Read, String> {
        let r: ReadRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        r.validate().map_err(|e| e.0)
    }
    fn write(json: &str) -> Result<Write, String> {
        let w: WriteRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        w.validate().map_err(|e| e.0)
    }

    #[test]
    fn accepts_a_plain_select() {
        let r =
            read(r#"{"table":"users","columns":["username"],"where":[{"column":"username","op":"=","value":"a"}]}"#)
                .unwrap();
        assert_eq!(r.table.name, "users");
        assert_eq!(r.columns, vec!["username"]);
    }

    #[test]
    fn empty_columns_means_all() {
        let r = read(r#"{"table":"rides"}"#).unwrap();
        assert_eq!(r.columns.len(), 5);
    }

    #[test]
    fn refuses_injection_in_names() {
        assert!(read(r#"{"table":"users; DROP TABLE users"}"#).unwrap_err().contains("unknown table"));
        assert!(read(r#"{"table":"users","columns":["1=1 OR"]}"#).unwrap_err().contains("unknown column"));
        assert!(read(r#"{"table":"users","order_by":[{"column":"username; --"}]}"#).is_err());
        assert!(read(r#"{"table":"_requests"}"#).is_err());
        assert!(write(r#"{"op":"insert","table":"users","values":{"username) VALUES('x','y');--":"a"}}"#).is_err());
    }

    #[test]
    fn refuses_wrong_types_and_huge_numbers() {
        assert!(write(r#"{"op":"insert","table":"rides","values":{"source":"3"}}"#).is_err());
        assert!(read(r#"{"table":"rides","where":[{"column":"source","op":"=","value":1e999}]}"#).is_err());
        assert!(read(r#"{"table":"rides","where":[{"column":"source","op":"=","value":99999999999999999999999}]}"#)
            .is_err());
        assert!(read(r#"{"table":"rides","where":[{"column":"source","op":"LIKE","value":1}]}"#).is_err());
        assert!(read(r#"{"table":"rides","where":[{"column":"source","op":"=","value":true}]}"#).is_err());
    }

    #[test]
    fn refuses_unbounded_updates_and_unknown_fields() {
        assert!(write(r#"{"op":"delete","table":"users"}"#).is_err());
        assert!(write(r#"{"op":"update","table":"users","values":{"password":"x"}}"#).is_err());
        assert!(write(r#"{"op":"insert","table":"users","values":{"username":"a"},"sql":"DROP"}"#).is_err());
        assert!(write(r#"{"op":"clear","table":"users"}"#).is_err());
        assert_eq!(write(r#"{"op":"clear"}"#).unwrap(), Write::Clear);
    }

    /// A megabyte of column names used to reach SQLite (and come back a 503).
    #[test]
    fn refuses_oversized_column_and_order_lists() {
        let cols = vec![r#""username""#; 50_000].join(",");
        let err = read(&format!(r#"{{"table":"users","columns":[{cols}]}}"#)).unwrap_err();
        assert_eq!(err, "at most 16 columns (got 50000)");
        let keys = vec![r#"{"column":"username"}"#; 50_000].join(",");
        let err = read(&format!(r#"{{"table":"users","order_by":[{keys}]}}"#)).unwrap_err();
        assert_eq!(err, "at most 8 order_by keys (got 50000)");
        let cols = [r#""username""#; MAX_COLUMNS].join(",");
        assert!(read(&format!(r#"{{"table":"users","columns":[{cols}]}}"#)).is_ok());
        let keys = [r#"{"column":"username"}"#; MAX_ORDER_BY].join(",");
        assert!(read(&format!(r#"{{"table":"users","order_by":[{keys}]}}"#)).is_ok());
    }

    /// Only a read without a limit (and not a count) is capped.
    #[test]
    fn unlimited_reads_are_capped() {
        assert_eq!(read(r#"{"table":"users"}"#).unwrap().row_cap, Some(MAX_ROWS));
        assert_eq!(read(r#"{"table":"users","limit":10}"#).unwrap().row_cap, None);
        assert_eq!(read(r#"{"table":"users","count":true}"#).unwrap().row_cap, None);
    }

    /// One insert of ride 2^63-1 used to leave AUTOINCREMENT nowhere to go:
    /// every later ride insert failed. A caller never sets the id.
    #[test]
    fn refuses_client_chosen_ride_ids() {
        let max = i64::MAX;
        for w in [
            format!(r#"{{"op":"insert","table":"rides","values":{{"ride_id":{max},"created_by":"a","start_time":1,"source":1,"destination":2}}}}"#),
            r#"{"op":"insert","table":"rides","values":{"ride_id":7,"created_by":"a","start_time":1,"source":1,"destination":2}}"#.to_owned(),
            r#"{"op":"insert","table":"rides","values":{"ride_id":null,"created_by":"a","start_time":1,"source":1,"destination":2}}"#.to_owned(),
            format!(r#"{{"op":"update","table":"rides","values":{{"ride_id":{max}}},"where":[{{"column":"ride_id","op":"=","value":1}}]}}"#),
        ] {
            let err = write(&w).unwrap_err();
            assert!(err.contains("rides.ride_id is chosen by the database"), "{w}: {err}");
        }
        // Conditions on it, and the riders' reference to it, stay allowed.
        assert!(write(
            r#"{"op":"delete","table":"rides","where":[{"column":"ride_id","op":"=","value":9223372036854775807}]}"#
        )
        .is_ok());
        assert!(write(r#"{"op":"insert","table":"ride_riders","values":{"ride_id":7,"username":"a"}}"#).is_ok());
        // The master's executed change carries the id it generated.
        let executed: WriteRequest = serde_json::from_str(
            r#"{"op":"insert","table":"rides","values":{"ride_id":7,"created_by":"a","start_time":1,"source":1,"destination":2}}"#,
        )
        .unwrap();
        assert!(executed.validate_executed().is_ok());
    }

    #[test]
    fn long_names_are_truncated_in_errors() {
        let long = "x".repeat(100_000);
        let err = read(&format!(r#"{{"table":"{long}"}}"#)).unwrap_err();
        assert!(err.len() < 200);
    }
}
