//! The services' Prometheus metrics (`GET /metrics`, OpenMetrics text): the
//! shared HTTP metrics of `tasks::metrics` with `service` = `users-api` or
//! `rides-api`, and their calls to the orchestrator:
//!
//! ```text
//! rideshare_db_calls_total{service, outcome}       counter; outcome: ok|invalid|unauthorized|conflict|unavailable|failed
//! rideshare_db_call_duration_seconds{service}      histogram
//! ```
//!
//! Invariant: every label comes from a fixed set: requests are counted under
//! their route template ([`route_template`]), never the raw path, so callers
//! cannot add series. `/metrics` is answered here, before the service's own
//! routes, so it is never part of `_count`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tasks::metrics::{duration_histogram, HttpMetrics, Label};
use warp::http::{header, HeaderValue, Method};
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::Filter;
use wire::contract::ErrorKind;

use crate::orchestrator_client::DbError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbCallLabels {
    service: Label,
    outcome: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: Label,
}

pub struct ServiceMetrics {
    service: &'static str,
    registry: Registry,
    http: HttpMetrics,
    db_calls: Family<DbCallLabels, Counter>,
    db_call_duration: Family<ServiceLabels, Histogram, fn() -> Histogram>,
}

impl ServiceMetrics {
    /// The registry of one service (`users-api` or `rides-api`).
    pub fn new(service: &'static str) -> Arc<ServiceMetrics> {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let db_calls = Family::<DbCallLabels, Counter>::default();
        let db_call_duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "rideshare_db_calls",
            "Calls to the orchestrator's database API, by service and outcome",
            db_calls.clone(),
        );
        registry.register(
            "rideshare_db_call_duration_seconds",
            "Time a call to the orchestrator's database API took, by service",
            db_call_duration.clone(),
        );
        Arc::new(ServiceMetrics { service, registry, http, db_calls, db_call_duration })
    }

    /// Count one call to the orchestrator and how it ended.
    pub fn db_call(&self, outcome: &'static str, elapsed: Duration) {
        let service = Label::Borrowed(self.service);
        self.db_calls.get_or_create(&DbCallLabels { service: service.clone(), outcome: outcome.into() }).inc();
        self.db_call_duration.get_or_create(&ServiceLabels { service }).observe(elapsed.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        tasks::metrics::encode(&self.registry)
    }

    fn observe(&self, path: &str, method: &Method, status: u16, elapsed: Duration) {
        self.http.observe(self.service, route_template(path), method.as_str(), status, elapsed);
    }
}

/// The `outcome` label of a call to the orchestrator.
pub fn outcome(r: Result<(), &DbError>) -> &'static str {
    match r.map_err(DbError::kind) {
        Ok(()) => "ok",
        Err(ErrorKind::Invalid | ErrorKind::TooLarge) => "invalid",
        Err(ErrorKind::Unauthorized) => "unauthorized",
        Err(ErrorKind::Conflict) => "conflict",
        Err(ErrorKind::Unavailable) => "unavailable",
        Err(ErrorKind::Failed) => "failed",
    }
}

/// The route template of a request path (both services' routes, docs/api.md);
/// `other` for a path that is no route.
pub fn route_template(path: &str) -> &'static str {
    const FIXED: &[&str] = &[
        "/health",
        "/metrics",
        "/api/v1/_count",
        "/api/v1/db/clear",
        "/api/v1/users",
        "/api/v1/rides",
        "/api/v1/rides/count",
    ];
    if let Some(fixed) = FIXED.iter().find(|r| **r == path) {
        return fixed;
    }
    let one_segment = |prefix: &str| path.strip_prefix(prefix).is_some_and(|s| !s.is_empty() && !s.contains('/'));
    if one_segment("/api/v1/users/") {
        "/api/v1/users/{username}"
    } else if one_segment("/api/v1/rides/") {
        "/api/v1/rides/{rideId}"
    } else {
        "other"
    }
}

/// `GET /metrics` in front of a service's `routes`, and every answer (the
/// metrics endpoint's too) counted under its route template.
pub fn instrument<F>(
    metrics: Arc<ServiceMetrics>,
    routes: F,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    let m = metrics.clone();
    let endpoint = warp::path!("metrics").and(warp::get()).map(move || {
        let mut r = m.encode().into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(tasks::metrics::CONTENT_TYPE));
        r
    });
    warp::any().map(Instant::now).and(warp::method()).and(warp::path::full()).and(endpoint.or(routes).unify()).map(
        move |started: Instant, method: Method, path: FullPath, r: Response| {
            metrics.observe(path.as_str(), &method, r.status().as_u16(), started.elapsed());
            r
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates() {
        for (path, template) in [
            ("/api/v1/users", "/api/v1/users"),
            ("/api/v1/users/ann", "/api/v1/users/{username}"),
            ("/api/v1/users/a%2Fb", "/api/v1/users/{username}"),
            ("/api/v1/users/", "other"),
            ("/api/v1/users/a/b", "other"),
            ("/api/v1/rides", "/api/v1/rides"),
            ("/api/v1/rides/count", "/api/v1/rides/count"),
            ("/api/v1/rides/17", "/api/v1/rides/{rideId}"),
            ("/api/v1/rides/x", "/api/v1/rides/{rideId}"),
            ("/api/v1/_count", "/api/v1/_count"),
            ("/api/v1/db/clear", "/api/v1/db/clear"),
            ("/health", "/health"),
            ("/metrics", "/metrics"),
            ("/", "other"),
            ("/api/v1/db/read", "other"),
        ] {
            assert_eq!(route_template(path), template, "{path}");
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(Ok(())), "ok");
        for (e, o) in [
            (DbError::Refused("x".into()), "invalid"),
            (DbError::Unauthorized("x".into()), "unauthorized"),
            (DbError::Conflict("x".into()), "conflict"),
            (DbError::Unavailable("x".into()), "unavailable"),
            (DbError::Failed("x".into()), "failed"),
        ] {
            assert_eq!(outcome(Err(&e)), o);
        }
    }

    /// `/metrics` answers, other requests reach the service, and each is
    /// counted under its template.
    #[tokio::test]
    async fn the_endpoint_and_the_counting() {
        let m = ServiceMetrics::new("users-api");
        let service = crate::http::routes(Arc::new(()), |_, _| async { crate::http::no_content() });
        let f = instrument(m.clone(), service);
        for path in ["/api/v1/users/ann", "/api/v1/users/bob", "/nowhere"] {
            assert_eq!(warp::test::request().path(path).reply(&f).await.status(), 204);
        }
        let post = warp::test::request().method("POST").path("/metrics").reply(&f).await;
        assert_eq!(post.status(), 204, "POST /metrics is the service's to answer");
        m.db_call("unavailable", Duration::from_millis(4));
        let r = warp::test::request().path("/metrics").reply(&f).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], tasks::metrics::CONTENT_TYPE);
        let text = String::from_utf8(r.body().to_vec()).unwrap();
        for line in [
            r#"rideshare_http_requests_total{service="users-api",route="/api/v1/users/{username}",method="GET",status="204"} 2"#,
            r#"rideshare_http_requests_total{service="users-api",route="other",method="GET",status="204"} 1"#,
            r#"rideshare_http_requests_total{service="users-api",route="/metrics",method="POST",status="204"} 1"#,
            r#"rideshare_db_calls_total{service="users-api",outcome="unavailable"} 1"#,
            r#"rideshare_db_call_duration_seconds_count{service="users-api"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("ann"), "a raw path became a label:\n{text}");
    }
}
