//! `GET /api/v1/users` without a filter: every user name, sorted, streamed.
//!
//! Invariant: no process holds more than a few pages of the list at once,
//! however many users there are. The table is read page by page with keyset
//! pagination (`username > last ORDER BY username LIMIT page`), each page a
//! strong read of its own, and each page is written to the HTTP body (a chunked
//! JSON array) as it arrives. A producer task reads ahead of what the client
//! has taken by at most the bounded channel between them (futures' `mpsc` of
//! one: two pages queued) plus the page it is reading, so a slow client slows
//! the reads instead of filling memory, and a client that goes away stops them.
//!
//! What a listing guarantees across pages (docs/api.md §3.1): names strictly
//! ascending (SQLite's binary order, as before), none twice; every user that
//! exists from before the request until its answer ends is in it; a user
//! created or deleted meanwhile may or may not be. A database error after the
//! first page cuts the body off (no closing `]`, connection closed): the status
//! line is gone by then, and a cut answer is not valid JSON, so no client
//! mistakes it for the whole list.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::mpsc;
use futures::SinkExt;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use wire::{Condition, Op, ReadRequest};

use svc_common::http;
use svc_common::orchestrator_client::{DbError, OrchestratorClient};

/// The read of the page after `after` (the first page when `None`).
pub fn page_request(after: Option<&str>, page: u32) -> ReadRequest {
    let mut read = ReadRequest::table("users").columns(&["username"]).order("username", false).limit(page);
    if let Some(last) = after {
        read = read.filter(Condition::new("username", Op::Gt, last));
    }
    read
}

/// A row of a page, decoded straight from the answer (no map per row).
#[derive(Debug, serde::Deserialize)]
pub struct UserRow {
    username: String,
}

/// The names in a page's rows, in order.
pub fn names(rows: Vec<UserRow>) -> Vec<String> {
    rows.into_iter().map(|r| r.username).collect()
}

/// Whether a page of `got` names, asked with `page`, may have a successor.
pub fn more_after(got: usize, page: u32) -> bool {
    got >= page as usize && got > 0
}

/// One page as a piece of the JSON array: `["a","b"` for the first, `,"c","d"`
/// for the others (the closing `]` is [`CLOSE`]).
pub fn encode_page(names: &[String], first: bool) -> Bytes {
    let mut buf = BytesMut::with_capacity(names.iter().map(|n| n.len() + 3).sum::<usize>() + 1).writer();
    for (i, n) in names.iter().enumerate() {
        let sep: &[u8] = match (i, first) {
            (0, true) => b"[",
            _ => b",",
        };
        std::io::Write::write_all(&mut buf, sep).expect("writes to memory");
        serde_json::to_writer(&mut buf, n).expect("a string serializes");
    }
    buf.into_inner().freeze()
}

pub const CLOSE: &[u8] = b"]";

/// The whole answer: 204 when there is no user, otherwise 200 and the list,
/// streamed (see the module doc). An error on the first page is answered
/// with its status, like any other read.
pub async fn list_all(db: Arc<OrchestratorClient>, page: u32) -> Response {
    let first = match db.read_as(&page_request(None, page)).await {
        Ok(rows) => names(rows),
        Err(e) => return e.into_response(),
    };
    if first.is_empty() {
        return http::no_content();
    }
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, DbError>>(1);
    tokio::spawn(async move {
        let mut more = more_after(first.len(), page);
        let mut last = first.last().cloned();
        let mut pages = 1u64;
        let mut total = first.len() as u64;
        if tx.send(Ok(encode_page(&first, true))).await.is_err() {
            return;
        }
        drop(first);
        while more {
            let rows = match db.read_as(&page_request(last.as_deref(), page)).await {
                Ok(rows) => names(rows),
                Err(e) => {
                    tracing::warn!(pages, names = total, "user listing cut off: {e}");
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            more = more_after(rows.len(), page);
            if let Some(l) = rows.last() {
                last = Some(l.clone());
            }
            pages += 1;
            total += rows.len() as u64;
            if !rows.is_empty() && tx.send(Ok(encode_page(&rows, false))).await.is_err() {
                // The client went away: stop reading.
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(CLOSE))).await;
        tracing::debug!(pages, names = total, "user listing sent");
    });
    let mut r = warp::reply::with_status(warp::reply::stream(rx), StatusCode::OK).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_requests() {
        let first = page_request(None, 3);
        assert_eq!(first.limit, Some(3));
        assert!(first.conditions.is_empty());
        assert_eq!(first.order_by.len(), 1);
        assert!(!first.order_by[0].desc);
        assert_eq!(first.order_by[0].column, "username");
        let next = page_request(Some("bob"), 3);
        assert_eq!(next.conditions, vec![Condition::new("username", Op::Gt, "bob")]);
        // What the orchestrator would accept.
        assert!(next.validate().is_ok());
    }

    #[test]
    fn when_to_read_on() {
        for (got, page, more) in [(0, 5, false), (4, 5, false), (5, 5, true), (1, 1, true), (0, 1, false)] {
            assert_eq!(more_after(got, page), more, "got {got} of a page of {page}");
        }
    }

    /// The pieces of a listing put together are the JSON array of every name.
    #[test]
    fn pages_join_into_one_array() {
        let pages: Vec<Vec<String>> = vec![
            vec!["a".into(), "b \"quoted\"".into()],
            vec!["c\\d".into()],
            vec!["é".into(), "\u{1}".into(), "z".into()],
        ];
        let mut body = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            body.extend_from_slice(&encode_page(p, i == 0));
        }
        body.extend_from_slice(CLOSE);
        let got: Vec<String> = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, pages.concat());
        // Cut before the close, it is not JSON.
        assert!(serde_json::from_slice::<Vec<String>>(&body[..body.len() - 1]).is_err());
        assert_eq!(&encode_page(&["x".into()], true)[..], b"[\"x\"");
    }

    #[test]
    fn names_of_rows() {
        let rows: Vec<UserRow> = serde_json::from_str(r#"[{"username":"a"},{"username":"b"}]"#).unwrap();
        assert_eq!(names(rows), vec!["a", "b"]);
        assert!(serde_json::from_str::<Vec<UserRow>>(r#"[{"other":1}]"#).is_err(), "a row without a name");
    }
}
