//! Pod networking: a Linux bridge on the node (`skiff0` by default) holding the first address
//! of the cluster CIDR, and per sandbox a veth pair — one end on the bridge, the other moved
//! into the sandbox's network namespace as `eth0` with the pod's address and a default route
//! via the bridge. Pods reach each other over the bridge and the node reaches every pod; the
//! hairpin flag on each port lets a pod reach itself through a Service address.
//!
//! All of it is netlink (rtnetlink), no `ip(8)`. Work inside a pod's namespace runs on a
//! short-lived thread that enters the namespace, so no server thread ever changes namespace.
//!
//! Egress ([`PodNetwork::enable_egress`]): `ip_forward=1` (see [`forwarding`]) and an nftables
//! table of this instance that masquerades pod traffic leaving the cluster CIDR (see [`nft`]).
//! Not done here yet: IPv6.

pub mod forwarding;
mod ipam;
pub mod nft;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
pub use ipam::{Ipam, Ipv4Cidr};
use rtnetlink::packet_route::link::InfoBridgePort;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{Error, Result};

/// How the node's pod network is laid out.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The bridge's name (`skiff0`; tests use their own).
    pub bridge: String,
    /// The cluster CIDR pods get their addresses from.
    pub cidr: Ipv4Cidr,
    /// Where leases are kept (`<runtime root>/network`).
    pub state_dir: PathBuf,
}

pub struct PodNetwork {
    config: NetworkConfig,
    ipam: Ipam,
}

fn net_err(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| Error::Network(format!("{what}: {e}"))
}

fn connect() -> Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::Network(format!("opening a netlink socket: {e}")))?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(net_err(format!("looking up link {name}"))(e)),
    }
}

/// What [`PodNetwork::enable_egress`] set up: the masquerade table and this instance's claim on
/// `ip_forward`. [`Egress::remove`] (or dropping it) undoes both, on the calling thread, which
/// must be in the namespace the egress was enabled in.
#[derive(Debug)]
pub struct Egress {
    table: String,
    forwarding: Option<forwarding::ForwardingHold>,
}

impl Egress {
    /// The nftables table (family `ip`) holding the masquerade rule.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The `ip_forward` value found at start.
    pub fn previous_ip_forward(&self) -> Option<&str> {
        self.forwarding.as_ref().map(|f| f.previous.as_str())
    }

    /// Deletes the table and releases `ip_forward` (the last instance restores the value it found).
    pub fn remove(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(hold) = self.forwarding.take() else { return Ok(()) };
        let table = nft::delete_table(&self.table);
        let restored = hold.release()?;
        table?;
        match restored {
            Some(value) => {
                tracing::info!(table = %self.table, "pod egress removed; net.ipv4.ip_forward restored to {value}")
            }
            None => tracing::info!(table = %self.table, "pod egress removed"),
        }
        Ok(())
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(table = %self.table, "removing pod egress: {e}");
        }
    }
}

/// The host-side veth name of a sandbox: at most 15 bytes, stable per sandbox id.
pub fn host_veth_name(sandbox: &str) -> String {
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(sandbox.as_bytes()));
    format!("veth{}", &hex::encode(digest)[..11])
}

/// The pod-side end of a sandbox's veth pair until it is renamed `eth0` in the pod.
fn peer_name(host: &str) -> String {
    format!("{}p", &host[..14])
}

impl PodNetwork {
    pub fn new(config: NetworkConfig) -> Result<Self> {
        let ipam = Ipam::new(config.cidr, &config.state_dir)?;
        Ok(Self { config, ipam })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Lets pods reach beyond the node: turns on `ip_forward` and writes this instance's
    /// nftables table masquerading traffic from `cluster` (the whole cluster CIDR, of which this
    /// node's pod CIDR is a part) to anything outside it. A table left by a killed server is
    /// replaced. Synchronous: acts on the calling thread's network namespace.
    pub fn enable_egress(&self, cluster: Ipv4Cidr) -> Result<Egress> {
        let table = nft::table_name(&self.config.bridge);
        let hold = forwarding::hold(&self.config.bridge)?;
        let previous = hold.previous.clone();
        let mut egress = Egress { table: table.clone(), forwarding: Some(hold) };
        if let Err(e) = nft::write_masquerade_table(&table, cluster) {
            // Put ip_forward back before reporting (the table was never written).
            let _ = egress.forwarding.take().map(forwarding::ForwardingHold::release);
            return Err(e);
        }
        if previous == "1" {
            tracing::info!(%table, %cluster, "pod egress: masquerading traffic leaving the cluster CIDR; net.ipv4.ip_forward was already 1");
        } else {
            tracing::info!(%table, %cluster, "pod egress: masquerading traffic leaving the cluster CIDR; net.ipv4.ip_forward set to 1 (was {previous}; put back when the last Skiff on this host stops)");
        }
        Ok(egress)
    }

    /// Creates the bridge with the gateway address if it is missing, and brings it up.
    pub async fn ensure_bridge(&self) -> Result<()> {
        let handle = connect()?;
        let bridge = &self.config.bridge;
        let index = match link_index(&handle, bridge).await? {
            Some(index) => index,
            None => {
                handle
                    .link()
                    .add(LinkBridge::new(bridge).build())
                    .execute()
                    .await
                    .map_err(net_err(format!("creating bridge {bridge}")))?;
                link_index(&handle, bridge).await?.ok_or_else(|| Error::Network(format!("bridge {bridge} vanished")))?
            }
        };
        let gateway = self.config.cidr.gateway();
        let mut addresses = handle.address().get().set_link_index_filter(index).execute();
        let mut has_gateway = false;
        while let Some(msg) = addresses.try_next().await.map_err(net_err(format!("listing addresses of {bridge}")))? {
            has_gateway |= msg.attributes.iter().any(|a| {
                matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) if *ip == gateway)
            });
        }
        if !has_gateway {
            handle
                .address()
                .add(index, IpAddr::V4(gateway), self.config.cidr.prefix)
                .execute()
                .await
                .map_err(net_err(format!("adding {gateway}/{} to {bridge}", self.config.cidr.prefix)))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(net_err(format!("bringing {bridge} up")))?;
        Ok(())
    }

    /// Gives the sandbox whose network namespace is pinned at `netns` its address: a veth pair
    /// to the bridge, `eth0` inside with the address and a default route. Idempotent: a sandbox
    /// that is already attached keeps its address.
    pub async fn attach(&self, sandbox: &str, netns: &Path) -> Result<Ipv4Addr> {
        self.ensure_bridge().await?;
        let ip = self.ipam.allocate(sandbox)?;
        let handle = connect()?;
        let host = host_veth_name(sandbox);
        if let Some(index) = link_index(&handle, &host).await? {
            // Whole once its peer has left for the pod's namespace. A pair whose peer is still
            // here was made just before the server died (kill -9 mid-attach): made again.
            if link_index(&handle, &peer_name(&host)).await?.is_none() {
                return Ok(ip);
            }
            handle.link().del(index).execute().await.map_err(net_err(format!("deleting half-made veth {host}")))?;
        }
        let result = self.plumb(&handle, &host, netns, ip).await;
        if result.is_err() {
            // Leave nothing half-made: the pair (if any) and the lease.
            if let Ok(Some(index)) = link_index(&handle, &host).await {
                let _ = handle.link().del(index).execute().await;
            }
            let _ = self.ipam.release(sandbox);
        }
        result.map(|()| ip)
    }

    async fn plumb(&self, handle: &Handle, host: &str, netns: &Path, ip: Ipv4Addr) -> Result<()> {
        let peer = peer_name(host);
        handle
            .link()
            .add(LinkVeth::new(host, &peer).build())
            .execute()
            .await
            .map_err(net_err(format!("creating veth {host}")))?;
        let bridge =
            link_index(handle, &self.config.bridge).await?.ok_or_else(|| Error::Network("bridge missing".into()))?;
        let host_index =
            link_index(handle, host).await?.ok_or_else(|| Error::Network(format!("veth {host} vanished")))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(host_index).controller(bridge).up().build())
            .execute()
            .await
            .map_err(net_err(format!("attaching {host} to {}", self.config.bridge)))?;
        handle
            .link()
            .set_port(LinkBridgePort::new(host_index).append_info_data(InfoBridgePort::HairpinMode(true)).build())
            .execute()
            .await
            .map_err(net_err(format!("setting hairpin on {host}")))?;
        let ns = std::fs::File::open(netns).map_err(|e| Error::Network(format!("opening {}: {e}", netns.display())))?;
        let peer_index =
            link_index(handle, &peer).await?.ok_or_else(|| Error::Network(format!("veth {peer} vanished")))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(peer_index).setns_by_fd(ns.as_raw_fd()).build())
            .execute()
            .await
            .map_err(net_err(format!("moving {peer} into the pod's namespace")))?;
        let (cidr, gateway) = (self.config.cidr, self.config.cidr.gateway());
        in_namespace(netns, move |handle| async move {
            let index = link_index(&handle, &peer)
                .await?
                .ok_or_else(|| Error::Network(format!("{peer} not in the pod's namespace")))?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).name("eth0").build())
                .execute()
                .await
                .map_err(net_err("renaming to eth0"))?;
            handle
                .address()
                .add(index, IpAddr::V4(ip), cidr.prefix)
                .execute()
                .await
                .map_err(net_err(format!("adding {ip} to eth0")))?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(net_err("bringing eth0 up"))?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(index).build();
            handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(net_err(format!("adding the default route via {gateway}")))?;
            Ok(())
        })
        .await
    }

    /// The address of an attached sandbox.
    pub fn address(&self, sandbox: &str) -> Result<Option<Ipv4Addr>> {
        self.ipam.lookup(sandbox)
    }

    /// Removes the sandbox's veth pair (deleting the host end deletes both) and its lease.
    /// Idempotent.
    pub async fn detach(&self, sandbox: &str) -> Result<()> {
        let handle = connect()?;
        let host = host_veth_name(sandbox);
        if let Some(index) = link_index(&handle, &host).await? {
            match handle.link().del(index).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(net_err(format!("deleting {host}"))(e)),
            }
        }
        self.ipam.release(sandbox)
    }

    /// Adds `ip/32` to the bridge (creating the bridge if needed), so that pods (whose default
    /// route is the bridge) and the node itself deliver traffic for it to local sockets: how
    /// the service proxy receives a Service's clusterIP without netfilter. Idempotent.
    pub async fn add_local_address(&self, ip: Ipv4Addr) -> Result<()> {
        self.ensure_bridge().await?;
        let handle = connect()?;
        let bridge = &self.config.bridge;
        let index =
            link_index(&handle, bridge).await?.ok_or_else(|| Error::Network(format!("bridge {bridge} missing")))?;
        match handle.address().add(index, IpAddr::V4(ip), 32).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(net_err(format!("adding {ip}/32 to {bridge}"))(e)),
        }
    }

    /// Removes `ip/32` from the bridge. Idempotent (a missing bridge or address is fine).
    pub async fn remove_local_address(&self, ip: Ipv4Addr) -> Result<()> {
        let handle = connect()?;
        let bridge = &self.config.bridge;
        let Some(index) = link_index(&handle, bridge).await? else { return Ok(()) };
        let mut addresses = handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addresses.try_next().await.map_err(net_err(format!("listing addresses of {bridge}")))? {
            if msg.header.prefix_len == 32 && address_of(&msg) == Some(ip) {
                match handle.address().del(msg).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                    Err(e) => return Err(net_err(format!("removing {ip}/32 from {bridge}"))(e)),
                }
                break;
            }
        }
        Ok(())
    }

    /// The `/32` addresses on the bridge (those [`Self::add_local_address`] adds; the gateway's
    /// prefix is shorter, so it is never among them).
    pub async fn local_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        let handle = connect()?;
        let bridge = &self.config.bridge;
        let Some(index) = link_index(&handle, bridge).await? else { return Ok(Vec::new()) };
        let mut addresses = handle.address().get().set_link_index_filter(index).execute();
        let mut found = Vec::new();
        while let Some(msg) = addresses.try_next().await.map_err(net_err(format!("listing addresses of {bridge}")))? {
            if msg.header.prefix_len == 32 {
                found.extend(address_of(&msg));
            }
        }
        Ok(found)
    }

    /// Deletes the bridge (the node's network goes with its last pod; used on cleanup).
    pub async fn remove_bridge(&self) -> Result<()> {
        let handle = connect()?;
        if let Some(index) = link_index(&handle, &self.config.bridge).await? {
            handle.link().del(index).execute().await.map_err(net_err(format!("deleting {}", self.config.bridge)))?;
        }
        Ok(())
    }
}

fn address_of(msg: &rtnetlink::packet_route::address::AddressMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })
}

/// Runs `work` with a netlink connection inside the network namespace pinned at `netns`, on a
/// thread of its own that enters the namespace and ends afterwards.
async fn in_namespace<F, Fut>(netns: &Path, work: F) -> Result<()>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    let netns = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&netns)
                    .map_err(|e| Error::Network(format!("opening {}: {e}", netns.display())))?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Network(format!("entering {}: {e}", netns.display())))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Network(format!("starting a runtime in the pod's namespace: {e}")))?;
                rt.block_on(async move { work(connect()?).await })
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| Error::Network(format!("starting a thread for the pod's namespace: {e}")))?;
    rx.await.map_err(|_| Error::Network("the namespace thread died".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_the_kernel_limit_and_are_stable() {
        let a = host_veth_name("3f1c6a7e-0000-4000-8000-000000000001");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_veth_name("3f1c6a7e-0000-4000-8000-000000000001"));
        assert_ne!(a, host_veth_name("3f1c6a7e-0000-4000-8000-000000000002"));
    }
}
