//! Small HTTP helpers: JSON answers, the bounded body reader, path decoding.

use bytes::{Buf, Bytes, BytesMut};
use futures::{stream::BoxStream, StreamExt};
use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

/// Far above any real request of this API, far below what would hurt.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A too-large body is still read and thrown away up to here, so the caller
/// (or the load balancer in front) gets a clean 400 instead of a reset
/// connection; beyond it the connection is dropped.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

pub type Body = BoxStream<'static, Result<Bytes, warp::Error>>;

/// The request body as a stream, read only by the handlers that need it.
pub fn body() -> impl Filter<Extract = (Body,), Error = warp::Rejection> + Clone {
    warp::body::stream().map(boxed)
}

fn boxed<S, B>(s: S) -> Body
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    s.map(|r| r.map(|mut b| b.copy_to_bytes(b.remaining())))
        .boxed()
}

/// The raw query string, empty when there is none.
pub fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
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
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A path segment as the client meant it (`%20` → space); bytes that are not
/// UTF-8 become U+FFFD, which no stored name can match.
pub fn decode_segment(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// The first value of `key` in a query string.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
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
        assert_eq!(
            query_param("x=1&username=a%2Bb+c", "username").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_param("x=1", "username"), None);
    }

    #[tokio::test]
    async fn body_limit() {
        let small: Body = futures::stream::iter(vec![Ok(Bytes::from_static(b"abc"))]).boxed();
        assert_eq!(&read_body(small).await.unwrap()[..], b"abc");
        let big: Body =
            futures::stream::iter((0..100).map(|_| Ok(Bytes::from(vec![b'x'; 1024])))).boxed();
        assert!(matches!(read_body(big).await, Err(BodyError::TooLarge)));
    }
}
