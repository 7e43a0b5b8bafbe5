//! The one error type of the orchestrator's HTTP API. Its kind is the
//! database path's taxonomy (`wire::contract::ErrorKind`), which decides the
//! status in one place; every error answers `{"error": "..."}`.

use warp::http::StatusCode;
use warp::Reply;
use wire::contract::ErrorKind;
use wire::ErrorBody;

use crate::rpc::RpcError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Invalid, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Unavailable, message)
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn into_response(self) -> warp::reply::Response {
        let status = self.status();
        warp::reply::with_status(warp::reply::json(&ErrorBody::new(self.message)), status).into_response()
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status() {
        for (kind, status) in [
            (ErrorKind::Invalid, 400),
            (ErrorKind::Unauthorized, 401),
            (ErrorKind::Conflict, 409),
            (ErrorKind::TooLarge, 413),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Failed, 500),
        ] {
            assert_eq!(ApiError::new(kind, "x").status().as_u16(), status, "{kind:?}");
        }
        let e: ApiError = RpcError::BrokerDown.into();
        assert_eq!(e.kind, ErrorKind::Unavailable);
    }
}
