//! HTTP plumbing both services use the same way: the request as the
//! hand-written routers want it and the path helpers they route with, the
//! body reader, the JSON answers and the 404/405 shapes (docs/api.md).
//!
//! Invariant: every request body is read to its end before anything answers,
//! so neither a client nor the load balancer in front ever has its upload cut
//! off by an early answer (nginx turns that into a 502). What is too big is
//! still read (and thrown away) up to [`DRAIN_LIMIT`] and then refused with a
//! JSON 4xx.

use std::future::Future;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Serialize;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::timing;

/// Far above any real request of either API, far below what would hurt.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A too-large body is still read and thrown away up to here (the load
/// balancer's own `client_max_body_size`), so the caller gets a clean 400;
/// beyond it the answer is a 413 and the connection is closed.
pub const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// A request taken apart for the hand-written routers, its body already read.
pub struct Request {
    pub method: Method,
    /// Still percent-encoded: a `%2F` must not split a segment in two.
    pub path: String,
    pub query: String,
    /// For the write routes' `Idempotency-Key` (`crate::idempotency`).
    pub headers: HeaderMap,
    pub body: Body,
}

/// The body as read: its bytes, or why it could not be taken.
pub type Body = Result<Bytes, BodyError>;

/// Hands every request to the service's `handle`, with its state and its body
/// read, and lets warp reject none of them: the services route by hand so
/// that every request reaches them to be counted and given the 404 or 405
/// docs/api.md describes, and warp's own rejections would answer differently.
pub fn routes<S, H, Fut>(
    state: Arc<S>,
    handle: H,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static
where
    S: Send + Sync + 'static,
    H: Fn(Request, Arc<S>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    warp::method()
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream().then(|body| read_body(body, timing::BODY_READ_TIMEOUT)))
        .map(|method, path: FullPath, query, headers, body| Request {
            method,
            path: path.as_str().to_owned(),
            query,
            headers,
            body,
        })
        .and(warp::any().map(move || state.clone()))
        .then(handle)
}

/// Empty when there is none, so a missing query is the same as one without
/// the parameter rather than a rejection.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Read to the end, and too big: the 400 of a huge value.
    #[error("request body larger than {BODY_LIMIT} bytes")]
    TooLarge,
    /// Too big even to read to the end.
    #[error("request body larger than {DRAIN_LIMIT} bytes; not read")]
    FarTooLarge,
    #[error("request body not sent within {} s", timing::BODY_READ_TIMEOUT.as_secs())]
    TimedOut,
    #[error("request body could not be read")]
    Broken,
}

impl BodyError {
    /// The refusal; the connection is closed when the body was not read to
    /// its end (what is left of it cannot be told from the next request).
    pub fn response(&self) -> Response {
        let (status, close) = match self {
            BodyError::TooLarge => (StatusCode::BAD_REQUEST, false),
            BodyError::FarTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, true),
            BodyError::TimedOut => (StatusCode::REQUEST_TIMEOUT, true),
            BodyError::Broken => (StatusCode::BAD_REQUEST, true),
        };
        let mut r = error(status, self.to_string());
        if close {
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// The whole body, read to its end (see the module doc) within `deadline`.
pub async fn read_body<S, B>(body: S, deadline: std::time::Duration) -> Body
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    match tokio::time::timeout(deadline, read_to_end(body)).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::TimedOut),
    }
}

async fn read_to_end<S, B>(body: S) -> Body
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| BodyError::Broken)?;
        seen = seen.saturating_add(chunk.remaining());
        if seen > DRAIN_LIMIT {
            return Err(BodyError::FarTooLarge);
        }
        if seen <= BODY_LIMIT {
            buf.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        } else {
            chunk.advance(chunk.remaining());
        }
    }
    if seen > BODY_LIMIT {
        return Err(BodyError::TooLarge);
    }
    Ok(buf.freeze())
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

pub fn empty_object(status: StatusCode) -> Response {
    json(status, &serde_json::json!({}))
}

pub fn no_content() -> Response {
    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
}

pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    json(status, &wire::ErrorBody::new(msg))
}

pub fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route");
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The decoded last segment of `path` when it is `prefix` followed by exactly
/// one non-empty segment: `/api/v1/users/` and `/api/v1/users/a/b` are no
/// route (404), not a user named "" or "a/b".
pub fn item_segment(path: &str, prefix: &str) -> Option<String> {
    let seg = path.strip_prefix(prefix)?;
    if seg.is_empty() || seg.contains('/') {
        return None;
    }
    Some(decode_segment(seg))
}

/// A path segment as the client meant it (`%20` → space); bytes that are not
/// UTF-8 become U+FFFD, which no stored name can match.
pub fn decode_segment(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg).decode_utf8_lossy().into_owned()
}

/// Only the first value counts, so a repeated parameter cannot widen a query.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// Quote a client value in an error message without echoing a megabyte back.
pub fn short(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_segments_and_queries() {
        assert_eq!(decode_segment("a%20b%2Fc"), "a b/c");
        assert_eq!(query_param("x=1&username=a%2Bb+c", "username").as_deref(), Some("a+b c"));
        assert_eq!(query_param("x=1", "username"), None);
    }

    #[test]
    fn item_segments() {
        let p = "/api/v1/users/";
        assert_eq!(item_segment("/api/v1/users/a%20b", p).as_deref(), Some("a b"));
        assert_eq!(item_segment("/api/v1/users/a%2Fb", p).as_deref(), Some("a/b"));
        assert_eq!(item_segment("/api/v1/users/", p), None);
        assert_eq!(item_segment("/api/v1/users/a/b", p), None);
        assert_eq!(item_segment("/api/v1/users", p), None);
        assert_eq!(item_segment("/api/v1/rides/7", p), None);
    }

    #[test]
    fn short_cuts_on_a_char_boundary() {
        assert_eq!(short("abc"), "abc");
        let s = format!("{}é", "x".repeat(63));
        assert_eq!(short(&s), format!("{}…", "x".repeat(63)));
    }

    fn chunks(n: usize, size: usize) -> impl Stream<Item = Result<Bytes, warp::Error>> {
        futures::stream::iter((0..n).map(move |_| Ok(Bytes::from(vec![b'x'; size]))))
    }

    #[tokio::test]
    async fn body_limits() {
        let t = std::time::Duration::from_secs(5);
        let small = futures::stream::iter(vec![Ok::<_, warp::Error>(Bytes::from_static(b"abc"))]);
        assert_eq!(&read_body(small, t).await.unwrap()[..], b"abc");
        assert_eq!(read_body(chunks(64, 1024), t).await.unwrap().len(), BODY_LIMIT);
        assert_eq!(read_body(chunks(100, 1024), t).await, Err(BodyError::TooLarge));
        assert_eq!(read_body(chunks(1024, 64 * 1024), t).await, Err(BodyError::TooLarge));
        assert_eq!(read_body(chunks(1025, 64 * 1024), t).await, Err(BodyError::FarTooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_times_out() {
        let stalled = chunks(1, 10).chain(futures::stream::pending());
        assert_eq!(read_body(stalled, std::time::Duration::from_secs(30)).await, Err(BodyError::TimedOut));
    }

    #[test]
    fn body_refusals() {
        let r = BodyError::TooLarge.response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get(header::CONNECTION).is_none());
        let r = BodyError::FarTooLarge.response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(BodyError::TimedOut.response().status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn error_shapes() {
        let r = method_not_allowed("GET, PUT");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, PUT");
        assert_eq!(not_found().status(), StatusCode::NOT_FOUND);
        assert_eq!(no_content().status(), StatusCode::NO_CONTENT);
    }
}
