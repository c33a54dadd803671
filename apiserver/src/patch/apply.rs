//! Field ownership: server-side apply, and the `Update` entries every other write records.
//!
//! Each field manager owns a set of fields, recorded in `metadata.managedFields` in
//! Kubernetes' `FieldsV1` form (`{"f:spec":{"f:replicas":{}}}`, keyed list elements as
//! `k:{"name":"app"}`, set members as `v:"x"`, a map, list or element itself as `.`). A manager
//! is identified by its name, operation (`Apply` or `Update`) and subresource.
//!
//! Applying ([`apply`]):
//! - merges the configuration over the live object (keyed lists by key, atomic lists whole);
//! - refuses (409) to change a field another manager owns, `Apply` or `Update`, unless `force`,
//!   which takes the field over. For the manager `kubectl`, fields still equal to the
//!   client-side `last-applied-configuration` do not conflict (the upgrade from client-side
//!   apply, as Kubernetes' `lastAppliedManager`), and that annotation follows the applied
//!   configuration;
//! - removes fields this applier set before and no longer sets, if no other manager owns them.
//!
//! Any other write ([`track_update`]: create, update, JSON/merge/strategic patch, status and
//! scale writes) gives its manager the fields it added or changed, taking them from whoever
//! owned them, and drops removed fields from every manager.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use skiff_api::{ApiError, Cause, ResourceKind, StatusReason};

use super::strategic::{self, ListStrategy, list_strategy};

/// The annotation client-side `kubectl apply` keeps its last configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Metadata fields the server owns: never in a field set.
const SYSTEM_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

type Path = Vec<String>;

/// The fields an apply configuration sets, as FieldsV1 paths. `status` is not applied through
/// the main resource.
pub fn field_set(res: &ResourceKind, config: &Value) -> BTreeSet<Path> {
    let mut out = object_fields(res, config);
    out.retain(|p| p.first().is_none_or(|t| t != "f:status"));
    out
}

/// Every field of an object (status included), as FieldsV1 paths.
fn object_fields(res: &ResourceKind, object: &Value) -> BTreeSet<Path> {
    differing_fields(res, object, None)
}

/// The fields of `object` (as [`object_fields`]) that are not the same in `other`.
fn differing_fields(res: &ResourceKind, object: &Value, other: Option<&Value>) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Some(map) = object.as_object() {
        let other = other.and_then(Value::as_object);
        collect(res, map, other, &mut Vec::new(), &mut Vec::new(), &mut out, true);
    }
    out
}

/// Structs Kubernetes marks `+structType=atomic`: owned as one field. A Service's (and a
/// ReplicationController's) `selector` is a plain map instead.
fn atomic_struct(res: &ResourceKind, names: &[String]) -> bool {
    match names.last().map(String::as_str) {
        Some("selector") => !(res.group.is_empty() && matches!(res.kind, "Service" | "ReplicationController")),
        Some("labelSelector" | "namespaceSelector" | "nodeSelectorTerms") => true,
        _ => false,
    }
}

/// Collects the field paths of `map` into `out`. With `other` (the same map in another version
/// of the object), fields whose value is the same in both are left out, with all they hold: the
/// two versions' paths under them are the same, with the same values.
fn collect(
    res: &ResourceKind,
    map: &Map<String, Value>,
    other: Option<&Map<String, Value>>,
    names: &mut Vec<String>,
    prefix: &mut Path,
    out: &mut BTreeSet<Path>,
    top: bool,
) {
    for (k, v) in map {
        // Identity and type are not owned fields.
        if top && matches!(k.as_str(), "apiVersion" | "kind") {
            continue;
        }
        let other_value = other.and_then(|o| o.get(k));
        if other_value == Some(v) {
            continue;
        }
        let other_map = other_value.and_then(Value::as_object);
        if top && k == "metadata" {
            let without_system = |m: Option<&Map<String, Value>>| {
                let mut meta = m.cloned().unwrap_or_default();
                for f in SYSTEM_METADATA {
                    meta.remove(f);
                }
                meta
            };
            let meta = without_system(v.as_object());
            if meta.is_empty() {
                continue;
            }
            let other_meta = other_map.map(|m| without_system(Some(m)));
            names.push(k.clone());
            prefix.push(format!("f:{k}"));
            collect(res, &meta, other_meta.as_ref(), names, prefix, out, false);
            prefix.pop();
            names.pop();
            continue;
        }
        names.push(k.clone());
        prefix.push(format!("f:{k}"));
        match v {
            Value::Object(m) if !m.is_empty() && !atomic_struct(res, names) => {
                collect(res, m, other_map, names, prefix, out, false)
            }
            Value::Array(items) => match list_strategy(res, names) {
                ListStrategy::MergeByKey(key) => {
                    for item in items {
                        let Some(id) = element_key(names, key, item) else { continue };
                        prefix.push(format!("k:{}", Value::Object(id)));
                        let mut element = prefix.clone();
                        element.push(".".into());
                        out.insert(element);
                        if let Some(m) = item.as_object() {
                            collect(res, m, None, names, prefix, out, false);
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

/// A key field's value where the element leaves it out: the default the schema gives it.
fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| json!("TCP"))
}

/// The key of a keyed list element as server-side apply names it (`x-kubernetes-list-map-keys`,
/// which for ports include the protocol, unlike their strategic-merge key), or none if the
/// element lacks it.
fn element_key(names: &[String], merge_key: &str, item: &Value) -> Option<Map<String, Value>> {
    let fields: &[&str] = match (names.last().map(String::as_str), merge_key) {
        (Some("ports"), "containerPort") => &["containerPort", "protocol"],
        (Some("ports"), "port") => &["port", "protocol"],
        _ => &[],
    };
    if fields.is_empty() {
        return item.get(merge_key).map(|id| Map::from_iter([(merge_key.to_string(), id.clone())]));
    }
    fields.iter().map(|f| Some((f.to_string(), item.get(*f).cloned().or_else(|| key_default(f))?))).collect()
}

/// The index of the list element a `k:` or `v:` token names.
fn find_element(list: &[Value], token: &str) -> Option<usize> {
    if let Some(key) = token.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        list.iter().position(|item| {
            key.iter().all(|(k, v)| item.get(k).cloned().or_else(|| key_default(k)).as_ref() == Some(v))
        })
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

/// One `managedFields` entry with its field set.
struct Manager {
    set: BTreeSet<Path>,
    entry: Value,
}

impl Manager {
    fn of(entry: Value) -> Self {
        Self { set: from_fields_v1(&entry["fieldsV1"]), entry }
    }

    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.entry["manager"] == manager
            && self.entry["operation"] == operation
            && self.entry["subresource"].as_str().filter(|s| !s.is_empty()) == subresource
    }

    /// The entry with its (changed) set, or nothing once it owns no field.
    fn into_entry(mut self) -> Option<Value> {
        if self.set.is_empty() {
            return None;
        }
        self.entry["fieldsV1"] = to_fields_v1(&self.set);
        Some(self.entry)
    }

    /// The manager as conflict messages name it (apimachinery's `printManager` of an entry
    /// without time).
    fn describe(&self) -> String {
        let name = self.entry["manager"].as_str().unwrap_or_default();
        let mut out = serde_json::to_string(name).expect("a string serialises");
        if let Some(sub) = self.entry["subresource"].as_str().filter(|s| !s.is_empty()) {
            out.push_str(&format!(" with subresource {}", serde_json::to_string(sub).expect("a string serialises")));
        }
        if self.entry["operation"] == "Update" {
            out.push_str(&format!(" using {}", self.entry["apiVersion"].as_str().unwrap_or_default()));
        }
        out
    }
}

fn entry(manager: &str, operation: &str, res: &ResourceKind, subresource: Option<&str>, now: &str) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": res.api_version(),
        "time": now,
        "fieldsType": "FieldsV1",
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    entry
}

/// The `managedFields` entries of an object, without malformed ones (no manager: Kubernetes'
/// way to reset them is `managedFields: [{}]`).
fn entries(object: &Value) -> Vec<Value> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries.iter().filter(|e| e["manager"].is_string() && e["operation"].is_string()).cloned().collect()
        })
        .unwrap_or_default()
}

/// Stores `entries` in Kubernetes' order: `Apply` before `Update`, then by time, manager,
/// apiVersion and subresource.
fn set_entries(object: &mut Value, mut entries: Vec<Value>) {
    let text = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    entries.sort_by_key(|e| ["operation", "time", "manager", "apiVersion", "subresource"].map(|k| text(e, k)));
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

/// Whether the field (or map, list, element) a path names exists in `object`.
fn present(object: &Value, path: &[String]) -> bool {
    match path.split_last() {
        Some((last, parent)) if last == "." => value_at(object, parent).is_some(),
        _ => value_at(object, path).is_some(),
    }
}

/// Structs every object of their parent has (Go non-pointer fields): Kubernetes never records
/// them as added, so they get no `.` of their own.
const ALWAYS_PRESENT: [&str; 8] = [
    "f:metadata",
    "f:spec",
    "f:status",
    "f:template",
    "f:strategy",
    "f:updateStrategy",
    "f:jobTemplate",
    "f:containers",
];

/// The fields `new` added or changed relative to `old`, as apimachinery's comparison finds
/// them: changed leaves, new list elements and set members, and each map, list or struct that
/// did not exist before (as its `.`).
fn changed_fields(res: &ResourceKind, old: &Value, new: &Value) -> BTreeSet<Path> {
    // What both have alike changed nothing: only the rest is compared, path by path.
    let before = differing_fields(res, old, Some(new));
    let after = differing_fields(res, new, Some(old));
    changed_among(old, new, &before, after)
}

/// The paths of `after` (fields of `new`) that are new or changed relative to `before` (those of
/// `old`), with the `.` of each map, list or struct they brought.
fn changed_among(old: &Value, new: &Value, before: &BTreeSet<Path>, after: BTreeSet<Path>) -> BTreeSet<Path> {
    let mut changed = BTreeSet::new();
    for path in after {
        let is_new = !before.contains(&path);
        // A `.` or set member present on both sides is unchanged by definition.
        let is_value = path.last().is_some_and(|t| t != "." && !t.starts_with("v:"));
        let modified = is_value && value_at(old, &path) != value_at(new, &path);
        if !is_new && !modified {
            continue;
        }
        if is_new {
            for depth in 1..path.len() {
                let node = &path[..depth];
                let last = &node[depth - 1];
                if !last.starts_with("f:") || ALWAYS_PRESENT.contains(&last.as_str()) || value_at(old, node).is_some() {
                    continue;
                }
                let non_empty = match value_at(new, node) {
                    Some(Value::Object(m)) => !m.is_empty(),
                    Some(Value::Array(a)) => !a.is_empty(),
                    _ => false,
                };
                if non_empty {
                    let mut marker = node.to_vec();
                    marker.push(".".into());
                    changed.insert(marker);
                }
            }
        }
        changed.insert(path);
    }
    changed
}

/// Records a write other than an apply in `new`'s `managedFields`, as Kubernetes' field
/// manager does for an `Update` operation: `manager` (with `subresource`) gains the fields this
/// write added or changed, which every other manager loses; fields the write removed leave
/// every manager. Its entry's time moves only when it gained something. `old` is `None` for a
/// create. A write without a manager (in-process components) is not recorded, but still moves
/// fields away from their former owners.
pub fn track_update(
    res: &ResourceKind,
    old: Option<&Value>,
    new: &mut Value,
    manager: Option<&str>,
    subresource: Option<&str>,
    now: &str,
) {
    // `managedFields: [{}]` is Kubernetes' way to strip them: nothing is recorded then.
    if new["metadata"]["managedFields"].as_array().is_some_and(|e| e.len() == 1 && e[0] == json!({})) {
        set_entries(new, Vec::new());
        return;
    }
    let existing = entries(new);
    if manager.is_none() && existing.is_empty() {
        return;
    }
    let empty = json!({});
    let changed = changed_fields(res, old.unwrap_or(&empty), new);
    let mut kept = Vec::new();
    let mut mine = None;
    for entry in existing {
        let mut m = Manager::of(entry);
        m.set.retain(|p| present(new, p));
        if manager.is_some_and(|name| m.is(name, "Update", subresource)) {
            mine = Some(m);
            continue;
        }
        m.set.retain(|p| !changed.contains(p));
        kept.extend(m.into_entry());
    }
    if let Some(name) = manager {
        let mut m = mine.unwrap_or_else(|| Manager::of(entry(name, "Update", res, subresource, now)));
        if !changed.is_empty() {
            m.set.extend(changed);
            m.entry["time"] = json!(now);
            m.entry["apiVersion"] = json!(res.api_version());
        }
        kept.extend(m.into_entry());
    }
    set_entries(new, kept);
}

/// The fields of the live object still as client-side apply last left them: for the manager
/// `kubectl`, changing them does not conflict (Kubernetes' `lastAppliedManager`).
fn unchanged_since_last_applied(res: &ResourceKind, live: &Value) -> BTreeSet<Path> {
    let Some(text) = live["metadata"]["annotations"][LAST_APPLIED].as_str().filter(|t| !t.is_empty()) else {
        return BTreeSet::new();
    };
    let Ok(last) = serde_json::from_str::<Value>(text) else { return BTreeSet::new() };
    if last["apiVersion"] != res.api_version() {
        return BTreeSet::new();
    }
    let mut set = object_fields(res, &last);
    set.retain(|p| value_at(&last, p) == value_at(live, p));
    set
}

/// The `last-applied-configuration` server-side apply by `kubectl` keeps in step, so a later
/// client-side apply diffs against what was really applied (Kubernetes' `lastAppliedUpdater`).
fn last_applied_of(config: &Value) -> String {
    let mut config = config.clone();
    if let Some(annotations) = config["metadata"]["annotations"].as_object_mut() {
        annotations.remove(LAST_APPLIED);
    }
    let mut text = serde_json::to_string(&config).expect("serde_json::Value always serialises");
    text.push('\n');
    text
}

fn conflict_error(conflicts: &[(String, Path)]) -> ApiError {
    let causes: Vec<Cause> = conflicts
        .iter()
        .map(|(m, p)| Cause {
            reason: "FieldManagerConflict".into(),
            message: format!("conflict with {m}"),
            field: display(p),
        })
        .collect();
    let message = match conflicts {
        [(m, p)] => format!("Apply failed with 1 conflict: conflict with {m}: {}", display(p)),
        _ => {
            let mut managers: Vec<&String> = conflicts.iter().map(|(m, _)| m).collect();
            managers.sort();
            managers.dedup();
            let mut lines = Vec::new();
            for manager in managers {
                lines.push(format!("conflicts with {manager}:"));
                lines.extend(conflicts.iter().filter(|(m, _)| m == manager).map(|(_, p)| format!("- {}", display(p))));
            }
            format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
        }
    };
    let mut err = ApiError::new(409, StatusReason::Conflict, message);
    err.causes = causes;
    err
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
    let mut mine = BTreeSet::new();
    let mut others = Vec::new();
    for entry in entries(live) {
        let m = Manager::of(entry);
        if m.is(manager, "Apply", None) {
            mine = m.set;
        } else {
            others.push(m);
        }
    }

    let mut merged = strategic::merge(res, live, config).map_err(ApiError::bad_request)?;

    // Fields of other managers this apply changes; the list elements themselves (`.`) are
    // shared, never contested.
    let mut contested: Vec<(usize, Path)> = Vec::new();
    for (i, other) in others.iter().enumerate() {
        contested.extend(
            other
                .set
                .intersection(&applied)
                .filter(|p| p.last().is_some_and(|t| t != "."))
                .filter(|p| value_at(live, p) != value_at(&merged, p))
                .map(|p| (i, p.clone())),
        );
    }
    if !force && !contested.is_empty() {
        let allowed = if manager == "kubectl" { unchanged_since_last_applied(res, live) } else { BTreeSet::new() };
        let conflicts: Vec<(String, Path)> = contested
            .iter()
            .filter(|(_, p)| !allowed.contains(p))
            .map(|(i, p)| (others[*i].describe(), p.clone()))
            .collect();
        if !conflicts.is_empty() {
            return Err(conflict_error(&conflicts));
        }
    }
    for (i, path) in &contested {
        others[*i].set.remove(path);
    }

    // What this applier no longer sets goes, unless someone still owns it or something in it
    // (a map or element whose `.` it held stays while another of its fields is owned).
    let still_owned: BTreeSet<&Path> = others.iter().flat_map(|o| o.set.iter()).chain(applied.iter()).collect();
    let owned_within = |p: &Path| {
        let node = match p.split_last() {
            Some((last, node)) if last == "." => node,
            _ => p.as_slice(),
        };
        still_owned.iter().any(|o| o.starts_with(node))
    };
    // Deepest first, so an element's fields go before the element.
    let mut dropped: Vec<&Path> = mine.difference(&applied).filter(|p| !owned_within(p)).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        remove_at(&mut merged, path);
    }

    if manager == "kubectl" && live["metadata"]["annotations"].get(LAST_APPLIED).is_some() {
        merged["metadata"]["annotations"][LAST_APPLIED] = json!(last_applied_of(config));
    }

    let mut fields: Vec<Value> = others.into_iter().filter_map(Manager::into_entry).collect();
    let mut own = entry(manager, "Apply", res, None, now);
    own["fieldsV1"] = to_fields_v1(&applied);
    fields.push(own);
    set_entries(&mut merged, fields);
    Ok(merged)
}

/// The `managedFields` of an object created by applying `config`.
pub fn managed_fields_for_create(res: &ResourceKind, config: &Value, manager: &str, now: &str) -> Value {
    let mut own = entry(manager, "Apply", res, None, now);
    own["fieldsV1"] = to_fields_v1(&field_set(res, config));
    json!([own])
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
    fn changed_fields_skip_what_is_alike_and_find_what_comparing_everything_finds() {
        let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "resourceVersion": "3", "labels": {"app": "web"},
                         "managedFields": [{"manager": "a", "operation": "Update"}]},
            "spec": {"containers": [{"name": "app", "image": "x:1", "ports": [{"containerPort": 80}],
                                     "env": [{"name": "A", "value": "1"}]}],
                     "nodeSelector": {"disk": "ssd"}, "tolerations": [{"key": "k", "operator": "Exists"}]},
            "status": {"phase": "Pending"}});
        let mut changes = Vec::new();
        let mut relabelled = pod.clone();
        relabelled["metadata"]["labels"]["round"] = json!("2");
        relabelled["metadata"]["resourceVersion"] = json!("4");
        changes.push(relabelled);
        let mut new_image = pod.clone();
        new_image["spec"]["containers"][0]["image"] = json!("x:2");
        new_image["spec"]["containers"][0]["env"][0]["value"] = json!("2");
        changes.push(new_image);
        let mut more = pod.clone();
        more["metadata"]["annotations"] = json!({"a": "b"});
        more["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "side", "image": "y"}));
        more["spec"]["tolerations"] = json!([]);
        more["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        changes.push(more);
        let mut fewer = pod.clone();
        fewer["metadata"].as_object_mut().unwrap().remove("labels");
        fewer["spec"].as_object_mut().unwrap().remove("nodeSelector");
        changes.push(fewer);
        changes.push(pod.clone());
        for new in &changes {
            for (old, new) in [(&pod, new), (new, &pod)] {
                let everything = changed_among(old, new, &object_fields(pods, old), object_fields(pods, new));
                assert_eq!(changed_fields(pods, old, new), everything, "from {old}\nto {new}");
            }
        }
        // Not vacuous: the label change is found, and only it.
        let changed = changed_fields(pods, &pod, &changes[0]);
        let labels: Vec<Path> = vec![vec!["f:metadata".into(), "f:labels".into(), "f:round".into()]];
        assert_eq!(changed.into_iter().collect::<Vec<_>>(), labels);
        assert!(changed_fields(pods, &pod, &pod).is_empty());
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
        assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas");
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

    fn entry_of<'a>(object: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
        object["metadata"]["managedFields"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .position(|e| e["manager"] == manager && e["operation"] == operation)
            .map(|i| &object["metadata"]["managedFields"][i])
    }

    fn owns(object: &Value, manager: &str, operation: &str, path: &[&str]) -> bool {
        let path: Path = path.iter().map(|t| t.to_string()).collect();
        entry_of(object, manager, operation).is_some_and(|e| from_fields_v1(&e["fieldsV1"]).contains(&path))
    }

    #[test]
    fn a_create_records_every_field_it_set_as_an_update_with_markers_for_new_maps() {
        let mut object =
            config(2, json!({"app": "d"}), json!([{"name": "app", "image": "x", "ports": [{"containerPort": 80}]}]));
        object["metadata"]["uid"] = json!("u1");
        track_update(deployments(), None, &mut object, Some("kubectl-create"), None, "2024-01-01T00:00:00Z");
        let entries = object["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["operation"], "Update");
        assert_eq!(entries[0]["apiVersion"], "apps/v1");
        assert!(entries[0].get("subresource").is_none());
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"app\"}": {".": {}, "f:name": {}, "f:image": {}, "f:ports": {
                           ".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}}}})
        );
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_and_removed_fields_leave_every_manager() {
        let now = "2024-01-01T00:00:00Z";
        let mut live = config(2, json!({"app": "d", "tier": "web"}), json!([{"name": "app", "image": "x"}]));
        track_update(deployments(), None, &mut live, Some("kubectl-client-side-apply"), None, now);
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        scaled["metadata"]["labels"].as_object_mut().unwrap().remove("tier");
        track_update(deployments(), Some(&live), &mut scaled, Some("kubectl"), Some("scale"), "2024-01-02T00:00:00Z");
        let scale = entry_of(&scaled, "kubectl", "Update").unwrap();
        assert_eq!(scale["subresource"], "scale");
        assert_eq!(scale["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        assert!(!owns(&scaled, "kubectl-client-side-apply", "Update", &["f:spec", "f:replicas"]));
        assert!(!owns(&scaled, "kubectl-client-side-apply", "Update", &["f:metadata", "f:labels", "f:tier"]));
        assert!(owns(&scaled, "kubectl-client-side-apply", "Update", &["f:metadata", "f:labels", "f:app"]));
        // The creator's entry keeps its time: it gained nothing.
        assert_eq!(entry_of(&scaled, "kubectl-client-side-apply", "Update").unwrap()["time"], now);

        // A write that changes nothing leaves the entries as they are.
        let mut again = scaled.clone();
        track_update(deployments(), Some(&scaled), &mut again, Some("kubectl"), Some("scale"), "2030-01-01T00:00:00Z");
        assert_eq!(again, scaled);
    }

    #[test]
    fn applying_over_a_field_an_update_manager_owns_conflicts_naming_it_with_its_version_and_subresource() {
        let now = "2024-01-01T00:00:00Z";
        let mut live = config(2, json!({}), json!([]));
        track_update(deployments(), None, &mut live, Some("kubectl-client-side-apply"), None, now);
        let err = apply(deployments(), &live, &config(3, json!({}), json!([])), "ci", false, now).unwrap_err();
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        assert_eq!(err.causes[0].reason, "FieldManagerConflict");
        assert_eq!(err.causes[0].field, ".spec.replicas");

        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(4);
        track_update(deployments(), Some(&live), &mut scaled, Some("kubectl"), Some("scale"), now);
        let err = apply(deployments(), &scaled, &config(3, json!({}), json!([])), "ci", false, now).unwrap_err();
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );

        let forced = apply(deployments(), &scaled, &config(3, json!({}), json!([])), "ci", true, now).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        assert!(owns(&forced, "ci", "Apply", &["f:spec", "f:replicas"]));
        // The scaler owned nothing else, so its entry is gone.
        assert!(entry_of(&forced, "kubectl", "Update").is_none());
        // Apply entries come first, as Kubernetes sorts them.
        assert_eq!(forced["metadata"]["managedFields"][0]["operation"], "Apply");
    }

    #[test]
    fn several_conflicts_are_listed_per_manager() {
        let now = "2024-01-01T00:00:00Z";
        let live = apply(
            deployments(),
            &json!({"metadata": {"name": "d"}}),
            &config(2, json!({"a": "1"}), json!([])),
            "x",
            false,
            now,
        )
        .unwrap();
        let err = apply(deployments(), &live, &config(3, json!({"a": "2"}), json!([])), "y", false, now).unwrap_err();
        assert_eq!(
            err.message,
            "Apply failed with 2 conflicts: conflicts with \"x\":\n- .metadata.labels.a\n- .spec.replicas"
        );
        assert_eq!(err.causes.len(), 2);
    }

    #[test]
    fn kubectl_server_side_apply_takes_over_fields_unchanged_since_client_side_apply() {
        let now = "2024-01-01T00:00:00Z";
        let manifest = config(2, json!({}), json!([]));
        let mut live = manifest.clone();
        live["metadata"]["annotations"] = json!({LAST_APPLIED: serde_json::to_string(&manifest).unwrap()});
        track_update(deployments(), None, &mut live, Some("kubectl-client-side-apply"), None, now);

        // Unchanged since the client-side apply: the kubectl manager upgrades without conflict,
        // and the annotation follows what it applied.
        let upgraded = apply(deployments(), &live, &config(3, json!({}), json!([])), "kubectl", false, now).unwrap();
        assert_eq!(upgraded["spec"]["replicas"], 3);
        let annotation: Value =
            serde_json::from_str(upgraded["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap()).unwrap();
        assert_eq!(annotation["spec"]["replicas"], 3);
        assert!(!owns(&upgraded, "kubectl-client-side-apply", "Update", &["f:spec", "f:replicas"]));

        // Changed by someone since: that still conflicts.
        let mut edited = live.clone();
        edited["spec"]["replicas"] = json!(7);
        track_update(deployments(), Some(&live), &mut edited, Some("kubectl-edit"), None, now);
        let err = apply(deployments(), &edited, &config(3, json!({}), json!([])), "kubectl", false, now).unwrap_err();
        assert!(
            err.message.contains("conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_dropped_map_marker_keeps_the_map_while_its_fields_are_owned() {
        let now = "2024-01-01T00:00:00Z";
        let cms = ResourceKind::by_plural("", "v1", "configmaps").unwrap();
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"mode": "b"}});
        let mut live = config.clone();
        // As kubectl's client-side-apply upgrade leaves it: the applier also holds `data`'s `.`.
        let mut own = entry("kubectl", "Apply", cms, None, now);
        own["fieldsV1"] = json!({"f:data": {".": {}, "f:mode": {}}});
        live["metadata"]["managedFields"] = json!([own]);
        let again = apply(cms, &live, &config, "kubectl", false, now).unwrap();
        assert_eq!(again["data"], json!({"mode": "b"}));
        let emptied = apply(
            cms,
            &again,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            "kubectl",
            false,
            now,
        )
        .unwrap();
        assert!(emptied.get("data").is_none_or(|d| d.as_object().is_some_and(|m| m.is_empty())), "{emptied}");
    }

    #[test]
    fn an_update_with_a_single_empty_entry_strips_managed_fields() {
        let now = "2024-01-01T00:00:00Z";
        let mut live = config(2, json!({}), json!([]));
        track_update(deployments(), None, &mut live, Some("a"), None, now);
        let mut reset = live.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        reset["spec"]["replicas"] = json!(3);
        track_update(deployments(), Some(&live), &mut reset, Some("b"), None, now);
        assert!(reset["metadata"].get("managedFields").is_none(), "{reset}");
    }

    #[test]
    fn ports_are_keyed_by_port_and_protocol_as_server_side_apply_keys_them() {
        let services = ResourceKind::by_plural("", "v1", "services").unwrap();
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP"}]}});
        let fields = to_fields_v1(&field_set(services, &svc));
        let ports = fields["f:spec"]["f:ports"].as_object().unwrap();
        assert!(ports.contains_key("k:{\"port\":80,\"protocol\":\"TCP\"}"), "{fields}");
        assert!(ports.contains_key("k:{\"port\":53,\"protocol\":\"UDP\"}"), "{fields}");
        let path: Path =
            ["f:spec", "f:ports", "k:{\"port\":80,\"protocol\":\"TCP\"}", "f:targetPort"].map(String::from).to_vec();
        assert_eq!(value_at(&svc, &path), Some(&json!(8080)));
        assert_eq!(display(&path), ".spec.ports[port=80,protocol=\"TCP\"].targetPort");
    }
}
