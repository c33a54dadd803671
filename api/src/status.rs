//! Errors as Kubernetes `Status` objects: what every layer returns and the HTTP layer serialises.

use serde_json::{Value, json};

use crate::ResourceKind;

/// The `reason` field of a failure `Status`, spelled as apimachinery spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusReason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    AlreadyExists,
    Conflict,
    Gone,
    Expired,
    Invalid,
    MethodNotAllowed,
    NotAcceptable,
    RequestEntityTooLarge,
    UnsupportedMediaType,
    InternalError,
    ServiceUnavailable,
    Timeout,
}

impl StatusReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::AlreadyExists => "AlreadyExists",
            Self::Conflict => "Conflict",
            Self::Gone => "Gone",
            Self::Expired => "Expired",
            Self::Invalid => "Invalid",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::NotAcceptable => "NotAcceptable",
            Self::RequestEntityTooLarge => "RequestEntityTooLarge",
            Self::UnsupportedMediaType => "UnsupportedMediaType",
            Self::InternalError => "InternalError",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::Timeout => "Timeout",
        }
    }
}

/// One entry of `details.causes`: which field was wrong and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueDuplicate`…
    pub reason: String,
    pub message: String,
    /// The JSON path of the field, as `spec.containers[0].image`.
    pub field: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Self { reason: "FieldValueRequired".into(), message: "Required value".into(), field: field.into() }
    }

    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: impl std::fmt::Display) -> Self {
        Self {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {value}: {detail}"),
            field: field.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden".into(),
            message: format!("Forbidden: {}", detail.into()),
            field: field.into(),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list = supported.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        Self {
            reason: "FieldValueNotSupported".into(),
            message: format!("Unsupported value: \"{value}\": supported values: {list}"),
            field: field.into(),
        }
    }
}

/// A failed API call. It *is* a Kubernetes `Status`: the HTTP layer writes [`ApiError::to_status`]
/// with [`ApiError::code`] as the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: StatusReason,
    pub message: String,
    /// `details.name`, `details.group`, `details.kind`.
    pub name: Option<String>,
    pub group: Option<String>,
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
    /// `metadata.continue`: the token an expired list may go on with (inconsistently).
    pub continue_token: Option<String>,
}

impl ApiError {
    pub fn new(code: u16, reason: StatusReason, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: Vec::new(),
            continue_token: None,
        }
    }

    fn about(mut self, res: &ResourceKind, name: &str) -> Self {
        self.name = Some(name.to_string());
        self.group = Some(res.group.to_string());
        self.kind = Some(res.plural.to_string());
        self
    }

    /// `pods "web" not found`
    pub fn not_found(res: &ResourceKind, name: &str) -> Self {
        Self::new(404, StatusReason::NotFound, format!("{} \"{name}\" not found", res.qualified_plural()))
            .about(res, name)
    }

    /// `deployments.apps "demo" already exists`
    pub fn already_exists(res: &ResourceKind, name: &str) -> Self {
        Self::new(409, StatusReason::AlreadyExists, format!("{} \"{name}\" already exists", res.qualified_plural()))
            .about(res, name)
    }

    /// The optimistic-concurrency failure of an update against a stale resourceVersion.
    pub fn conflict(res: &ResourceKind, name: &str, why: &str) -> Self {
        Self::new(
            409,
            StatusReason::Conflict,
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", res.qualified_plural()),
        )
        .about(res, name)
    }

    /// A 422 with field causes. The message is built as apimachinery builds it.
    pub fn invalid(res: &ResourceKind, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes
            .iter()
            .map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) })
            .collect::<Vec<_>>();
        let joined = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let mut err = Self::new(422, StatusReason::Invalid, format!("{} \"{name}\" is invalid: {joined}", res.kind))
            .about(res, name);
        err.kind = Some(res.kind.to_string());
        err.causes = causes;
        err
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, StatusReason::BadRequest, message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, StatusReason::MethodNotAllowed, message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            StatusReason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got {content_type}"
            ),
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, StatusReason::RequestEntityTooLarge, message)
    }

    /// A watch or list from a resourceVersion older than the history kept.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, StatusReason::Expired, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, StatusReason::InternalError, message)
    }

    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    pub fn is_conflict(&self) -> bool {
        self.code == 409 && self.reason == StatusReason::Conflict
    }

    pub fn is_already_exists(&self) -> bool {
        self.reason == StatusReason::AlreadyExists
    }

    /// The `Status` object as JSON.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if let Some(name) = &self.name {
            details.insert("name".into(), json!(name));
        }
        if let Some(group) = &self.group {
            details.insert("group".into(), json!(group));
        }
        if let Some(kind) = &self.kind {
            details.insert("kind".into(), json!(kind));
        }
        if !self.causes.is_empty() {
            let causes = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect::<Vec<_>>();
            details.insert("causes".into(), Value::Array(causes));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        if let Some(token) = &self.continue_token {
            status["metadata"]["continue"] = json!(token);
        }
        status
    }

    /// Reads a `Status` back, as a client of the HTTP API would.
    pub fn from_status(status: &Value) -> Self {
        let code = status["code"].as_u64().unwrap_or(500) as u16;
        let reason = match status["reason"].as_str().unwrap_or("") {
            "BadRequest" => StatusReason::BadRequest,
            "Unauthorized" => StatusReason::Unauthorized,
            "Forbidden" => StatusReason::Forbidden,
            "NotFound" => StatusReason::NotFound,
            "AlreadyExists" => StatusReason::AlreadyExists,
            "Conflict" => StatusReason::Conflict,
            "Gone" => StatusReason::Gone,
            "Expired" => StatusReason::Expired,
            "Invalid" => StatusReason::Invalid,
            "MethodNotAllowed" => StatusReason::MethodNotAllowed,
            "NotAcceptable" => StatusReason::NotAcceptable,
            "RequestEntityTooLarge" => StatusReason::RequestEntityTooLarge,
            "UnsupportedMediaType" => StatusReason::UnsupportedMediaType,
            "ServiceUnavailable" => StatusReason::ServiceUnavailable,
            "Timeout" => StatusReason::Timeout,
            _ => StatusReason::InternalError,
        };
        let mut err = Self::new(code, reason, status["message"].as_str().unwrap_or_default());
        err.continue_token = status["metadata"]["continue"].as_str().map(String::from);
        let details = &status["details"];
        err.name = details["name"].as_str().map(String::from);
        err.group = details["group"].as_str().map(String::from);
        err.kind = details["kind"].as_str().map(String::from);
        err.causes = details["causes"]
            .as_array()
            .map(|causes| {
                causes
                    .iter()
                    .map(|c| Cause {
                        reason: c["reason"].as_str().unwrap_or_default().into(),
                        message: c["message"].as_str().unwrap_or_default().into(),
                        field: c["field"].as_str().unwrap_or_default().into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_kubectl_prints_it() {
        let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
        let status = ApiError::not_found(pods, "nope").to_status();
        assert_eq!(status["message"], "pods \"nope\" not found");
        assert_eq!(status["code"], 404);
        assert_eq!(status["details"]["kind"], "pods");
    }

    #[test]
    fn invalid_carries_field_causes_and_round_trips() {
        let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
        let err = ApiError::invalid(pods, "web", vec![Cause::required("spec.containers")]);
        assert_eq!(err.message, "Pod \"web\" is invalid: spec.containers: Required value");
        let back = ApiError::from_status(&err.to_status());
        assert_eq!(back, err);
    }
}
