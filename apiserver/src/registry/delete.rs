//! Delete: preconditions, finalizers, graceful pod deletion, terminating namespaces.

use serde_json::{Value, json};
use skiff_api::{ApiError, DeleteOptions, ResourceKind};

use super::object::{finalizers, is_deleting, meta_mut, now, resource_version, str_field, timestamp, uid};
use crate::storage::{Key, Outcome, Tx};

/// Pods that are not bound to a node, or have finished, go at once, as in Kubernetes'
/// `podStrategy.CheckGracefulDelete`.
fn grace_period(res: &ResourceKind, object: &Value, opts: &DeleteOptions) -> i64 {
    if res.kind != "Pod" || !res.group.is_empty() {
        return 0;
    }
    if str_field(object, "/spec/nodeName").is_none() {
        return 0;
    }
    if matches!(str_field(object, "/status/phase"), Some("Succeeded" | "Failed")) {
        return 0;
    }
    let grace =
        opts.grace_period_seconds.or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
    // A negative grace period means "as short as possible but graceful".
    if grace < 0 { 1 } else { grace }
}

fn mark(object: &mut Value, grace: i64) {
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
    let meta = meta_mut(object);
    meta.insert("deletionTimestamp".into(), json!(if grace == 0 { now() } else { timestamp(at) }));
    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
}

pub fn delete(tx: &mut Tx<'_>, key: &Key, opts: &DeleteOptions) -> Result<Outcome, ApiError> {
    let res = key.res;
    let mut object = tx.get(key)?.ok_or_else(|| ApiError::not_found(res, &key.name))?;
    if res.kind == "Namespace"
        && res.group.is_empty()
        && matches!(key.name.as_str(), "default" | "kube-system" | "kube-public")
    {
        return Err(ApiError::new(
            403,
            skiff_api::StatusReason::Forbidden,
            format!("namespaces \"{}\" is forbidden: this namespace may not be deleted", key.name),
        ));
    }
    if let Some(want) = &opts.precondition_uid
        && Some(want.as_str()) != uid(&object)
    {
        let why = format!(
            "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
            uid(&object).unwrap_or_default()
        );
        return Err(ApiError::conflict(res, &key.name, &why));
    }
    if let Some(want) = &opts.precondition_resource_version
        && Some(want.as_str()) != resource_version(&object)
    {
        let why = format!(
            "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
            resource_version(&object).unwrap_or_default()
        );
        return Err(ApiError::conflict(res, &key.name, &why));
    }

    let deleting = is_deleting(&object);
    let current_grace = object["metadata"]["deletionGracePeriodSeconds"].as_i64();
    let grace = grace_period(res, &object, opts);

    // Orphaning happens here, in the same transaction, rather than through Kubernetes'
    // `orphan` finalizer and the garbage collector: the dependents lose their owner reference
    // before the owner goes, so the collector never sees them as garbage.
    if !deleting && opts.propagation_policy.as_deref() == Some("Orphan") {
        orphan_dependents(tx, key, &object)?;
    }
    // Foreground: the owner stays (deletionTimestamp set) under the `foregroundDeletion`
    // finalizer until the garbage collector has deleted its blocking dependents and removed
    // the finalizer. An owner without dependents has nothing to wait for and goes at once, so
    // kinds the collector does not watch are never left hanging.
    if !deleting
        && opts.propagation_policy.as_deref() == Some("Foreground")
        && !finalizers(&object).iter().any(|f| f == FOREGROUND)
        && has_dependents(tx, key, &object)?
    {
        let mut fins = finalizers(&object);
        fins.push(FOREGROUND.to_string());
        meta_mut(&mut object).insert("finalizers".into(), json!(fins));
    }
    let fins = finalizers(&object);

    if grace > 0 {
        // Graceful: mark now, the kubelet deletes with grace 0 once the containers stopped. A
        // second delete may only shorten the period.
        if deleting && current_grace.is_some_and(|g| g <= grace) {
            return Ok(Outcome::of(object));
        }
        mark(&mut object, grace);
        return Ok(Outcome::of(tx.put(key, object)?));
    }

    let namespace_finalizers = res.kind == "Namespace"
        && res.group.is_empty()
        && object["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if !fins.is_empty() || namespace_finalizers {
        if deleting && current_grace == Some(0) {
            return Ok(Outcome::of(object));
        }
        if deleting {
            meta_mut(&mut object).insert("deletionGracePeriodSeconds".into(), json!(0));
        } else {
            mark(&mut object, 0);
        }
        if namespace_finalizers {
            if !object["status"].is_object() {
                object["status"] = json!({});
            }
            object["status"]["phase"] = json!("Terminating");
        }
        return Ok(Outcome::of(tx.put(key, object)?));
    }
    Ok(Outcome::of(tx.delete(key, object)?))
}

/// The finalizer of foreground cascading deletion.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Whether any object names `owner` in its owner references: in its namespace, or anywhere for
/// a cluster-scoped owner.
fn has_dependents(tx: &mut Tx<'_>, key: &Key, owner: &Value) -> Result<bool, ApiError> {
    let Some(owner_uid) = uid(owner) else { return Ok(false) };
    let namespace = key.res.namespaced().then_some(key.namespace.as_str());
    for res in skiff_api::RESOURCES.iter().filter(|r| r.namespaced()) {
        for dependent in tx.list(res, namespace)? {
            let refs = dependent["metadata"]["ownerReferences"].as_array();
            if refs.is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid)) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Removes the owner references to `owner` from every object that could be its dependent: in
/// its namespace, or anywhere for a cluster-scoped owner.
fn orphan_dependents(tx: &mut Tx<'_>, key: &Key, owner: &Value) -> Result<(), ApiError> {
    let Some(owner_uid) = uid(owner).map(String::from) else { return Ok(()) };
    let namespace = key.res.namespaced().then_some(key.namespace.as_str());
    for res in skiff_api::RESOURCES.iter().filter(|r| r.namespaced()) {
        for mut dependent in tx.list(res, namespace)? {
            let Some(refs) = dependent["metadata"]["ownerReferences"].as_array() else { continue };
            if !refs.iter().any(|r| r["uid"] == owner_uid.as_str()) {
                continue;
            }
            let kept: Vec<Value> = refs.iter().filter(|r| r["uid"] != owner_uid.as_str()).cloned().collect();
            let meta = meta_mut(&mut dependent);
            if kept.is_empty() {
                meta.remove("ownerReferences");
            } else {
                meta.insert("ownerReferences".into(), Value::Array(kept));
            }
            let name = dependent["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let ns = dependent["metadata"]["namespace"].as_str().map(String::from);
            tx.put(&Key::new(res, ns.as_deref(), &name), dependent)?;
        }
    }
    Ok(())
}
