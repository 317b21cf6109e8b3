//! RFC 9457 problem details: every error the API returns, and the mapping from engine errors.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use trackstore_engine::Error as EngineError;
use trackstore_engine::event::{IndexedFieldError, RequestError};

/// Problem `type` URIs are `PROBLEM_BASE` + slug; the slugs are listed in the OpenAPI document.
pub const PROBLEM_BASE: &str = "https://trackstore.dev/problems/";

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<Value>,
    pub retry_after_secs: Option<u32>,
    pub extra: Vec<(&'static str, Value)>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
            extra: Vec::new(),
        }
    }

    pub fn invalid_parameter(name: &str, message: impl std::fmt::Display) -> Problem {
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid query parameter",
            format!("{name}: {message}"),
        );
        p.errors
            .push(json!({"field": name, "message": message.to_string()}));
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn overloaded(status: StatusCode, detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(status, "overloaded", "Overloaded, retry later", detail);
        p.retry_after_secs = Some(1);
        p
    }

    /// A write this node does not accept: it is a replica (naming its primary), or an old primary
    /// fenced by a newer epoch, or one that stopped writes for a switchover.
    pub fn read_only_replica(detail: impl Into<String>, primary: Option<String>) -> Problem {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read-only-replica",
            "This node does not accept writes",
            detail,
        );
        if let Some(primary) = primary {
            p.extra.push(("primary", Value::String(primary)));
        }
        p
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    pub fn body(&self) -> Value {
        let mut v = json!({
            "type": format!("{PROBLEM_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            v["errors"] = Value::Array(self.errors.clone());
        }
        for (k, val) in &self.extra {
            v[*k] = val.clone();
        }
        v
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn field_error_json(e: &IndexedFieldError) -> Value {
    let mut v = json!({"field": e.error.field, "message": e.error.message});
    if let Some(i) = e.index {
        v["index"] = json!(i);
    }
    v
}

impl From<RequestError> for Problem {
    fn from(e: RequestError) -> Problem {
        match e {
            RequestError::MalformedJson { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                e.to_string(),
            ),
            RequestError::Empty => Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                e.to_string(),
            ),
            RequestError::TooManyEvents { .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-many-events",
                "Too many events in one request",
                e.to_string(),
            ),
            RequestError::Invalid {
                ref errors,
                omitted,
            } => {
                let mut p = Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-event",
                    "Invalid event",
                    e.to_string(),
                );
                p.errors = errors.iter().map(field_error_json).collect();
                if omitted > 0 {
                    p.extra.push(("errors_omitted", json!(omitted)));
                }
                p
            }
            other => Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                other.to_string(),
            ),
        }
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Problem {
        match e {
            EngineError::Invalid { index, ref error } => {
                let mut p = Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-event",
                    "Invalid event",
                    e.to_string(),
                );
                p.errors
                    .push(json!({"index": index, "field": error.field, "message": error.message}));
                p
            }
            EngineError::BadRequest(m) => {
                Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", m)
            }
            EngineError::Conflict {
                index,
                ref event_id,
                lsn,
            } => {
                let mut p = Problem::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "Event id already stored with different content",
                    e.to_string(),
                );
                p.errors.push(json!({"index": index, "field": "event_id",
                    "message": format!("{event_id:?} is stored at LSN {} with different content", lsn.0)}));
                p
            }
            EngineError::Overloaded(_) => {
                Problem::overloaded(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            EngineError::Cursor(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-cursor",
                "Invalid cursor",
                e.to_string(),
            ),
            EngineError::InvalidArgument(m) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid query parameter",
                m,
            ),
            EngineError::Closed => {
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting-down",
                    "The server is shutting down",
                    e.to_string(),
                );
                p.retry_after_secs = Some(1);
                p
            }
            EngineError::Poisoned(_) | EngineError::Storage(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage-failure",
                "Storage failure",
                format!("{e}; nothing of this request was acknowledged"),
            ),
            EngineError::ReadOnly(_) => Problem::read_only_replica(e.to_string(), None),
            other => Problem::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackstore_engine::Lsn;

    #[test]
    fn conflict_is_409_naming_event_id() {
        let p = Problem::from(EngineError::Conflict {
            index: 2,
            event_id: "e-1".into(),
            lsn: Lsn(7),
        });
        assert_eq!(p.status, StatusCode::CONFLICT);
        let b = p.body();
        assert_eq!(b["type"], "https://trackstore.dev/problems/conflict");
        assert_eq!(b["errors"][0]["field"], "event_id");
        assert_eq!(b["errors"][0]["index"], 2);
    }

    #[test]
    fn overload_says_when_to_retry() {
        let resp = Problem::from(EngineError::Overloaded(1024)).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
