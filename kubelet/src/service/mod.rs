//! The node's Service data plane: a userspace service proxy and the cluster DNS server.
//!
//! ```text
//!  informers (Services, Endpoints) ──▶ Table (rebuilt on every change, shared read-only)
//!        │                                 │                         │
//!        ▼                                 ▼                         ▼
//!  node addresses: each clusterIP    proxy: a listener per        dns: <svc>.<ns>.svc.<domain>,
//!  and the DNS address as /32 on     clusterIP:port (and node     pods, SRV, forwarding the
//!  the bridge                         ports) → ready endpoints     rest to the host's resolver
//! ```
//!
//! There is no netfilter on the machines Skiff targets (no nft/iptables), so instead of DNAT
//! rules every clusterIP is a real local address on the pod bridge: pods route to it through
//! their default route, the node delivers it to a local socket, and the proxy splices the
//! connection to a ready endpoint (as kube-proxy's old userspace mode did). Backends therefore
//! see the bridge's address as the client, not the pod's.

pub mod dns;
pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use skiff_api::{ApiClient, Informer, InformerEvent, ListOptions};
use tokio_util::sync::CancellationToken;

/// What the node's Service plane serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The cluster DNS address (`--cluster-dns`, by convention the 10th address of the service
    /// CIDR); pods' resolv.conf points here.
    pub cluster_dns: Ipv4Addr,
    /// `cluster.local` unless configured otherwise.
    pub cluster_domain: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] skiff_runtime::Error),
    #[error("the runtime has no pod network, so Service addresses have nowhere to live")]
    NoNetwork,
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The node-local addresses Service IPs live on (the pod bridge).
#[async_trait::async_trait]
pub trait NodeAddresses: Send + Sync {
    async fn add(&self, ip: Ipv4Addr) -> Result<(), Error>;
    async fn remove(&self, ip: Ipv4Addr) -> Result<(), Error>;
    /// Every address this plane may have added (also in an earlier run).
    async fn list(&self) -> Result<Vec<Ipv4Addr>, Error>;
}

#[async_trait::async_trait]
impl NodeAddresses for skiff_runtime::network::PodNetwork {
    async fn add(&self, ip: Ipv4Addr) -> Result<(), Error> {
        Ok(self.add_local_address(ip).await?)
    }
    async fn remove(&self, ip: Ipv4Addr) -> Result<(), Error> {
        Ok(self.remove_local_address(ip).await?)
    }
    async fn list(&self) -> Result<Vec<Ipv4Addr>, Error> {
        Ok(self.local_addresses().await?)
    }
}

#[async_trait::async_trait]
impl NodeAddresses for skiff_runtime::Runtime {
    async fn add(&self, ip: Ipv4Addr) -> Result<(), Error> {
        self.network().ok_or(Error::NoNetwork)?.add(ip).await
    }
    async fn remove(&self, ip: Ipv4Addr) -> Result<(), Error> {
        self.network().ok_or(Error::NoNetwork)?.remove(ip).await
    }
    async fn list(&self) -> Result<Vec<Ipv4Addr>, Error> {
        self.network().ok_or(Error::NoNetwork)?.list().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Protocol {
        match s {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }

    /// As in SRV names (`_tcp`).
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Empty for the single unnamed port a Service may have.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// One address of an Endpoints subset with the ports it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: Ipv4Addr,
    /// `hostname` of the address (StatefulSet pods behind a headless Service).
    pub hostname: Option<String>,
    pub ready: bool,
    /// (name, protocol, port) as in the subset.
    pub ports: Arc<Vec<(String, Protocol, u16)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// None for headless (`None`) and ExternalName Services.
    pub cluster_ip: Option<Ipv4Addr>,
    pub external_name: Option<String>,
    pub ports: Vec<PortInfo>,
    /// `sessionAffinity: ClientIP` and its timeout.
    pub client_ip_affinity: Option<Duration>,
    pub endpoints: Vec<EndpointInfo>,
}

impl ServiceInfo {
    /// The ready backends of the Service port named `port`, in Endpoints order.
    pub fn backends(&self, port: &str, protocol: Protocol) -> Vec<SocketAddr> {
        self.endpoints
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| {
                let (_, _, p) = e.ports.iter().find(|(n, proto, _)| n == port && *proto == protocol)?;
                Some(SocketAddr::V4(SocketAddrV4::new(e.ip, *p)))
            })
            .collect()
    }
}

/// Every Service of the cluster with its endpoints: what the proxy and DNS serve.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// Keyed by (namespace, name).
    pub services: BTreeMap<(String, String), ServiceInfo>,
}

/// The default timeout of `sessionAffinity: ClientIP` (three hours, as Kubernetes').
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10800);

impl Table {
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        endpoints: impl IntoIterator<Item = &'a Endpoints>,
    ) -> Table {
        let mut eps: BTreeMap<(String, String), &Endpoints> = BTreeMap::new();
        for e in endpoints {
            eps.insert(
                (e.metadata.namespace.clone().unwrap_or_default(), e.metadata.name.clone().unwrap_or_default()),
                e,
            );
        }
        let mut table = Table::default();
        for svc in services {
            let key =
                (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
            let Some(spec) = &svc.spec else { continue };
            let external = spec.type_.as_deref() == Some("ExternalName");
            let cluster_ip = if external {
                None
            } else {
                spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()).filter(|ip| !ip.is_unspecified())
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortInfo {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: Protocol::parse(p.protocol.as_deref()),
                        port: u16::try_from(p.port).ok()?,
                        node_port: p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0),
                    })
                })
                .collect();
            let client_ip_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(DEFAULT_AFFINITY, Duration::from_secs)
            });
            let mut endpoints = Vec::new();
            for subset in eps.get(&key).and_then(|e| e.subsets.as_ref()).into_iter().flatten() {
                let ports: Arc<Vec<_>> = Arc::new(
                    subset
                        .ports
                        .iter()
                        .flatten()
                        .filter_map(|p| {
                            Some((
                                p.name.clone().unwrap_or_default(),
                                Protocol::parse(p.protocol.as_deref()),
                                u16::try_from(p.port).ok()?,
                            ))
                        })
                        .collect(),
                );
                let ready = subset.addresses.iter().flatten().map(|a| (a, true));
                let not_ready = subset.not_ready_addresses.iter().flatten().map(|a| (a, false));
                for (address, ready) in ready.chain(not_ready) {
                    let Ok(ip) = address.ip.parse::<Ipv4Addr>() else { continue };
                    endpoints.push(EndpointInfo {
                        ip,
                        hostname: address.hostname.clone().filter(|h| !h.is_empty()),
                        ready,
                        ports: ports.clone(),
                    });
                }
            }
            table.services.insert(
                key,
                ServiceInfo {
                    cluster_ip,
                    external_name: if external { spec.external_name.clone() } else { None },
                    ports,
                    client_ip_affinity,
                    endpoints,
                },
            );
        }
        table
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&ServiceInfo> {
        self.services.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.services.keys().any(|(ns, _)| ns == namespace)
    }

    /// The addresses that must be local on the node: every clusterIP.
    pub fn cluster_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.services.values().filter_map(|s| s.cluster_ip).collect()
    }
}

/// The current table, replaced whole on every change.
pub type SharedTable = Arc<RwLock<Arc<Table>>>;

/// Runs the proxy and the DNS server until `shutdown`, then removes every listener and every
/// address it added. Returns an error only when it cannot start (the node has no pod network
/// or the DNS address cannot be added to it).
pub async fn run(
    client: Arc<dyn ApiClient>,
    addresses: Arc<dyn NodeAddresses>,
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (services, mut service_events, _s) =
        Informer::<Service>::new(client.clone(), None, ListOptions::default()).spawn();
    let client_for_dns = client.clone();
    let (endpoints, mut endpoint_events, _e) = Informer::<Endpoints>::new(client, None, ListOptions::default()).spawn();
    let table: SharedTable = Arc::default();

    ensure_dns_service(client_for_dns.as_ref(), config.cluster_dns).await;
    addresses.add(config.cluster_dns).await?;
    let dns_task = tokio::spawn(serve_dns(config.clone(), table.clone(), shutdown.clone()));

    let mut proxy = proxy::Proxy::new(addresses.clone(), table.clone(), config.cluster_dns);
    let (mut services_synced, mut endpoints_synced, mut cleaned) = (false, false, false);
    // A periodic pass retries listeners whose bind failed and addresses that could not be added.
    let mut resync = tokio::time::interval(Duration::from_secs(10));
    loop {
        let mut changed = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = service_events.recv() => {
                services_synced |= matches!(event, InformerEvent::Synced);
                changed = true;
            }
            Some(event) = endpoint_events.recv() => {
                endpoints_synced |= matches!(event, InformerEvent::Synced);
                changed = true;
            }
            _ = resync.tick() => {}
        }
        // Drain what else is queued so a burst makes one rebuild.
        while let Ok(event) = service_events.try_recv() {
            services_synced |= matches!(event, InformerEvent::Synced);
            changed = true;
        }
        while let Ok(event) = endpoint_events.try_recv() {
            endpoints_synced |= matches!(event, InformerEvent::Synced);
            changed = true;
        }
        if !(services_synced && endpoints_synced) {
            continue;
        }
        if changed || !cleaned {
            let svcs = services.list();
            let eps = endpoints.list();
            let next = Table::build(svcs.iter().map(|s| s.as_ref()), eps.iter().map(|e| e.as_ref()));
            *table.write().expect("service table lock poisoned") = Arc::new(next);
        }
        if !cleaned {
            // Addresses left by an earlier run for Services that are gone.
            proxy.remove_stale_addresses().await;
            cleaned = true;
        }
        proxy.reconcile().await;
    }
    proxy.shutdown().await;
    dns_task.abort();
    let _ = dns_task.await;
    if let Err(e) = addresses.remove(config.cluster_dns).await {
        tracing::warn!("removing the cluster DNS address {}: {e}", config.cluster_dns);
    }
    Ok(())
}

/// Serves cluster DNS until `shutdown`. Port 53 on the DNS address may be held by a resolver
/// of the host bound to every address (dnsmasq): the proxy keeps working meanwhile, and binding
/// is retried until it succeeds.
async fn serve_dns(config: ServiceConfig, table: SharedTable, shutdown: CancellationToken) {
    let mut warned = false;
    loop {
        match dns::DnsServer::bind(config.clone(), table.clone(), dns::host_upstream()).await {
            Ok(server) => {
                if warned {
                    tracing::info!("cluster DNS is serving on {}:53", config.cluster_dns);
                }
                return server.serve(shutdown).await;
            }
            Err(e) if !warned => {
                tracing::error!("cluster DNS cannot serve yet, retrying every 10s: {e}");
                warned = true;
            }
            Err(e) => tracing::debug!("cluster DNS: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Creates Service `kube-system/kube-dns` on the cluster DNS address if it is missing, as
/// clusters have it (k3s, kubeadm): it names the DNS server in the API and keeps the address
/// from being allocated to another Service.
async fn ensure_dns_service(client: &dyn ApiClient, cluster_dns: Ipv4Addr) {
    let Some(res) = skiff_api::ResourceKind::by_plural("", "v1", "services") else { return };
    let ip = cluster_dns.to_string();
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {
            "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"k8s-app": "kube-dns"}, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    });
    match client.create(res, Some("kube-system"), service).await {
        Ok(_) => tracing::info!("created Service kube-system/kube-dns at {cluster_dns}"),
        Err(e) if e.is_already_exists() => {}
        Err(e) => tracing::warn!("creating Service kube-system/kube-dns at {cluster_dns}: {e}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})).unwrap()
    }

    pub fn endpoints(ns: &str, name: &str, subsets: serde_json::Value) -> Endpoints {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "subsets": subsets})).unwrap()
    }

    /// web (ClusterIP, ports http/80 and dns/53 UDP), db (headless, StatefulSet hostnames),
    /// ext (ExternalName).
    pub fn seeded() -> Table {
        let services = [
            service(
                "default",
                "web",
                json!({"clusterIP": "10.96.0.20", "sessionAffinity": "None", "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"},
                    {"name": "dns", "port": 53, "protocol": "UDP"}]}),
            ),
            service(
                "prod",
                "db",
                json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}),
            ),
            service("prod", "ext", json!({"type": "ExternalName", "externalName": "example.com"})),
        ];
        let eps = [
            endpoints(
                "default",
                "web",
                json!([{"addresses": [{"ip": "10.244.0.5"}, {"ip": "10.244.0.6"}],
                        "notReadyAddresses": [{"ip": "10.244.0.7"}],
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                                  {"name": "dns", "port": 5353, "protocol": "UDP"}]}]),
            ),
            endpoints(
                "prod",
                "db",
                json!([{"addresses": [{"ip": "10.244.0.8", "hostname": "db-0"}, {"ip": "10.244.0.9", "hostname": "db-1"}],
                        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]),
            ),
        ];
        Table::build(services.iter(), eps.iter())
    }

    #[test]
    fn backends_are_the_ready_addresses_with_the_endpoint_port_of_the_same_name() {
        let table = seeded();
        let web = table.get("default", "web").unwrap();
        assert_eq!(web.cluster_ip, Some("10.96.0.20".parse().unwrap()));
        assert_eq!(
            web.backends("http", Protocol::Tcp),
            vec!["10.244.0.5:8080".parse::<SocketAddr>().unwrap(), "10.244.0.6:8080".parse().unwrap()]
        );
        assert_eq!(web.backends("dns", Protocol::Udp).len(), 2);
        assert!(web.backends("dns", Protocol::Tcp).is_empty());
    }

    #[test]
    fn headless_and_external_name_services_have_no_cluster_ip() {
        let table = seeded();
        assert_eq!(table.get("prod", "db").unwrap().cluster_ip, None);
        let ext = table.get("prod", "ext").unwrap();
        assert_eq!((ext.cluster_ip, ext.external_name.as_deref()), (None, Some("example.com")));
        assert_eq!(
            table.cluster_ips().into_iter().collect::<Vec<_>>(),
            vec!["10.96.0.20".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn client_ip_affinity_takes_the_configured_timeout_or_three_hours() {
        let a = service("d", "a", json!({"clusterIP": "10.96.0.2", "sessionAffinity": "ClientIP"}));
        let b = service(
            "d",
            "b",
            json!({"clusterIP": "10.96.0.3", "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        );
        let table = Table::build([&a, &b], []);
        assert_eq!(table.get("d", "a").unwrap().client_ip_affinity, Some(Duration::from_secs(10800)));
        assert_eq!(table.get("d", "b").unwrap().client_ip_affinity, Some(Duration::from_secs(60)));
    }
}
