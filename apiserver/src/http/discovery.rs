//! API discovery generated from [`skiff_api::RESOURCES`]: the aggregated `APIGroupDiscoveryList`
//! (v2 and v2beta1, chosen by the Accept header and answered with that exact Content-Type) and
//! the legacy `APIVersions` / `APIGroupList` / `APIGroup` / `APIResourceList` documents.

use hyper::header::{ACCEPT, HeaderMap};
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};
use skiff_api::{ApiError, RESOURCES, ResourceKind};

use super::reply::{self, Body};
use super::route::not_found;

/// Which discovery document the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    AggregatedV2,
    AggregatedV2Beta1,
    Legacy,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Self::AggregatedV2 => "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            Self::AggregatedV2Beta1 => "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
            Self::Legacy => reply::JSON,
        }
    }
}

/// The first media range of `Accept` that we can serve, in the client's order of preference.
fn negotiate(headers: &HeaderMap) -> Format {
    let accept = headers.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |key: &str| params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if media != "application/json" && media != "*/*" && media != "application/*" {
            continue;
        }
        match (param("as"), param("g"), param("v")) {
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2")) => return Format::AggregatedV2,
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2beta1")) => {
                return Format::AggregatedV2Beta1;
            }
            (None, _, _) => return Format::Legacy,
            _ => continue,
        }
    }
    Format::Legacy
}

/// Groups in the order RESOURCES lists them, each with its versions in order.
fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in served() {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    groups
}

/// The stored resources, then the `metrics.k8s.io` ones served beside them.
fn served() -> impl Iterator<Item = &'static ResourceKind> {
    RESOURCES.iter().chain(super::metrics::RESOURCES)
}

fn resources_of(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceKind> {
    served().filter(move |r| r.group == group && r.version == version)
}

fn scope(r: &ResourceKind) -> &'static str {
    if r.namespaced() { "Namespaced" } else { "Cluster" }
}

fn aggregated_resource(r: &ResourceKind) -> Value {
    let mut out = Map::new();
    out.insert("resource".into(), json!(r.plural));
    out.insert("responseKind".into(), json!({"group": r.group, "version": r.version, "kind": r.kind}));
    out.insert("scope".into(), json!(scope(r)));
    out.insert("singularResource".into(), json!(r.singular));
    out.insert("verbs".into(), json!(r.verbs));
    if !r.short_names.is_empty() {
        out.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        out.insert("categories".into(), json!(r.categories));
    }
    if !r.subresources.is_empty() {
        let subs = r
            .subresources
            .iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                    "verbs": s.verbs,
                })
            })
            .collect::<Vec<_>>();
        out.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(out)
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let versions = versions
        .iter()
        .map(|v| {
            json!({
                "version": v,
                "resources": resources_of(group, v).map(aggregated_resource).collect::<Vec<_>>(),
                "freshness": "Current",
            })
        })
        .collect::<Vec<_>>();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

fn aggregated(format: Format, core: bool) -> Response<Body> {
    let api_version = match format {
        Format::AggregatedV2Beta1 => "apidiscovery.k8s.io/v2beta1",
        _ => "apidiscovery.k8s.io/v2",
    };
    let items = groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| aggregated_group(g, &versions))
        .collect::<Vec<_>>();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items});
    reply::json_as(StatusCode::OK, format.content_type(), &body)
}

/// `GET /api`
pub(crate) fn api(headers: &HeaderMap, authority: Option<&str>) -> Response<Body> {
    match negotiate(headers) {
        Format::Legacy => {
            let address = authority.or_else(|| headers.get("host").and_then(|h| h.to_str().ok())).unwrap_or("");
            reply::json(
                StatusCode::OK,
                &json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
                }),
            )
        }
        format => aggregated(format, true),
    }
}

fn api_group(group: &str, versions: &[&str]) -> Value {
    let versions =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect::<Vec<_>>();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

/// `GET /apis`
pub(crate) fn apis(headers: &HeaderMap) -> Response<Body> {
    match negotiate(headers) {
        Format::Legacy => {
            let groups = groups()
                .into_iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, versions)| api_group(g, &versions))
                .collect::<Vec<_>>();
            reply::json(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        format => aggregated(format, false),
    }
}

/// `GET /apis/{group}`
pub(crate) fn group(group: &str) -> Result<Response<Body>, ApiError> {
    let (name, versions) = groups().into_iter().find(|(g, _)| *g == group && !g.is_empty()).ok_or_else(not_found)?;
    let mut doc = api_group(name, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(reply::json(StatusCode::OK, &doc))
}

/// The `APIResourceList` of one group-version: resources, then their subresources as
/// `pods/log` entries (with the group and version of the kind they answer with when it differs).
pub(crate) fn resource_list_value(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in resources_of(group, version) {
        let mut entry = Map::new();
        entry.insert("name".into(), json!(r.plural));
        entry.insert("singularName".into(), json!(r.singular));
        entry.insert("namespaced".into(), json!(r.namespaced()));
        entry.insert("kind".into(), json!(r.kind));
        entry.insert("verbs".into(), json!(r.verbs));
        if !r.short_names.is_empty() {
            entry.insert("shortNames".into(), json!(r.short_names));
        }
        if !r.categories.is_empty() {
            entry.insert("categories".into(), json!(r.categories));
        }
        resources.push(Value::Object(entry));
        for s in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced(),
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != r.group || s.version != r.version {
                entry["group"] = json!(s.group);
                entry["version"] = json!(s.version);
            }
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// `GET /api/v1`, `GET /apis/{group}/{version}`
pub(crate) fn resource_list(group: &str, version: &str) -> Result<Response<Body>, ApiError> {
    let doc = resource_list_value(group, version).ok_or_else(not_found)?;
    Ok(reply::json(StatusCode::OK, &doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const KUBECTL_133: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    const KUBECTL_127: &str =
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, value.parse().unwrap());
        headers
    }

    async fn body(response: Response<Body>) -> (String, Value) {
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (content_type, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn accept_header_picks_the_newest_aggregated_format_offered() {
        assert_eq!(negotiate(&accept(KUBECTL_133)), Format::AggregatedV2);
        assert_eq!(negotiate(&accept(KUBECTL_127)), Format::AggregatedV2Beta1);
        assert_eq!(negotiate(&accept("application/json")), Format::Legacy);
        assert_eq!(negotiate(&HeaderMap::new()), Format::Legacy);
    }

    #[tokio::test]
    async fn aggregated_core_discovery_lists_pods_with_their_subresources() {
        let (content_type, doc) = body(api(&accept(KUBECTL_133), None)).await;
        assert_eq!(content_type, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
        assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
        assert_eq!(doc["items"].as_array().unwrap().len(), 1);
        assert_eq!(doc["items"][0]["metadata"]["name"], "");
        let resources = doc["items"][0]["versions"][0]["resources"].as_array().unwrap();
        let pods = resources.iter().find(|r| r["resource"] == "pods").unwrap();
        assert_eq!(pods["responseKind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert!(pods["subresources"].as_array().unwrap().iter().any(|s| s["subresource"] == "log"));
    }

    #[tokio::test]
    async fn aggregated_group_discovery_has_one_item_per_group_and_v2beta1_for_old_clients() {
        let (content_type, doc) = body(apis(&accept(KUBECTL_127))).await;
        assert_eq!(content_type, "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList");
        assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let names: Vec<&str> =
            doc["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"apps") && names.contains(&"batch"));
        assert!(!names.contains(&""));
        let apps = doc["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == "apps").unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        let scale = deploy["subresources"].as_array().unwrap().iter().find(|s| s["subresource"] == "scale").unwrap();
        assert_eq!(scale["responseKind"], json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}));
    }

    #[tokio::test]
    async fn legacy_discovery_lists_versions_groups_and_resources() {
        let (content_type, doc) = body(api(&accept("application/json"), Some("127.0.0.1:6443"))).await;
        assert_eq!(content_type, "application/json");
        assert_eq!(doc["kind"], "APIVersions");
        assert_eq!(doc["versions"], json!(["v1"]));
        let (_, doc) = body(apis(&HeaderMap::new())).await;
        assert_eq!(doc["kind"], "APIGroupList");
        let apps = doc["groups"].as_array().unwrap().iter().find(|g| g["name"] == "apps").unwrap();
        assert_eq!(apps["preferredVersion"], json!({"groupVersion": "apps/v1", "version": "v1"}));

        let list = resource_list_value("", "v1").unwrap();
        assert_eq!(list["groupVersion"], "v1");
        let names: Vec<&str> =
            list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/log") && names.contains(&"namespaces/status"));
        let apps = resource_list_value("apps", "v1").unwrap();
        let scale = apps["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!((scale["group"].as_str(), scale["kind"].as_str()), (Some("autoscaling"), Some("Scale")));
        assert!(resource_list_value("apps", "v2").is_none());
    }
}
