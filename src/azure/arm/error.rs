//! ARM failures with context: which operation, on which resource, the HTTP status, ARM's
//! own `{"error": {"code", "message"}}` and the `x-ms-request-id` that Azure support asks
//! for. Converted to the public error at the command layer (auth problems are exit 2).

use std::fmt;

use serde::Deserialize;

/// The parts of an ARM error response we report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceError {
    pub status: u16,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (x-ms-request-id {id})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Envelope {
    error: Option<ErrorDetail>,
}

/// `{"code", "message"}` as ARM and the LRO status bodies carry it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Longest piece of a non-JSON error body that we quote.
const MAX_QUOTED_BODY: usize = 200;

/// Reads an error response. A body that is not ARM's shape is quoted (shortened), so a
/// proxy's HTML error page still says something.
pub fn parse_service_error(status: u16, request_id: Option<String>, body: &[u8]) -> ServiceError {
    let parsed = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.error);
    let (code, message) = match parsed {
        Some(d) => (d.code, d.message),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                (None, None)
            } else {
                let short: String = text.chars().take(MAX_QUOTED_BODY).collect();
                (None, Some(short))
            }
        }
    };
    ServiceError {
        status,
        code,
        message,
        request_id,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("{operation} {resource}: {error}")]
    Service {
        operation: &'static str,
        resource: String,
        error: ServiceError,
    },
    #[error("{operation} {resource}: authentication failed: {message}")]
    Auth {
        operation: &'static str,
        resource: String,
        message: String,
    },
    #[error("{operation} {resource}: request failed: {message}")]
    Transport {
        operation: &'static str,
        resource: String,
        message: String,
    },
    #[error("{operation} {resource}: unexpected response: {message}")]
    Decode {
        operation: &'static str,
        resource: String,
        message: String,
    },
    #[error("{operation}: refusing nextLink {link:?}: {reason}")]
    BadNextLink {
        operation: &'static str,
        link: String,
        reason: String,
    },
    #[error("{operation} {resource}: operation {status}: {}", detail_text(.code, .message))]
    OperationFailed {
        operation: &'static str,
        resource: String,
        status: String,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("{operation} {resource}: still running after {waited_secs} s; gave up")]
    OperationTimeout {
        operation: &'static str,
        resource: String,
        waited_secs: u64,
    },
}

fn detail_text(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => "no error detail".into(),
    }
}

impl ArmError {
    /// Whether the failure is about who we are or what we may do: a configuration problem
    /// (exit 2), not a transient one.
    pub fn is_auth(&self) -> bool {
        match self {
            Self::Auth { .. } => true,
            Self::Service { error, .. } => matches!(error.status, 401 | 403),
            _ => false,
        }
    }

    /// The HTTP status of a service error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Service { error, .. } => Some(error.status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_error_body_is_mapped_with_context() {
        let body = br#"{"error":{"code":"ResourceNotFound","message":"The Resource 'Microsoft.Compute/virtualMachines/web1' under resource group 'rg1' was not found.","target":null,"details":[]}}"#;
        let err = ArmError::Service {
            operation: "get VM",
            resource: "rg1/web1".into(),
            error: parse_service_error(404, Some("req-123".into()), body),
        };
        let text = err.to_string();
        assert_eq!(
            text,
            "get VM rg1/web1: HTTP 404 ResourceNotFound: The Resource 'Microsoft.Compute/virtualMachines/web1' under resource group 'rg1' was not found. (x-ms-request-id req-123)"
        );
        assert!(!err.is_auth());
    }

    #[test]
    fn non_json_body_is_quoted_shortened() {
        let body = "<html>".to_string() + &"x".repeat(1000);
        let e = parse_service_error(502, None, body.as_bytes());
        assert_eq!(e.code, None);
        assert_eq!(e.message.as_ref().unwrap().len(), MAX_QUOTED_BODY);
    }

    #[test]
    fn empty_body_has_no_detail() {
        let e = parse_service_error(500, None, b"");
        assert_eq!(e.to_string(), "HTTP 500");
    }

    #[test]
    fn json_without_error_member_is_quoted() {
        let e = parse_service_error(400, None, br#"{"odd":1}"#);
        assert_eq!(e.message.as_deref(), Some(r#"{"odd":1}"#));
    }

    #[test]
    fn unauthorized_and_forbidden_are_usage_errors() {
        for status in [401, 403] {
            let err = ArmError::Service {
                operation: "list VMs",
                resource: "subscription s".into(),
                error: parse_service_error(
                    status,
                    None,
                    br#"{"error":{"code":"AuthorizationFailed","message":"no"}}"#,
                ),
            };
            assert!(err.is_auth());
        }
    }

    #[test]
    fn failed_operation_names_code_and_message() {
        let e = ArmError::OperationFailed {
            operation: "create snapshot",
            resource: "rg/snap".into(),
            status: "Failed".into(),
            code: Some("OperationNotAllowed".into()),
            message: Some("disk busy".into()),
        };
        assert_eq!(
            e.to_string(),
            "create snapshot rg/snap: operation Failed: OperationNotAllowed: disk busy"
        );
    }
}
