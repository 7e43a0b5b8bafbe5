//! The rides service's routes (docs/api.md).
//!
//! Routing is done by hand on the path rather than with warp's combinators:
//! the API wants 405 for a known route with another method and 404 otherwise,
//! `/api/v1/rides/count` to be its own route next to `/api/v1/rides/{rideId}`,
//! and every `/api/v1/rides*` request counted whatever its fate.
//!
//! `/api/v1/_count`, `/api/v1/db/clear` and `/health` are the same in both
//! services and answered by `svc_common::housekeeping` before these routes.

use std::sync::Arc;

use serde_json::{json, Value};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use wire::{Condition, Op, ReadRequest, Row, WriteRequest};

use svc_common::housekeeping;
use svc_common::http::{self, Body, Request};
use svc_common::idempotency::{self, BadKey};
use svc_common::orchestrator_client::{DbError, OrchestratorClient};
use svc_common::request_count::RequestCounter;

use crate::user_check::UserCheck;
use crate::{areas, timestamp};

/// What `_count` counts (docs/api.md).
const COUNTED: &str = "/api/v1/rides";
/// The namespace of this service's request ids (`svc_common::idempotency`).
const SERVICE: &str = "rides-api";

pub struct State {
    pub db: OrchestratorClient,
    pub users: UserCheck,
    pub count: RequestCounter,
}

impl State {
    pub fn new(db: OrchestratorClient, users: UserCheck) -> State {
        State { db, users, count: RequestCounter::new(COUNTED) }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Rides,
    RideCount,
    /// The raw segment; whether it is a number is the handler's 400 to give.
    Ride(String),
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path {
            "/api/v1/rides" => Some(Route::Rides),
            "/api/v1/rides/count" => Some(Route::RideCount),
            _ => http::item_segment(path, "/api/v1/rides/").map(Route::Ride),
        }
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
    let request_id = || idempotency::request_id(SERVICE, &req).map_err(Fail::from);
    let result = match (route, &req.method) {
        (Route::Rides, &Method::POST) => match request_id() {
            Ok(rid) => create(&st, req.body, rid).await,
            Err(e) => Err(e),
        },
        (Route::Rides, &Method::GET) => upcoming(&st, &req.query).await,
        (Route::Rides, _) => Ok(http::method_not_allowed("GET, POST")),
        (Route::RideCount, &Method::GET) => st
            .db
            .count(&ReadRequest::table("rides").counting())
            .await
            .map(|n| http::json(StatusCode::OK, &[n]))
            .map_err(Fail::from),
        (Route::RideCount, _) => Ok(http::method_not_allowed("GET")),
        (Route::Ride(id), &Method::GET) => details(&st, &id).await,
        (Route::Ride(id), &Method::POST) => match request_id() {
            Ok(rid) => join(&st, &id, req.body, rid).await,
            Err(e) => Err(e),
        },
        (Route::Ride(id), &Method::DELETE) => match request_id() {
            Ok(rid) => delete(&st, &id, rid).await,
            Err(e) => Err(e),
        },
        (Route::Ride(_), _) => Ok(http::method_not_allowed("GET, POST, DELETE")),
    };
    result.unwrap_or_else(Fail::into_response)
}

/// Why a request was not served; each variant knows its status.
#[derive(Debug, thiserror::Error)]
enum Fail {
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Body(#[from] http::BodyError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Check(#[from] crate::user_check::CheckError),
    #[error(transparent)]
    Key(#[from] BadKey),
}

impl Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::Bad(m) => http::error(StatusCode::BAD_REQUEST, m),
            Fail::Body(e) => e.response(),
            Fail::Key(e) => e.response(),
            Fail::Db(e) => e.into_response(),
            Fail::Check(e) => {
                let status = e.status();
                if status.is_server_error() {
                    tracing::warn!("user check failed: {e}");
                }
                http::error(status, e.to_string())
            }
        }
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Bad(msg.into()))
}

type Answer = Result<Response, Fail>;

/// A JSON object body, or the 400 for why it is not one.
fn object_body(body: Body) -> Result<serde_json::Map<String, Value>, Fail> {
    let bytes = body?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => bad("body must be a JSON object"),
        Err(e) => bad(format!("body is not JSON: {e}")),
    }
}

fn string_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, Fail> {
    match obj.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => bad(format!("{name} must not be empty")),
        Some(_) => bad(format!("{name} must be a string")),
        None => bad(format!("missing field {name}")),
    }
}

fn area_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<i64, Fail> {
    let v = obj.get(name).ok_or_else(|| Fail::Bad(format!("missing field {name}")))?;
    areas::parse_json(v).map_err(|e| Fail::Bad(format!("{name}: {e}")))
}

/// rideIds are positive integers that fit SQLite's INTEGER.
fn ride_id(s: &str) -> Result<i64, Fail> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return bad(format!("rideId {:?} is not a number", http::short(s)));
    }
    s.parse().map_err(|_| Fail::Bad(format!("rideId {:?} is out of range", http::short(s))))
}

async fn ensure_user(st: &State, name: &str) -> Result<(), Fail> {
    if st.users.exists(name).await? {
        Ok(())
    } else {
        bad(format!("no user {:?}", http::short(name)))
    }
}

async fn create(st: &State, body: Body, request_id: String) -> Answer {
    let obj = object_body(body)?;
    let created_by = string_field(&obj, "created_by")?;
    let ts = match obj.get("timestamp") {
        Some(Value::String(s)) => s,
        Some(_) => return bad("timestamp must be a string"),
        None => return bad("missing field timestamp"),
    };
    let start = timestamp::parse(ts).map_err(|e| Fail::Bad(e.to_string()))?;
    let source = area_field(&obj, "source")?;
    let destination = area_field(&obj, "destination")?;
    if source == destination {
        return bad("source and destination are the same area");
    }
    ensure_user(st, &created_by).await?;
    let mut insert = WriteRequest::insert(
        "rides",
        [
            ("created_by", created_by.clone().into()),
            ("start_time", start.into()),
            ("source", source.into()),
            ("destination", destination.into()),
        ],
    );
    insert.request_id = Some(request_id);
    match st.db.write(&insert).await {
        Ok(_) => Ok(http::empty_object(StatusCode::CREATED)),
        // The user was deleted between the check and the insert.
        Err(DbError::Conflict(_)) => bad(format!("no user {:?}", http::short(&created_by))),
        Err(e) => Err(e.into()),
    }
}

fn query_area(query: &str, name: &str) -> Result<i64, Fail> {
    let v = http::query_param(query, name).ok_or_else(|| Fail::Bad(format!("missing query parameter {name}")))?;
    areas::parse_str(&v).map_err(|e| Fail::Bad(format!("{name}: {e}")))
}

fn int(row: &Row, col: &str) -> Result<i64, Fail> {
    row.get(col).and_then(Value::as_i64).ok_or_else(|| DbError::Failed(format!("row without {col}")).into())
}

fn text<'a>(row: &'a Row, col: &str) -> Result<&'a str, Fail> {
    row.get(col).and_then(Value::as_str).ok_or_else(|| DbError::Failed(format!("row without {col}")).into())
}

async fn upcoming(st: &State, query: &str) -> Answer {
    let source = query_area(query, "source")?;
    let destination = query_area(query, "destination")?;
    let now = chrono::Utc::now().timestamp();
    let read = ReadRequest::table("rides")
        .columns(&["ride_id", "created_by", "start_time"])
        .filter(Condition::eq("source", source))
        .filter(Condition::eq("destination", destination))
        .filter(Condition::new("start_time", Op::Gt, now))
        .order("start_time", false)
        .order("ride_id", false);
    let rows: Vec<UpcomingRow> = st.db.read_as(&read).await?;
    if rows.is_empty() {
        return Ok(http::no_content());
    }
    let list: Vec<Upcoming> = rows
        .into_iter()
        .map(|r| Upcoming { ride_id: r.ride_id, timestamp: timestamp::format(r.start_time), username: r.created_by })
        .collect();
    Ok(http::json(StatusCode::OK, &list))
}

/// A row of the upcoming-rides read, decoded straight from the answer.
#[derive(serde::Deserialize)]
struct UpcomingRow {
    ride_id: i64,
    created_by: String,
    start_time: i64,
}

/// An entry of the upcoming-rides listing (docs/api.md); fields in the order
/// they were always printed.
#[derive(serde::Serialize)]
struct Upcoming {
    #[serde(rename = "rideId")]
    ride_id: i64,
    timestamp: String,
    username: String,
}

async fn find_ride(st: &State, id: i64) -> Result<Option<Row>, Fail> {
    let read = ReadRequest::table("rides").filter(Condition::eq("ride_id", id)).limit(1);
    Ok(st.db.read(&read).await?.into_iter().next())
}

async fn details(st: &State, id: &str) -> Answer {
    let id = ride_id(id)?;
    let Some(ride) = find_ride(st, id).await? else {
        return Ok(http::no_content());
    };
    let riders = st
        .db
        .read(
            &ReadRequest::table("ride_riders")
                .columns(&["username"])
                .filter(Condition::eq("ride_id", id))
                .order("username", false),
        )
        .await?;
    let users = riders.iter().map(|r| text(r, "username")).collect::<Result<Vec<_>, _>>()?;
    Ok(http::json(
        StatusCode::OK,
        &json!({
            "rideId": id,
            "Created_by": text(&ride, "created_by")?,
            "users": users,
            "Timestamp": timestamp::format(int(&ride, "start_time")?),
            "source": int(&ride, "source")?,
            "destination": int(&ride, "destination")?,
        }),
    ))
}

async fn join(st: &State, id: &str, body: Body, request_id: String) -> Answer {
    let id = ride_id(id)?;
    let obj = object_body(body)?;
    let username = string_field(&obj, "username")?;
    let Some(ride) = find_ride(st, id).await? else {
        return Ok(http::no_content());
    };
    if text(&ride, "created_by")? == username {
        return bad("the creator of a ride cannot join it");
    }
    ensure_user(st, &username).await?;
    let mut insert =
        WriteRequest::insert("ride_riders", [("ride_id", id.into()), ("username", username.clone().into())]);
    insert.request_id = Some(request_id);
    match st.db.write(&insert).await {
        Ok(_) => Ok(http::empty_object(StatusCode::OK)),
        // The primary key (ride_id, username) says the user is on the ride
        // already (or the ride or user vanished since the checks above).
        Err(DbError::Conflict(_)) => bad(format!("{:?} has already joined ride {id}", http::short(&username))),
        Err(e) => Err(e.into()),
    }
}

async fn delete(st: &State, id: &str, request_id: String) -> Answer {
    let id = ride_id(id)?;
    // ON DELETE CASCADE takes the riders off with it.
    let mut delete = WriteRequest::delete("rides", vec![Condition::eq("ride_id", id)]);
    delete.request_id = Some(request_id);
    let outcome = st.db.write(&delete).await?;
    if outcome.rows_affected == 0 {
        return bad(format!("no ride {id}"));
    }
    Ok(http::empty_object(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nobody listens on port 9: only routes that never reach a backend
    /// answer something other than 503.
    fn state() -> Arc<State> {
        Arc::new(State::new(
            OrchestratorClient::with_base("http://127.0.0.1:9", None).unwrap(),
            UserCheck::new("http://127.0.0.1:9", &"http://127.0.0.1:8082".parse().unwrap()).unwrap(),
        ))
    }

    #[test]
    fn route_table() {
        assert_eq!(Route::of("/api/v1/rides"), Some(Route::Rides));
        assert_eq!(Route::of("/api/v1/rides/count"), Some(Route::RideCount));
        assert_eq!(Route::of("/api/v1/rides/7"), Some(Route::Ride("7".into())));
        assert_eq!(Route::of("/api/v1/rides/7/x"), None);
        assert_eq!(Route::of("/api/v1/rides/"), None);
        assert_eq!(Route::of("/api/v1/users"), None);
    }

    #[test]
    fn ride_ids() {
        assert_eq!(ride_id("7").unwrap(), 7);
        assert!(ride_id("abc").is_err());
        assert!(ride_id("-1").is_err());
        assert!(ride_id("1.5").is_err());
        assert!(ride_id("99999999999999999999999").is_err());
    }

    #[tokio::test]
    async fn validation_before_any_backend() {
        let st = state();
        let r = http::routes(st.clone(), handle);
        let status = |method: &str, path: &str, body: String| {
            let req = warp::test::request().method(method).path(path).body(body);
            let r = r.clone();
            async move { req.reply(&r).await.status().as_u16() }
        };
        let ride = |ts: &str, s: &str, d: &str| {
            format!(r#"{{"created_by":"a","timestamp":"{ts}","source":{s},"destination":{d}}}"#)
        };
        let ok_ts = "01-01-2030:00-00-00";
        assert_eq!(status("POST", "/api/v1/rides/count", String::new()).await, 405);
        assert_eq!(status("DELETE", "/api/v1/rides/count", String::new()).await, 405);
        assert_eq!(status("PUT", "/api/v1/rides", String::new()).await, 405);
        assert_eq!(status("PUT", "/api/v1/rides/3", String::new()).await, 405);
        assert_eq!(status("GET", "/api/v1/rides/abc", String::new()).await, 400);
        assert_eq!(status("DELETE", "/api/v1/rides/abc", String::new()).await, 400);
        assert_eq!(status("POST", "/api/v1/rides", "nope".into()).await, 400);
        assert_eq!(status("POST", "/api/v1/rides", ride("31-02-2030:00-00-00", "1", "2")).await, 400);
        assert_eq!(status("POST", "/api/v1/rides", ride(ok_ts, "0", "2")).await, 400);
        assert_eq!(status("POST", "/api/v1/rides", ride(ok_ts, "1e400", "2")).await, 400);
        assert_eq!(status("POST", "/api/v1/rides", ride(ok_ts, "99999999999999999999999", "2")).await, 400);
        assert_eq!(status("POST", "/api/v1/rides", ride(ok_ts, "\"12\"", "12")).await, 400);
        assert_eq!(status("GET", "/api/v1/rides?source=1", String::new()).await, 400);
        assert_eq!(status("GET", "/api/v1/rides?source=1&destination=199", String::new()).await, 400);
        assert_eq!(status("POST", "/api/v1/rides/3", r#"{"user":"a"}"#.into()).await, 400);
        assert_eq!(status("GET", "/api/v1/ridesX", String::new()).await, 404);
        // A malformed Idempotency-Key on any write route is a 400 before
        // anything else; on a read it is not looked at.
        let keyed = |method: &str, path: &str, key: &str| {
            let req = warp::test::request().method(method).path(path).header("idempotency-key", key).body("{}");
            let r = r.clone();
            async move { req.reply(&r).await.status().as_u16() }
        };
        assert_eq!(keyed("POST", "/api/v1/rides", "a b").await, 400);
        assert_eq!(keyed("POST", "/api/v1/rides/3", "").await, 400);
        assert_eq!(keyed("DELETE", "/api/v1/rides/3", "ключ").await, 400);
        assert_eq!(keyed("GET", "/api/v1/rides/count", "a b").await, 503);
        assert_eq!(st.count.get(), 20);
        assert_eq!(status("GET", "/api/v1/users", String::new()).await, 404);
        assert_eq!(st.count.get(), 20);
        // Valid requests reach the dead backends: 503, not a hang or a 500.
        assert_eq!(status("POST", "/api/v1/rides", ride(ok_ts, "\"12\"", "13")).await, 503);
        assert_eq!(status("GET", "/api/v1/rides/count", String::new()).await, 503);
        assert_eq!(status("POST", "/api/v1/db/clear", String::new()).await, 503);
    }
}
