//! Service rules: type, ports (range, protocol, names), selectors, ExternalName.

use std::collections::HashSet;

use serde_json::Value;
use skiff_api::Cause;

use super::{duplicate, name_causes, names, quoted};

pub fn validate(svc: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &svc["spec"];
    let kind = spec["type"].as_str().unwrap_or_default();
    if !matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        causes.push(Cause::not_supported(
            "spec.type",
            kind,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let affinity = spec["sessionAffinity"].as_str().unwrap_or_default();
    if !matches!(affinity, "None" | "ClientIP") {
        causes.push(Cause::not_supported("spec.sessionAffinity", affinity, &["ClientIP", "None"]));
    }
    let headless = spec["clusterIP"] == "None";
    if kind == "ExternalName" {
        match spec["externalName"].as_str().filter(|s| !s.is_empty()) {
            None => causes.push(Cause::required("spec.externalName")),
            Some(name) => causes.extend(name_causes("spec.externalName", name, names::dns1123_subdomain(name))),
        }
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    if headless && matches!(kind, "NodePort" | "LoadBalancer") {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            quoted("None"),
            format!("may not be set to 'None' for {kind} services"),
        ));
    }
    let mut port_names = HashSet::new();
    let mut port_keys = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{field}.name")));
        }
        if !name.is_empty() {
            causes.extend(name_causes(&format!("{field}.name"), name, names::dns1123_label(name)));
            if !port_names.insert(name.to_string()) {
                causes.push(duplicate(format!("{field}.name"), name));
            }
        }
        match p["port"].as_i64() {
            None => causes.push(Cause::required(format!("{field}.port"))),
            Some(n) if !(1..=65535).contains(&n) => {
                causes.push(Cause::invalid(format!("{field}.port"), n, "must be between 1 and 65535, inclusive"));
            }
            Some(_) => {}
        }
        let proto = p["protocol"].as_str().unwrap_or_default();
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause::not_supported(format!("{field}.protocol"), proto, &["SCTP", "TCP", "UDP"]));
        }
        if !port_keys.insert((p["port"].as_i64(), proto.to_string())) {
            causes.push(duplicate(field.clone(), &format!("{}/{proto}", p["port"])));
        }
        if let Some(t) = p["targetPort"].as_i64()
            && !(1..=65535).contains(&t)
        {
            causes.push(Cause::invalid(format!("{field}.targetPort"), t, "must be between 1 and 65535, inclusive"));
        }
    }
    if let Some(selector) = spec["selector"].as_object() {
        for (k, v) in selector {
            causes.extend(name_causes("spec.selector", k, names::qualified_name(k)));
            let v = v.as_str().unwrap_or_default();
            causes.extend(name_causes("spec.selector", v, names::label_value(v)));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn multiple_ports_need_names_and_ports_are_required() {
        let svc = json!({"spec": {"type": "ClusterIP", "sessionAffinity": "None",
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]}});
        let fields: Vec<_> = validate(&svc).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.ports[0].name", "spec.ports[1].name"]);
        let none = json!({"spec": {"type": "ClusterIP", "sessionAffinity": "None"}});
        assert_eq!(validate(&none)[0].field, "spec.ports");
    }
}
