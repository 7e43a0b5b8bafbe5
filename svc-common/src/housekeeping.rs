//! What every request of either service goes through before its own routes
//! (docs/api.md): it is counted, refused if its body could not be taken, and
//! answered here if it is one of the routes every service has beside its own:
//! `/api/v1/db/clear`, `/api/v1/_count` and `/health`.
//!
//! Invariant: a request whose body was too big (or broken) changes nothing,
//! whatever its route: it is refused before any route runs. And with
//! `ADMIN_TOKEN` set, a clear without the caller's own `Authorization: Bearer
//! <token>` is a 401 that never reaches the orchestrator (the service would
//! otherwise clear with its own token on anyone's behalf).
//!
//! A failed clear comes back as the [`DbError`] rather than a response, so
//! each service answers and logs it the way it does its other database
//! failures.

use warp::http::{header, Method, StatusCode};
use warp::reply::Response;

use crate::http::{self, Request};
use crate::orchestrator_client::{DbError, OrchestratorClient};
use crate::request_count::RequestCounter;

/// What every request goes through before the service's own routes: it is
/// counted first (`_count` counts 404s, 405s and refused bodies too), refused
/// if its body could not be taken, then answered here if it is housekeeping.
/// `None` leaves it to the service, with a body that was read whole.
pub async fn intercept(
    req: &Request,
    db: &OrchestratorClient,
    count: &RequestCounter,
) -> Option<Result<Response, DbError>> {
    count.observe(&req.path);
    if let Err(e) = &req.body {
        return Some(Ok(e.response()));
    }
    Some(Housekeeping::of(&req.path)?.answer(req, db, count).await)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Housekeeping {
    Clear,
    Count,
    Health,
}

impl Housekeeping {
    fn of(path: &str) -> Option<Housekeeping> {
        match path {
            "/api/v1/db/clear" => Some(Housekeeping::Clear),
            "/api/v1/_count" => Some(Housekeeping::Count),
            "/health" => Some(Housekeeping::Health),
            _ => None,
        }
    }

    async fn answer(self, req: &Request, db: &OrchestratorClient, count: &RequestCounter) -> Result<Response, DbError> {
        Ok(match (self, &req.method) {
            (Housekeeping::Clear, &Method::POST) => {
                let authorization = req.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                if !db.authorizes(authorization) {
                    tracing::warn!(path = %req.path, "clear refused: missing or wrong bearer token");
                    return Ok(http::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
                }
                db.clear().await?;
                http::empty_object(StatusCode::OK)
            }
            (Housekeeping::Clear, _) => http::method_not_allowed("POST"),
            (Housekeeping::Count, &Method::GET) => http::json(StatusCode::OK, &[count.get()]),
            (Housekeeping::Count, &Method::DELETE) => {
                count.reset();
                http::empty_object(StatusCode::OK)
            }
            (Housekeeping::Count, _) => http::method_not_allowed("GET, DELETE"),
            (Housekeeping::Health, &Method::GET) => http::empty_object(StatusCode::OK),
            (Housekeeping::Health, _) => http::method_not_allowed("GET"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A service with no routes of its own. Nobody listens on port 9, so a
    /// clear that gets as far as the database fails.
    struct State {
        db: OrchestratorClient,
        count: RequestCounter,
    }

    async fn handle(req: Request, st: Arc<State>) -> Response {
        match intercept(&req, &st.db, &st.count).await {
            Some(answer) => answer.unwrap_or_else(DbError::into_response),
            None => http::not_found(),
        }
    }

    #[tokio::test]
    async fn answers() {
        let st = Arc::new(State {
            db: OrchestratorClient::with_base("http://127.0.0.1:9", None).unwrap(),
            count: RequestCounter::new("/x"),
        });
        let r = http::routes(st.clone(), handle);
        let send = |method: &str, path: &str, body: String| {
            let req = warp::test::request().method(method).path(path).body(body);
            let r = r.clone();
            async move {
                let resp = req.reply(&r).await;
                let body = String::from_utf8(resp.body().to_vec()).unwrap();
                (resp.status().as_u16(), body)
            }
        };
        let call = |method: &str, path: &str| send(method, path, String::new());
        assert_eq!(call("GET", "/x").await.0, 404);
        assert_eq!(call("GET", "/x/y").await.0, 404);
        assert_eq!(call("GET", "/api/v1/_count").await, (200, "[2]".into()));
        assert_eq!(call("PUT", "/api/v1/_count").await.0, 405);
        assert_eq!(call("DELETE", "/api/v1/_count").await, (200, "{}".into()));
        assert_eq!(st.count.get(), 0);
        assert_eq!(call("GET", "/health").await, (200, "{}".into()));
        assert_eq!(call("POST", "/health").await.0, 405);
        assert_eq!(call("GET", "/api/v1/db/clear").await.0, 405);
        assert_eq!(call("POST", "/api/v1/db/clear").await.0, 503);
        assert_eq!(st.count.get(), 0);

        // A body too big is refused before any route, counted all the same,
        // and with a JSON error.
        let big = "x".repeat(http::BODY_LIMIT + 1);
        for (method, path) in [("POST", "/api/v1/db/clear"), ("GET", "/health"), ("GET", "/x"), ("PUT", "/x/y")] {
            let (status, body) = send(method, path, big.clone()).await;
            assert_eq!(status, 400, "{method} {path}");
            assert!(body.contains(r#""error":"request body larger than"#), "{body}");
        }
        assert_eq!(st.count.get(), 2);
    }

    /// With `ADMIN_TOKEN` set, a clear needs the caller's token: without it
    /// (or with another) the answer is a 401 and the orchestrator is never
    /// called; with it the clear goes on (to port 9 here: 503).
    #[tokio::test]
    async fn clear_needs_the_callers_token_when_one_is_set() {
        let st = Arc::new(State {
            db: OrchestratorClient::with_base("http://127.0.0.1:9", Some("s3cret".into())).unwrap(),
            count: RequestCounter::new("/x"),
        });
        let r = http::routes(st.clone(), handle);
        for (auth, status) in
            [(None, 401), (Some("Bearer wrong"), 401), (Some("s3cret"), 401), (Some("Bearer s3cret"), 503)]
        {
            let mut req = warp::test::request().method("POST").path("/api/v1/db/clear");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.reply(&r).await;
            assert_eq!(resp.status().as_u16(), status, "{auth:?}");
            let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert!(body["error"].is_string(), "{body}");
        }
    }
}
