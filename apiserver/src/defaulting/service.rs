//! Service defaults (cluster IPs and node ports are allocated by the registry).

use serde_json::{Value, json};

use super::default;

pub fn defaults(service: &mut Value) {
    let spec = &mut service["spec"];
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    if spec["type"] != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for port in ports {
            default(port, "protocol", json!("TCP"));
            let number = port["port"].clone();
            default(port, "targetPort", number);
        }
    }
    if !service["status"].is_object() {
        service["status"] = json!({"loadBalancer": {}});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_get_tcp_and_target_port_equal_to_port() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}});
        defaults(&mut svc);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["sessionAffinity"], "None");
        assert_eq!(svc["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        assert_eq!(svc["spec"]["ports"][1]["targetPort"], "dns");
    }
}
