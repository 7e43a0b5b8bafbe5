//! "Does this user exist?", asked of the users service.
//!
//! The question goes through the load balancer (docs/api.md), with an
//! `Origin` header naming this service, as a client of the users API would;
//! `?username=` keeps the answer one name long however many users exist.

use reqwest::header::{HeaderValue, ORIGIN};
use reqwest::Url;
use svc_common::timing;
use warp::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The users service or the load balancer could not answer.
    #[error("cannot check the user now: {0}")]
    Unavailable(String),
    /// The users service refused the question (e.g. a name too long for a URL).
    #[error("cannot check the user: {0}")]
    Refused(String),
}

impl CheckError {
    pub fn status(&self) -> StatusCode {
        match self {
            CheckError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CheckError::Refused(_) => StatusCode::BAD_REQUEST,
        }
    }
}

pub struct UserCheck {
    http: reqwest::Client,
    /// For a question asked again: no kept-alive connection (a fresh one).
    fresh: reqwest::Client,
    url: String,
    origin: HeaderValue,
}

impl UserCheck {
    /// `lb_url` is a base without a trailing slash; the Origin is
    /// `public_url`'s scheme, host and port.
    pub fn new(lb_url: &str, public_url: &Url) -> anyhow::Result<UserCheck> {
        // The user check waits on users-api, which waits on the
        // orchestrator: the same bound as the service's own orchestrator calls.
        let builder =
            || reqwest::Client::builder().timeout(timing::CLIENT_TIMEOUT).connect_timeout(timing::CONNECT_TIMEOUT);
        let (http, fresh) = (builder().build()?, builder().pool_max_idle_per_host(0).build()?);
        let origin = public_url.origin().ascii_serialization();
        let origin = HeaderValue::from_str(&origin)
            .map_err(|_| anyhow::anyhow!("RIDES_PUBLIC_URL {public_url} has no usable origin"))?;
        Ok(UserCheck { http, fresh, url: format!("{}/api/v1/users", lb_url.trim_end_matches('/')), origin })
    }

    /// The Origin header this service sends.
    pub fn origin(&self) -> &str {
        self.origin.to_str().unwrap_or_default()
    }

    pub async fn exists(&self, name: &str) -> Result<bool, CheckError> {
        let query = form_urlencoded::Serializer::new(String::new()).append_pair("username", name).finish();
        let ask =
            |c: &reqwest::Client| c.get(format!("{}?{query}", self.url)).header(ORIGIN, self.origin.clone()).send();
        // A kept-alive connection the LB closes as the question goes out (a
        // reload, a restart) fails it with no answer: it is a read, asked
        // once more on a fresh connection (the other kept-alive ones may be
        // closing too). A timeout is not asked again.
        let resp = match ask(&self.http).await {
            Err(e) if !e.is_timeout() => {
                tracing::info!(error = %e, "user check: no answer on a kept-alive connection; asking again");
                ask(&self.fresh).await
            }
            other => other,
        }
        .map_err(|e| CheckError::Unavailable(format!("users service unreachable: {e}")))?;
        let status = resp.status();
        match status.as_u16() {
            204 => Ok(false),
            200 => {
                let names: Vec<String> = resp
                    .json()
                    .await
                    .map_err(|e| CheckError::Unavailable(format!("users service answer unreadable: {e}")))?;
                Ok(names.iter().any(|n| n == name))
            }
            400..=499 => Err(CheckError::Refused(format!("users service answered {status}"))),
            _ => Err(CheckError::Unavailable(format!("users service answered {status}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The LB closes the first connection as the question arrives (as a
    /// reload closes kept-alive connections): the question is asked again.
    #[tokio::test]
    async fn a_connection_closed_under_the_question_is_asked_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let (mut first, _) = listener.accept().await.unwrap();
            let _ = first.read(&mut buf).await;
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let _ = second.read(&mut buf).await;
            second.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        });
        let check = UserCheck::new(&format!("http://{addr}"), &Url::parse("http://rides:80").unwrap()).unwrap();
        assert!(!check.exists("ann").await.unwrap(), "answered on the second connection");
        server.await.unwrap();
    }

    #[test]
    fn origin_is_scheme_host_and_port() {
        for (public, origin) in [
            ("http://127.0.0.1:8082", "http://127.0.0.1:8082"),
            ("http://rides-x.test:1234/", "http://rides-x.test:1234"),
            ("http://rides:80", "http://rides"),
            ("https://rides.example/some/path", "https://rides.example"),
        ] {
            let check = UserCheck::new("http://lb", &Url::parse(public).unwrap()).unwrap();
            assert_eq!(check.origin(), origin, "{public}");
        }
    }
}
