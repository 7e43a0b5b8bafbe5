//! The users service's routes (SPEC section 2).
//!
//! Routing is done by hand on the decoded path rather than with warp's
//! combinators: SPEC wants 405 for a known route with another method and 404
//! otherwise, and every `/api/v1/users*` request counted whatever its fate,
//! which is one `match` here but a tangle of rejections in warp.

use std::sync::Arc;

use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::Filter;
use wire::{Condition, ReadRequest, WriteRequest};

use crate::count::Counter;
use crate::db::{Db, DbError};
use crate::http::{self, Body};
use crate::validate;

pub struct State {
    pub db: Db,
    pub count: Counter,
}

pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(http::raw_query())
        .and(http::body())
        .and(warp::any().map(move || state.clone()))
        .then(handle)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Users,
    User(String),
    Clear,
    Count,
    Health,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path {
            "/api/v1/users" => return Some(Route::Users),
            "/api/v1/db/clear" => return Some(Route::Clear),
            "/api/v1/_count" => return Some(Route::Count),
            "/health" => return Some(Route::Health),
            _ => {}
        }
        let name = path.strip_prefix("/api/v1/users/")?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Route::User(http::decode_segment(name)))
    }
}

/// SPEC section 4: what `_count` counts.
fn counted(path: &str) -> bool {
    path.starts_with("/api/v1/users")
}

async fn handle(
    method: Method,
    path: FullPath,
    query: String,
    body: Body,
    st: Arc<State>,
) -> Response {
    let path = path.as_str();
    if counted(path) {
        st.count.hit();
    }
    let Some(route) = Route::of(path) else {
        return http::not_found();
    };
    match (route, method) {
        (Route::Users, Method::PUT) => create(&st, body).await,
        (Route::Users, Method::GET) => list(&st, &query).await,
        (Route::Users, _) => http::method_not_allowed("GET, PUT"),
        (Route::User(name), Method::DELETE) => delete(&st, name).await,
        (Route::User(_), _) => http::method_not_allowed("DELETE"),
        (Route::Clear, Method::POST) => match st.db.clear().await {
            Ok(()) => http::empty_object(StatusCode::OK),
            Err(e) => db_error(e),
        },
        (Route::Clear, _) => http::method_not_allowed("POST"),
        (Route::Count, Method::GET) => http::json(StatusCode::OK, &[st.count.get()]),
        (Route::Count, Method::DELETE) => {
            st.count.reset();
            http::empty_object(StatusCode::OK)
        }
        (Route::Count, _) => http::method_not_allowed("GET, DELETE"),
        (Route::Health, Method::GET) => http::empty_object(StatusCode::OK),
        (Route::Health, _) => http::method_not_allowed("GET"),
    }
}

fn db_error(e: DbError) -> Response {
    tracing::warn!("database call failed: {e}");
    http::error(e.status(), e.to_string())
}

async fn create(st: &State, body: Body) -> Response {
    let bytes = match http::read_body(body).await {
        Ok(b) => b,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let user = match validate::new_user(&bytes) {
        Ok(u) => u,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e.0),
    };
    let insert = WriteRequest::insert(
        "users",
        [
            ("username", user.username.clone().into()),
            ("password", user.password.into()),
        ],
    );
    match st.db.write(&insert).await {
        Ok(_) => http::empty_object(StatusCode::CREATED),
        Err(DbError::Conflict(_)) => http::error(
            StatusCode::BAD_REQUEST,
            format!("username {:?} is taken", http::short(&user.username)),
        ),
        Err(e) => db_error(e),
    }
}

/// `?username=X` narrows the list to that one name, so that rides-api's
/// "does this user exist" check stays cheap however many users there are.
async fn list(st: &State, query: &str) -> Response {
    let mut read = ReadRequest::table("users").columns(&["username"]);
    read = match http::query_param(query, "username") {
        Some(name) => read.filter(Condition::eq("username", name)).limit(1),
        None => read.order("username", false),
    };
    match st.db.read(&read).await {
        Ok(rows) => {
            let names: Vec<&str> = rows
                .iter()
                .filter_map(|r| r.get("username").and_then(|v| v.as_str()))
                .collect();
            if names.is_empty() {
                http::no_content()
            } else {
                http::json(StatusCode::OK, &names)
            }
        }
        Err(e) => db_error(e),
    }
}

async fn delete(st: &State, name: String) -> Response {
    // The schema's ON DELETE CASCADE removes the user's rides and takes it
    // off the rides it joined, in the same statement.
    match st
        .db
        .write(&WriteRequest::delete(
            "users",
            vec![Condition::eq("username", name.clone())],
        ))
        .await
    {
        Ok(o) if o.rows_affected == 0 => http::error(
            StatusCode::BAD_REQUEST,
            format!("no user {:?}", http::short(&name)),
        ),
        Ok(_) => http::empty_object(StatusCode::OK),
        Err(e) => db_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An orchestrator nobody listens on: routes that never reach the
    /// database can be checked without one.
    fn state() -> Arc<State> {
        Arc::new(State {
            db: Db::new("http://127.0.0.1:9", None).unwrap(),
            count: Counter::default(),
        })
    }

    #[test]
    fn route_table() {
        assert_eq!(Route::of("/api/v1/users"), Some(Route::Users));
        assert_eq!(
            Route::of("/api/v1/users/a%20b"),
            Some(Route::User("a b".into()))
        );
        assert_eq!(Route::of("/api/v1/users/"), None);
        assert_eq!(Route::of("/api/v1/users/a/b"), None);
        assert_eq!(Route::of("/api/v1/rides"), None);
    }

    #[tokio::test]
    async fn methods_counts_and_bad_bodies() {
        let st = state();
        let r = routes(st.clone());
        let status = |method: &str, path: &str, body: &str| {
            let req = warp::test::request().method(method).path(path).body(body);
            let r = r.clone();
            async move { req.reply(&r).await.status().as_u16() }
        };
        assert_eq!(status("POST", "/api/v1/users", "").await, 405);
        assert_eq!(status("GET", "/api/v1/users/ann", "").await, 405);
        assert_eq!(status("PUT", "/api/v1/users", "not json").await, 400);
        assert_eq!(
            status("PUT", "/api/v1/users", r#"{"username":"a","password":"x"}"#).await,
            400
        );
        let huge = format!(
            r#"{{"username":"{}","password":"x"}}"#,
            "u".repeat(10 << 20)
        );
        assert_eq!(status("PUT", "/api/v1/users", &huge).await, 400);
        assert_eq!(status("GET", "/api/v1/nope", "").await, 404);
        assert_eq!(status("PUT", "/api/v1/_count", "").await, 405);
        assert_eq!(status("GET", "/api/v1/db/clear", "").await, 405);
        assert_eq!(status("GET", "/health", "").await, 200);
        // The 404 above is not a users route; _count, db/clear and /health are not counted.
        assert_eq!(st.count.get(), 5);
        // Orchestrator down: 503, never a hang or a 500.
        assert_eq!(status("GET", "/api/v1/users", "").await, 503);
        assert_eq!(status("DELETE", "/api/v1/_count", "").await, 200);
        assert_eq!(st.count.get(), 0);
    }
}
