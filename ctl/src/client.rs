//! The orchestrator as the CLI reaches it: its status, event feed, crash,
//! maintenance and worker-list endpoints, with the bearer token when one is given.
//!
//! Invariant: every request has a deadline (the whole exchange for plain
//! requests; connecting and each silence for the event feed), and every
//! failure is one of [`CtlError`]'s cases, whose message tells the operator
//! what to do: an orchestrator that cannot be reached, a refused token, or
//! the orchestrator's own `{"error": ...}` with its status.
//!
//! A follower orchestrator answers the routes about the workers with a 307
//! to the leader. reqwest would follow it but drop `Authorization` on the way
//! (another host or port), so the leader would refuse the token: this client
//! follows 307/308 itself ([`MAX_REDIRECTS`] at most), resending the same
//! method, body and token to exactly the URL the redirect names.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;
use wire::status::{ClusterStatus, MaintenanceStatus, SettingsView};

/// The header of a crash answer while the cluster is paused (what does not follow).
const MAINTENANCE_HEADER: &str = "rideshare-maintenance";

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the orchestrator at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the orchestrator refused the token: set ADMIN_TOKEN or --token")]
    Refused,
    #[error("the orchestrator answered {status}: {message}")]
    Answered { status: StatusCode, message: String },
    #[error("the orchestrator at {url} sent an answer this CLI cannot read: {detail}")]
    Unreadable { url: String, detail: String },
}

/// Which worker `crash` kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrashTarget {
    Master,
    Slave,
}

impl CrashTarget {
    pub fn name(self) -> &'static str {
        match self {
            CrashTarget::Master => "master",
            CrashTarget::Slave => "slave",
        }
    }
}

/// The most redirects one request follows (a follower sends to the leader:
/// one; a leader that changed meanwhile: two).
pub const MAX_REDIRECTS: usize = 3;

pub struct Orchestrator {
    base: String,
    token: Option<String>,
    timeout: Duration,
    /// Plain requests: the whole exchange within `timeout`.
    http: reqwest::Client,
    /// The event feed: connect within `timeout`; a feed silent for
    /// `feed_idle` is treated as lost (the orchestrator sends keep-alives).
    feed: reqwest::Client,
}

impl Orchestrator {
    pub fn new(base: &str, token: Option<String>, timeout: Duration, feed_idle: Duration) -> anyhow::Result<Self> {
        // Redirects are followed in `send`, keeping the token.
        let none = reqwest::redirect::Policy::none;
        let http = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).redirect(none()).build()?;
        let feed =
            reqwest::Client::builder().connect_timeout(timeout).read_timeout(feed_idle).redirect(none()).build()?;
        Ok(Orchestrator { base: base.trim_end_matches('/').to_owned(), token, timeout, http, feed })
    }

    pub async fn status(&self) -> Result<ClusterStatus, CtlError> {
        self.json(self.http.get(self.url("/api/v1/status"))).await
    }

    /// `POST /api/v1/crash/{master,slave}` → the pid of the worker killed,
    /// and, while the cluster is paused, what will not follow.
    pub async fn crash(&self, target: CrashTarget) -> Result<(u32, Option<String>), CtlError> {
        let req = self.http.post(self.url(&format!("/api/v1/crash/{}", target.name())));
        let resp = self.check(self.send(req).await?).await?;
        let held = resp.headers().get(MAINTENANCE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let pids: Vec<u32> = serde_json::from_slice(&body).map_err(|e| self.unreadable(e))?;
        let pid = pids.first().copied().ok_or_else(|| self.unreadable("an empty pid list"))?;
        Ok((pid, held))
    }

    /// `POST /api/v1/maintenance`: pause or resume the leader's own actions.
    pub async fn maintenance(
        &self,
        paused: bool,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<MaintenanceStatus, CtlError> {
        let body = serde_json::json!({ "paused": paused, "reason": reason, "by": by });
        self.json(self.http.post(self.url("/api/v1/maintenance")).json(&body)).await
    }

    /// `POST /api/v1/recover`: accept losing the writes past `kept_seq`
    /// (0: start empty) while the data is missing. The orchestrator's answer.
    pub async fn recover(&self, kept_seq: u64) -> Result<serde_json::Value, CtlError> {
        let body = serde_json::json!({ "accept_data_loss_after": kept_seq });
        self.json(self.http.post(self.url("/api/v1/recover")).json(&body)).await
    }

    /// `POST /api/v1/switchover`: the master's role moved to `to` (default:
    /// the lowest-pid caught-up slave). The orchestrator's answer.
    pub async fn switchover(&self, to: Option<&str>) -> Result<serde_json::Value, CtlError> {
        let body = serde_json::json!({ "to": to });
        self.json(self.http.post(self.url("/api/v1/switchover")).json(&body)).await
    }

    /// `POST /api/v1/rollout`: every worker replaced by one running `image`.
    /// It takes a while (a new slave's catch-up per worker): no short deadline.
    pub async fn rollout(&self, image: &str) -> Result<serde_json::Value, CtlError> {
        let body = serde_json::json!({ "worker_image": image });
        let req = self.http.post(self.url("/api/v1/rollout")).json(&body).timeout(std::time::Duration::from_secs(1800));
        self.json(req).await
    }

    /// `POST /api/v1/restore`: the cluster restored from its continuous backup.
    pub async fn restore(
        &self,
        to_seq: Option<u64>,
        to_time_ms: Option<u64>,
        discard_current: bool,
    ) -> Result<serde_json::Value, CtlError> {
        let body =
            serde_json::json!({ "to_seq": to_seq, "to_time_ms": to_time_ms, "discard_current": discard_current });
        // A restore takes as long as the download: no short deadline.
        let req = self.http.post(self.url("/api/v1/restore")).json(&body).timeout(std::time::Duration::from_secs(600));
        self.json(req).await
    }

    /// `GET /api/v1/config`: the live settings in force.
    pub async fn settings(&self) -> Result<SettingsView, CtlError> {
        self.json(self.http.get(self.url("/api/v1/config"))).await
    }

    /// `POST /api/v1/config`: change live settings (`""` resets one).
    pub async fn set_settings(
        &self,
        set: &std::collections::BTreeMap<String, String>,
        by: &str,
    ) -> Result<SettingsView, CtlError> {
        let body = serde_json::json!({ "set": set, "by": by });
        self.json(self.http.post(self.url("/api/v1/config")).json(&body)).await
    }

    /// `GET /api/v1/worker/list` → the workers' pids, sorted.
    pub async fn workers(&self) -> Result<Vec<u32>, CtlError> {
        self.json(self.http.get(self.url("/api/v1/worker/list"))).await
    }

    /// `GET /api/v1/events`: the open feed, to read with `Response::chunk`.
    pub async fn open_feed(&self, last_event_id: Option<u64>) -> Result<Response, CtlError> {
        let mut req = self.feed.get(self.url("/api/v1/events")).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = self.send(req).await?;
        self.check(resp).await
    }

    /// A failure while reading the open feed, said the same way as the others.
    pub fn feed_error(&self, e: reqwest::Error) -> CtlError {
        self.unreachable(e)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, CtlError> {
        let resp = self.check(self.send(req).await?).await?;
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&body).map_err(|e| self.unreadable(e))
    }

    /// Sends `req` with the token, following a 307/308 (a follower naming
    /// the leader) with the same method, body and token.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Response, CtlError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let (client, request) = req.build_split();
        let mut request = request.map_err(|e| self.unreachable(e))?;
        for _ in 0..=MAX_REDIRECTS {
            let again = request.try_clone();
            let resp = client.execute(request).await.map_err(|e| self.unreachable(e))?;
            let Some(to) = redirect_target(&resp) else { return Ok(resp) };
            let Some(mut next) = again else { return Ok(resp) };
            *next.url_mut() = to;
            request = next;
        }
        Err(CtlError::Unreachable {
            url: self.base.clone(),
            detail: format!("more than {MAX_REDIRECTS} redirects (last to {})", request.url()),
        })
    }

    async fn check(&self, resp: Response) -> Result<Response, CtlError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(CtlError::Refused);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(CtlError::Answered { status, message: error_message(&body) })
    }

    fn unreachable(&self, e: reqwest::Error) -> CtlError {
        let detail =
            if e.is_timeout() { format!("no answer within {} ms", self.timeout.as_millis()) } else { causes(&e) };
        CtlError::Unreachable { url: self.base.clone(), detail }
    }

    fn unreadable(&self, e: impl std::fmt::Display) -> CtlError {
        CtlError::Unreadable { url: self.base.clone(), detail: e.to_string() }
    }
}

/// Where a 307 or 308 sends the request (an http(s) URL, relative to the one
/// answered); `None` for any other answer, which is the caller's to read.
fn redirect_target(resp: &Response) -> Option<reqwest::Url> {
    if !matches!(resp.status(), StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT) {
        return None;
    }
    let location = resp.headers().get(reqwest::header::LOCATION)?.to_str().ok()?;
    let to = resp.url().join(location).ok()?;
    matches!(to.scheme(), "http" | "https").then_some(to)
}

/// The innermost causes of an error, most specific last
/// (`error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)`
/// becomes `tcp connect error: Connection refused (os error 111)`).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        chain.push(c.to_string());
        cur = c.source();
    }
    // The outer layers repeat the URL and "client error"; the last two say what happened.
    let keep = chain.len().min(2);
    chain[chain.len() - keep..].join(": ")
}

/// The `error` of an `{"error": ...}` body, else the body itself (trimmed, short).
pub fn error_message(body: &str) -> String {
    if let Ok(e) = serde_json::from_str::<wire::ErrorBody>(body) {
        return e.error;
    }
    let body = body.trim();
    if body.is_empty() {
        return "(no body)".to_owned();
    }
    body.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_tell_the_operator_what_to_do() {
        let e = CtlError::Unreachable { url: "http://10.0.0.5:8090".into(), detail: "connection refused".into() };
        assert_eq!(e.to_string(), "cannot reach the orchestrator at http://10.0.0.5:8090: connection refused");
        assert_eq!(CtlError::Refused.to_string(), "the orchestrator refused the token: set ADMIN_TOKEN or --token");
        let e = CtlError::Answered {
            status: StatusCode::CONFLICT,
            message: error_message(r#"{"error":"no slave to crash"}"#),
        };
        assert_eq!(e.to_string(), "the orchestrator answered 409 Conflict: no slave to crash");
    }

    #[test]
    fn error_bodies() {
        assert_eq!(error_message(r#"{"error": "no master to crash"}"#), "no master to crash");
        assert_eq!(error_message("  bad gateway \n"), "bad gateway");
        assert_eq!(error_message(""), "(no body)");
        assert_eq!(error_message(&"x".repeat(500)).len(), 200);
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_the_url_and_the_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        let o = Orchestrator::new(&base, None, Duration::from_secs(2), Duration::from_secs(2)).unwrap();
        let e = o.status().await.unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("cannot reach the orchestrator at {base}: ")), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    /// One HTTP exchange per connection on a loopback port: `answer` gets
    /// the request's head (lower-cased) and body and returns the response.
    async fn serve(answer: impl Fn(&str, &str) -> String + Send + Sync + 'static) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let n = sock.read(&mut chunk).await.unwrap();
                        if n == 0 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let head = text[..end].to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            if text.len() >= end + 4 + len || n == 0 {
                                break (head, text[end + 4..].to_owned());
                            }
                        }
                    };
                    let resp = answer(&head, &body);
                    sock.write_all(resp.as_bytes()).await.unwrap();
                    sock.shutdown().await.ok();
                });
            }
        });
        base
    }

    fn reply(status: &str, extra: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
    }

    /// Issue 20: sent to a follower, the CLI reaches the leader (another
    /// port: reqwest's own redirects drop `Authorization` there) with its
    /// token, and with the method and body of the request.
    #[tokio::test]
    async fn a_follower_s_redirect_keeps_the_token_method_and_body() {
        let leader = serve(|head, body| {
            if !head.contains("authorization: bearer s3cret") {
                return reply("401 Unauthorized", "", r#"{"error":"missing or wrong bearer token"}"#);
            }
            if head.starts_with("get /api/v1/worker/list ") {
                reply("200 OK", "", "[11,12]")
            } else if head.starts_with("post /api/v1/recover ") && body.contains(r#""accept_data_loss_after":7"#) {
                reply("200 OK", "", r#"{"kept_seq":7}"#)
            } else {
                reply("400 Bad Request", "", r#"{"error":"not what was sent"}"#)
            }
        })
        .await;
        let to = leader.clone();
        let follower = serve(move |head, _| {
            let path = head.split_whitespace().nth(1).unwrap().to_owned();
            reply("307 Temporary Redirect", &format!("location: {to}{path}\r\n"), "")
        })
        .await;
        let o = Orchestrator::new(&follower, Some("s3cret".into()), Duration::from_secs(5), Duration::from_secs(5))
            .unwrap();
        assert_eq!(o.workers().await.unwrap(), [11, 12]);
        assert_eq!(o.recover(7).await.unwrap()["kept_seq"], 7);
        // Without the token the leader's refusal comes through as such.
        let o = Orchestrator::new(&follower, None, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
        assert!(matches!(o.workers().await, Err(CtlError::Refused)));
    }

    /// A redirect loop ends, and says so.
    #[tokio::test]
    async fn redirects_are_followed_a_bounded_number_of_times() {
        let looping = serve(|head, _| {
            let path = head.split_whitespace().nth(1).unwrap().to_owned();
            reply("307 Temporary Redirect", &format!("location: {path}\r\n"), "")
        })
        .await;
        let o = Orchestrator::new(&looping, None, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
        let e = o.workers().await.unwrap_err().to_string();
        assert!(e.contains("more than 3 redirects"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_orchestrator_times_out() {
        // Accepted by the kernel (backlog), never answered.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", silent.local_addr().unwrap());
        let o = Orchestrator::new(&base, None, Duration::from_millis(300), Duration::from_secs(2)).unwrap();
        let started = std::time::Instant::now();
        let e = o.workers().await.unwrap_err().to_string();
        assert_eq!(e, format!("cannot reach the orchestrator at {base}: no answer within 300 ms"));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }
}
