//! "Does this user exist?", asked of the users service.
//!
//! SPEC section 3 wants the question to go through the load balancer, with an
//! `Origin` header naming this service, as a client of the users API would;
//! `?username=` keeps the answer one name long however many users exist.

use std::time::Duration;

use reqwest::header::{HeaderValue, ORIGIN};
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
    pub fn new(lb_url: &str, public_url: &str) -> anyhow::Result<UserCheck> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        let origin = HeaderValue::from_str(public_url)
            .map_err(|_| anyhow::anyhow!("RIDES_PUBLIC_URL {public_url:?} is not a valid header value"))?;
        Ok(UserCheck { http, url: format!("{}/api/v1/users", lb_url.trim_end_matches('/')), origin })
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
