//! Create, update and patch.

use serde_json::{Value, json};
use skiff_api::{ApiError, PatchKind, ResourceKind, WriteOptions};

use super::object::{
    check_type, finalizers, has_status_subresource, is_deleting, meta_mut, name, name_suffix, namespace, normalize,
    now, resource_version, set_or_remove, tracks_generation, uid, uuid_v4,
};
use super::services::{self, ServiceNetwork};
use super::{Registry, core, forbidden, subresource};
use crate::storage::{Key, Outcome, Tx};
use crate::{defaulting, patch, validation};

fn invalid_if_any(res: &ResourceKind, name: &str, causes: Vec<skiff_api::Cause>) -> Result<(), ApiError> {
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(res, name, causes)) }
}

fn namespace_mismatch() -> ApiError {
    ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request")
}

/// How a write is recorded in `metadata.managedFields`.
#[derive(Debug, Clone, Copy)]
pub enum Tracking<'a> {
    /// A create or update by `manager` (none: an untracked in-process write) through
    /// `subresource`.
    Update { manager: Option<&'a str>, subresource: Option<&'a str> },
    /// A server-side apply, which recorded its fields itself.
    Applied,
}

impl<'a> Tracking<'a> {
    pub fn update(opts: &'a WriteOptions, subresource: Option<&'a str>) -> Self {
        Tracking::Update { manager: opts.field_manager.as_deref(), subresource }
    }

    fn record(self, res: &ResourceKind, old: Option<&Value>, new: &mut Value) {
        if let Tracking::Update { manager, subresource } = self {
            patch::apply::track_update(res, old, new, manager, subresource, &now());
        }
    }
}

/// Everything a create does that does not depend on the stored state: type and namespace
/// checks, generateName, system fields, defaults, field ownership and validation.
pub fn prepare_create(
    res: &ResourceKind,
    namespace: Option<&str>,
    mut body: Value,
    tracking: Tracking<'_>,
) -> Result<Value, ApiError> {
    check_type(res, &mut body)?;
    let meta = meta_mut(&mut body);
    if res.namespaced() {
        let url_ns = namespace.unwrap_or_default();
        match meta.get("namespace").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(ns) if ns != url_ns => return Err(namespace_mismatch()),
            _ => {
                meta.insert("namespace".into(), json!(url_ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    let has_name = meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    if !has_name && let Some(prefix) = meta.get("generateName").and_then(Value::as_str).filter(|g| !g.is_empty()) {
        // Kubernetes keeps generated names within 63 characters: at most 58 of the prefix.
        let prefix: String = prefix.chars().take(58).collect();
        let generated = format!("{prefix}{}", name_suffix());
        meta.insert("name".into(), json!(generated));
    }
    meta.insert("uid".into(), json!(uuid_v4()));
    meta.insert("creationTimestamp".into(), json!(now()));
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "selfLink"] {
        meta.remove(field);
    }
    if tracks_generation(res) {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    // The status of a kind with a status subresource is written by its controller, never by
    // the creator (Nodes register with theirs; a Namespace's phase is defaulted).
    if has_status_subresource(res) && !matches!(res.kind, "Node" | "Namespace") {
        set_or_remove(&mut body, "status", Value::Null);
    }
    let obj_name = name(&body).unwrap_or_default().to_string();
    invalid_if_any(res, &obj_name, validation::precheck(res, &body))?;
    let mut object = normalize(res, body)?;
    defaulting::apply(res, &mut object);
    // Defaults count as set by the creator, as in Kubernetes, where decoding defaults them.
    tracking.record(res, None, &mut object);
    invalid_if_any(res, &obj_name, validation::validate(res, &object))?;
    Ok(object)
}

/// The part of a create that reads the store: namespace, existence, allocations.
pub fn create_in(tx: &mut Tx<'_>, key: &Key, mut object: Value, net: &ServiceNetwork) -> Result<Outcome, ApiError> {
    let res = key.res;
    if res.namespaced() {
        let namespaces = core("namespaces");
        match tx.get(&Key::new(namespaces, None, &key.namespace))? {
            None => return Err(ApiError::not_found(namespaces, &key.namespace)),
            Some(ns) if is_deleting(&ns) => {
                return Err(forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    res.qualified_plural(),
                    key.name,
                    key.namespace
                )));
            }
            Some(_) => {}
        }
    }
    if tx.contains(key)? {
        return Err(ApiError::already_exists(res, &key.name));
    }
    if res.kind == "Service" && res.group.is_empty() {
        services::allocate(tx, key, &mut object, None, net)?;
    }
    if res.kind == "PersistentVolumeClaim" && res.group.is_empty() {
        default_storage_class(tx, &mut object)?;
    }
    if res.kind == "Pod" && res.group.is_empty() {
        admit_service_account(tx, key, &mut object)?;
    }
    Ok(Outcome { object: tx.put(key, object)?, created: true })
}

/// The ServiceAccount admission plugin: a pod's service account must exist, a pod without
/// imagePullSecrets gets its service account's, and unless the pod or the account turn
/// `automountServiceAccountToken` off, the API credentials are mounted into every container.
/// The namespace's `default` account is made by a controller just after the namespace, so a pod
/// that races it is let through (without the account's pull secrets) rather than refused; its
/// token volume then waits (FailedMount) until the account exists.
fn admit_service_account(tx: &mut Tx<'_>, key: &Key, pod: &mut Value) -> Result<(), ApiError> {
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string();
    let sa = tx.get(&Key::new(core("serviceaccounts"), Some(&key.namespace), &account))?;
    if sa.is_none() && account != "default" {
        return Err(forbidden(format!(
            "pods \"{}\" is forbidden: error looking up service account {}/{account}: serviceaccount \"{account}\" not found",
            key.name, key.namespace
        )));
    }
    let sa = sa.unwrap_or(Value::Null);
    let has_own = pod["spec"]["imagePullSecrets"].as_array().is_some_and(|s| !s.is_empty());
    if let Some(secrets) = sa["imagePullSecrets"].as_array().filter(|s| !s.is_empty() && !has_own) {
        pod["spec"]["imagePullSecrets"] = Value::Array(secrets.clone());
    }
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if automount {
        mount_service_account_token(pod);
    }
    Ok(())
}

/// Where the API credentials appear in a container (`DefaultAPITokenMountPath`).
pub const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The plugin's `mountServiceAccountToken`: a `kube-api-access-<5 random>` projected volume (a
/// token bound to the pod, the cluster CA from ConfigMap `kube-root-ca.crt`, the namespace),
/// mounted read-only at [`SERVICE_ACCOUNT_MOUNT_PATH`] in every init and app container that does
/// not mount something there already. Ephemeral containers are left alone, as upstream does.
fn mount_service_account_token(pod: &mut Value) {
    let spec = &mut pod["spec"];
    let taken: std::collections::HashSet<String> =
        spec["volumes"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str().map(String::from)).collect();
    let volume_name = loop {
        let name = format!("kube-api-access-{}", name_suffix());
        if !taken.contains(&name) {
            break name;
        }
    };
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        // `get_mut`, not `[]`: indexing a missing key mutably would add it as null.
        for container in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let mounts = &mut container["volumeMounts"];
            let present =
                mounts.as_array().is_some_and(|m| m.iter().any(|m| m["mountPath"] == SERVICE_ACCOUNT_MOUNT_PATH));
            if present {
                continue;
            }
            match mounts.as_array_mut() {
                Some(m) => m.push(mount.clone()),
                None => *mounts = json!([mount.clone()]),
            }
            needed = true;
        }
    }
    if !needed {
        return;
    }
    let volume = json!({
        "name": volume_name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": crate::token::WARN_ONLY_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [
                    {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                ]}},
            ],
        },
    });
    match spec["volumes"].as_array_mut() {
        Some(v) => v.push(volume),
        None => spec["volumes"] = json!([volume]),
    }
}

pub async fn create(
    reg: &Registry,
    res: &'static ResourceKind,
    namespace: Option<&str>,
    body: Value,
    opts: &WriteOptions,
) -> Result<Outcome, ApiError> {
    let object = prepare_create(res, namespace, body, Tracking::update(opts, None))?;
    let key = Key::new(res, namespace, name(&object).unwrap_or_default());
    let net = reg.service_network();
    reg.store.run(Box::new(move |tx| create_in(tx, &key, object, &net)), opts.dry_run).await
}

pub async fn update(
    reg: &Registry,
    key: Key,
    subresource: Option<&str>,
    body: Value,
    opts: &WriteOptions,
) -> Result<Outcome, ApiError> {
    let net = reg.service_network();
    let sub = subresource.map(String::from);
    let manager = opts.field_manager.clone();
    let planned = match sub.as_deref() {
        Some("scale") => None,
        sub => plan_ahead(reg, &key, |old| {
            let tracking = Tracking::Update { manager: manager.as_deref(), subresource: sub };
            plan_update(&key, old, body.clone(), sub, tracking, None)
        }),
    };
    reg.store.run(update_op(key, sub, body, manager, net, planned), opts.dry_run).await
}

/// The transaction of an update: `planned` (see [`plan_ahead`]) when the stored object is still
/// the one it was planned from, else the update worked out from what is stored.
pub(super) fn update_op(
    key: Key,
    sub: Option<String>,
    body: Value,
    manager: Option<String>,
    net: ServiceNetwork,
    planned: Option<Planned>,
) -> crate::storage::Op {
    Box::new(move |tx| {
        if let Some(planned) = planned
            && tx.holds(&key, &planned.from)?
        {
            return execute(tx, &key, planned.plan?);
        }
        let old = tx.get(&key)?.ok_or_else(|| ApiError::not_found(key.res, &key.name))?;
        match sub.as_deref() {
            Some("scale") => subresource::update_scale(tx, &key, old, body, manager.as_deref(), &net),
            sub => {
                let tracking = Tracking::Update { manager: manager.as_deref(), subresource: sub };
                update_in(tx, &key, old, body, sub, tracking, &net)
            }
        }
    })
}

pub async fn patch(
    reg: &Registry,
    key: Key,
    subresource: Option<&str>,
    kind: PatchKind,
    patch_body: Value,
    opts: &WriteOptions,
) -> Result<Outcome, ApiError> {
    let net = reg.service_network();
    let sub = subresource.map(String::from);
    let manager = opts.field_manager.clone();
    let planned = match sub.as_deref() {
        Some("scale") => None,
        sub => plan_ahead(reg, &key, |old| {
            let patched = patch::apply(key.res, &kind, &old, &patch_body)?;
            let tracking = match kind {
                PatchKind::Apply { .. } => Tracking::Applied,
                _ => Tracking::Update { manager: manager.as_deref(), subresource: sub },
            };
            plan_update(&key, old, patched, sub, tracking, None)
        }),
    };
    reg.store
        .run(
            Box::new(move |tx| {
                if let Some(planned) = planned
                    && tx.holds(&key, &planned.from)?
                {
                    return execute(tx, &key, planned.plan?);
                }
                let res = key.res;
                let old = tx.get(&key)?;
                let old = match (old, &kind, sub.as_deref()) {
                    (Some(old), _, _) => old,
                    (None, PatchKind::Apply { field_manager, .. }, None) => {
                        let managed = patch::apply::managed_fields_for_create(res, &patch_body, field_manager, &now());
                        let mut body = patch_body;
                        let meta = meta_mut(&mut body);
                        match meta.get("name").and_then(Value::as_str) {
                            Some(n) if n != key.name => return Err(name_mismatch(n, &key.name)),
                            _ => {
                                meta.insert("name".into(), json!(key.name));
                            }
                        }
                        meta.insert("managedFields".into(), managed);
                        let ns = res.namespaced().then_some(key.namespace.as_str());
                        let object = prepare_create(res, ns, body, Tracking::Applied)?;
                        return create_in(tx, &key, object, &net);
                    }
                    (None, _, _) => return Err(ApiError::not_found(res, &key.name)),
                };
                if sub.as_deref() == Some("scale") {
                    return subresource::patch_scale(tx, &key, old, &kind, &patch_body, manager.as_deref(), &net);
                }
                let patched = patch::apply(res, &kind, &old, &patch_body)?;
                let tracking = match kind {
                    PatchKind::Apply { .. } => Tracking::Applied,
                    _ => Tracking::Update { manager: manager.as_deref(), subresource: sub.as_deref() },
                };
                update_in(tx, &key, old, patched, sub.as_deref(), tracking, &net)
            }),
            opts.dry_run,
        )
        .await
}

fn name_mismatch(body: &str, url: &str) -> ApiError {
    ApiError::bad_request(format!("the name of the object ({body}) does not match the name on the URL ({url})"))
}

/// Writes `new` over `old` (the main resource, or one subresource of it) with Kubernetes'
/// update rules. Runs inside the transaction: `old` is the stored object.
pub fn update_in(
    tx: &mut Tx<'_>,
    key: &Key,
    old: Value,
    new: Value,
    sub: Option<&str>,
    tracking: Tracking<'_>,
    net: &ServiceNetwork,
) -> Result<Outcome, ApiError> {
    let plan = plan_update(key, old, new, sub, tracking, Some((&mut *tx, net)))?;
    execute(tx, key, plan)
}

/// What an update does to the store.
#[derive(Debug)]
pub enum Plan {
    /// Store the object.
    Write(Value),
    /// The object was deleting and nothing holds it any more: remove it (watchers see this last
    /// state).
    Remove(Value),
    /// The update changes nothing: the stored object stays, at its revision.
    Unchanged(Value),
}

fn execute(tx: &mut Tx<'_>, key: &Key, plan: Plan) -> Result<Outcome, ApiError> {
    Ok(Outcome::of(match plan {
        Plan::Write(object) => tx.put(key, object)?,
        Plan::Remove(object) => tx.delete(key, object)?,
        Plan::Unchanged(old) => old,
    }))
}

/// An update worked out before its transaction, from the stored object as read then.
pub(super) struct Planned {
    /// That stored object, byte for byte.
    pub(super) from: Vec<u8>,
    pub(super) plan: Result<Plan, ApiError>,
}

/// Works out an update (or patch) ahead of its transaction, on the caller's thread: the costly
/// part of a write (the patch, the typed round trip, defaults, managedFields, validation) then
/// runs beside other writes and their commits instead of inside the one writer thread. The
/// writer only checks that the stored object is still, byte for byte, the one the plan was made
/// from, and carries it out; when another write came between, it works the update out again
/// from what it finds, so the outcome is always that of an update made inside the transaction.
/// Services are left to the writer: their update allocates cluster IPs and node ports, which
/// reads the store.
pub(super) fn plan_ahead(
    reg: &Registry,
    key: &Key,
    plan: impl FnOnce(Value) -> Result<Plan, ApiError>,
) -> Option<Planned> {
    if key.res.kind == "Service" && key.res.group.is_empty() {
        return None;
    }
    let from = reg.store.get_raw(key).ok()??;
    let old = crate::storage::Store::decode(key, &from).ok()?;
    Some(Planned { plan: plan(old), from })
}

/// Kubernetes' update rules for `new` over the stored `old`. `tx` (with the service network) is
/// needed for Services only, whose update allocates from the store.
pub(super) fn plan_update(
    key: &Key,
    old: Value,
    mut new: Value,
    sub: Option<&str>,
    tracking: Tracking<'_>,
    tx: Option<(&mut Tx<'_>, &ServiceNetwork)>,
) -> Result<Plan, ApiError> {
    let res = key.res;
    check_type(res, &mut new)?;
    if let Some(n) = name(&new)
        && n != key.name
    {
        return Err(name_mismatch(n, &key.name));
    }
    if res.namespaced()
        && let Some(ns) = namespace(&new)
        && ns != key.namespace
    {
        return Err(namespace_mismatch());
    }
    if let Some(rv) = resource_version(&new)
        && Some(rv) != resource_version(&old)
    {
        return Err(ApiError::conflict(
            res,
            &key.name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(u) = uid(&new)
        && Some(u) != uid(&old)
    {
        return Err(ApiError::conflict(
            res,
            &key.name,
            &format!("Precondition failed: UID in precondition: {u}, UID in object meta: {}", uid(&old).unwrap_or("")),
        ));
    }
    let mut object = match sub {
        None => {
            if has_status_subresource(res) {
                set_or_remove(&mut new, "status", old["status"].clone());
            }
            new
        }
        Some("status") if has_status_subresource(res) => {
            let mut object = old.clone();
            set_or_remove(&mut object, "status", new["status"].clone());
            object
        }
        Some("finalize") if res.kind == "Namespace" => {
            let mut object = old.clone();
            let fins = new.pointer("/spec/finalizers").cloned().unwrap_or(Value::Null);
            if !object["spec"].is_object() {
                object["spec"] = json!({});
            }
            object["spec"]["finalizers"] = fins;
            object
        }
        Some(other) => {
            return Err(ApiError::new(
                404,
                skiff_api::StatusReason::NotFound,
                format!("the server could not find the requested resource ({} {other})", res.plural),
            ));
        }
    };
    // System fields belong to the server.
    let old_meta = &old["metadata"];
    let meta = meta_mut(&mut object);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "name",
        "namespace",
    ] {
        match old_meta.get(field) {
            Some(v) if !v.is_null() => meta.insert(field.to_string(), v.clone()),
            _ => meta.remove(field),
        };
    }
    meta.insert("resourceVersion".into(), old_meta["resourceVersion"].clone());
    // An update that leaves managedFields out (or empty) keeps them, as in Kubernetes.
    if meta.get("managedFields").is_none_or(|f| f.is_null() || f.as_array().is_some_and(Vec::is_empty))
        && let Some(fields) = old_meta.get("managedFields").filter(|f| !f.is_null())
    {
        meta.insert("managedFields".into(), fields.clone());
    }
    meta.remove("selfLink");
    let mut object = normalize(res, object)?;
    defaulting::apply(res, &mut object);
    if res.kind == "Service" && res.group.is_empty() {
        let (tx, net) = tx.ok_or_else(|| ApiError::internal("a Service update was planned outside its transaction"))?;
        services::allocate(tx, key, &mut object, Some(&old), net)?;
    }
    if tracks_generation(res) && object.get("spec") != old.get("spec") {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        meta_mut(&mut object).insert("generation".into(), json!(generation));
    }
    tracking.record(res, Some(&old), &mut object);
    let mut causes = validation::validate(res, &object);
    causes.extend(validation::validate_update(res, &object, &old));
    invalid_if_any(res, &key.name, causes)?;
    if is_deleting(&object) && ready_to_remove(res, &object) {
        return Ok(Plan::Remove(object));
    }
    if object == old {
        return Ok(Plan::Unchanged(old));
    }
    Ok(Plan::Write(object))
}

/// A deleting object goes once nothing holds it: no finalizers, no namespace finalizers, and
/// (for a pod) no grace period left to wait out.
pub fn ready_to_remove(res: &ResourceKind, object: &Value) -> bool {
    if !finalizers(object).is_empty() {
        return false;
    }
    if res.kind == "Namespace" && object["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
        return false;
    }
    object["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
}

/// The DefaultStorageClass admission plugin: a claim that names no class gets the class
/// annotated as the default (the newest, if several are).
fn default_storage_class(tx: &Tx<'_>, claim: &mut Value) -> Result<(), ApiError> {
    if claim["spec"].get("storageClassName").is_some_and(|c| !c.is_null()) {
        return Ok(());
    }
    let Some(classes) = ResourceKind::by_plural("storage.k8s.io", "v1", "storageclasses") else { return Ok(()) };
    let default = tx
        .list(classes, None)?
        .into_iter()
        .filter(|c| {
            let annotations = &c["metadata"]["annotations"];
            annotations["storageclass.kubernetes.io/is-default-class"] == "true"
                || annotations["storageclass.beta.kubernetes.io/is-default-class"] == "true"
        })
        .max_by(|a, b| {
            let created = |c: &Value| c["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string();
            created(a).cmp(&created(b))
        });
    if let Some(class) = default
        && let Some(name) = class["metadata"]["name"].as_str()
    {
        claim["spec"]["storageClassName"] = json!(name);
    }
    Ok(())
}

#[cfg(test)]
mod service_account_admission_tests {
    use super::*;

    #[test]
    fn init_and_app_containers_get_the_api_credentials_unless_they_mount_something_there() {
        let mut pod = json!({"spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "own", "volumeMounts": [{"name": "data", "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}]},
            ],
        }});
        mount_service_account_token(&mut pod);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().unwrap();
        assert_eq!(name.strip_prefix("kube-api-access-").map(str::len), Some(5), "{name}");
        assert_eq!(volumes[1]["projected"]["defaultMode"], 420);
        assert_eq!(volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(volumes[1]["projected"]["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
        let mount = json!({"name": name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH});
        assert_eq!(pod["spec"]["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(pod["spec"]["containers"][1]["volumeMounts"].as_array().unwrap().len(), 1, "its own mount stays");
    }

    #[test]
    fn no_volume_is_added_when_every_container_mounts_the_path_itself() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "own", "volumeMounts": [{"name": "x", "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}]},
        ]}});
        let before = pod.clone();
        mount_service_account_token(&mut pod);
        assert_eq!(pod, before);
    }
}
