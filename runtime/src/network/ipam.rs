//! Address management for pods: one IPv4 address per sandbox from the cluster CIDR, leased
//! through files so nothing is handed out twice, also across restarts.
//!
//! ```text
//! <state>/leases/<ip>     contains the sandbox id; created with O_EXCL, so two sandboxes
//!                         racing for one address cannot both win
//! ```
//! The network address is never leased, the first host address is the bridge's (the pods'
//! gateway), and the broadcast address is skipped.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::state::io_ctx;
use crate::{Error, Result};

/// An IPv4 network such as `10.42.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Network(format!("invalid IPv4 CIDR {s:?}"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(Error::Network(format!("pod CIDR {s} must have a prefix between /8 and /30")));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self { network: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The `n`th address of the network (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// The bridge's address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

pub struct Ipam {
    cidr: Ipv4Cidr,
    leases: PathBuf,
}

impl Ipam {
    pub fn new(cidr: Ipv4Cidr, state_dir: &Path) -> Result<Self> {
        let leases = state_dir.join("leases");
        fs::create_dir_all(&leases).map_err(io_ctx(format!("creating {}", leases.display())))?;
        Ok(Self { cidr, leases })
    }

    /// The address leased to `sandbox`, if any.
    pub fn lookup(&self, sandbox: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self.all()?.into_iter().find(|(_, owner)| owner == sandbox).map(|(ip, _)| ip))
    }

    /// Every lease: (address, sandbox id).
    pub fn all(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let entries = fs::read_dir(&self.leases).map_err(io_ctx(format!("reading {}", self.leases.display())))?;
        let mut leases = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
            let owner = fs::read_to_string(entry.path()).unwrap_or_default();
            leases.push((ip, owner.trim().to_string()));
        }
        Ok(leases)
    }

    /// Leases an address to `sandbox` (the one it already has, if any).
    pub fn allocate(&self, sandbox: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.lookup(sandbox)? {
            return Ok(ip);
        }
        for n in 2..self.cidr.size() - 1 {
            let ip = self.cidr.nth(n);
            let path = self.leases.join(ip.to_string());
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(sandbox.as_bytes())
                        .and_then(|_| file.sync_all())
                        .map_err(io_ctx(format!("writing {}", path.display())))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_ctx(format!("creating {}", path.display()))(e)),
            }
        }
        Err(Error::Network(format!("no free address left in {}", self.cidr)))
    }

    /// Gives back whatever `sandbox` holds. Releasing nothing is not an error.
    pub fn release(&self, sandbox: &str) -> Result<()> {
        for (ip, owner) in self.all()? {
            if owner == sandbox {
                let path = self.leases.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_ctx(format!("removing {}", path.display()))(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_masks_host_bits_and_names_the_gateway() {
        let c = Ipv4Cidr::parse("10.42.7.9/16").unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 42, 255, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 43, 0, 1)));
        assert!(Ipv4Cidr::parse("10.42.0.0").is_err());
        assert!(Ipv4Cidr::parse("10.42.0.0/31").is_err());
    }

    #[test]
    fn addresses_are_unique_stable_per_sandbox_and_reused_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(Ipv4Cidr::parse("10.242.0.0/29").unwrap(), dir.path()).unwrap();
        let a = ipam.allocate("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 242, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 242, 0, 3));
        assert_eq!(ipam.allocate("a").unwrap(), a, "a sandbox keeps its address");
        // A new Ipam over the same directory (a restarted server) sees the same leases.
        let again = Ipam::new(Ipv4Cidr::parse("10.242.0.0/29").unwrap(), dir.path()).unwrap();
        assert_eq!(again.lookup("b").unwrap(), Some(b));
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate("c").unwrap(), a);
    }

    #[test]
    fn a_full_network_is_an_error_not_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        // /30: network, gateway, one pod address, broadcast.
        let ipam = Ipam::new(Ipv4Cidr::parse("10.242.0.0/30").unwrap(), dir.path()).unwrap();
        ipam.allocate("a").unwrap();
        assert!(ipam.allocate("b").is_err());
    }
}
