//! The users service's routes (docs/api.md).
//!
//! Routing is done by hand on the decoded path rather than with warp's
//! combinators: the API wants 405 for a known route with another method and 404
//! otherwise, and every `/api/v1/users*` request counted whatever its fate,
//! which is one `match` here but a tangle of rejections in warp.
//!
//! `/api/v1/_count`, `/api/v1/db/clear` and `/health` are the same in both
//! services and answered by `svc_common::housekeeping` before these routes.

use std::sync::Arc;

use warp::http::{Method, StatusCode};
use warp::reply::Response;
use wire::{Condition, ReadRequest, WriteRequest};

use svc_common::http::{self, Body, Request};
use svc_common::orchestrator_client::{DbError, OrchestratorClient};
use svc_common::request_count::RequestCounter;
use svc_common::{housekeeping, idempotency};

use crate::{listing, validate};

/// What `_count` counts (docs/api.md).
const COUNTED: &str = "/api/v1/users";
/// The namespace of this service's request ids (`svc_common::idempotency`).
const SERVICE: &str = "users-api";

pub struct State {
    pub db: Arc<OrchestratorClient>,
    pub count: RequestCounter,
    /// Names per database read when listing every user (`USERS_LIST_PAGE`).
    pub list_page: u32,
}

impl State {
    pub fn new(db: OrchestratorClient, list_page: u32) -> State {
        State { db: Arc::new(db), count: RequestCounter::new(COUNTED), list_page }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Users,
    User(String),
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        if path == "/api/v1/users" {
            return Some(Route::Users);
        }
        http::item_segment(path, "/api/v1/users/").map(Route::User)
    }
}

pub async fn handle(req: Request, st: Arc<State>) -> Response {
    if let Some(answer) = housekeeping::intercept(&req, &st.db, &st.count).await {
        return answer.unwrap_or_else(DbError::into_response);
    }
    let Some(route) = Route::of(&req.path) else {
        return http::not_found();
    };
    // A write's request id, or the 400 of a malformed Idempotency-Key.
    let request_id = || idempotency::request_id(SERVICE, &req);
    match (route, &req.method) {
        (Route::Users, &Method::PUT) => match request_id() {
            Ok(id) => create(&st, req.body, id).await,
            Err(e) => e.response(),
        },
        (Route::Users, &Method::GET) => list(&st, &req.query).await,
        (Route::Users, _) => http::method_not_allowed("GET, PUT"),
        (Route::User(name), &Method::DELETE) => match request_id() {
            Ok(id) => delete(&st, name, id).await,
            Err(e) => e.response(),
        },
        (Route::User(_), _) => http::method_not_allowed("DELETE"),
    }
}

async fn create(st: &State, body: Body, request_id: String) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let user = match validate::new_user(&bytes) {
        Ok(u) => u,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e.0),
    };
    let mut insert =
        WriteRequest::insert("users", [("username", user.username.clone().into()), ("password", user.password.into())]);
    insert.request_id = Some(request_id);
    match st.db.write(&insert).await {
        Ok(_) => http::empty_object(StatusCode::CREATED),
        Err(DbError::Conflict(_)) => {
            http::error(StatusCode::BAD_REQUEST, format!("username {:?} is taken", http::short(&user.username)))
        }
        Err(e) => e.into_response(),
    }
}

/// `?username=X` narrows the list to that one name, so that rides-api's
/// "does this user exist" check stays cheap however many users there are;
/// without it every name is streamed page by page (`crate::listing`).
async fn list(st: &State, query: &str) -> Response {
    let Some(name) = http::query_param(query, "username") else {
        return listing::list_all(st.db.clone(), st.list_page).await;
    };
    let read = ReadRequest::table("users").columns(&["username"]).filter(Condition::eq("username", name)).limit(1);
    match st.db.read(&read).await {
        Ok(rows) => {
            let names: Vec<&str> = rows.iter().filter_map(|r| r.get("username").and_then(|v| v.as_str())).collect();
            if names.is_empty() {
                http::no_content()
            } else {
                http::json(StatusCode::OK, &names)
            }
        }
        Err(e) => e.into_response(),
    }
}

async fn delete(st: &State, name: String, request_id: String) -> Response {
    // The schema's ON DELETE CASCADE removes the user's rides and takes it
    // off the rides it joined, in the same statement.
    let mut delete = WriteRequest::delete("users", vec![Condition::eq("username", name.clone())]);
    delete.request_id = Some(request_id);
    match st.db.write(&delete).await {
        Ok(o) if o.rows_affected == 0 => {
            http::error(StatusCode::BAD_REQUEST, format!("no user {:?}", http::short(&name)))
        }
        Ok(_) => http::empty_object(StatusCode::OK),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An orchestrator nobody listens on: routes that never reach the
    /// database can be checked without one.
    fn state() -> Arc<State> {
        Arc::new(State::new(OrchestratorClient::with_base("http://127.0.0.1:9", None).unwrap(), 5))
    }

    #[test]
    fn route_table() {
        assert_eq!(Route::of("/api/v1/users"), Some(Route::Users));
        assert_eq!(Route::of("/api/v1/users/a%20b"), Some(Route::User("a b".into())));
        assert_eq!(Route::of("/api/v1/users/"), None);
        assert_eq!(Route::of("/api/v1/users/a/b"), None);
        assert_eq!(Route::of("/api/v1/rides"), None);
    }

    #[tokio::test]
    async fn methods_counts_and_bad_bodies() {
        let st = state();
        let r = http::routes(st.clone(), handle);
        let status = |method: &str, path: &str, body: &str| {
            let req = warp::test::request().method(method).path(path).body(body);
            let r = r.clone();
            async move { req.reply(&r).await.status().as_u16() }
        };
        assert_eq!(status("POST", "/api/v1/users", "").await, 405);
        assert_eq!(status("GET", "/api/v1/users/ann", "").await, 405);
        assert_eq!(status("PUT", "/api/v1/users", "not json").await, 400);
        assert_eq!(status("PUT", "/api/v1/users", r#"{"username":"a","password":"x"}"#).await, 400);
        let huge = format!(r#"{{"username":"{}","password":"x"}}"#, "u".repeat(10 << 20));
        assert_eq!(status("PUT", "/api/v1/users", &huge).await, 400);
        assert_eq!(status("GET", "/api/v1/nope", "").await, 404);
        assert_eq!(status("PUT", "/api/v1/_count", "").await, 405);
        assert_eq!(status("GET", "/api/v1/db/clear", "").await, 405);
        assert_eq!(status("GET", "/health", "").await, 200);
        // A malformed Idempotency-Key is refused before anything is read or written.
        let keyed = |method: &str, path: &str, key: &str| {
            let req = warp::test::request()
                .method(method)
                .path(path)
                .header("idempotency-key", key)
                .body(r#"{"username":"ann","password":"3d725109c7e7c0bfb9d709836735b56d943d263f"}"#);
            let r = r.clone();
            async move { req.reply(&r).await }
        };
        let bad = keyed("PUT", "/api/v1/users", "no spaces").await;
        assert_eq!(bad.status(), 400);
        assert!(String::from_utf8_lossy(bad.body()).contains("Idempotency-Key"), "{bad:?}");
        assert_eq!(keyed("DELETE", "/api/v1/users/ann", &"k".repeat(129)).await.status(), 400);
        // A good one goes on to the (dead) orchestrator.
        assert_eq!(keyed("PUT", "/api/v1/users", "k-1").await.status(), 503);
        // The 404 above is not a users route; _count, db/clear and /health are not counted.
        assert_eq!(st.count.get(), 8);
        // Orchestrator down: 503, never a hang or a 500.
        assert_eq!(status("GET", "/api/v1/users", "").await, 503);
        assert_eq!(status("DELETE", "/api/v1/_count", "").await, 200);
        assert_eq!(st.count.get(), 0);
    }
}
