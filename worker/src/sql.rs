//! Turns validated requests into SQL text plus bound parameters.
//!
//! Every identifier that reaches the SQL text comes from [`wire::schema`]
//! (a `&'static str` of the compiled-in schema), never from the request; every
//! value is a `?` parameter. This is the one place SQL is assembled.

use rusqlite::types::Value as SqlValue;
use wire::{CheckedCondition, Read, Value, Write};

/// SQL text and its parameters, ready for `prepare_cached`.
#[derive(Debug, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<SqlValue>,
}

pub fn sql_value(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Int(i) => SqlValue::Integer(*i),
        Value::Text(s) => SqlValue::Text(s.clone()),
    }
}

fn push_where(sql: &mut String, params: &mut Vec<SqlValue>, conds: &[CheckedCondition]) {
    for (i, c) in conds.iter().enumerate() {
        sql.push_str(if i == 0 { " WHERE " } else { " AND " });
        sql.push_str(&format!("\"{}\" {} ?", c.column, c.op.sql()));
        params.push(sql_value(&c.value));
    }
}

pub fn select(r: &Read) -> Statement {
    let mut params = Vec::new();
    let mut sql = if r.count {
        format!("SELECT COUNT(*) FROM \"{}\"", r.table.name)
    } else {
        let cols: Vec<String> = r.columns.iter().map(|c| format!("\"{c}\"")).collect();
        format!("SELECT {} FROM \"{}\"", cols.join(", "), r.table.name)
    };
    push_where(&mut sql, &mut params, &r.conditions);
    if !r.count {
        for (i, (col, desc)) in r.order_by.iter().enumerate() {
            sql.push_str(if i == 0 { " ORDER BY " } else { ", " });
            sql.push_str(&format!("\"{col}\"{}", if *desc { " DESC" } else { "" }));
        }
        // One row past the cap is enough to know the answer is too long.
        if let Some(limit) = r.limit.or(r.row_cap.map(|cap| cap.saturating_add(1))) {
            sql.push_str(" LIMIT ?");
            params.push(SqlValue::Integer(limit.into()));
        }
    }
    Statement { sql, params }
}

/// The statements of one write, run in one transaction. `Clear` is several.
pub fn write(w: &Write) -> Vec<Statement> {
    match w {
        Write::Insert { table, values } => {
            let cols: Vec<String> = values.iter().map(|(c, _)| format!("\"{c}\"")).collect();
            let marks = vec!["?"; values.len()].join(", ");
            vec![Statement {
                sql: format!("INSERT INTO \"{}\" ({}) VALUES ({marks})", table.name, cols.join(", ")),
                params: values.iter().map(|(_, v)| sql_value(v)).collect(),
            }]
        }
        Write::Update { table, values, conditions } => {
            let sets: Vec<String> = values.iter().map(|(c, _)| format!("\"{c}\" = ?")).collect();
            let mut params: Vec<SqlValue> = values.iter().map(|(_, v)| sql_value(v)).collect();
            let mut sql = format!("UPDATE \"{}\" SET {}", table.name, sets.join(", "));
            push_where(&mut sql, &mut params, conditions);
            vec![Statement { sql, params }]
        }
        Write::Delete { table, conditions } => {
            let mut params = Vec::new();
            let mut sql = format!("DELETE FROM \"{}\"", table.name);
            push_where(&mut sql, &mut params, conditions);
            vec![Statement { sql, params }]
        }
        Write::Clear => wire::schema::CLEAR_ORDER
            .iter()
            .map(|t| Statement { sql: format!("DELETE FROM \"{t}\""), params: vec![] })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Condition, Op, ReadRequest};

    #[test]
    fn select_binds_every_value() {
        let r = ReadRequest::table("rides")
            .columns(&["ride_id"])
            .filter(Condition::eq("source", 3))
            .filter(Condition::new("start_time", Op::Gt, 100))
            .order("start_time", false)
            .limit(5)
            .validate()
            .unwrap();
        let s = select(&r);
        assert_eq!(
            s.sql,
            "SELECT \"ride_id\" FROM \"rides\" WHERE \"source\" = ? AND \"start_time\" > ? ORDER BY \"start_time\" LIMIT ?"
        );
        assert_eq!(s.params, vec![SqlValue::Integer(3), SqlValue::Integer(100), SqlValue::Integer(5)]);
        // Without a limit: one row past the cap, to tell a too-long answer.
        let s = select(&ReadRequest::table("users").columns(&["username"]).validate().unwrap());
        assert_eq!(s.sql, "SELECT \"username\" FROM \"users\" LIMIT ?");
        assert_eq!(s.params, vec![SqlValue::Integer(i64::from(wire::MAX_ROWS) + 1)]);
    }

    #[test]
    fn quotes_in_values_stay_parameters() {
        let w =
            wire::WriteRequest::insert("users", [("username", "o'; DROP TABLE users; --".into())]).validate().unwrap();
        let s = &write(&w)[0];
        assert_eq!(s.sql, "INSERT INTO \"users\" (\"username\") VALUES (?)");
        assert_eq!(s.params, vec![SqlValue::Text("o'; DROP TABLE users; --".into())]);
    }
}
