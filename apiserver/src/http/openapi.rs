//! OpenAPI v3, generated from [`skiff_api::RESOURCES`]: enough for kubectl to trust the server's
//! field validation and for `kubectl explain` to find each kind.
//!
//! Per group-version there is one document. For each kind it has the collection and item paths,
//! whose operations carry `x-kubernetes-group-version-kind`; the item PATCH lists the
//! `fieldValidation` parameter, which is what `kubectl apply` checks before sending
//! `fieldValidation=Strict`. The component schemas (`openapi_schemas.json`) are generated with the
//! protobuf tables from the upstream `generated.proto` files (see `protobuf/gen_schema.py`): every
//! field with its type and its upstream description, so `kubectl explain pod.spec.containers`
//! works; the kinds carry `x-kubernetes-group-version-kind`.
//!
//! The PATCH request body deliberately does not list `application/strategic-merge-patch+json`:
//! kubectl computes a client-side apply patch from the OpenAPI schema when it does, and these
//! schemas carry no merge keys (`x-kubernetes-patch-merge-key`), so it must fall back to its
//! compiled-in types (which it does when strategic merge is not advertised here).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use skiff_api::{ApiError, RESOURCES, ResourceKind};

use super::reply::{self, Body};
use super::route::not_found;

struct Document {
    hash: String,
    bytes: Vec<u8>,
}

/// `api/v1` or `apis/apps/v1` → its document, built once.
fn documents() -> &'static BTreeMap<String, Document> {
    static DOCS: OnceLock<BTreeMap<String, Document>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut docs = BTreeMap::new();
        for r in RESOURCES {
            let key = url_prefix(r).trim_start_matches('/').to_string();
            if docs.contains_key(&key) {
                continue;
            }
            let doc = group_version_document(r.group, r.version);
            let bytes = serde_json::to_vec(&doc).expect("serde_json::Value always serialises");
            let hash = hex::encode_upper(Sha256::digest(&bytes));
            docs.insert(key, Document { hash, bytes });
        }
        docs
    })
}

fn url_prefix(r: &ResourceKind) -> String {
    if r.group.is_empty() { format!("/api/{}", r.version) } else { format!("/apis/{}/{}", r.group, r.version) }
}

/// The Go package path segment of a group's types: `core`, `apps`, `discovery` for `discovery.k8s.io`.
fn package(group: &str) -> &str {
    if group.is_empty() { "core" } else { group.split('.').next().unwrap_or(group) }
}

pub(crate) fn schema_name(r: &ResourceKind) -> String {
    format!("io.k8s.api.{}.{}.{}", package(r.group), r.version, r.kind)
}

/// `GET /openapi/v3`
pub(crate) fn index() -> Response<Body> {
    let paths = documents()
        .iter()
        .map(|(key, doc)| (key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", doc.hash)})))
        .collect::<serde_json::Map<_, _>>();
    reply::json(StatusCode::OK, &json!({"paths": paths}))
}

/// `GET /openapi/v3/{api/v1 | apis/g/v}`
pub(crate) fn document(group_version: &str) -> Result<Response<Body>, ApiError> {
    let doc = documents().get(group_version).ok_or_else(not_found)?;
    Ok(reply::with_type(StatusCode::OK, reply::JSON, reply::full(doc.bytes.clone())))
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn param(name: &str, location: &str, description: &str) -> Value {
    let required = location == "path";
    json!({"name": name, "in": location, "description": description, "required": required,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        param("dryRun", "query", "When present, indicates that modifications should not be persisted."),
        param(
            "fieldManager",
            "query",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        param(
            "fieldValidation",
            "query",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
    ]
}

fn ok_response(schema: Value) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}})
}

fn operation(r: &ResourceKind, action: &str, id: &str, params: Vec<Value>, schema: Value) -> Value {
    let tag = format!("{}_{}", package(r.group), r.version);
    json!({
        "tags": [tag],
        "operationId": id,
        "parameters": params,
        "responses": ok_response(schema),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    })
}

fn paths_of(r: &ResourceKind, paths: &mut serde_json::Map<String, Value>) {
    let scoped = if r.namespaced() { "Namespaced" } else { "" };
    let id = |verb: &str| format!("{verb}{}{}{scoped}{}", capitalize(package(r.group)), capitalize(r.version), r.kind);
    let object = reference(&schema_name(r));
    let collection = if r.namespaced() {
        format!("{}/namespaces/{{namespace}}/{}", url_prefix(r), r.plural)
    } else {
        format!("{}/{}", url_prefix(r), r.plural)
    };
    let mut path_params = vec![];
    if r.namespaced() {
        path_params.push(param("namespace", "path", "object name and auth scope, such as for teams and projects"));
    }

    let mut create = operation(r, "post", &id("create"), write_params(), object.clone());
    create["requestBody"] = json!({"content": {"*/*": {"schema": object}}, "required": true});
    let list = operation(r, "list", &id("list"), vec![], json!({"type": "object"}));
    paths.insert(collection.clone(), json!({"get": list, "post": create, "parameters": path_params}));

    let mut item_params = path_params.clone();
    item_params.push(param("name", "path", &format!("name of the {}", r.kind)));
    let mut patch_params = write_params();
    patch_params
        .push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.",
                            "schema": {"type": "boolean", "uniqueItems": true}}));
    let mut patch = operation(r, "patch", &id("patch"), patch_params, object.clone());
    let patch_schema = reference("io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
    patch["requestBody"] = json!({
        "content": {
            "application/apply-patch+yaml": {"schema": patch_schema},
            "application/json-patch+json": {"schema": patch_schema},
            "application/merge-patch+json": {"schema": patch_schema},
        },
        "required": true,
    });
    let mut replace = operation(r, "put", &id("replace"), write_params(), object.clone());
    replace["requestBody"] = json!({"content": {"*/*": {"schema": object}}, "required": true});
    let read = operation(r, "get", &id("read"), vec![], object.clone());
    let delete =
        operation(r, "delete", &id("delete"), vec![], reference("io.k8s.apimachinery.pkg.apis.meta.v1.Status"));
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({"get": read, "put": replace, "patch": patch, "delete": delete, "parameters": item_params}),
    );
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// The generated component schemas, by OpenAPI name (`io.k8s.api.core.v1.Pod`).
fn generated_schemas() -> &'static serde_json::Map<String, Value> {
    static SCHEMAS: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        serde_json::from_str(include_str!("openapi_schemas.json")).expect("openapi_schemas.json is generated JSON")
    })
}

/// Adds `name` and every schema it refers to, transitively.
fn add_with_references(name: &str, out: &mut serde_json::Map<String, Value>) {
    if out.contains_key(name) {
        return;
    }
    let Some(schema) = generated_schemas().get(name) else { return };
    out.insert(name.to_string(), schema.clone());
    let mut refs = Vec::new();
    collect_refs(schema, &mut refs);
    for r in refs {
        add_with_references(&r, out);
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.push(name.to_string());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn meta_schemas(schemas: &mut serde_json::Map<String, Value>) {
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".into(),
        json!({"description": "Status is a return value for calls that don't return other objects.", "type": "object",
               "x-kubernetes-preserve-unknown-fields": true,
               "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Status"}]}),
    );
}

fn group_version_document(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        paths_of(r, &mut paths);
        add_with_references(&schema_name(r), &mut schemas);
    }
    meta_schemas(&mut schemas);
    let (major, minor, _) = skiff_api::KUBERNETES_VERSION;
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(key: &str) -> Value {
        serde_json::from_slice(&documents()[key].bytes).unwrap()
    }

    #[test]
    fn index_points_at_one_hashed_document_per_group_version() {
        let docs = documents();
        assert!(docs.contains_key("api/v1") && docs.contains_key("apis/apps/v1") && docs.contains_key("apis/batch/v1"));
        assert_eq!(docs["api/v1"].hash.len(), 64);
        assert_ne!(docs["api/v1"].hash, docs["apis/apps/v1"].hash);
    }

    #[test]
    fn every_kind_has_a_patch_with_its_gvk_and_field_validation() {
        for r in RESOURCES {
            let doc = doc(url_prefix(r).trim_start_matches('/'));
            let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
            let patch = doc["paths"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(|p| p.get("patch"))
                .find(|op| op["x-kubernetes-group-version-kind"] == gvk)
                .unwrap_or_else(|| panic!("no PATCH for {}", r.kind));
            assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
            assert!(patch["requestBody"]["content"].get("application/apply-patch+yaml").is_some());
            let schema = &doc["components"]["schemas"][schema_name(r)];
            assert_eq!(schema["x-kubernetes-group-version-kind"][0], gvk, "{}", r.kind);
        }
    }

    #[test]
    fn schemas_carry_fields_and_descriptions_and_every_reference_resolves() {
        let doc = doc("api/v1");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let container = &schemas["io.k8s.api.core.v1.Container"];
        assert_eq!(container["properties"]["image"]["type"], "string");
        assert!(container["properties"]["image"]["description"].as_str().unwrap().contains("Container image name"));
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for r in refs {
            assert!(schemas.contains_key(&r), "dangling $ref {r}");
        }
        let apps = self::doc("apis/apps/v1");
        assert!(apps["components"]["schemas"].get("io.k8s.api.core.v1.PodSpec").is_some());
        assert!(apps["components"]["schemas"].get("io.k8s.api.core.v1.Node").is_none());
    }

    #[test]
    fn schema_names_follow_the_kubernetes_go_packages() {
        let eps = ResourceKind::by_plural("discovery.k8s.io", "v1", "endpointslices").unwrap();
        assert_eq!(schema_name(eps), "io.k8s.api.discovery.v1.EndpointSlice");
        let pod = ResourceKind::by_plural("", "v1", "pods").unwrap();
        assert_eq!(schema_name(pod), "io.k8s.api.core.v1.Pod");
    }
}
