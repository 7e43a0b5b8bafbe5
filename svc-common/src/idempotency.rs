//! The optional `Idempotency-Key` header of the services' write routes, and
//! the request id each write goes to the orchestrator with (docs/api.md §1.3).
//!
//! Invariant: every write a service sends carries a request id, so a write
//! sent twice (by the client with the same key, by the load balancer moving
//! it to the other instance, or by `OrchestratorClient` moving it to another
//! orchestrator) is applied once and answered with the first outcome (the
//! master dedupes ids, docs/guarantees.md §1). A key becomes an id namespaced
//! by service, method and path, so a key reused on another route or item never
//! returns another operation's outcome; without a key the id is a fresh UUID
//! per HTTP request. A malformed key is refused before anything is written.

use sha2::{Digest, Sha256};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::http::{self, Request};

/// The header's name (HTTP names are case-insensitive).
pub const HEADER: &str = "idempotency-key";
/// The longest key taken.
pub const MAX_KEY_LEN: usize = 128;
/// The longest request id the orchestrator takes (`wire::WriteRequest::validate`).
pub const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be one header of 1 to {MAX_KEY_LEN} characters from A-Z a-z 0-9 . _ : -")]
pub struct BadKey;

impl BadKey {
    /// The 400 it is answered with.
    pub fn response(&self) -> Response {
        http::error(StatusCode::BAD_REQUEST, self.to_string())
    }
}

/// The key a request carries: none, one well-formed, or [`BadKey`] (a
/// malformed value, or the header given more than once).
pub fn key(headers: &HeaderMap) -> Result<Option<&str>, BadKey> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(BadKey);
    }
    let key = value.to_str().map_err(|_| BadKey)?;
    let well_formed = (1..=MAX_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if well_formed {
        Ok(Some(key))
    } else {
        Err(BadKey)
    }
}

/// The request id of a write `req` of `service`: its key namespaced
/// ([`namespaced`]), or a fresh UUID when it has none.
pub fn request_id(service: &str, req: &Request) -> Result<String, BadKey> {
    Ok(match key(&req.headers)? {
        Some(k) => namespaced(service, req.method.as_str(), &req.path, k),
        None => uuid::Uuid::new_v4().to_string(),
    })
}

/// `"{service} {method} {path} {key}"`: no part holds a space (a request
/// path cannot), so two different requests never share it. When that is
/// longer than the orchestrator takes, its SHA-256 instead (`sha256:` and 64
/// hex digits, which no service name starts with).
pub fn namespaced(service: &str, method: &str, path: &str, key: &str) -> String {
    let id = format!("{service} {method} {path} {key}");
    if id.len() <= MAX_REQUEST_ID_LEN {
        id
    } else {
        format!("sha256:{:x}", Sha256::digest(id.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn keys() {
        assert_eq!(key(&headers(&[])), Ok(None));
        assert_eq!(key(&headers(&[b"a"])), Ok(Some("a")));
        assert_eq!(key(&headers(&[b"Ab-9_.:z"])), Ok(Some("Ab-9_.:z")));
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(key(&headers(&[longest.as_bytes()])), Ok(Some(longest.as_str())));
        let too_long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [&b""[..], b"a b", b"a/b", b"a,b", b"\xc3\xa9", too_long.as_bytes()] {
            assert_eq!(key(&headers(&[bad])), Err(BadKey), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(key(&headers(&[b"a", b"a"])), Err(BadKey), "twice");
    }

    #[test]
    fn ids_are_namespaced_and_fit() {
        let id = namespaced("rides-api", "POST", "/api/v1/rides", "k1");
        assert_eq!(id, "rides-api POST /api/v1/rides k1");
        assert_ne!(id, namespaced("rides-api", "POST", "/api/v1/rides/7", "k1"), "another route");
        assert_ne!(id, namespaced("users-api", "POST", "/api/v1/rides", "k1"), "another service");
        assert_ne!(id, namespaced("rides-api", "DELETE", "/api/v1/rides", "k1"), "another method");
        let long = "k".repeat(MAX_KEY_LEN);
        let hashed = namespaced("users-api", "DELETE", "/api/v1/users/ann", &long);
        assert!(hashed.starts_with("sha256:") && hashed.len() == 71, "{hashed}");
        assert_eq!(hashed, namespaced("users-api", "DELETE", "/api/v1/users/ann", &long), "stable");
        assert_ne!(hashed, namespaced("users-api", "DELETE", "/api/v1/users/bob", &long));
        assert!(hashed.len() <= MAX_REQUEST_ID_LEN);
        let mut w = wire::WriteRequest::clear();
        w.request_id = Some(hashed);
        assert!(w.validate().is_ok(), "the orchestrator takes it");
    }
}
