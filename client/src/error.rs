//! The client's errors, and the RFC 9457 problem documents the server answers errors with.

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Everything a request can end with instead of the answer it asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The [`ClientConfig`](crate::ClientConfig) cannot work (bad URL, unreadable CA file, h3 over
    /// `http://`...). Retrying does not help.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A request that cannot be sent as built (a path that is not a valid URI, a bad header).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No connection could be made (refused, unreachable, TLS or QUIC handshake failed).
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// The server URL and the protocol tried.
        target: String,
        message: String,
    },
    /// The connection failed while the request or its response was in flight. The server may or may
    /// not have processed the request.
    #[error("the request failed in transit: {0}")]
    Transport(String),
    /// No complete response (or, on a stream, no byte) within the configured time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The server answered with a 4xx or 5xx status.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// A 2xx answer whose body is not what the API documents.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The response body is larger than `ClientConfig::max_response_bytes`.
    #[error("the response body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The event stream broke its framing (a line over the bound, invalid UTF-8).
    #[error("event stream: {0}")]
    Stream(String),
}

impl Error {
    /// Whether sending the same request again may succeed: connection failures, timeouts, and the
    /// server's 429 / 503 (overload, not ready, shutting down), but not a 503 `read-only-replica`:
    /// a replica (or a fenced old primary) refuses writes until an operator acts. Only retry
    /// requests that are safe to repeat: reads, and ingests (an `event_id` already stored with the
    /// same content is a `duplicate`, not a second event).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Transport(_) | Error::Timeout(_) => true,
            Error::Api(e) => {
                matches!(
                    e.status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) && e
                    .problem
                    .as_ref()
                    .is_none_or(|p| p.slug() != "read-only-replica")
            }
            _ => false,
        }
    }

    /// Whether the error means the server could not be reached or the exchange broke (as opposed to
    /// an answer the server gave).
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Transport(_) | Error::Timeout(_)
        )
    }

    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api(e) => Some(e.status),
            _ => None,
        }
    }

    /// The problem document of an [`Error::Api`], when the body was one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api(e) => e.problem.as_ref(),
            _ => None,
        }
    }

    /// The server's `Retry-After`, in seconds, of an [`Error::Api`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api(e) => e.retry_after,
            _ => None,
        }
    }
}

/// A 4xx or 5xx answer.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The RFC 9457 body, if the server sent `application/problem+json` (or JSON that parses as one).
    pub problem: Option<Problem>,
    /// The body as text (at most a few KiB) when it was not a problem document.
    pub body: String,
    /// `Retry-After` in seconds, if present.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Some(p) => write!(f, "{} {p}", self.status.as_u16()),
            None if self.body.is_empty() => write!(f, "{}", self.status),
            None => write!(f, "{}: {}", self.status, self.body),
        }
    }
}

/// An RFC 9457 problem document, as every trackstore error is answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI; its last path segment is the slug (`invalid-event`, `not-found`, `overloaded`...).
    #[serde(rename = "type", default)]
    pub type_uri: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    /// Validation errors, one per field (and event index for ingests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Members beyond the standard ones (`errors_omitted`, `primary`...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Problem {
    /// The last path segment of `type`: `invalid-event`, `conflict`, `not-found`...
    pub fn slug(&self) -> &str {
        self.type_uri.rsplit('/').next().unwrap_or("")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.title)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        for e in &self.errors {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

/// One entry of a problem's `errors`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The event's position in the request (0-based), for ingest errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.index {
            write!(f, "event {i}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_parses_with_errors_and_extra_members() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"https://trackstore.dev/problems/invalid-event","title":"Invalid event",
                "status":400,"detail":"2 errors","errors":[{"index":1,"field":"status",
                "message":"unknown status"},{"field":"x","message":"y"}],"errors_omitted":3}"#,
        )
        .unwrap();
        assert_eq!(p.slug(), "invalid-event");
        assert_eq!(p.errors[0].index, Some(1));
        assert_eq!(p.errors[1].index, None);
        assert_eq!(p.extra["errors_omitted"], 3);
        assert_eq!(
            p.to_string(),
            "Invalid event: 2 errors; event 1: status: unknown status; x: y"
        );
    }

    #[test]
    fn retryable_statuses() {
        let api = |code: u16| {
            Error::Api(Box::new(ApiError {
                status: StatusCode::from_u16(code).unwrap(),
                problem: None,
                body: String::new(),
                retry_after: None,
            }))
        };
        assert!(api(429).is_retryable());
        assert!(api(503).is_retryable());
        assert!(!api(400).is_retryable());
        assert!(!api(500).is_retryable());
        assert!(Error::Transport("reset".into()).is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
        let problem = |slug: &str| {
            Error::Api(Box::new(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                problem: Some(Problem {
                    type_uri: format!("https://trackstore.dev/problems/{slug}"),
                    title: String::new(),
                    status: 503,
                    detail: String::new(),
                    errors: Vec::new(),
                    extra: Map::new(),
                }),
                body: String::new(),
                retry_after: None,
            }))
        };
        assert!(problem("overloaded").is_retryable());
        assert!(
            !problem("read-only-replica").is_retryable(),
            "a replica refuses writes until an operator acts"
        );
    }
}
