//! IPv4 CIDR blocks, as `--cluster-cidr` and `--service-cidr` take them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: its first address and prefix length (`10.43.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `n`th address of the block (0 is the network address itself), if the block has one.
    /// Kubernetes gives the first (`n = 1`) to Service `kubernetes` and k3s the tenth to DNS.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + n as u32))
    }

    /// The first block of `prefix` bits inside this one (itself, when it is already smaller).
    pub fn first_subnet(&self, prefix: u8) -> Cidr {
        Cidr { network: self.network, prefix: self.prefix.max(prefix) }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as 10.42.0.0/16"))?;
        let addr: Ipv4Addr =
            addr.parse().map_err(|_| format!("{addr:?} in {s:?} is not an IPv4 address (only IPv4 is supported)"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {prefix:?} in {s:?} is not a number from 0 to 32"))?;
        if u32::from(addr) & !mask(prefix) != 0 {
            let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
            return Err(format!("{s:?} has host bits set: the network is {network}/{prefix}"));
        }
        Ok(Cidr { network: addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidr_yields_kubernetes_and_dns_addresses() {
        let cidr: Cidr = "10.43.0.0/16".parse().unwrap();
        assert_eq!(cidr.nth(1), Some(Ipv4Addr::new(10, 43, 0, 1)));
        assert_eq!(cidr.nth(10), Some(Ipv4Addr::new(10, 43, 0, 10)));
        assert_eq!(cidr.to_string(), "10.43.0.0/16");
    }

    #[test]
    fn a_block_too_small_has_no_tenth_address() {
        let cidr: Cidr = "10.0.0.0/29".parse().unwrap();
        assert_eq!(cidr.nth(7), Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(cidr.nth(10), None);
    }

    #[test]
    fn host_bits_and_bad_prefixes_are_rejected_with_the_reason() {
        assert!("10.43.0.1/16".parse::<Cidr>().unwrap_err().contains("host bits"));
        assert!("10.43.0.0/33".parse::<Cidr>().unwrap_err().contains("prefix length"));
        assert!("10.43.0.0".parse::<Cidr>().unwrap_err().contains("not a CIDR"));
        assert!("fd00::/8".parse::<Cidr>().unwrap_err().contains("IPv4"));
    }

    #[test]
    fn overlap_is_symmetric_and_detects_nesting() {
        let a: Cidr = "10.42.0.0/16".parse().unwrap();
        let b: Cidr = "10.42.128.0/17".parse().unwrap();
        let c: Cidr = "10.43.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
