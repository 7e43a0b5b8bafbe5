//! HTTP plumbing both services use the same way: the request as the
//! hand-written routers want it and the path helpers they route with, the bounded body reader, the JSON answers
//! and the 404/405 shapes of SPEC section 2.

use std::future::Future;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::{stream::BoxStream, StreamExt};
use serde::Serialize;
use warp::http::{header, HeaderValue, Method, StatusCode};
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::Filter;

/// Far above any real request of either API, far below what would hurt.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A too-large body is still read and thrown away up to here, so the caller
/// (or the load balancer in front) gets a clean 400 instead of a reset
/// connection; beyond it the connection is dropped.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

pub type Body = BoxStream<'static, Result<Bytes, warp::Error>>;

/// A request taken apart for the hand-written routers.
pub struct Request {
    pub method: Method,
    /// Still percent-encoded: a `%2F` must not split a segment in two.
    pub path: String,
    pub query: String,
    pub body: Body,
}

/// Hands every request to the service's `handle`, with its state, and lets
/// warp reject none of them: the services route by hand so that every
/// request reaches them to be counted and given SPEC's 404 or 405, and warp's
/// own rejections would answer differently.
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
        .and(body())
        .map(|method, path: FullPath, query, body| Request { method, path: path.as_str().to_owned(), query, body })
        .and(warp::any().map(move || state.clone()))
        .then(handle)
}

/// The body as a stream, so that only the handlers that need it read it, and
/// then through [`read_body`]'s limit.
fn body() -> impl Filter<Extract = (Body,), Error = warp::Rejection> + Clone {
    warp::body::stream().map(boxed)
}

fn boxed<S, B>(s: S) -> Body
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    s.map(|r| r.map(|mut b| b.copy_to_bytes(b.remaining()))).boxed()
}

/// Empty when there is none, so a missing query is the same as one without
/// the parameter rather than a rejection.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {BODY_LIMIT} bytes")]
    TooLarge,
    #[error("request body could not be read")]
    Broken,
}

pub async fn read_body(mut body: Body) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        seen = seen.saturating_add(chunk.len());
        if seen <= BODY_LIMIT {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            return Err(BodyError::TooLarge);
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

    #[tokio::test]
    async fn body_limit() {
        let small: Body = futures::stream::iter(vec![Ok(Bytes::from_static(b"abc"))]).boxed();
        assert_eq!(&read_body(small).await.unwrap()[..], b"abc");
        let big: Body = futures::stream::iter((0..100).map(|_| Ok(Bytes::from(vec![b'x'; 1024])))).boxed();
        assert!(matches!(read_body(big).await, Err(BodyError::TooLarge)));
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
