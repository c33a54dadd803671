//! Service cluster IPs and node ports. What is allocated is read back from the stored
//! Services inside the write transaction, so allocations survive restarts without a bitmap of
//! their own and two creates in one batch never get the same address.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};
use skiff_api::{ApiError, Cause};

use super::core;
use crate::storage::{Key, Tx};

const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The service CIDR (IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNetwork {
    base: u32,
    prefix: u8,
    /// Set by the operator, rather than assumed.
    pub explicit: bool,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        Self { base: u32::from(Ipv4Addr::new(10, 43, 0, 0)), prefix: 16, explicit: false }
    }
}

impl ServiceNetwork {
    pub fn parse(cidr: &str) -> Result<Self, String> {
        let bad = || format!("invalid service CIDR {cidr}: expected an IPv4 CIDR such as 10.43.0.0/16");
        let (ip, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self { base: u32::from(ip) & mask, prefix, explicit: true })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.base && ip < self.base + self.size() - 1
    }

    fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }

    /// The first free address, searched as Kubernetes does: from the upper band first, so the
    /// lower band stays free for addresses chosen by hand (like cluster DNS at `.10`).
    fn allocate(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let size = self.size();
        let lower_band = (size / 16).clamp(16, 256).min(size / 2);
        (lower_band..size - 1)
            .chain(1..lower_band)
            .map(|offset| Ipv4Addr::from(self.base + offset))
            .find(|ip| !used.contains(ip))
    }
}

fn invalid(key: &Key, field: &str, value: impl std::fmt::Display, detail: &str) -> ApiError {
    ApiError::invalid(key.res, &key.name, vec![Cause::invalid(field, value, detail)])
}

/// Fills in `spec.clusterIP(s)` and node ports of a Service being created (`old` = None) or
/// updated, keeping what an update leaves out.
pub fn allocate(
    tx: &Tx<'_>,
    key: &Key,
    service: &mut Value,
    old: Option<&Value>,
    net: &ServiceNetwork,
) -> Result<(), ApiError> {
    let others: Vec<Value> = tx
        .list(core("services"), None)?
        .into_iter()
        .filter(|s| {
            !(s["metadata"]["name"] == key.name.as_str() && s["metadata"]["namespace"] == key.namespace.as_str())
        })
        .collect();
    let spec = &mut service["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if kind == "ExternalName" {
        if let Some(m) = spec.as_object_mut() {
            m.remove("clusterIP");
            m.remove("clusterIPs");
        }
        return Ok(());
    }

    let old_ip = old.and_then(|o| o["spec"]["clusterIP"].as_str()).filter(|s| !s.is_empty()).map(String::from);
    let given = spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
        .or_else(|| spec["clusterIPs"][0].as_str().filter(|s| !s.is_empty()).map(String::from));
    let ip = match (given, old_ip) {
        (Some(given), Some(old_ip)) if given != old_ip => {
            return Err(invalid(key, "spec.clusterIPs[0]", format!("\"{given}\""), "may not change once set"));
        }
        (_, Some(old_ip)) => old_ip,
        (Some(given), None) if given == "None" => given,
        (Some(given), None) => {
            let parsed: Ipv4Addr = given.parse().map_err(|_| {
                invalid(
                    key,
                    "spec.clusterIPs[0]",
                    format!("\"{given}\""),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                )
            })?;
            let value = format!("[]string{{\"{given}\"}}");
            if !net.contains(parsed) {
                let detail = format!(
                    "failed to allocate IP {given}: the provided IP ({given}) is not in the valid range. The range of valid IPs is {}",
                    net.cidr()
                );
                return Err(invalid(key, "spec.clusterIPs", value, &detail));
            }
            if others.iter().any(|s| s["spec"]["clusterIP"] == given.as_str()) {
                let detail = format!("failed to allocate IP {given}: provided IP is already allocated");
                return Err(invalid(key, "spec.clusterIPs", value, &detail));
            }
            given
        }
        (None, None) => {
            let used: HashSet<Ipv4Addr> =
                others.iter().filter_map(|s| s["spec"]["clusterIP"].as_str()?.parse().ok()).collect();
            let ip = net.allocate(&used).ok_or_else(|| {
                ApiError::internal(format!("failed to allocate a serviceIP: range is full ({})", net.cidr()))
            })?;
            ip.to_string()
        }
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if spec["ipFamilies"].as_array().is_none_or(|f| f.is_empty()) {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec["ipFamilyPolicy"].as_str().is_none() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }

    let wants_node_ports = matches!(kind.as_str(), "NodePort" | "LoadBalancer");
    let mut used_ports: HashSet<u16> = others
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["nodePort"].as_u64().map(|n| n as u16))
        .collect();
    let old_ports = old.and_then(|o| o["spec"]["ports"].as_array().cloned()).unwrap_or_default();
    let Some(ports) = spec["ports"].as_array_mut() else { return Ok(()) };
    for (i, port) in ports.iter_mut().enumerate() {
        if !wants_node_ports {
            if let Some(p) = port.as_object_mut() {
                p.remove("nodePort");
            }
            continue;
        }
        if let Some(n) = port["nodePort"].as_u64().filter(|n| *n > 0) {
            let n = n as u16;
            let kept = old_ports.iter().any(|o| o["nodePort"].as_u64() == Some(n as u64));
            if !NODE_PORTS.contains(&n) {
                let detail = "provided port is not in the valid range. The range of valid ports is 30000-32767";
                return Err(invalid(key, &format!("spec.ports[{i}].nodePort"), n, detail));
            }
            if used_ports.contains(&n) && !kept {
                return Err(invalid(
                    key,
                    &format!("spec.ports[{i}].nodePort"),
                    n,
                    "provided port is already allocated",
                ));
            }
            used_ports.insert(n);
            continue;
        }
        let same = old_ports.iter().find(|o| o["port"] == port["port"] && o["protocol"] == port["protocol"]);
        let n = match same.and_then(|o| o["nodePort"].as_u64()) {
            Some(n) => n as u16,
            None => NODE_PORTS
                .clone()
                .find(|n| !used_ports.contains(n))
                .ok_or_else(|| ApiError::internal("failed to allocate a nodePort: range is full (30000-32767)"))?,
        };
        used_ports.insert(n);
        port["nodePort"] = json!(n);
    }
    if wants_node_ports && spec["externalTrafficPolicy"].as_str().is_none() {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_addresses_come_from_the_upper_band_and_skip_used_ones() {
        let net = ServiceNetwork::parse("10.43.0.0/16").unwrap();
        let mut used = HashSet::new();
        assert_eq!(net.allocate(&used), Some(Ipv4Addr::new(10, 43, 1, 0)));
        used.insert(Ipv4Addr::new(10, 43, 1, 0));
        assert_eq!(net.allocate(&used), Some(Ipv4Addr::new(10, 43, 1, 1)));
        assert!(net.contains(Ipv4Addr::new(10, 43, 0, 10)));
        assert!(!net.contains(Ipv4Addr::new(10, 44, 0, 1)));
    }

    #[test]
    fn a_small_network_falls_back_to_the_lower_band_when_full() {
        let net = ServiceNetwork::parse("10.0.0.0/28").unwrap();
        let used: HashSet<Ipv4Addr> = (8..15).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(net.allocate(&used), Some(Ipv4Addr::new(10, 0, 0, 1)));
    }
}
