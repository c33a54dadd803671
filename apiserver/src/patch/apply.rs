//! Server-side apply with field ownership, as far as appliers go.
//!
//! Each applier (field manager) owns the fields of its last applied configuration, recorded
//! in `metadata.managedFields` as an `Apply` entry in Kubernetes' `FieldsV1` form
//! (`{"f:spec":{"f:replicas":{}}}`, keyed list elements as `k:{"name":"app"}`, set members as
//! `v:"x"`, an element itself as `.`). Applying:
//! - merges the configuration over the live object (keyed lists by key, atomic lists whole);
//! - refuses (409) to change a field another applier owns with a different value, unless
//!   `force`, which takes the field over;
//! - removes fields this applier set before and no longer sets, if no other applier owns them.
//!
//! Plain updates (PUT, JSON/merge/strategic patches) are not tracked as managers, so they
//! never conflict with an applier and an applier may remove what it alone applied even if an
//! update changed it since.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use skiff_api::{ApiError, Cause, ResourceKind, StatusReason};

use super::strategic::{self, ListStrategy, list_strategy};

type Path = Vec<String>;

/// The fields `config` sets, as FieldsV1 paths.
pub fn field_set(res: &ResourceKind, config: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Some(map) = config.as_object() {
        collect(res, map, &mut Vec::new(), &mut Vec::new(), &mut out, true);
    }
    out
}

fn collect(
    res: &ResourceKind,
    map: &Map<String, Value>,
    names: &mut Vec<String>,
    prefix: &mut Path,
    out: &mut BTreeSet<Path>,
    top: bool,
) {
    for (k, v) in map {
        // Identity and type are not owned fields.
        if top && matches!(k.as_str(), "apiVersion" | "kind" | "status") {
            continue;
        }
        if top && k == "metadata" {
            let mut meta = v.as_object().cloned().unwrap_or_default();
            for f in ["name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"]
            {
                meta.remove(f);
            }
            if meta.is_empty() {
                continue;
            }
            names.push(k.clone());
            prefix.push(format!("f:{k}"));
            collect(res, &meta, names, prefix, out, false);
            prefix.pop();
            names.pop();
            continue;
        }
        names.push(k.clone());
        prefix.push(format!("f:{k}"));
        match v {
            Value::Object(m) if !m.is_empty() => collect(res, m, names, prefix, out, false),
            Value::Array(items) => match list_strategy(res, names) {
                ListStrategy::MergeByKey(key) => {
                    for item in items {
                        let Some(id) = item.get(key) else { continue };
                        prefix.push(format!("k:{}", json!({ key: id })));
                        let mut element = prefix.clone();
                        element.push(".".into());
                        out.insert(element);
                        if let Some(m) = item.as_object() {
                            collect(res, m, names, prefix, out, false);
                        }
                        prefix.pop();
                    }
                }
                ListStrategy::MergeSet => {
                    for item in items {
                        let mut member = prefix.clone();
                        member.push(format!("v:{item}"));
                        out.insert(member);
                    }
                }
                ListStrategy::Replace => {
                    out.insert(prefix.clone());
                }
            },
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
        names.pop();
    }
}

/// FieldsV1 JSON of a set of paths.
pub fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for token in path {
            node = node
                .entry(token.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("FieldsV1 nodes are maps");
        }
    }
    Value::Object(root)
}

/// The paths of a FieldsV1 JSON: every empty node is a leaf.
pub fn from_fields_v1(fields: &Value) -> BTreeSet<Path> {
    fn walk(node: &Map<String, Value>, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        for (token, child) in node {
            prefix.push(token.clone());
            match child.as_object() {
                Some(m) if !m.is_empty() => walk(m, prefix, out),
                _ => {
                    out.insert(prefix.clone());
                }
            }
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    if let Some(m) = fields.as_object() {
        walk(m, &mut Vec::new(), &mut out);
    }
    out
}

/// The index of the list element a `k:` or `v:` token names.
fn find_element(list: &[Value], token: &str) -> Option<usize> {
    if let Some(key) = token.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        list.iter().position(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))
    } else if let Some(value) = token.strip_prefix("v:") {
        let value: Value = serde_json::from_str(value).ok()?;
        list.iter().position(|item| *item == value)
    } else {
        None
    }
}

fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = object;
    for token in path {
        node = if let Some(field) = token.strip_prefix("f:") {
            node.get(field)?
        } else if token == "." {
            node
        } else {
            let list = node.as_array()?;
            &list[find_element(list, token)?]
        };
    }
    Some(node)
}

/// Removes the field (or list element, for a path ending in `.` or `v:`) at `path`.
fn remove_at(object: &mut Value, path: &[String]) {
    let (last, parent_path) = match path.split_last() {
        Some((last, rest)) if last == "." => match rest.split_last() {
            Some((element, parent)) => (element, parent),
            None => return,
        },
        Some((last, rest)) => (last, rest),
        None => return,
    };
    let mut node = object;
    for token in parent_path {
        let next = if let Some(field) = token.strip_prefix("f:") {
            node.get_mut(field)
        } else {
            match node.as_array_mut() {
                Some(list) => match find_element(list, token) {
                    Some(i) => list.get_mut(i),
                    None => None,
                },
                None => None,
            }
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(m) = node.as_object_mut() {
            m.remove(field);
        }
    } else if let Some(list) = node.as_array_mut()
        && let Some(i) = find_element(list, last)
    {
        list.remove(i);
    }
}

/// `.spec.containers[name="app"].image`: a path as Kubernetes prints it in conflicts.
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for token in path {
        if let Some(field) = token.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = token.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = token.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

struct Manager {
    name: String,
    set: BTreeSet<Path>,
    entry: Value,
}

/// `live` with `config` applied by `manager`; `metadata.managedFields` updated.
pub fn apply(
    res: &ResourceKind,
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    let applied = field_set(res, config);
    let entries = live["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    let mut mine = BTreeSet::new();
    let mut others = Vec::new();
    let mut untracked = Vec::new();
    for entry in entries {
        let is_apply = entry["operation"] == "Apply" && entry["subresource"].as_str().unwrap_or_default().is_empty();
        if !is_apply {
            untracked.push(entry);
            continue;
        }
        let set = from_fields_v1(&entry["fieldsV1"]);
        let name = entry["manager"].as_str().unwrap_or_default().to_string();
        if name == manager {
            mine = set;
        } else {
            others.push(Manager { name, set, entry });
        }
    }

    let mut merged = strategic::merge(res, live, config).map_err(ApiError::bad_request)?;

    let mut conflicts = Vec::new();
    for other in &mut others {
        let contested: Vec<Path> = other
            .set
            .intersection(&applied)
            .filter(|p| p.last().is_some_and(|t| t != "."))
            .filter(|p| value_at(live, p) != value_at(&merged, p))
            .cloned()
            .collect();
        if force {
            for p in &contested {
                other.set.remove(p);
            }
        } else {
            conflicts.extend(contested.into_iter().map(|p| (other.name.clone(), p)));
        }
    }
    if !conflicts.is_empty() {
        let api_version = res.api_version();
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(m, p)| Cause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with \"{m}\" using {api_version}"),
                field: display(p),
            })
            .collect();
        let list: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.message, c.field)).collect();
        let n = causes.len();
        let mut err = ApiError::new(
            409,
            StatusReason::Conflict,
            format!("Apply failed with {n} conflict{}: {}", if n == 1 { "" } else { "s" }, list.join("\n")),
        );
        err.causes = causes;
        return Err(err);
    }

    let owned_by_others: BTreeSet<&Path> = others.iter().flat_map(|o| o.set.iter()).collect();
    // Deepest first, so an element's fields go before the element.
    let mut dropped: Vec<&Path> = mine.difference(&applied).filter(|p| !owned_by_others.contains(p)).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        remove_at(&mut merged, path);
    }

    let mut fields = untracked;
    for other in others {
        if other.set.is_empty() {
            continue;
        }
        let mut entry = other.entry;
        entry["fieldsV1"] = to_fields_v1(&other.set);
        fields.push(entry);
    }
    fields.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": res.api_version(),
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(&applied),
    }));
    merged["metadata"]["managedFields"] = Value::Array(fields);
    Ok(merged)
}

/// The `managedFields` of an object created by applying `config`.
pub fn managed_fields_for_create(res: &ResourceKind, config: &Value, manager: &str, now: &str) -> Value {
    json!([{
        "manager": manager,
        "operation": "Apply",
        "apiVersion": res.api_version(),
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(&field_set(res, config)),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployments() -> &'static ResourceKind {
        ResourceKind::by_plural("apps", "v1", "deployments").unwrap()
    }

    fn config(replicas: i64, labels: Value, containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": labels},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn field_sets_use_kubernetes_fields_v1_tokens() {
        let c = config(2, json!({"app": "d"}), json!([{"name": "app", "image": "x", "args": ["a"]}]));
        let fields = to_fields_v1(&field_set(deployments(), &c));
        assert_eq!(
            fields,
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"app\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {}}}}}}})
        );
        assert_eq!(from_fields_v1(&fields), field_set(deployments(), &c));
    }

    #[test]
    fn reapplying_without_a_field_removes_it() {
        let now = "2024-01-01T00:00:00Z";
        let first = config(
            2,
            json!({"app": "d", "tier": "web"}),
            json!([{"name": "app", "image": "x"}, {"name": "side", "image": "y"}]),
        );
        let live = json!({"metadata": {"name": "d"}});
        let live = apply(deployments(), &live, &first, "kubectl", false, now).unwrap();
        assert_eq!(live["metadata"]["labels"]["tier"], "web");
        let second = config(2, json!({"app": "d"}), json!([{"name": "app", "image": "x"}]));
        let live = apply(deployments(), &live, &second, "kubectl", false, now).unwrap();
        assert!(live["metadata"]["labels"].get("tier").is_none());
        assert_eq!(live["spec"]["template"]["spec"]["containers"], json!([{"name": "app", "image": "x"}]));
        assert_eq!(live["metadata"]["managedFields"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn another_appliers_field_conflicts_unless_forced() {
        let now = "2024-01-01T00:00:00Z";
        let live = json!({"metadata": {"name": "d"}});
        let live = apply(deployments(), &live, &config(2, json!({}), json!([])), "a", false, now).unwrap();
        let err = apply(deployments(), &live, &config(3, json!({}), json!([])), "b", false, now).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"a\" using apps/v1: .spec.replicas");
        assert_eq!(err.causes[0].field, ".spec.replicas");
        // The same value is shared ownership, not a conflict.
        assert!(apply(deployments(), &live, &config(2, json!({}), json!([])), "b", false, now).is_ok());
        let forced = apply(deployments(), &live, &config(3, json!({}), json!([])), "b", true, now).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        // "a" lost the field, so dropping it from a's config no longer removes it.
        let a_entry =
            forced["metadata"]["managedFields"].as_array().unwrap().iter().find(|e| e["manager"] == "a").cloned();
        assert!(
            a_entry.is_none_or(|e| !from_fields_v1(&e["fieldsV1"]).iter().any(|p| p.last().unwrap() == "f:replicas"))
        );
    }
}
