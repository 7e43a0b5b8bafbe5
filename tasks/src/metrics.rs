//! The HTTP metrics every server of the system exposes the same way (the
//! orchestrator, users-api, rides-api), and the text encoding of a registry
//! for `GET /metrics`.
//!
//! Invariant: a request is counted under its route *template*
//! (`/api/v1/rides/{rideId}`), never its raw path, so the number of series is
//! bounded by the routes a service has, whatever callers send.
//!
//! ```text
//! rideshare_http_requests_total{service, route, method, status}   counter
//! rideshare_http_request_duration_seconds{service, route}         histogram
//! ```

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// The content type of [`encode`]'s output (OpenMetrics text, which
/// Prometheus scrapes as is).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label value: a `&'static str` (route templates, service names) costs no
/// allocation per request.
pub type Label = Cow<'static, str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: Label,
    route: Label,
    method: Label,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    service: Label,
    route: Label,
}

/// Buckets for request durations: 1 ms to about 33 s, doubling.
pub fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The shared HTTP metrics; register once, then [`HttpMetrics::observe`]
/// every answered request.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    /// Create the two families and register them in `registry`.
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
        };
        registry.register(
            "rideshare_http_requests",
            "HTTP requests answered, by service, route template, method and status",
            m.requests.clone(),
        );
        registry.register(
            "rideshare_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response head), by service and route template",
            m.duration.clone(),
        );
        m
    }

    /// Count one answered request. `route` must be a template (or a fixed
    /// word such as `other` for paths that match no route), never a raw path.
    pub fn observe(
        &self,
        service: impl Into<Label>,
        route: impl Into<Label>,
        method: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let (service, route) = (service.into(), route.into());
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels { service: service.clone(), route: route.clone(), method, status })
            .inc();
        self.duration.get_or_create(&RouteLabels { service, route }).observe(elapsed.as_secs_f64());
    }
}

/// The standard methods as static labels; anything else is `other` (a
/// client must not be able to add series by inventing methods).
fn method_label(method: &str) -> Label {
    Cow::Borrowed(match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    })
}

/// The registry in the text exposition format (serve it with [`CONTENT_TYPE`]).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_metrics_encode_with_their_names_suffixes_and_labels() {
        let mut registry = Registry::default();
        let m = HttpMetrics::register(&mut registry);
        m.observe("rides-api", "/api/v1/rides/{rideId}", "GET", 200, Duration::from_millis(3));
        m.observe("rides-api", "/api/v1/rides/{rideId}", "GET", 200, Duration::from_millis(5));
        m.observe("rides-api", "/api/v1/rides/{rideId}", "BREW", 404, Duration::from_millis(1));
        let text = encode(&registry);
        assert!(text.contains("# TYPE rideshare_http_requests counter"), "{text}");
        assert!(
            text.contains(
                r#"rideshare_http_requests_total{service="rides-api",route="/api/v1/rides/{rideId}",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"method="other",status="404"} 1"#), "{text}");
        assert!(text.contains("# TYPE rideshare_http_request_duration_seconds histogram"), "{text}");
        assert!(
            text.contains(
                r#"rideshare_http_request_duration_seconds_count{service="rides-api",route="/api/v1/rides/{rideId}"} 3"#
            ),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
