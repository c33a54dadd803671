//! The userspace service proxy: a listener on every clusterIP:port (and on 0.0.0.0:nodePort)
//! whose connections, or per-client UDP flows, go to a ready endpoint of that port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use super::{Error, NodeAddresses, Protocol, SharedTable, Table};

/// A Service port a listener forwards to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    /// The Service port's name (empty when unnamed).
    pub port: String,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    pub bind: SocketAddr,
    pub target: Target,
}

/// The listeners the table calls for: clusterIP:port for every TCP and UDP port of a Service
/// with a clusterIP, and 0.0.0.0:nodePort where one is allocated. SCTP is not proxied, nor the
/// cluster DNS address (`reserved`), where the DNS server itself listens.
pub fn desired_listeners(table: &Table, reserved: Ipv4Addr) -> BTreeSet<ListenerKey> {
    let mut keys = BTreeSet::new();
    for ((namespace, name), svc) in &table.services {
        let Some(ip) = svc.cluster_ip.filter(|ip| *ip != reserved) else { continue };
        for port in svc.ports.iter().filter(|p| p.protocol != Protocol::Sctp) {
            let target = Target {
                namespace: namespace.clone(),
                name: name.clone(),
                port: port.name.clone(),
                protocol: port.protocol,
            };
            keys.insert(ListenerKey { bind: SocketAddr::V4(SocketAddrV4::new(ip, port.port)), target: target.clone() });
            if let Some(node_port) = port.node_port {
                keys.insert(ListenerKey {
                    bind: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, node_port)),
                    target,
                });
            }
        }
    }
    keys
}

/// Round robin over the ready backends, with optional stickiness per client IP.
#[derive(Debug, Default)]
pub struct Balancer {
    next: usize,
    sticky: HashMap<IpAddr, (SocketAddr, Instant)>,
}

impl Balancer {
    /// The backend for a new connection from `client`: the one it used last while `affinity`
    /// holds and that backend is still ready, else the next in turn. None when nothing is ready.
    pub fn pick(
        &mut self,
        backends: &[SocketAddr],
        client: IpAddr,
        affinity: Option<Duration>,
        now: Instant,
    ) -> Option<SocketAddr> {
        if backends.is_empty() {
            return None;
        }
        if let Some(timeout) = affinity
            && let Some((backend, at)) = self.sticky.get(&client).copied()
            && now.duration_since(at) < timeout
            && backends.contains(&backend)
        {
            self.sticky.insert(client, (backend, now));
            return Some(backend);
        }
        let backend = backends[self.next % backends.len()];
        self.next = self.next.wrapping_add(1);
        if let Some(timeout) = affinity {
            self.sticky.retain(|_, (_, at)| now.duration_since(*at) < timeout);
            self.sticky.insert(client, (backend, now));
        }
        Some(backend)
    }
}

type Balancers = Arc<Mutex<HashMap<Target, Arc<Mutex<Balancer>>>>>;

/// How long a UDP flow without replies is kept.
const UDP_IDLE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Proxy {
    addresses: Arc<dyn NodeAddresses>,
    table: SharedTable,
    /// Never removed by a reconcile: the DNS server owns it.
    cluster_dns: Ipv4Addr,
    /// The clusterIPs this proxy added to the node.
    local: BTreeSet<Ipv4Addr>,
    listeners: BTreeMap<ListenerKey, JoinHandle<()>>,
    balancers: Balancers,
}

impl Proxy {
    pub fn new(addresses: Arc<dyn NodeAddresses>, table: SharedTable, cluster_dns: Ipv4Addr) -> Proxy {
        Proxy {
            addresses,
            table,
            cluster_dns,
            local: BTreeSet::new(),
            listeners: BTreeMap::new(),
            balancers: Arc::default(),
        }
    }

    fn snapshot(&self) -> Arc<Table> {
        self.table.read().expect("service table lock poisoned").clone()
    }

    /// Removes node addresses no current Service has (left by an earlier run).
    pub async fn remove_stale_addresses(&mut self) {
        let wanted = self.snapshot().cluster_ips();
        match self.addresses.list().await {
            Ok(present) => {
                for ip in present {
                    if ip != self.cluster_dns && !wanted.contains(&ip) {
                        tracing::info!("removing stale service address {ip}");
                        if let Err(e) = self.addresses.remove(ip).await {
                            tracing::warn!("removing stale service address {ip}: {e}");
                        }
                    } else if ip != self.cluster_dns {
                        self.local.insert(ip);
                    }
                }
            }
            Err(e) => tracing::warn!("listing the node's service addresses: {e}"),
        }
    }

    /// Brings addresses and listeners in line with the table.
    pub async fn reconcile(&mut self) {
        let table = self.snapshot();
        let mut wanted_ips = table.cluster_ips();
        // The DNS server's address comes and goes with the DNS server only.
        wanted_ips.remove(&self.cluster_dns);
        for ip in wanted_ips.difference(&self.local.clone()) {
            match self.addresses.add(*ip).await {
                Ok(()) => {
                    self.local.insert(*ip);
                }
                Err(e) => tracing::warn!("adding service address {ip}: {e}"),
            }
        }
        let wanted = desired_listeners(&table, self.cluster_dns);
        self.listeners.retain(|key, task| {
            let keep = wanted.contains(key) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if self.listeners.contains_key(&key) {
                continue;
            }
            if let IpAddr::V4(ip) = key.bind.ip()
                && !ip.is_unspecified()
                && !self.local.contains(&ip)
            {
                continue;
            }
            match self.start(&key).await {
                Ok(task) => {
                    tracing::debug!(bind = %key.bind, service = %format!("{}/{}", key.target.namespace, key.target.name), "proxying");
                    self.listeners.insert(key, task);
                }
                Err(e) => tracing::warn!("service {}/{}: {e}", key.target.namespace, key.target.name),
            }
        }
        let targets: BTreeSet<&Target> = self.listeners.keys().map(|k| &k.target).collect();
        self.balancers.lock().expect("balancer lock poisoned").retain(|t, _| targets.contains(t));
        let stale: Vec<Ipv4Addr> = self.local.difference(&wanted_ips).copied().collect();
        for ip in stale {
            match self.addresses.remove(ip).await {
                Ok(()) => {
                    self.local.remove(&ip);
                }
                Err(e) => tracing::warn!("removing service address {ip}: {e}"),
            }
        }
    }

    async fn start(&self, key: &ListenerKey) -> Result<JoinHandle<()>, Error> {
        let balancer =
            self.balancers.lock().expect("balancer lock poisoned").entry(key.target.clone()).or_default().clone();
        let (table, target) = (self.table.clone(), key.target.clone());
        let bind_err = |source| Error::Bind { addr: key.bind, source };
        Ok(match key.target.protocol {
            Protocol::Tcp => {
                let socket = TcpSocket::new_v4().map_err(bind_err)?;
                // A restarted server rebinds while old connections linger in TIME_WAIT.
                socket.set_reuseaddr(true).map_err(bind_err)?;
                socket.bind(key.bind).map_err(bind_err)?;
                let listener = socket.listen(1024).map_err(bind_err)?;
                tokio::spawn(serve_tcp(listener, target, table, balancer))
            }
            _ => {
                let socket = UdpSocket::bind(key.bind).await.map_err(bind_err)?;
                tokio::spawn(serve_udp(socket, target, table, balancer))
            }
        })
    }

    /// Closes every listener and removes every address it added.
    pub async fn shutdown(&mut self) {
        for (_, task) in std::mem::take(&mut self.listeners) {
            task.abort();
            let _ = task.await;
        }
        for ip in std::mem::take(&mut self.local) {
            if let Err(e) = self.addresses.remove(ip).await {
                tracing::warn!("removing service address {ip}: {e}");
            }
        }
    }
}

fn lookup(table: &SharedTable, target: &Target) -> (Vec<SocketAddr>, Option<Duration>) {
    let table = table.read().expect("service table lock poisoned").clone();
    match table.get(&target.namespace, &target.name) {
        Some(svc) => (svc.backends(&target.port, target.protocol), svc.client_ip_affinity),
        None => (Vec::new(), None),
    }
}

/// Refuses a connection already accepted: a reset, as close as userspace gets to REJECT.
fn reject(conn: TcpStream) {
    #[allow(deprecated)]
    let _ = conn.set_linger(Some(Duration::ZERO));
    drop(conn);
}

async fn serve_tcp(listener: TcpListener, target: Target, table: SharedTable, balancer: Arc<Mutex<Balancer>>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(
                    "accepting on {}: {e}",
                    listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (backends, affinity) = lookup(&table, &target);
        let first =
            balancer.lock().expect("balancer lock poisoned").pick(&backends, peer.ip(), affinity, Instant::now());
        tokio::spawn(async move {
            let Some(first) = first else {
                reject(conn);
                return;
            };
            // An endpoint that refuses (a pod just going away) gives way to the others once.
            let order = std::iter::once(first).chain(backends.iter().copied().filter(|b| *b != first));
            for backend in order {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
                    Ok(Ok(mut upstream)) => {
                        let mut conn = conn;
                        let _ = conn.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!("connecting to {backend}: {e}"),
                    Err(_) => tracing::debug!("connecting to {backend}: timed out"),
                }
            }
            reject(conn);
        });
    }
}

/// Each client address gets a socket of its own connected to its backend; replies go back
/// through the listening socket, so they come from the address the client sent to.
async fn serve_udp(socket: UdpSocket, target: Target, table: SharedTable, balancer: Arc<Mutex<Balancer>>) {
    let socket = Arc::new(socket);
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    // Dropped with this task, which ends every flow with the listener.
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        while tasks.try_join_next().is_some() {}
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!("receiving on {}: {e}", socket.local_addr().map(|a| a.to_string()).unwrap_or_default());
                continue;
            }
        };
        let existing = flows.lock().expect("udp flow lock poisoned").get(&client).cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let (backends, affinity) = lookup(&table, &target);
                let picked = balancer.lock().expect("balancer lock poisoned").pick(
                    &backends,
                    client.ip(),
                    affinity,
                    Instant::now(),
                );
                let Some(backend) = picked else { continue };
                let upstream = match UdpSocket::bind("0.0.0.0:0").await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("opening a UDP socket towards {backend}: {e}");
                        continue;
                    }
                };
                if let Err(e) = upstream.connect(backend).await {
                    tracing::debug!("connecting to {backend}: {e}");
                    continue;
                }
                let upstream = Arc::new(upstream);
                flows.lock().expect("udp flow lock poisoned").insert(client, upstream.clone());
                let (socket, flows, reply) = (socket.clone(), flows.clone(), upstream.clone());
                tasks.spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, reply.recv(&mut buf)).await {
                        let _ = socket.send_to(&buf[..n], client).await;
                    }
                    flows.lock().expect("udp flow lock poisoned").remove(&client);
                });
                upstream
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::seeded;

    const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    #[test]
    fn the_cluster_dns_address_gets_no_proxy_listener() {
        let dns = crate::service::tests::service(
            "kube-system",
            "kube-dns",
            serde_json::json!({"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
        );
        assert!(desired_listeners(&Table::build([&dns], []), RESERVED).is_empty());
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn round_robin_walks_the_ready_backends_in_turn() {
        let backends = addrs(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let mut b = Balancer::default();
        let client: IpAddr = "10.244.0.9".parse().unwrap();
        let now = Instant::now();
        let picked: Vec<_> = (0..4).map(|_| b.pick(&backends, client, None, now).unwrap()).collect();
        assert_eq!(picked, vec![backends[0], backends[1], backends[2], backends[0]]);
    }

    #[test]
    fn no_ready_backend_means_no_pick() {
        assert_eq!(Balancer::default().pick(&[], "10.0.0.9".parse().unwrap(), None, Instant::now()), None);
    }

    #[test]
    fn client_ip_affinity_sticks_until_the_timeout_or_the_backend_goes() {
        let backends = addrs(&["10.0.0.1:80", "10.0.0.2:80"]);
        let (a, c): (IpAddr, IpAddr) = ("10.244.0.1".parse().unwrap(), "10.244.0.2".parse().unwrap());
        let mut b = Balancer::default();
        let t0 = Instant::now();
        let hold = Some(Duration::from_secs(10));
        let first = b.pick(&backends, a, hold, t0).unwrap();
        assert_eq!(b.pick(&backends, c, hold, t0), Some(backends[1]));
        assert_eq!(b.pick(&backends, a, hold, t0 + Duration::from_secs(5)), Some(first));
        assert_eq!(b.pick(&backends, a, hold, t0 + Duration::from_secs(14)), Some(first), "each use renews");
        // Past the timeout the turn moves on.
        assert_eq!(b.pick(&backends, a, hold, t0 + Duration::from_secs(30)), Some(backends[0]));
        // A backend that is no longer ready is not stuck to.
        let only = addrs(&["10.0.0.2:80"]);
        assert_eq!(b.pick(&only, a, hold, t0 + Duration::from_secs(31)), Some(only[0]));
    }

    #[test]
    fn listeners_cover_every_tcp_and_udp_port_of_services_with_a_cluster_ip() {
        let keys: Vec<(String, Protocol)> = desired_listeners(&seeded(), RESERVED)
            .into_iter()
            .map(|k| (k.bind.to_string(), k.target.protocol))
            .collect();
        assert_eq!(
            keys,
            vec![("10.96.0.20:53".to_string(), Protocol::Udp), ("10.96.0.20:80".to_string(), Protocol::Tcp)]
        );
    }

    #[test]
    fn node_ports_listen_on_every_address() {
        let svc = crate::service::tests::service(
            "d",
            "np",
            serde_json::json!({"type": "NodePort", "clusterIP": "10.96.0.30",
                               "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
        );
        let keys: Vec<String> =
            desired_listeners(&Table::build([&svc], []), RESERVED).into_iter().map(|k| k.bind.to_string()).collect();
        assert_eq!(keys, vec!["0.0.0.0:30080", "10.96.0.30:80"]);
    }
}
