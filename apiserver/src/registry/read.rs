//! List and watch: selectors, paging, and where a watch starts.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use skiff_api::{ApiError, FieldSelector, LabelSelector, ListOptions, ObjectList, ResourceKind, WatchStream};

use super::Registry;
use crate::storage::Key;
use crate::watch::{self, Filter, Start, StreamOptions};

/// The fields a field selector may name, per kind, as Kubernetes' field label conversions list
/// them (every kind also takes `metadata.name` and `metadata.namespace`).
fn selectable_fields(res: &ResourceKind) -> &'static [&'static str] {
    match (res.group, res.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Secret") => &["type"],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("", "PersistentVolumeClaim") => &["status.phase"],
        ("", "PersistentVolume") => &["status.phase"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    }
}

fn filter(res: &'static ResourceKind, namespace: Option<&str>, opts: &ListOptions) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(opts.label_selector.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(opts.field_selector.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    for field in fields.fields() {
        let known = matches!(field, "metadata.name" | "metadata.namespace") || selectable_fields(res).contains(&field);
        if !known {
            return Err(ApiError::bad_request(format!(
                "\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
            )));
        }
    }
    Ok(Filter {
        res,
        namespace: if res.namespaced() { namespace.filter(|n| !n.is_empty()).map(String::from) } else { None },
        labels,
        fields,
    })
}

/// Where a page continues: at the first page's revision, or (after that expired, when the
/// client chose to go on) at the latest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Revision(u64),
    Latest,
}

/// A continue token: the revision of the list's first page (every page is read at it), or -1
/// for "latest" as Kubernetes encodes it, and the last key returned.
fn encode_continue(at: At, last_key: &str) -> String {
    let rv = match at {
        At::Revision(rv) => rv as i64,
        At::Latest => -1,
    };
    URL_SAFE_NO_PAD.encode(json!({"rv": rv, "start": last_key}).to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(At, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion");
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| bad())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let at = match value["rv"].as_i64() {
        Some(-1) => At::Latest,
        Some(rv) if rv > 0 => At::Revision(rv as u64),
        _ => return Err(bad()),
    };
    let start = value["start"].as_str().filter(|s| s.starts_with(prefix)).ok_or_else(bad)?;
    Ok((at, start.to_string()))
}

/// Kubernetes' answer to a continue token whose revision is compacted away. The Status
/// carries a token that goes on at the latest revision.
fn continue_expired(start: &str) -> ApiError {
    let mut err = ApiError::new(
        410,
        skiff_api::StatusReason::Expired,
        "The provided continue parameter is too old to display a consistent list result. You can start a new \
list without the continue parameter, or use the continue token in this response to retrieve the remainder of \
the results. Continuing with the provided token results in an inconsistent list - objects that were created, \
modified, or deleted between the time the first chunk was returned and now may show up in the list.",
    );
    err.continue_token = Some(encode_continue(At::Latest, start));
    err
}

/// The objects under `prefix` after key `start` as they were at revision `at`, in key order:
/// the current ones, with every object changed since `at` replaced by its state before the
/// first of those changes (absent if it was created since).
fn objects_at(
    reg: &Registry,
    prefix: &str,
    start: &str,
    at: u64,
) -> Result<Vec<(String, serde_json::Value)>, ApiError> {
    let scan = reg.store.scan(prefix, Some(start), None, |_| true)?;
    if scan.revision == at {
        return Ok(scan.items);
    }
    let changes = reg.store.hub().changes(at, scan.revision).map_err(|_| continue_expired(start))?;
    let mut view: BTreeMap<String, Option<serde_json::Value>> =
        scan.items.into_iter().map(|(k, o)| (k, Some(o))).collect();
    let mut rewound = HashSet::new();
    for change in changes {
        let name = change.object["metadata"]["name"].as_str().unwrap_or_default();
        let key = Key::new(change.res, Some(&change.namespace), name).encode();
        if !key.starts_with(prefix) || key.as_str() <= start || !rewound.insert(key.clone()) {
            continue;
        }
        view.insert(key, change.prev().cloned());
    }
    Ok(view.into_iter().filter_map(|(k, o)| o.map(|o| (k, o))).collect())
}

pub fn list(
    reg: &Registry,
    res: &'static ResourceKind,
    namespace: Option<&str>,
    opts: &ListOptions,
) -> Result<ObjectList, ApiError> {
    let filter = filter(res, namespace, opts)?;
    let prefix = Key::prefix(res, filter.namespace.as_deref());
    let continued = opts.continue_token.as_deref().filter(|t| !t.is_empty()).map(|t| decode_continue(t, &prefix));
    let limit = opts.limit.filter(|l| *l > 0).map(|l| l as usize);
    let (revision, items, more) = match continued.transpose()? {
        // Later pages are read at the first page's revision, as Kubernetes reads them from
        // etcd: the pages together are one consistent list, and a watch from its revision
        // misses nothing.
        Some((At::Revision(rv), start)) => {
            let mut items: Vec<_> =
                objects_at(reg, &prefix, &start, rv)?.into_iter().filter(|(_, o)| filter.matches(o)).collect();
            let more = limit.is_some_and(|l| items.len() > l);
            if let Some(l) = limit {
                items.truncate(l);
            }
            (rv, items, more)
        }
        // Going on after an expired token: the rest as it is now, and pages after this one
        // consistent with it.
        Some((At::Latest, start)) => {
            let scan = reg.store.scan(&prefix, Some(&start), limit, |o| filter.matches(o))?;
            (scan.revision, scan.items, scan.more)
        }
        None => {
            let scan = reg.store.scan(&prefix, None, limit, |o| filter.matches(o))?;
            (scan.revision, scan.items, scan.more)
        }
    };
    let continue_token = match (more, items.last()) {
        (true, Some((key, _))) => Some(encode_continue(At::Revision(revision), key)),
        _ => None,
    };
    Ok(ObjectList {
        resource_version: revision.to_string(),
        items: items.into_iter().map(|(_, o)| o).collect(),
        continue_token,
    })
}

pub fn watch(
    reg: &Registry,
    res: &'static ResourceKind,
    namespace: Option<&str>,
    opts: &ListOptions,
) -> Result<WatchStream, ApiError> {
    let filter = filter(res, namespace, opts)?;
    let stream_opts = StreamOptions {
        timeout: opts.timeout_seconds.filter(|t| *t > 0).map(Duration::from_secs),
        bookmarks: opts.allow_watch_bookmarks,
    };
    let hub = reg.store.hub();
    let start = match opts.resource_version.as_deref().filter(|rv| !rv.is_empty() && *rv != "0") {
        None => {
            let rx = hub.subscribe();
            let prefix = Key::prefix(res, filter.namespace.as_deref());
            let scan = reg.store.scan(&prefix, None, None, |o| filter.matches(o))?;
            Start::Initial { objects: scan.items.into_iter().map(|(_, o)| o).collect(), revision: scan.revision, rx }
        }
        Some(rv) => {
            let rv: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            match hub.resume(rv) {
                Ok(start) => start,
                Err(gone) => return Ok(watch::error_stream(gone)),
            }
        }
    };
    Ok(watch::stream(hub, filter, start, stream_opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_other_prefixes() {
        let token = encode_continue(At::Revision(42), "pods/default/web");
        assert_eq!(
            decode_continue(&token, "pods/default/").unwrap(),
            (At::Revision(42), "pods/default/web".to_string())
        );
        let latest = encode_continue(At::Latest, "pods/default/web");
        assert_eq!(decode_continue(&latest, "pods/default/").unwrap().0, At::Latest);
        assert_eq!(decode_continue(&token, "pods/other/").unwrap_err().code, 400);
        assert_eq!(decode_continue("!!", "pods/").unwrap_err().code, 400);
    }

    #[test]
    fn unknown_field_selectors_are_refused() {
        let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
        assert!(filter(pods, Some("default"), &ListOptions::fields("spec.nodeName=n1")).is_ok());
        let err = filter(pods, Some("default"), &ListOptions::fields("spec.image=x")).err().unwrap();
        assert_eq!(err.code, 400);
    }
}
