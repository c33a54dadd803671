//! Cluster DNS, answering as CoreDNS' kubernetes plugin does for the cluster domain:
//!
//! - `<svc>.<ns>.svc.<domain>` A → the clusterIP; for a headless Service, its ready endpoint
//!   IPs; for an ExternalName Service, a CNAME to the external name;
//! - `<hostname>.<svc>.<ns>.svc.<domain>` (StatefulSet pods) and `<a-b-c-d>.<svc>.<ns>.svc…`
//!   → that endpoint of a headless Service;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV, and SRV on the Service name for all named
//!   ports;
//! - `<a-b-c-d>.<ns>.pod.<domain>` → a.b.c.d (CoreDNS' `pods insecure`, its default);
//! - other names in the domain → NXDOMAIN, existing names of another type → NOERROR, no data.
//!
//! Names outside the cluster domain are forwarded to the first nameserver of the host's
//! /etc/resolv.conf. This server lives in the node's network namespace, so unlike a CoreDNS
//! pod it can reach a loopback resolver (systemd-resolved) too; with no usable nameserver the
//! answer is SERVFAIL. Every answer has TTL 5.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::{Error, ServiceConfig, ServiceInfo, SharedTable, Table};

pub const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What a query comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// NOERROR; no answers is "the name exists, but has no record of that type".
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NxDomain,
    /// Outside the cluster domain.
    Forward,
}

fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).ok()
}

fn a_record(name: &str, ip: Ipv4Addr) -> Option<Record> {
    Some(Record::from_rdata(fqdn(name)?, TTL, RData::A(A(ip))))
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn parse_dashed(label: &str) -> Option<Ipv4Addr> {
    if label.contains('.') {
        return None;
    }
    label.replace('-', ".").parse().ok()
}

fn empty() -> Resolution {
    Resolution::Answer { answers: Vec::new(), additionals: Vec::new() }
}

fn wants(qtype: RecordType, t: RecordType) -> bool {
    qtype == t || qtype == RecordType::ANY
}

/// Answers `qname`/`qtype` from the table; pure.
pub fn resolve(table: &Table, domain: &str, qname: &str, qtype: RecordType) -> Resolution {
    let name = qname.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let rest = if name == domain {
        ""
    } else if let Some(rest) = name.strip_suffix(&format!(".{domain}")) {
        rest
    } else {
        return Resolution::Forward;
    };
    let labels: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('.').collect() };
    match labels.as_slice() {
        [] | ["svc"] | ["pod"] => empty(),
        [ns, "svc"] => {
            if table.has_namespace(ns) {
                empty()
            } else {
                Resolution::NxDomain
            }
        }
        [svc, ns, "svc"] => match table.get(ns, svc) {
            Some(info) => service(info, &name, qtype, None),
            None => Resolution::NxDomain,
        },
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => match table.get(ns, svc) {
            Some(info) => {
                let base = name.splitn(3, '.').nth(2).unwrap_or_default().to_string();
                let wanted = (&port[1..], &proto[1..]);
                if info.ports.iter().any(|p| !p.name.is_empty() && (p.name.as_str(), p.protocol.label()) == wanted) {
                    service(info, &base, qtype, Some(wanted))
                } else {
                    Resolution::NxDomain
                }
            }
            None => Resolution::NxDomain,
        },
        [host, svc, ns, "svc"] => {
            let Some(info) = table.get(ns, svc).filter(|i| i.cluster_ip.is_none() && i.external_name.is_none()) else {
                return Resolution::NxDomain;
            };
            let found = info
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .find(|e| e.hostname.as_deref() == Some(*host) || parse_dashed(host) == Some(e.ip));
            match found {
                Some(e) if wants(qtype, RecordType::A) => {
                    Resolution::Answer { answers: a_record(&name, e.ip).into_iter().collect(), additionals: Vec::new() }
                }
                Some(_) => empty(),
                None => Resolution::NxDomain,
            }
        }
        [ip, _ns, "pod"] => match parse_dashed(ip) {
            Some(ip) if wants(qtype, RecordType::A) => {
                Resolution::Answer { answers: a_record(&name, ip).into_iter().collect(), additionals: Vec::new() }
            }
            Some(_) => empty(),
            None => Resolution::NxDomain,
        },
        _ => Resolution::NxDomain,
    }
}

/// The records of a Service name (`name` is `<svc>.<ns>.svc.<domain>`); `only` restricts SRV
/// to one (port name, protocol).
fn service(info: &ServiceInfo, name: &str, qtype: RecordType, only: Option<(&str, &str)>) -> Resolution {
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    if let Some(external) = &info.external_name {
        if let (Some(owner), Some(target)) = (fqdn(name), fqdn(external)) {
            answers.push(Record::from_rdata(owner, TTL, RData::CNAME(CNAME(target))));
        }
        return Resolution::Answer { answers, additionals };
    }
    let owner = match only {
        Some((port, proto)) => format!("_{port}._{proto}.{name}"),
        None => name.to_string(),
    };
    let ready: Vec<_> = info.endpoints.iter().filter(|e| e.ready).collect();
    if wants(qtype, RecordType::A) && only.is_none() {
        match info.cluster_ip {
            Some(ip) => answers.extend(a_record(name, ip)),
            None => answers.extend(ready.iter().filter_map(|e| a_record(name, e.ip))),
        }
    }
    if wants(qtype, RecordType::SRV) {
        let ports = info.ports.iter().filter(|p| !p.name.is_empty()).filter(|p| match only {
            Some(wanted) => (p.name.as_str(), p.protocol.label()) == wanted,
            None => true,
        });
        for port in ports {
            let Some(owner) = fqdn(&owner) else { continue };
            match info.cluster_ip {
                Some(ip) => {
                    if let Some(target) = fqdn(name) {
                        answers.push(Record::from_rdata(owner, TTL, RData::SRV(SRV::new(0, 100, port.port, target))));
                        additionals.extend(a_record(name, ip));
                    }
                }
                None => {
                    let serving: Vec<_> = ready
                        .iter()
                        .filter_map(|e| {
                            let (_, _, p) =
                                e.ports.iter().find(|(n, proto, _)| *n == port.name && *proto == port.protocol)?;
                            Some((e, *p))
                        })
                        .collect();
                    let weight = u16::try_from(100 / serving.len().max(1)).unwrap_or(100);
                    for (e, p) in serving {
                        let host = format!("{}.{name}", e.hostname.clone().unwrap_or_else(|| dashed(e.ip)));
                        if let Some(target) = fqdn(&host) {
                            answers.push(Record::from_rdata(
                                owner.clone(),
                                TTL,
                                RData::SRV(SRV::new(0, weight, p, target)),
                            ));
                            additionals.extend(a_record(&host, e.ip));
                        }
                    }
                }
            }
        }
    }
    additionals.dedup();
    Resolution::Answer { answers, additionals }
}

/// The first nameserver of the host's /etc/resolv.conf, port 53.
pub fn host_upstream() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    first_nameserver(&text)
}

fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()?.parse::<IpAddr>().ok()).flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
}

/// Builds the reply to `request` (its wire form); None when it is too short to even carry an id.
/// `Forward` comes back for the caller to relay.
pub fn answer(table: &Table, domain: &str, request: &[u8]) -> Result<Vec<u8>, Option<u16>> {
    let Ok(message) = Message::from_vec(request) else {
        return Err(request.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])));
    };
    let mut reply = Message::new();
    reply
        .set_id(message.id())
        .set_message_type(MessageType::Response)
        .set_op_code(message.op_code())
        .set_recursion_desired(message.recursion_desired())
        .set_recursion_available(true)
        .add_queries(message.queries().to_vec());
    if message.message_type() != MessageType::Query || message.op_code() != OpCode::Query {
        reply.set_response_code(ResponseCode::NotImp);
        return Ok(reply.to_vec().unwrap_or_default());
    }
    let [query] = message.queries() else {
        reply.set_response_code(ResponseCode::FormErr);
        return Ok(reply.to_vec().unwrap_or_default());
    };
    match resolve(table, domain, &query.name().to_ascii(), query.query_type()) {
        Resolution::Forward => return Err(Some(message.id())),
        Resolution::Answer { answers, additionals } => {
            reply.set_authoritative(true).add_answers(answers).add_additionals(additionals);
        }
        Resolution::NxDomain => {
            reply.set_authoritative(true).set_response_code(ResponseCode::NXDomain);
            reply.add_name_servers(soa(domain));
        }
    }
    Ok(reply.to_vec().unwrap_or_default())
}

/// The zone's SOA, in the authority section of negative answers so resolvers cache them for
/// the TTL only.
fn soa(domain: &str) -> Option<Record> {
    let apex = fqdn(domain)?;
    let rdata =
        SOA::new(fqdn(&format!("ns.dns.{domain}"))?, fqdn(&format!("hostmaster.{domain}"))?, 1, 7200, 1800, 86400, TTL);
    Some(Record::from_rdata(apex, TTL, RData::SOA(rdata)))
}

/// A reply with only the header, question and `code` (SERVFAIL when forwarding fails).
fn failure(request: &[u8], id: u16, code: ResponseCode) -> Vec<u8> {
    let mut reply = Message::new();
    reply.set_id(id).set_message_type(MessageType::Response).set_response_code(code).set_recursion_available(true);
    if let Ok(message) = Message::from_vec(request) {
        reply.set_op_code(message.op_code()).set_recursion_desired(message.recursion_desired());
        reply.add_queries(message.queries().to_vec());
    }
    reply.to_vec().unwrap_or_default()
}

/// Keeps a UDP reply within what the client takes (512 bytes, or its EDNS size): past that,
/// the header and question with TC set, so the client asks again over TCP.
fn fit_udp(request: &[u8], reply: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(request).map(|m| m.max_payload().max(512)).unwrap_or(512) as usize;
    if reply.len() <= limit {
        return reply;
    }
    let Ok(full) = Message::from_vec(&reply) else { return reply };
    let mut cut = Message::new();
    cut.set_id(full.id())
        .set_message_type(MessageType::Response)
        .set_op_code(full.op_code())
        .set_authoritative(full.authoritative())
        .set_recursion_desired(full.recursion_desired())
        .set_recursion_available(true)
        .set_truncated(true)
        .set_response_code(full.response_code())
        .add_queries(full.queries().to_vec());
    cut.to_vec().unwrap_or(reply)
}

pub struct DnsServer {
    config: ServiceConfig,
    table: SharedTable,
    upstream: Option<SocketAddr>,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
}

impl DnsServer {
    /// Binds UDP and TCP port 53 on the cluster DNS address (which must be local already).
    pub async fn bind(
        config: ServiceConfig,
        table: SharedTable,
        upstream: Option<SocketAddr>,
    ) -> Result<DnsServer, Error> {
        let addr = SocketAddr::new(IpAddr::V4(config.cluster_dns), 53);
        let udp = UdpSocket::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        let tcp = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        // Relaying to ourselves would loop.
        let upstream = upstream.filter(|u| u.ip() != IpAddr::V4(config.cluster_dns));
        if upstream.is_none() {
            tracing::warn!("no upstream nameserver in /etc/resolv.conf: names outside the cluster get SERVFAIL");
        }
        Ok(DnsServer { config, table, upstream, udp: Arc::new(udp), tcp })
    }

    pub async fn serve(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = this.udp.recv_from(&mut buf) => {
                    let Ok((n, client)) = received else { continue };
                    let (this, request) = (this.clone(), buf[..n].to_vec());
                    tokio::spawn(async move {
                        if let Some(reply) = this.reply(&request, false).await {
                            let _ = this.udp.send_to(&fit_udp(&request, reply), client).await;
                        }
                    });
                }
                accepted = this.tcp.accept() => {
                    let Ok((conn, _)) = accepted else { continue };
                    tokio::spawn(this.clone().serve_tcp(conn));
                }
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, mut conn: TcpStream) {
        loop {
            let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, conn.read_u16()).await else { return };
            let mut request = vec![0u8; len as usize];
            if conn.read_exact(&mut request).await.is_err() {
                return;
            }
            let Some(reply) = self.reply(&request, true).await else { return };
            let Ok(len) = u16::try_from(reply.len()) else { return };
            if conn.write_u16(len).await.is_err() || conn.write_all(&reply).await.is_err() {
                return;
            }
        }
    }

    async fn reply(&self, request: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let table = self.table.read().expect("service table lock poisoned").clone();
        match answer(&table, &self.config.cluster_domain, request) {
            Ok(reply) => Some(reply),
            Err(None) => None,
            Err(Some(id)) => {
                let Some(upstream) = self.upstream else {
                    return Some(failure(request, id, ResponseCode::ServFail));
                };
                let relayed = tokio::time::timeout(UPSTREAM_TIMEOUT, forward(upstream, request, tcp)).await;
                match relayed {
                    Ok(Ok(reply)) => Some(reply),
                    Ok(Err(e)) => {
                        tracing::debug!("forwarding to {upstream}: {e}");
                        Some(failure(request, id, ResponseCode::ServFail))
                    }
                    Err(_) => Some(failure(request, id, ResponseCode::ServFail)),
                }
            }
        }
    }
}

/// Relays the query as it is and returns the upstream's reply as it is (same id).
async fn forward(upstream: SocketAddr, request: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    if tcp {
        let mut conn = TcpStream::connect(upstream).await?;
        let len = u16::try_from(request.len()).map_err(std::io::Error::other)?;
        conn.write_u16(len).await?;
        conn.write_all(request).await?;
        let len = conn.read_u16().await?;
        let mut reply = vec![0u8; len as usize];
        conn.read_exact(&mut reply).await?;
        Ok(reply)
    } else {
        let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        socket.send(request).await?;
        let mut reply = vec![0u8; 65536];
        let n = socket.recv(&mut reply).await?;
        reply.truncate(n);
        Ok(reply)
    }
}

/// The resolv.conf of a pod, as the kubelet writes it for its `dnsPolicy` (`host` is the
/// node's own resolv.conf; `cluster` None when the node has no cluster DNS, where ClusterFirst
/// falls back to Default as Kubernetes' kubelet does).
pub fn pod_resolv_conf(pod: &Pod, cluster: Option<&ServiceConfig>, host: &str) -> String {
    let spec = pod.spec.as_ref();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec.and_then(|s| s.dns_policy.as_deref()).unwrap_or("ClusterFirst");
    let (mut nameservers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        (Vec::new(), Vec::new(), Vec::new());
    let host_parts = || {
        let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), Vec::new());
        for line in host.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => ns.extend(words.next().map(String::from)),
                Some("search") | Some("domain") => search = words.map(String::from).collect(),
                Some("options") => opts.extend(words.map(String::from)),
                _ => {}
            }
        }
        (ns, search, opts)
    };
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    match (policy, cluster) {
        ("None", _) => {}
        (_, Some(c)) if cluster_first => {
            let domain = c.cluster_domain.trim_end_matches('.');
            nameservers.push(c.cluster_dns.to_string());
            searches = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
            let (_, host_search, _) = host_parts();
            searches.extend(host_search);
            options.push("ndots:5".to_string());
        }
        _ => (nameservers, searches, options) = host_parts(),
    }
    if let Some(config) = spec.and_then(|s| s.dns_config.as_ref()) {
        nameservers.extend(config.nameservers.iter().flatten().cloned());
        searches.extend(config.searches.iter().flatten().cloned());
        for option in config.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else { continue };
            let rendered = match &option.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            };
            // A pod's option replaces the node's or cluster's of the same name.
            options.retain(|o| o.split(':').next() != Some(name));
            options.push(rendered);
        }
    }
    let mut seen = std::collections::HashSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    nameservers.truncate(3);
    searches.truncate(32);
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for ns in &nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Writes the pod's resolv.conf (see [`pod_resolv_conf`]) as `<pod_dir>/resolv.conf` and
/// returns the bind mount that puts it at /etc/resolv.conf in a container. The file is only
/// rewritten when its content changes, in place, so containers already running see it too.
pub fn resolv_conf_mount(
    pod: &Pod,
    cluster: Option<&ServiceConfig>,
    pod_dir: &std::path::Path,
) -> std::io::Result<skiff_runtime::MountSpec> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let content = pod_resolv_conf(pod, cluster, &host);
    let path = pod_dir.join("resolv.conf");
    let with_path = |e: std::io::Error| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display()));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
        std::fs::create_dir_all(pod_dir).map_err(with_path)?;
        std::fs::write(&path, content).map_err(with_path)?;
    }
    Ok(skiff_runtime::MountSpec { source: path.clone(), destination: "/etc/resolv.conf".into(), ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::seeded;

    const DOMAIN: &str = "cluster.local";

    fn ips(r: &Resolution) -> Vec<String> {
        match r {
            Resolution::Answer { answers, .. } => answers
                .iter()
                .map(|rec| match rec.data() {
                    RData::A(a) => a.0.to_string(),
                    RData::CNAME(c) => c.0.to_ascii(),
                    RData::SRV(s) => format!("{} {} {}", s.weight(), s.port(), s.target().to_ascii()),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn a_service_name_answers_its_cluster_ip() {
        let r = resolve(&seeded(), DOMAIN, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&r), vec!["10.96.0.20"]);
        let Resolution::Answer { answers, .. } = r else { unreachable!() };
        assert_eq!(answers[0].ttl(), 5);
        assert_eq!(answers[0].name().to_ascii(), "web.default.svc.cluster.local.");
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(
            ips(&resolve(&seeded(), DOMAIN, "Web.Default.SVC.cluster.local", RecordType::A)),
            vec!["10.96.0.20"]
        );
    }

    #[test]
    fn a_headless_service_answers_its_ready_endpoints_and_their_hostnames() {
        let table = seeded();
        assert_eq!(
            ips(&resolve(&table, DOMAIN, "db.prod.svc.cluster.local", RecordType::A)),
            vec!["10.244.0.8", "10.244.0.9"]
        );
        assert_eq!(ips(&resolve(&table, DOMAIN, "db-1.db.prod.svc.cluster.local", RecordType::A)), vec!["10.244.0.9"]);
        assert_eq!(
            ips(&resolve(&table, DOMAIN, "10-244-0-8.db.prod.svc.cluster.local", RecordType::A)),
            vec!["10.244.0.8"]
        );
        assert_eq!(resolve(&table, DOMAIN, "db-7.db.prod.svc.cluster.local", RecordType::A), Resolution::NxDomain);
    }

    #[test]
    fn not_ready_endpoints_are_not_answered() {
        let table = seeded();
        let r = resolve(&table, DOMAIN, "10-244-0-7.web.default.svc.cluster.local", RecordType::A);
        assert_eq!(r, Resolution::NxDomain, "web is not headless, and .7 is not ready");
    }

    #[test]
    fn an_external_name_service_is_a_cname() {
        assert_eq!(ips(&resolve(&seeded(), DOMAIN, "ext.prod.svc.cluster.local", RecordType::A)), vec!["example.com."]);
    }

    #[test]
    fn srv_names_a_port_by_name_and_protocol() {
        let table = seeded();
        let r = resolve(&table, DOMAIN, "_http._tcp.web.default.svc.cluster.local", RecordType::SRV);
        assert_eq!(ips(&r), vec!["100 80 web.default.svc.cluster.local."]);
        let Resolution::Answer { additionals, .. } = r else { unreachable!() };
        assert_eq!(additionals.len(), 1);
        let r = resolve(&table, DOMAIN, "_pg._tcp.db.prod.svc.cluster.local", RecordType::SRV);
        assert_eq!(ips(&r), vec!["50 5432 db-0.db.prod.svc.cluster.local.", "50 5432 db-1.db.prod.svc.cluster.local."]);
        assert_eq!(
            resolve(&table, DOMAIN, "_http._udp.web.default.svc.cluster.local", RecordType::SRV),
            Resolution::NxDomain
        );
    }

    #[test]
    fn an_existing_name_without_records_of_the_type_is_no_data_not_nxdomain() {
        let r = resolve(&seeded(), DOMAIN, "web.default.svc.cluster.local", RecordType::AAAA);
        assert_eq!(r, empty());
        assert_eq!(resolve(&seeded(), DOMAIN, "prod.svc.cluster.local", RecordType::A), empty());
    }

    #[test]
    fn pod_names_answer_the_address_they_spell() {
        let r = resolve(&seeded(), DOMAIN, "10-244-1-3.default.pod.cluster.local", RecordType::A);
        assert_eq!(ips(&r), vec!["10.244.1.3"]);
        assert_eq!(resolve(&seeded(), DOMAIN, "nope.default.pod.cluster.local", RecordType::A), Resolution::NxDomain);
    }

    #[test]
    fn unknown_names_in_the_domain_are_nxdomain_and_others_are_forwarded() {
        let table = seeded();
        assert_eq!(resolve(&table, DOMAIN, "nope.default.svc.cluster.local", RecordType::A), Resolution::NxDomain);
        assert_eq!(resolve(&table, DOMAIN, "web.other.svc.cluster.local", RecordType::A), Resolution::NxDomain);
        assert_eq!(resolve(&table, DOMAIN, "example.com.cluster.local", RecordType::A), Resolution::NxDomain);
        assert_eq!(resolve(&table, DOMAIN, "example.com", RecordType::A), Resolution::Forward);
        assert_eq!(resolve(&table, DOMAIN, "notcluster.local", RecordType::A), Resolution::Forward);
    }

    #[test]
    fn wire_answers_carry_the_id_question_and_codes() {
        let table = seeded();
        let mut q = Message::new();
        q.set_id(4242).set_recursion_desired(true);
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let reply = Message::from_vec(&answer(&table, DOMAIN, &q.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!((reply.id(), reply.response_code(), reply.authoritative()), (4242, ResponseCode::NoError, true));
        assert_eq!(reply.answers().len(), 1);

        let mut q = Message::new();
        q.set_id(7);
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("x.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let reply = Message::from_vec(&answer(&table, DOMAIN, &q.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        assert!(matches!(reply.name_servers()[0].data(), RData::SOA(_)));

        let mut q = Message::new();
        q.set_id(9);
        q.add_query(hickory_proto::op::Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A));
        assert_eq!(answer(&table, DOMAIN, &q.to_vec().unwrap()), Err(Some(9)));
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = Message::new();
        q.set_id(id).set_recursion_desired(true);
        q.add_query(hickory_proto::op::Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        q.to_vec().unwrap()
    }

    /// A stand-in upstream on loopback (UDP and TCP on one port) answering every A query with
    /// 192.0.2.1.
    async fn fake_upstream() -> SocketAddr {
        fn reply(request: &[u8]) -> Vec<u8> {
            let request = Message::from_vec(request).unwrap();
            let mut reply = Message::new();
            reply.set_id(request.id()).set_message_type(MessageType::Response).add_queries(request.queries().to_vec());
            let name = request.queries()[0].name().clone();
            reply.add_answer(Record::from_rdata(name, 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
            reply.to_vec().unwrap()
        }
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&reply(&buf[..n]), from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = tcp.accept().await {
                let len = conn.read_u16().await.unwrap();
                let mut request = vec![0u8; len as usize];
                conn.read_exact(&mut request).await.unwrap();
                let answer = reply(&request);
                conn.write_u16(answer.len() as u16).await.unwrap();
                conn.write_all(&answer).await.unwrap();
            }
        });
        addr
    }

    async fn ask_udp(server: SocketAddr, request: &[u8]) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(request, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf)).await.unwrap().unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    /// Binds port 53 on a loopback address of its own, so it needs root as the other network
    /// tests do.
    #[tokio::test]
    async fn the_server_answers_cluster_names_and_relays_the_rest_over_udp_and_tcp() {
        let pid = std::process::id();
        let ip = Ipv4Addr::new(127, 53, (pid % 250) as u8, 1 + (pid / 250 % 250) as u8);
        let config = ServiceConfig { cluster_dns: ip, cluster_domain: DOMAIN.into() };
        let table: SharedTable = Arc::new(std::sync::RwLock::new(Arc::new(seeded())));
        let server = DnsServer::bind(config, table.clone(), Some(fake_upstream().await)).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(server.serve(stop.clone()));
        let _stop = stop.drop_guard();
        let at = SocketAddr::new(IpAddr::V4(ip), 53);

        let local = ask_udp(at, &query(1, "web.default.svc.cluster.local.")).await;
        assert_eq!((local.id(), local.answers().len()), (1, 1));
        assert_eq!(local.answers()[0].data(), &RData::A(A(Ipv4Addr::new(10, 96, 0, 20))));

        let relayed = ask_udp(at, &query(2, "example.com.")).await;
        assert_eq!(relayed.id(), 2);
        assert_eq!(relayed.answers()[0].data(), &RData::A(A(Ipv4Addr::new(192, 0, 2, 1))));

        let mut conn = TcpStream::connect(at).await.unwrap();
        let request = query(3, "example.org.");
        conn.write_u16(request.len() as u16).await.unwrap();
        conn.write_all(&request).await.unwrap();
        let len = conn.read_u16().await.unwrap();
        let mut reply = vec![0u8; len as usize];
        conn.read_exact(&mut reply).await.unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!((reply.id(), reply.answers().len()), (3, 1));
    }

    #[tokio::test]
    async fn without_an_upstream_outside_names_get_servfail() {
        let pid = std::process::id();
        let ip = Ipv4Addr::new(127, 54, (pid % 250) as u8, 1 + (pid / 250 % 250) as u8);
        let config = ServiceConfig { cluster_dns: ip, cluster_domain: DOMAIN.into() };
        let table: SharedTable = Arc::new(std::sync::RwLock::new(Arc::new(seeded())));
        let server = DnsServer::bind(config, table, None).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(server.serve(stop.clone()));
        let _stop = stop.drop_guard();
        let reply = ask_udp(SocketAddr::new(IpAddr::V4(ip), 53), &query(4, "example.com.")).await;
        assert_eq!((reply.id(), reply.response_code()), (4, ResponseCode::ServFail));
        assert_eq!(reply.queries().len(), 1);
    }

    #[test]
    fn a_udp_reply_past_512_bytes_is_cut_to_the_question_with_tc_set() {
        let addresses: Vec<_> = (1..=60).map(|i| serde_json::json!({"ip": format!("10.244.1.{i}")})).collect();
        let svc = crate::service::tests::service("d", "many", serde_json::json!({"clusterIP": "None"}));
        let eps = crate::service::tests::endpoints("d", "many", serde_json::json!([{"addresses": addresses}]));
        let table = Table::build([&svc], [&eps]);
        let request = query(5, "many.d.svc.cluster.local.");
        let full = answer(&table, DOMAIN, &request).unwrap();
        assert!(full.len() > 512);
        assert_eq!(Message::from_vec(&full).unwrap().answers().len(), 60, "TCP gets everything");
        let cut = Message::from_vec(&fit_udp(&request, full)).unwrap();
        assert!(cut.truncated() && cut.answers().is_empty());
        assert_eq!((cut.id(), cut.queries().len()), (5, 1));
    }

    #[test]
    fn the_first_nameserver_of_resolv_conf_is_the_upstream() {
        let conf = "# comment\nsearch example.org\nnameserver 10.255.255.53\nnameserver 1.1.1.1\n";
        assert_eq!(first_nameserver(conf), Some("10.255.255.53:53".parse().unwrap()));
        assert_eq!(first_nameserver("search x\n"), None);
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"namespace": "shop", "name": "p"}, "spec": spec}))
            .unwrap()
    }

    const HOST: &str = "search corp.example\nnameserver 10.255.255.53\noptions edns0\n";

    fn cluster() -> ServiceConfig {
        ServiceConfig { cluster_dns: "10.96.0.10".parse().unwrap(), cluster_domain: "cluster.local".into() }
    }

    #[test]
    fn cluster_first_pods_search_their_namespace_first_with_ndots_5() {
        let conf = pod_resolv_conf(&pod(serde_json::json!({"containers": []})), Some(&cluster()), HOST);
        assert_eq!(
            conf,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_policy_and_host_network_pods_get_the_hosts_resolv_conf() {
        let p = pod(serde_json::json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(
            pod_resolv_conf(&p, Some(&cluster()), HOST),
            "search corp.example\nnameserver 10.255.255.53\noptions edns0\n"
        );
        let p = pod(serde_json::json!({"containers": [], "hostNetwork": true}));
        assert_eq!(
            pod_resolv_conf(&p, Some(&cluster()), HOST),
            "search corp.example\nnameserver 10.255.255.53\noptions edns0\n"
        );
        let p = pod(serde_json::json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert!(pod_resolv_conf(&p, Some(&cluster()), HOST).contains("nameserver 10.96.0.10\n"));
        let p = pod(serde_json::json!({"containers": []}));
        assert_eq!(pod_resolv_conf(&p, None, HOST), "search corp.example\nnameserver 10.255.255.53\noptions edns0\n");
    }

    #[test]
    fn the_resolv_conf_file_is_written_once_and_mounted_at_etc_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let p = pod(serde_json::json!({"containers": []}));
        let mount = resolv_conf_mount(&p, Some(&cluster()), &dir.path().join("pod")).unwrap();
        assert_eq!((mount.destination.as_str(), mount.read_only), ("/etc/resolv.conf", false));
        let text = std::fs::read_to_string(&mount.source).unwrap();
        assert!(text.starts_with("search shop.svc.cluster.local ") && text.contains("nameserver 10.96.0.10\n"));
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&mount.source).unwrap());
        resolv_conf_mount(&p, Some(&cluster()), &dir.path().join("pod")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&mount.source).unwrap()), inode);
    }

    #[test]
    fn none_policy_takes_only_the_pods_dns_config_and_it_merges_elsewhere() {
        let p = pod(serde_json::json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            pod_resolv_conf(&p, Some(&cluster()), HOST),
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        let p = pod(serde_json::json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}));
        assert!(pod_resolv_conf(&p, Some(&cluster()), HOST).ends_with("options ndots:1\n"));
    }
}
