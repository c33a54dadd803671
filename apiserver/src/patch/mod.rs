//! Patches: JSON patch (RFC 6902) and merge patch (RFC 7386) through `json-patch`, strategic
//! merge patch by hand ([`strategic`]), and server-side apply.
//!
//! Server-side apply ([`apply`]) merges the applied configuration with the strategic-merge
//! rules and tracks the fields each applier owns in `metadata.managedFields`.

pub mod apply;
pub mod strategic;

use serde_json::Value;
use skiff_api::{ApiError, PatchKind, ResourceKind, StatusReason};

fn invalid_patch(message: String) -> ApiError {
    ApiError::new(422, StatusReason::Invalid, message)
}

/// `old` with `patch` applied.
pub fn apply(res: &ResourceKind, kind: &PatchKind, old: &Value, patch: &Value) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut doc = old.clone();
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| invalid_patch(format!("the JSON patch could not be applied: {e}")))?;
            Ok(doc)
        }
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut doc = old.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchKind::Apply { field_manager, force } => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("an apply configuration must be an object"));
            }
            let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            apply::apply(res, old, patch, field_manager, *force, &now)
        }
        PatchKind::StrategicMerge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
            }
            strategic::merge(res, old, patch).map_err(ApiError::bad_request)
        }
    }
}
