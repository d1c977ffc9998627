//! Errors a service returns, with the HTTP-style code users see.
//!
//! An [`Error`] travels as a gRPC status whose message is the error's JSON
//! (`{"id","code","detail","status"}`), so the gateway and the CLI can show
//! the service's own code and detail; the gRPC code is the closest match, so
//! plain gRPC clients see something sensible too.

use serde::{Deserialize, Serialize};

/// A service error: who raised it, an HTTP-style code, a detail, the
/// status text of the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{detail}")]
pub struct Error {
    pub id: String,
    pub code: u16,
    pub detail: String,
    pub status: String,
}

fn status_text(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Error {
    /// An error with any code.
    pub fn new(id: impl Into<String>, code: u16, detail: impl Into<String>) -> Error {
        Error {
            id: id.into(),
            code,
            detail: detail.into(),
            status: status_text(code).to_string(),
        }
    }

    /// The gRPC code closest to this error's HTTP-style code.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.code {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            408 => Code::DeadlineExceeded,
            409 => Code::AlreadyExists,
            501 => Code::Unimplemented,
            503 => Code::Unavailable,
            _ => Code::Internal,
        }
    }

    /// The error a gRPC status carries: the JSON a Micro service put in its
    /// message, or one derived from the gRPC code. `id` names the service
    /// for statuses that carry no Micro error.
    pub fn from_status(id: &str, status: &tonic::Status) -> Error {
        if let Ok(e) = serde_json::from_str::<Error>(status.message()) {
            return e;
        }
        use tonic::Code;
        let code = match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::DeadlineExceeded => 408,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::ResourceExhausted => 400,
            _ => 500,
        };
        Error::new(id, code, status.message())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let json = serde_json::to_string(&e).unwrap_or_else(|_| e.detail.clone());
        tonic::Status::new(e.grpc_code(), json)
    }
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:expr),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(id: impl Into<String>, detail: impl Into<String>) -> Error {
                Error::new(id, $code, detail)
            }
        )*
    };
}

constructors! {
    /// 400: the request is malformed.
    bad_request => 400,
    /// 401: no valid identity.
    unauthorized => 401,
    /// 403: an identity without the right.
    forbidden => 403,
    /// 404: no such thing.
    not_found => 404,
    /// 408: it took too long.
    timeout => 408,
    /// 409: it conflicts with the current state.
    conflict => 409,
    /// 500: the service failed.
    internal_server_error => 500,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_grpc_status() {
        let e = not_found("greeter", "no such greeting");
        let status: tonic::Status = e.clone().into();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(Error::from_status("x", &status), e);
        assert_eq!(e.status, "Not Found");
    }

    #[test]
    fn plain_statuses_map_to_codes() {
        let e = Error::from_status("svc", &tonic::Status::unavailable("down"));
        assert_eq!(
            (e.code, e.id.as_str(), e.detail.as_str()),
            (500, "svc", "down")
        );
        assert_eq!(
            Error::from_status("s", &tonic::Status::internal("boom")).code,
            500
        );
    }
}
