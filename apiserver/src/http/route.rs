//! The router: what a request path names. Pure, so every path shape is unit-tested.
//!
//! ```text
//! /api                                   APIVersions / aggregated discovery of the core group
//! /api/v1                                APIResourceList
//! /apis                                  APIGroupList / aggregated discovery
//! /apis/{group}[/{version}]              APIGroup / APIResourceList
//! /openapi/v3[/{api/v1|apis/g/v}]        OpenAPI v3 index and documents
//! {prefix}[/watch]/{plural}[/{name}[/{subresource}]]                      cluster scope, or all namespaces
//! {prefix}[/watch]/namespaces/{ns}/{plural}[/{name}[/{subresource}]]     in one namespace
//! ```
//! where `{prefix}` is `/api/v1` or `/apis/{group}/{version}`.

use skiff_api::{ApiError, ResourceKind, StatusReason};

use super::metrics;

/// One Kubernetes REST resource path, resolved against [`skiff_api::RESOURCES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub res: &'static ResourceKind,
    /// The namespace of the URL, `None` for cluster scope or across all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path prefix: a watch without `watch=true`.
    pub watch_prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Api,
    Apis,
    Group(String),
    ResourceList {
        group: String,
        version: String,
    },
    OpenApiV3Index,
    /// `api/v1` or `apis/apps/v1`
    OpenApiV3 {
        group_version: String,
    },
    Resource(Target),
    /// `metrics.k8s.io/v1beta1` objects, which are not stored (see `metrics.rs`).
    Metrics(super::metrics::Target),
}

/// The 404 Kubernetes answers for a path it does not serve.
pub(crate) fn not_found() -> ApiError {
    ApiError::new(404, StatusReason::NotFound, "the server could not find the requested resource")
}

fn served_version(group: &str, version: &str) -> bool {
    skiff_api::RESOURCES.iter().any(|r| r.group == group && r.version == version)
}

pub(crate) fn parse(path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["api"] => Ok(Route::Api),
        ["apis", metrics::GROUP] => Ok(Route::Group(metrics::GROUP.to_string())),
        ["apis", metrics::GROUP, metrics::VERSION] => {
            Ok(Route::ResourceList { group: metrics::GROUP.to_string(), version: metrics::VERSION.to_string() })
        }
        ["apis", metrics::GROUP, metrics::VERSION, rest @ ..] => metrics::parse(rest).map(Route::Metrics),
        ["apis"] => Ok(Route::Apis),
        ["openapi", "v3"] => Ok(Route::OpenApiV3Index),
        ["openapi", "v3", rest @ ..] if !rest.is_empty() => Ok(Route::OpenApiV3 { group_version: rest.join("/") }),
        ["api", version] if served_version("", version) => {
            Ok(Route::ResourceList { group: String::new(), version: version.to_string() })
        }
        ["apis", group] if skiff_api::RESOURCES.iter().any(|r| r.group == *group) => {
            Ok(Route::Group(group.to_string()))
        }
        ["apis", group, version] if served_version(group, version) => {
            Ok(Route::ResourceList { group: group.to_string(), version: version.to_string() })
        }
        ["api", version, rest @ ..] if served_version("", version) => resource("", version, rest),
        ["apis", group, version, rest @ ..] if !group.is_empty() && served_version(group, version) => {
            resource(group, version, rest)
        }
        _ => Err(not_found()),
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Result<Route, ApiError> {
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let lookup = |plural: &str| ResourceKind::by_plural(group, version, plural).ok_or_else(not_found);
    let namespaces = ResourceKind::by_plural("", "v1", "namespaces");
    let target = |res, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        res,
        namespace: namespace.map(String::from),
        name: name.map(String::from),
        subresource: sub.map(String::from),
        watch_prefix,
    };
    let t = match rest {
        // `namespaces/{ns}/status` is the namespace's own subresource, not a resource type.
        ["namespaces", ns, sub] if group.is_empty() && namespaces.and_then(|n| n.subresource(sub)).is_some() => {
            target(lookup("namespaces")?, None, Some(ns), Some(sub))
        }
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => {
            let res = lookup(plural)?;
            if !res.namespaced() {
                return Err(not_found());
            }
            target(res, Some(ns), tail.first().copied(), tail.get(1).copied())
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let res = lookup(plural)?;
            // A namespaced item needs its namespace; only the collection may span them all.
            if res.namespaced() && !tail.is_empty() {
                return Err(not_found());
            }
            target(res, None, tail.first().copied(), tail.get(1).copied())
        }
        _ => return Err(not_found()),
    };
    if let Some(sub) = &t.subresource
        && t.res.subresource(sub).is_none()
    {
        return Err(not_found());
    }
    Ok(Route::Resource(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match parse(path).unwrap() {
            Route::Resource(t) => t,
            other => panic!("{path} routed to {other:?}"),
        }
    }

    #[test]
    fn namespaced_collection_item_and_subresource_are_told_apart() {
        let list = target("/api/v1/namespaces/default/pods");
        assert_eq!((list.res.plural, list.namespace.as_deref(), list.name), ("pods", Some("default"), None));
        let item = target("/api/v1/namespaces/default/pods/web");
        assert_eq!(item.name.as_deref(), Some("web"));
        let log = target("/api/v1/namespaces/default/pods/web/log");
        assert_eq!(log.subresource.as_deref(), Some("log"));
        let scale = target("/apis/apps/v1/namespaces/prod/deployments/api/scale");
        assert_eq!((scale.res.kind, scale.subresource.as_deref()), ("Deployment", Some("scale")));
    }

    #[test]
    fn cluster_scoped_paths_and_lists_across_namespaces() {
        let all_pods = target("/api/v1/pods");
        assert_eq!((all_pods.res.plural, all_pods.namespace), ("pods", None));
        let node = target("/api/v1/nodes/n1");
        assert_eq!((node.res.kind, node.name.as_deref()), ("Node", Some("n1")));
        let ns = target("/api/v1/namespaces/kube-system");
        assert_eq!((ns.res.kind, ns.name.as_deref(), ns.namespace), ("Namespace", Some("kube-system"), None));
        let status = target("/api/v1/namespaces/kube-system/status");
        assert_eq!((status.name.as_deref(), status.subresource.as_deref()), (Some("kube-system"), Some("status")));
        let sc = target("/apis/storage.k8s.io/v1/storageclasses/local-path");
        assert_eq!(sc.res.kind, "StorageClass");
    }

    #[test]
    fn the_watch_prefix_marks_a_watch() {
        let w = target("/api/v1/watch/namespaces/default/pods");
        assert!(w.watch_prefix);
        assert_eq!(w.res.plural, "pods");
        assert!(!target("/api/v1/namespaces/default/pods").watch_prefix);
    }

    #[test]
    fn discovery_and_openapi_paths() {
        assert_eq!(parse("/api").unwrap(), Route::Api);
        assert_eq!(parse("/apis/").unwrap(), Route::Apis);
        assert_eq!(parse("/api/v1").unwrap(), Route::ResourceList { group: "".into(), version: "v1".into() });
        assert_eq!(parse("/apis/apps").unwrap(), Route::Group("apps".into()));
        assert_eq!(
            parse("/apis/batch/v1").unwrap(),
            Route::ResourceList { group: "batch".into(), version: "v1".into() }
        );
        assert_eq!(parse("/openapi/v3").unwrap(), Route::OpenApiV3Index);
        assert_eq!(
            parse("/openapi/v3/apis/apps/v1").unwrap(),
            Route::OpenApiV3 { group_version: "apis/apps/v1".into() }
        );
    }

    #[test]
    fn unknown_paths_are_404_status() {
        for path in [
            "/",
            "/api/v2",
            "/apis/frobnicators.example.com/v1",
            "/api/v1/frobnicators",
            "/api/v1/namespaces/default/nodes",
            "/api/v1/pods/web",
            "/api/v1/namespaces/default/pods/web/nosuchsub",
            "/api/v1/namespaces/default/pods/web/log/extra",
            "/openapi/v2",
        ] {
            let err = parse(path).unwrap_err();
            assert_eq!(
                (err.code, err.message.as_str()),
                (404, "the server could not find the requested resource"),
                "{path}"
            );
        }
    }
}
