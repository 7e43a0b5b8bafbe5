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
    url: String,
    origin: HeaderValue,
}

impl UserCheck {
    /// `lb_url` is a base without a trailing slash; the Origin is
    /// `public_url`'s scheme, host and port.
    pub fn new(lb_url: &str, public_url: &Url) -> anyhow::Result<UserCheck> {
        // The user check waits on users-api, which waits on the
        // orchestrator: the same bound as the service's own orchestrator calls.
        let http = reqwest::Client::builder()
            .timeout(timing::CLIENT_TIMEOUT)
            .connect_timeout(timing::CONNECT_TIMEOUT)
            .build()?;
        let origin = public_url.origin().ascii_serialization();
        let origin = HeaderValue::from_str(&origin)
            .map_err(|_| anyhow::anyhow!("RIDES_PUBLIC_URL {public_url} has no usable origin"))?;
        Ok(UserCheck { http, url: format!("{}/api/v1/users", lb_url.trim_end_matches('/')), origin })
    }

    /// The Origin header this service sends.
    pub fn origin(&self) -> &str {
        self.origin.to_str().unwrap_or_default()
    }

    pub async fn exists(&self, name: &str) -> Result<bool, CheckError> {
        let query = form_urlencoded::Serializer::new(String::new()).append_pair("username", name).finish();
        let resp = self
            .http
            .get(format!("{}?{query}", self.url))
            .header(ORIGIN, self.origin.clone())
            .send()
            .await
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
