//! Strategic merge patch, as `kubectl apply` (client-side) and `kubectl rollout restart` send it.
//!
//! Maps merge recursively and `null` deletes a field. Lists follow the `patchStrategy` and
//! `patchMergeKey` the Kubernetes types declare ([`list_strategy`]): keyed lists merge element
//! by element, `metadata.finalizers` merges as a set, and every other list is replaced whole.
//! Directives: `$patch: replace|delete|merge` (on maps and as list elements), `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.

use serde_json::{Map, Value};
use skiff_api::ResourceKind;

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Elements are maps matched by this key.
    MergeByKey(&'static str),
    /// Elements are scalars merged as a set.
    MergeSet,
    /// The patch's list replaces the original (atomic).
    Replace,
}

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// The strategy of the list at `path` (field names from the root, list indices left out).
pub fn list_strategy(res: &ResourceKind, path: &[String]) -> ListStrategy {
    use ListStrategy::*;
    let field = path.last().map(String::as_str).unwrap_or_default();
    let parent = if path.len() >= 2 { path[path.len() - 2].as_str() } else { "" };
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => MergeByKey("name"),
        "env" if CONTAINER_LISTS.contains(&parent) => MergeByKey("name"),
        "volumeMounts" => MergeByKey("mountPath"),
        "volumeDevices" => MergeByKey("devicePath"),
        "ports" if CONTAINER_LISTS.contains(&parent) => MergeByKey("containerPort"),
        "ports" if res.kind == "Service" && res.group.is_empty() && path.len() == 2 && parent == "spec" => {
            MergeByKey("port")
        }
        "hostAliases" => MergeByKey("ip"),
        "topologySpreadConstraints" => MergeByKey("topologyKey"),
        "conditions" => MergeByKey("type"),
        "addresses" if parent == "status" && res.kind == "Node" => MergeByKey("type"),
        "podIPs" | "hostIPs" if parent == "status" => MergeByKey("ip"),
        "ownerReferences" if parent == "metadata" => MergeByKey("uid"),
        "finalizers" if parent == "metadata" => MergeSet,
        _ => Replace,
    }
}

/// `original` with `patch` applied.
pub fn merge(res: &ResourceKind, original: &Value, patch: &Value) -> Result<Value, String> {
    let (Some(orig), Some(p)) = (original.as_object(), patch.as_object()) else {
        return Err("a strategic merge patch must be a JSON object".into());
    };
    let mut out = orig.clone();
    match merge_map(res, &mut out, p, &mut Vec::new())? {
        Action::Keep => Ok(Value::Object(out)),
        Action::Delete => Ok(Value::Object(Map::new())),
    }
}

enum Action {
    Keep,
    Delete,
}

/// A patch value as it lands where nothing was: no nulls, no directives.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, v)| !v.is_null() && !k.starts_with('$')).map(|(k, v)| (k.clone(), clean(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

fn merge_map(
    res: &ResourceKind,
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Action, String> {
    match patch.get("$patch").map(|p| p.as_str().unwrap_or_default()) {
        Some("replace") => {
            let Value::Object(m) = clean(&Value::Object(patch.clone())) else { unreachable!("clean keeps maps maps") };
            *orig = m;
            return Ok(Action::Keep);
        }
        Some("delete") => return Ok(Action::Delete),
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?} in map: {patch:?}")),
    }
    if let Some(keys) = patch.get("$retainKeys") {
        let keys = keys.as_array().ok_or("$retainKeys must be a list of field names")?;
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v.as_array().ok_or_else(|| format!("{k} must be a list"))?;
            if let Some(list) = orig.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(format!("unknown patch directive {k}"));
        }
        match v {
            Value::Null => {
                orig.remove(k);
            }
            Value::Object(pm) => {
                let slot = orig.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                path.push(k.clone());
                let action = merge_map(res, slot.as_object_mut().expect("slot was made a map"), pm, path)?;
                path.pop();
                if let Action::Delete = action {
                    orig.remove(k);
                }
            }
            Value::Array(pl) => {
                path.push(k.clone());
                let strategy = list_strategy(res, path);
                let mut list = match orig.remove(k) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                match strategy {
                    ListStrategy::Replace => list = pl.iter().map(clean).collect(),
                    ListStrategy::MergeSet => {
                        for x in pl {
                            if !list.contains(x) {
                                list.push(x.clone());
                            }
                        }
                    }
                    ListStrategy::MergeByKey(key) => merge_keyed(res, &mut list, pl, key, path)?,
                }
                path.pop();
                orig.insert(k.clone(), Value::Array(list));
            }
            scalar => {
                orig.insert(k.clone(), scalar.clone());
            }
        }
    }
    for (k, order) in patch {
        let Some(field) = k.strip_prefix("$setElementOrder/") else { continue };
        let order = order.as_array().ok_or_else(|| format!("{k} must be a list"))?;
        path.push(field.to_string());
        let strategy = list_strategy(res, path);
        path.pop();
        if let Some(list) = orig.get_mut(field).and_then(Value::as_array_mut) {
            reorder(list, order, strategy);
        }
    }
    Ok(Action::Keep)
}

fn merge_keyed(
    res: &ResourceKind,
    list: &mut Vec<Value>,
    patch: &[Value],
    key: &str,
    path: &mut Vec<String>,
) -> Result<(), String> {
    if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *list = patch.iter().filter(|p| p.get("$patch").is_none()).map(clean).collect();
        return Ok(());
    }
    for p in patch {
        let Some(pm) = p.as_object() else {
            return Err(format!("a list merged by {key:?} holds a non-object element: {p}"));
        };
        let Some(id) = pm.get(key) else {
            return Err(format!("map: {p} does not contain declared merge key: {key}"));
        };
        let position = list.iter().position(|o| o.get(key) == Some(id));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = position {
                list.remove(i);
            }
            continue;
        }
        match position {
            Some(i) => {
                let Some(o) = list[i].as_object_mut() else { continue };
                if let Action::Delete = merge_map(res, o, pm, path)? {
                    list.remove(i);
                }
            }
            None => list.push(clean(p)),
        }
    }
    Ok(())
}

/// Puts the elements named in `order` first, in that order; the others follow as they were.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let same = |a: &Value, b: &Value| match strategy {
        ListStrategy::MergeByKey(key) => a.get(key).is_some() && a.get(key) == b.get(key),
        _ => a == b,
    };
    let mut rest = std::mem::take(list);
    for o in order {
        if let Some(i) = rest.iter().position(|x| same(x, o)) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(plural: &str) -> &'static ResourceKind {
        skiff_api::RESOURCES.iter().find(|r| r.plural == plural).unwrap()
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "demo", "namespace": "default", "labels": {"app": "demo"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "old\n", "keep": "me"},
                         "finalizers": ["a"]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "demo"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                     "template": {"metadata": {"labels": {"app": "demo"}},
                                  "spec": {"containers": [
                                      {"name": "app", "image": "nginx:1.25", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                       "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                                       "args": ["x", "y"]},
                                      {"name": "sidecar", "image": "busybox"}],
                                   "tolerations": [{"key": "k", "operator": "Exists"}]}}}
        })
    }

    /// Table of (what, patch, check).
    #[test]
    fn kubectl_client_side_apply_bodies() {
        let deploy = res("deployments");
        // §4.4: the body kubectl sent to change an image and add a label.
        let patch = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "new\n"}, "labels": {"tier": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"$setElementOrder/containers": [{"name": "app"}],
                     "containers": [{"image": "nginx:1.26", "name": "app"}]}}}});
        let out = merge(deploy, &deployment(), &patch).unwrap();
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(out["metadata"]["labels"], json!({"app": "demo", "tier": "web"}));
        assert_eq!(out["metadata"]["annotations"]["keep"], "me");
        assert_eq!(out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"], "new\n");
        let containers = out["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2, "the sidecar only the server knows stays");
        assert_eq!(containers[0]["image"], "nginx:1.26");
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80, "untouched fields of a keyed element stay");
        assert_eq!(containers[1]["name"], "sidecar");
    }

    #[test]
    fn kubectl_service_patch_deletes_target_port_inside_a_keyed_element() {
        let svc = res("services");
        let live = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}, {"port": 443, "targetPort": 8443, "protocol": "TCP"}]}});
        // §4.4: the second body kubectl sent.
        let patch = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x\n"}},
            "spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80, "targetPort": null}], "selector": {"tier": "web"}}});
        let out = merge(svc, &live, &patch).unwrap();
        assert_eq!(out["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP"}));
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["selector"], json!({"app": "web", "tier": "web"}));
    }

    #[test]
    fn directives_and_list_strategies() {
        let deploy = res("deployments");
        type Check = Box<dyn Fn(&Value)>;
        let cases: Vec<(&str, Value, Check)> = vec![
            (
                "a container is removed with $patch: delete",
                json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}),
                Box::new(|o| assert_eq!(o["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1)),
            ),
            (
                "env merges by name and null deletes a field of an element",
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": null}, {"name": "C", "value": "3"}]}]}}}}),
                Box::new(|o| {
                    assert_eq!(
                        o["spec"]["template"]["spec"]["containers"][0]["env"],
                        json!([{"name": "A", "value": "1"}, {"name": "B"}, {"name": "C", "value": "3"}])
                    )
                }),
            ),
            (
                "args are atomic",
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "args": ["z"]}]}}}}),
                Box::new(|o| assert_eq!(o["spec"]["template"]["spec"]["containers"][0]["args"], json!(["z"]))),
            ),
            (
                "tolerations are atomic",
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "other", "operator": "Exists"}]}}}}),
                Box::new(|o| {
                    assert_eq!(
                        o["spec"]["template"]["spec"]["tolerations"],
                        json!([{"key": "other", "operator": "Exists"}])
                    )
                }),
            ),
            (
                "metadata.finalizers merge as a set",
                json!({"metadata": {"finalizers": ["b", "a"]}}),
                Box::new(|o| assert_eq!(o["metadata"]["finalizers"], json!(["a", "b"]))),
            ),
            (
                "$deleteFromPrimitiveList removes finalizers",
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
                Box::new(|o| assert_eq!(o["metadata"]["finalizers"], json!([]))),
            ),
            (
                "$retainKeys clears the rolling update of a Recreate strategy",
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
                Box::new(|o| assert_eq!(o["spec"]["strategy"], json!({"type": "Recreate"}))),
            ),
            (
                "$patch: replace on a map replaces it",
                json!({"spec": {"selector": {"$patch": "replace", "matchLabels": {"x": "y"}}}}),
                Box::new(|o| assert_eq!(o["spec"]["selector"], json!({"matchLabels": {"x": "y"}}))),
            ),
            (
                "$patch: replace in a keyed list replaces the list",
                json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "i"}]}}}}),
                Box::new(|o| {
                    assert_eq!(o["spec"]["template"]["spec"]["containers"], json!([{"name": "only", "image": "i"}]))
                }),
            ),
            (
                "$setElementOrder reorders",
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}}}}),
                Box::new(|o| assert_eq!(o["spec"]["template"]["spec"]["containers"][0]["name"], "sidecar")),
            ),
            (
                "a new keyed element is added without its nulls",
                json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "i", "command": null}]}}}}),
                Box::new(|o| {
                    assert_eq!(o["spec"]["template"]["spec"]["containers"][2], json!({"name": "new", "image": "i"}))
                }),
            ),
            (
                "kubectl rollout restart's annotation lands on the template",
                json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}}}}}),
                Box::new(|o| {
                    assert_eq!(
                        o["spec"]["template"]["metadata"],
                        json!({"labels": {"app": "demo"}, "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}})
                    )
                }),
            ),
            (
                "ports of a container merge by containerPort",
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 443}]}]}}}}),
                Box::new(|o| {
                    assert_eq!(o["spec"]["template"]["spec"]["containers"][0]["ports"].as_array().unwrap().len(), 2)
                }),
            ),
        ];
        for (what, patch, check) in cases {
            let out = merge(deploy, &deployment(), &patch).unwrap_or_else(|e| panic!("{what}: {e}"));
            eprintln!("case: {what}");
            check(&out);
        }
    }

    #[test]
    fn a_keyed_element_without_its_key_is_an_error() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let err = merge(res("deployments"), &deployment(), &patch).unwrap_err();
        assert!(err.contains("does not contain declared merge key: name"), "{err}");
    }

    #[test]
    fn pod_conditions_merge_by_type() {
        let pod = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}});
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let out = merge(res("pods"), &pod, &patch).unwrap();
        assert_eq!(out["status"]["conditions"][0], json!({"type": "Ready", "status": "True"}));
        assert_eq!(out["status"]["conditions"][1]["type"], "PodScheduled");
    }
}
