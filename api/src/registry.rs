//! The resources Skiff serves: what discovery advertises and what the router accepts.

/// Whether a resource lives in a namespace or at cluster scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// A subresource such as `pods/log`, with the kind it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subresource {
    pub name: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// One served resource type: group/version/kind/plural and how kubectl may address it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub scope: Scope,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subresources: &'static [Subresource],
}

const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const ALL: &[&str] = &["all"];

const fn sub(
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
) -> Subresource {
    Subresource { name, group, version, kind, verbs }
}

#[allow(clippy::too_many_arguments)]
const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    scope: Scope,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
) -> ResourceKind {
    ResourceKind {
        group,
        version,
        kind,
        plural,
        singular,
        scope,
        short_names,
        categories,
        verbs: ALL_VERBS,
        subresources,
    }
}

use Scope::{Cluster, Namespaced};

/// Every resource Skiff serves, in discovery order.
pub static RESOURCES: &[ResourceKind] = &[
    res(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        Cluster,
        &["ns"],
        &[],
        &[
            sub("status", "", "v1", "Namespace", &["get", "patch", "update"]),
            sub("finalize", "", "v1", "Namespace", &["update"]),
        ],
    ),
    res(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        Namespaced,
        &["po"],
        ALL,
        &[
            sub("status", "", "v1", "Pod", &["get", "patch", "update"]),
            sub("log", "", "v1", "Pod", &["get"]),
            sub("binding", "", "v1", "Binding", &["create"]),
            sub("exec", "", "v1", "PodExecOptions", &["create", "get"]),
            sub("attach", "", "v1", "PodAttachOptions", &["create", "get"]),
            sub("portforward", "", "v1", "PodPortForwardOptions", &["create", "get"]),
            sub("eviction", "policy", "v1", "Eviction", &["create"]),
        ],
    ),
    res(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        Cluster,
        &["no"],
        &[],
        &[sub("status", "", "v1", "Node", &["get", "patch", "update"])],
    ),
    res(
        "",
        "v1",
        "Service",
        "services",
        "service",
        Namespaced,
        &["svc"],
        ALL,
        &[sub("status", "", "v1", "Service", &["get", "patch", "update"])],
    ),
    res("", "v1", "Endpoints", "endpoints", "endpoints", Namespaced, &["ep"], &[], &[]),
    res("", "v1", "ConfigMap", "configmaps", "configmap", Namespaced, &["cm"], &[], &[]),
    res("", "v1", "Secret", "secrets", "secret", Namespaced, &[], &[], &[]),
    res(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        Namespaced,
        &["sa"],
        &[],
        &[sub("token", "authentication.k8s.io", "v1", "TokenRequest", &["create"])],
    ),
    res("", "v1", "Event", "events", "event", Namespaced, &["ev"], &[], &[]),
    res(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        Namespaced,
        &["pvc"],
        &[],
        &[sub("status", "", "v1", "PersistentVolumeClaim", &["get", "patch", "update"])],
    ),
    res(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        Cluster,
        &["pv"],
        &[],
        &[sub("status", "", "v1", "PersistentVolume", &["get", "patch", "update"])],
    ),
    res(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        Namespaced,
        &["deploy"],
        ALL,
        &[
            sub("status", "apps", "v1", "Deployment", &["get", "patch", "update"]),
            sub("scale", "autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        ],
    ),
    res(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        Namespaced,
        &["rs"],
        ALL,
        &[
            sub("status", "apps", "v1", "ReplicaSet", &["get", "patch", "update"]),
            sub("scale", "autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        ],
    ),
    res(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        Namespaced,
        &["ds"],
        ALL,
        &[sub("status", "apps", "v1", "DaemonSet", &["get", "patch", "update"])],
    ),
    res(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        Namespaced,
        &["sts"],
        ALL,
        &[
            sub("status", "apps", "v1", "StatefulSet", &["get", "patch", "update"]),
            sub("scale", "autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        ],
    ),
    res(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        Namespaced,
        &[],
        ALL,
        &[sub("status", "batch", "v1", "Job", &["get", "patch", "update"])],
    ),
    res(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        Namespaced,
        &["cj"],
        ALL,
        &[sub("status", "batch", "v1", "CronJob", &["get", "patch", "update"])],
    ),
    res("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", Namespaced, &[], &[], &[]),
    res("coordination.k8s.io", "v1", "Lease", "leases", "lease", Namespaced, &[], &[], &[]),
    res("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", Cluster, &["sc"], &[], &[]),
];

impl ResourceKind {
    /// `apiVersion` as written in objects: `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// `pods` or `deployments.apps`: how Kubernetes names a resource in error messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Finds a resource by group, version and plural, as the URL names it.
    pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceKind> {
        RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Finds a resource by `apiVersion` and `kind`, as an object names itself.
    pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceKind> {
        RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
    }

    /// The registry entry of a `k8s-openapi` type.
    pub fn of<K: k8s_openapi::Resource>() -> &'static ResourceKind {
        RESOURCES
            .iter()
            .find(|r| r.group == K::GROUP && r.version == K::VERSION && r.kind == K::KIND)
            .unwrap_or_else(|| panic!("{} {} is not in skiff_api::RESOURCES", K::API_VERSION, K::KIND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_grouped_api_versions_are_spelled_like_kubernetes() {
        assert_eq!(ResourceKind::by_plural("", "v1", "pods").unwrap().api_version(), "v1");
        let deploy = ResourceKind::by_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(deploy.plural, "deployments");
        assert_eq!(deploy.qualified_plural(), "deployments.apps");
    }

    #[test]
    fn typed_lookup_finds_every_kind_skiff_uses() {
        use k8s_openapi::api::core::v1::{Event, Node, Pod};
        assert_eq!(ResourceKind::of::<Pod>().plural, "pods");
        assert_eq!(ResourceKind::of::<Node>().scope, Scope::Cluster);
        assert_eq!(ResourceKind::of::<Event>().short_names, &["ev"]);
    }
}
