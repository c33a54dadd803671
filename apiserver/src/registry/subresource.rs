//! Subresources with their own rules: `pods/binding`, `pods/eviction`, `*/scale`.

use serde_json::{Value, json};
use skiff_api::{ApiError, Cause, DeleteOptions, PatchKind, StatusReason};

use super::object::{is_deleting, now, resource_version, selector_string, str_field};
use super::services::ServiceNetwork;
use super::write::{Tracking, update_in};
use super::{Registry, delete, success};
use crate::patch;
use crate::storage::{Key, Outcome, Tx};

/// A POST to a subresource. A dry run comes from the request, or for an eviction also from
/// its `deleteOptions.dryRun`.
pub async fn create(
    reg: &Registry,
    key: Key,
    subresource: &str,
    body: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let res = key.res;
    let dry_run = dry_run
        || (subresource == "eviction"
            && body["deleteOptions"]["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All")));
    if (res.group, res.kind, subresource) == ("", "ServiceAccount", "token") {
        return request_token(reg, &key, &body);
    }
    let op: crate::storage::Op = match (res.group, res.kind, subresource) {
        ("", "Pod", "binding") => Box::new(move |tx| bind(tx, &key, &body)),
        ("", "Pod", "eviction") => {
            let opts = delete_options(&body["deleteOptions"]);
            Box::new(move |tx| {
                delete::delete(tx, &key, &opts)?;
                Ok(Outcome::of(success(201)))
            })
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({} {subresource})",
                res.plural
            )));
        }
    };
    Ok(reg.store.run(op, dry_run).await?.object)
}

/// `serviceaccounts/token`: a TokenRequest answered with a signed token; nothing is stored.
fn request_token(reg: &Registry, key: &Key, body: &Value) -> Result<Value, ApiError> {
    let Some(issuer) = reg.token_issuer() else {
        return Err(ApiError::new(
            404,
            StatusReason::NotFound,
            "the server could not find the requested resource (serviceaccounts token)",
        ));
    };
    struct Store<'a>(&'a Registry);
    impl crate::token::Lookup for Store<'_> {
        fn get(
            &self,
            res: &'static skiff_api::ResourceKind,
            ns: Option<&str>,
            name: &str,
        ) -> Result<Option<Value>, ApiError> {
            Ok(self.0.store.get(&Key::new(res, ns, name))?)
        }
    }
    crate::token::request(issuer, &Store(reg), &key.namespace, &key.name, body, jiff::Timestamp::now())
}

/// `DeleteOptions` from its JSON form (an eviction carries one).
pub fn delete_options(body: &Value) -> DeleteOptions {
    DeleteOptions {
        grace_period_seconds: body["gracePeriodSeconds"].as_i64(),
        propagation_policy: body["propagationPolicy"].as_str().map(String::from),
        precondition_uid: body["preconditions"]["uid"].as_str().map(String::from),
        precondition_resource_version: body["preconditions"]["resourceVersion"].as_str().map(String::from),
    }
}

fn binding_conflict(name: &str, why: String) -> ApiError {
    let mut err = ApiError::new(
        409,
        StatusReason::Conflict,
        format!("Operation cannot be fulfilled on pods/binding \"{name}\": {why}"),
    );
    err.name = Some(name.to_string());
    err.group = Some(String::new());
    err.kind = Some("pods/binding".into());
    err
}

/// Binds a pod to a node (the scheduler's write): sets `spec.nodeName` and the PodScheduled
/// condition, once.
fn bind(tx: &mut Tx<'_>, key: &Key, binding: &Value) -> Result<Outcome, ApiError> {
    let res = key.res;
    let target = str_field(binding, "/target/name").map(String::from);
    let Some(target) = target else {
        let bindings = super::core("pods");
        let mut err = ApiError::invalid(bindings, &key.name, vec![Cause::required("target.name")]);
        err.kind = Some("Binding".into());
        err.message = format!("Binding \"{}\" is invalid: target.name: Required value", key.name);
        return Err(err);
    };
    let mut pod = tx.get(key)?.ok_or_else(|| ApiError::not_found(res, &key.name))?;
    if is_deleting(&pod) {
        return Err(binding_conflict(
            &key.name,
            format!("pod {} is being deleted, cannot be assigned to a host", key.name),
        ));
    }
    if let Some(node) = str_field(&pod, "/spec/nodeName") {
        return Err(binding_conflict(&key.name, format!("pod {} is already assigned to node \"{node}\"", key.name)));
    }
    pod["spec"]["nodeName"] = json!(target);
    if let Some(annotations) = binding["metadata"]["annotations"].as_object() {
        let meta = super::object::meta_mut(&mut pod);
        let pod_annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        for (k, v) in annotations {
            pod_annotations[k] = v.clone();
        }
    }
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let scheduled =
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()});
    let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
    conditions.push(scheduled);
    pod["status"]["conditions"] = Value::Array(conditions);
    tx.put(key, pod)?;
    Ok(Outcome::of(success(201)))
}

/// The `autoscaling/v1` Scale of a Deployment, ReplicaSet or StatefulSet.
pub fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut scale_meta = serde_json::Map::new();
    for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(field).filter(|v| !v.is_null()) {
            scale_meta.insert(field.into(), v.clone());
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&object["spec"]["selector"]),
        },
    })
}

fn check_scalable(key: &Key) -> Result<(), ApiError> {
    if key.res.subresource("scale").is_none() {
        return Err(ApiError::new(
            404,
            StatusReason::NotFound,
            format!("the server could not find the requested resource ({} scale)", key.res.plural),
        ));
    }
    Ok(())
}

pub fn patch_scale(
    tx: &mut Tx<'_>,
    key: &Key,
    old: Value,
    kind: &PatchKind,
    patch_body: &Value,
    manager: Option<&str>,
    net: &ServiceNetwork,
) -> Result<Outcome, ApiError> {
    check_scalable(key)?;
    let patched = patch::apply(key.res, kind, &scale_of(&old), patch_body)?;
    update_scale(tx, key, old, patched, manager, net)
}

pub fn update_scale(
    tx: &mut Tx<'_>,
    key: &Key,
    old: Value,
    scale: Value,
    manager: Option<&str>,
    net: &ServiceNetwork,
) -> Result<Outcome, ApiError> {
    check_scalable(key)?;
    if let Some(rv) = resource_version(&scale)
        && Some(rv) != resource_version(&old)
    {
        return Err(ApiError::conflict(
            key.res,
            &key.name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    if replicas < 0 {
        let mut err = ApiError::invalid(
            key.res,
            &key.name,
            vec![Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
        );
        err.kind = Some("Scale".into());
        err.message = format!(
            "Scale.autoscaling \"{}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0",
            key.name
        );
        return Err(err);
    }
    let mut object = old.clone();
    object["spec"]["replicas"] = json!(replicas);
    // The Scale's replicas are the parent's: the scale manager owns `.spec.replicas` there.
    let tracking = Tracking::Update { manager, subresource: Some("scale") };
    let outcome = update_in(tx, key, old, object, None, tracking, net)?;
    Ok(Outcome::of(scale_of(&outcome.object)))
}
