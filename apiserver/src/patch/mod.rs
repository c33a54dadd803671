//! Patches: JSON patch (RFC 6902) and merge patch (RFC 7386) through `json-patch`, strategic
//! merge patch by hand ([`strategic`]), and server-side apply.
//!
//! Server-side apply here merges the applied configuration over the live object with the
//! strategic-merge rules (keyed lists merge by key, atomic lists are replaced). It does not yet
//! track field managers, so it never reports conflicts and never removes fields that an
//! earlier apply set and this one dropped.

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
        PatchKind::StrategicMerge | PatchKind::Apply { .. } => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
            }
            strategic::merge(res, old, patch).map_err(ApiError::bad_request)
        }
    }
}
