//! Server-side printing: `meta.k8s.io` Tables for clients that ask for them in `Accept`
//! (`kubectl get` always does; kubectl has no client-side printers for built-in kinds).

mod age;
mod printers;

use hyper::header::{ACCEPT, HeaderMap};
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use skiff_api::{ApiError, ResourceKind};

/// What each row's `object` carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Include {
    None,
    /// A `PartialObjectMetadata`: kubectl needs it for `-A`, `--show-labels` and `-L`.
    Metadata,
    Object,
}

/// A Table reply was asked for: in which `meta.k8s.io` version, and with what row objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableRequest {
    pub api_version: &'static str,
    pub include: Include,
}

impl TableRequest {
    /// Reads `Accept` in order of preference: a Table media range we know wins unless a plain
    /// JSON range comes first. Media types we do not produce (protobuf) are skipped.
    pub fn from_request(headers: &HeaderMap, include_object: Option<&str>) -> Result<Option<Self>, ApiError> {
        let accept = headers.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
        let mut api_version = None;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            if media != "application/json" && media != "*/*" {
                continue;
            }
            let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
            let param = |key: &str| params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            match (param("as"), param("g"), param("v")) {
                (Some("Table"), Some("meta.k8s.io"), Some("v1")) => api_version = Some("meta.k8s.io/v1"),
                (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => api_version = Some("meta.k8s.io/v1beta1"),
                (None, _, _) => break,
                _ => continue,
            }
            break;
        }
        let Some(api_version) = api_version else { return Ok(None) };
        let include = match include_object {
            None | Some("") | Some("Metadata") => Include::Metadata,
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
                )));
            }
        };
        Ok(Some(Self { api_version, include }))
    }
}

/// One Table of `items` (objects of `res`). `columns` is false for the events of a watch after
/// the first, as kubectl prints headers only when the columns change. The items are taken by
/// value: each row's object is made of its item's parts, not of a copy.
pub(crate) fn table(
    res: &ResourceKind,
    request: TableRequest,
    items: Vec<Value>,
    metadata: Value,
    columns: bool,
    now: Timestamp,
) -> Value {
    let (column_defs, printer) = printers::printer_for(res.group, res.kind);
    let column_defs = if columns {
        column_defs
            .iter()
            .map(|c| json!({"name": c.0, "type": c.1, "format": c.2, "description": c.4, "priority": c.3}))
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    };
    let rows = items
        .into_iter()
        .map(|mut item| {
            let printed = printer(&item, now);
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(printed.cells));
            if let Some(conditions) = printed.conditions {
                row.insert("conditions".into(), conditions);
            }
            match request.include {
                Include::None => {}
                Include::Metadata => {
                    let mut object = Map::new();
                    object.insert("kind".into(), Value::from("PartialObjectMetadata"));
                    object.insert("apiVersion".into(), Value::from(request.api_version));
                    object.insert("metadata".into(), item.get_mut("metadata").map(Value::take).unwrap_or_default());
                    row.insert("object".into(), Value::Object(object));
                }
                Include::Object => {
                    row.insert("object".into(), item);
                }
            }
            Value::Object(row)
        })
        .collect::<Vec<_>>();
    let mut table = Map::new();
    table.insert("kind".into(), Value::from("Table"));
    table.insert("apiVersion".into(), Value::from(request.api_version));
    table.insert("metadata".into(), metadata);
    table.insert("columnDefinitions".into(), Value::Array(column_defs));
    table.insert("rows".into(), Value::Array(rows));
    Value::Object(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL_GET: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, accept.parse().unwrap());
        h
    }

    #[test]
    fn kubectl_get_asks_for_a_v1_table_and_yaml_output_for_plain_json() {
        let t = TableRequest::from_request(&headers(KUBECTL_GET), None).unwrap().unwrap();
        assert_eq!(t, TableRequest { api_version: "meta.k8s.io/v1", include: Include::Metadata });
        assert_eq!(TableRequest::from_request(&headers("application/json"), None).unwrap(), None);
        let typed = headers("application/vnd.kubernetes.protobuf,application/json");
        assert_eq!(TableRequest::from_request(&typed, None).unwrap(), None);
        let old = headers("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json");
        assert_eq!(
            TableRequest::from_request(&old, Some("Object")).unwrap().unwrap().api_version,
            "meta.k8s.io/v1beta1"
        );
        assert_eq!(TableRequest::from_request(&headers(KUBECTL_GET), Some("All")).unwrap_err().code, 400);
    }

    #[test]
    fn table_rows_carry_partial_object_metadata() {
        let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
        let request = TableRequest { api_version: "meta.k8s.io/v1", include: Include::Metadata };
        let pod = json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "app"}]}, "status": {"phase": "Pending"}});
        let now = "2026-01-01T00:00:05Z".parse().unwrap();
        let t = table(pods, request, vec![pod], json!({"resourceVersion": "7"}), true, now);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let row = &t["rows"][0];
        assert_eq!(
            row["cells"].as_array().unwrap()[..5],
            [json!("web"), json!("0/1"), json!("Pending"), json!("0"), json!("5s")]
        );
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["metadata"]["labels"]["app"], "web");
        let later = table(pods, request, Vec::new(), json!({}), false, now);
        assert_eq!(later["columnDefinitions"], json!([]));
    }

    #[test]
    fn kinds_without_a_printer_get_name_and_age() {
        let widgets = ResourceKind {
            group: "example.com",
            version: "v1",
            kind: "Widget",
            plural: "widgets",
            singular: "widget",
            scope: skiff_api::Scope::Namespaced,
            short_names: &[],
            categories: &[],
            verbs: &[],
            subresources: &[],
        };
        let request = TableRequest { api_version: "meta.k8s.io/v1", include: Include::None };
        let widget = json!({"metadata": {"name": "w1", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        let t = table(&widgets, request, vec![widget], json!({}), true, "2026-01-01T00:03:00Z".parse().unwrap());
        assert_eq!(t["rows"][0]["cells"], json!(["w1", "3m"]));
        assert!(t["rows"][0].get("object").is_none());
    }
}
