//! `skiff server`: its flags (k3s's names, each also read from `SKIFF_…`) and their checks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use clap::Args;

use crate::cidr::Cidr;
use crate::server::ServerConfig;

/// Components k3s can `--disable`. Skiff takes the same names so k3s command lines carry over;
/// each is what the named k3s add-on does (cluster DNS, service load balancer, local-path storage).
const DISABLEABLE: &[&str] = &["coredns", "servicelb", "traefik", "local-storage", "metrics-server"];

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Where Skiff keeps its state: database, TLS, images, containers, pod logs.
    #[arg(long, short = 'd', env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,

    /// Port of the HTTPS API.
    #[arg(long, env = "SKIFF_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,

    /// Address the API listens on.
    #[arg(long, env = "SKIFF_BIND_ADDRESS", default_value = "127.0.0.1")]
    pub bind_address: IpAddr,

    /// Pod IPs come from this block.
    #[arg(long, env = "SKIFF_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: Cidr,

    /// Service cluster IPs come from this block; its first address is Service `kubernetes`.
    #[arg(long, env = "SKIFF_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: Cidr,

    /// Cluster DNS address [default: the tenth address of --service-cidr].
    #[arg(long, env = "SKIFF_CLUSTER_DNS")]
    pub cluster_dns: Option<Ipv4Addr>,

    /// Domain of Services' DNS names.
    #[arg(long, env = "SKIFF_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Name of this node [default: the hostname].
    #[arg(long, env = "SKIFF_NODE_NAME")]
    pub node_name: Option<String>,

    /// Where to write the admin kubeconfig [default: <data-dir>/kubeconfig.yaml].
    #[arg(long, short = 'o', env = "SKIFF_WRITE_KUBECONFIG")]
    pub write_kubeconfig: Option<PathBuf>,

    /// File mode of the kubeconfig, in octal.
    #[arg(long, env = "SKIFF_WRITE_KUBECONFIG_MODE", default_value = "0600", value_parser = parse_mode)]
    pub write_kubeconfig_mode: u32,

    /// Components not to run (comma-separated or repeated): coredns, servicelb, traefik,
    /// local-storage, metrics-server.
    #[arg(long, env = "SKIFF_DISABLE", value_delimiter = ',')]
    pub disable: Vec<String>,

    /// Name of Skiff's cgroup under each cgroup hierarchy (tests use their own so they can run
    /// beside a real node).
    #[arg(long, env = "SKIFF_CGROUP_ROOT", default_value = "skiff")]
    pub cgroup_root: String,

    /// Name of the Linux bridge the pods' veths join; it holds the first address of the node's
    /// pod CIDR (the first /24 of --cluster-cidr, as k3s gives its first node).
    #[arg(long, env = "SKIFF_BRIDGE_NAME", default_value = "skiff0")]
    pub bridge_name: String,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0600"))
}

impl ServerArgs {
    /// Checks the flags against each other and fills in the defaults that depend on others.
    pub fn resolve(self) -> anyhow::Result<ServerConfig> {
        ensure!(
            !self.cluster_cidr.overlaps(&self.service_cidr),
            "--cluster-cidr {} overlaps --service-cidr {}",
            self.cluster_cidr,
            self.service_cidr
        );
        let kubernetes_service_ip = self
            .service_cidr
            .nth(1)
            .with_context(|| format!("--service-cidr {} has no address for Service kubernetes", self.service_cidr))?;
        let cluster_dns = match self.cluster_dns {
            Some(ip) => {
                ensure!(
                    self.service_cidr.contains(ip),
                    "--cluster-dns {ip} is outside --service-cidr {}",
                    self.service_cidr
                );
                ip
            }
            None => self.service_cidr.nth(10).with_context(|| {
                format!("--service-cidr {} is too small for a default --cluster-dns: pass one", self.service_cidr)
            })?,
        };
        ensure!(cluster_dns != kubernetes_service_ip, "--cluster-dns {cluster_dns} is Service kubernetes's address");
        ensure!(is_dns_subdomain(&self.cluster_domain), "--cluster-domain {:?} is not a DNS name", self.cluster_domain);

        let node_name = match self.node_name {
            Some(name) => name,
            None => nix::unistd::gethostname()
                .context("reading the hostname for --node-name")?
                .to_string_lossy()
                .to_lowercase(),
        };
        ensure!(
            is_dns_subdomain(&node_name),
            "node name {node_name:?} is not a lowercase DNS subdomain (RFC 1123): pass --node-name"
        );

        ensure!(
            !self.cgroup_root.is_empty()
                && !self.cgroup_root.contains('/')
                && self.cgroup_root != "."
                && self.cgroup_root != "..",
            "--cgroup-root {:?} must be one directory name",
            self.cgroup_root
        );
        ensure!(
            !self.bridge_name.is_empty()
                && self.bridge_name.len() <= 15
                && self.bridge_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "--bridge-name {:?} must be a network interface name (at most 15 of [A-Za-z0-9._-])",
            self.bridge_name
        );
        for component in &self.disable {
            if !DISABLEABLE.contains(&component.as_str()) {
                bail!("--disable {component:?}: unknown component (known: {})", DISABLEABLE.join(", "));
            }
        }

        let kubeconfig_path = self.write_kubeconfig.unwrap_or_else(|| self.data_dir.join("kubeconfig.yaml"));
        Ok(ServerConfig {
            listen: SocketAddr::new(self.bind_address, self.https_listen_port),
            data_dir: self.data_dir,
            cluster_cidr: self.cluster_cidr,
            service_cidr: self.service_cidr,
            kubernetes_service_ip,
            cluster_dns,
            cluster_domain: self.cluster_domain,
            node_name,
            kubeconfig_path,
            kubeconfig_mode: self.write_kubeconfig_mode,
            disabled: self.disable,
            cgroup_root: self.cgroup_root,
            bridge_name: self.bridge_name,
        })
    }
}

/// RFC 1123 subdomain, as Kubernetes checks node names: lowercase labels of `[a-z0-9-]`, at most
/// 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> anyhow::Result<ServerConfig> {
        let cli = Cli::try_parse_from([&["skiff", "server", "--node-name", "node1"], args].concat())?;
        match cli.command {
            Command::Server(args) => args.resolve(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_k3s() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/skiff"));
        assert_eq!(config.listen, "127.0.0.1:6443".parse().unwrap());
        assert_eq!(config.cluster_cidr.to_string(), "10.42.0.0/16");
        assert_eq!(config.service_cidr.to_string(), "10.43.0.0/16");
        assert_eq!(config.kubernetes_service_ip, Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(config.cluster_dns, Ipv4Addr::new(10, 43, 0, 10));
        assert_eq!(config.cluster_domain, "cluster.local");
        assert_eq!(config.kubeconfig_path, PathBuf::from("/var/lib/skiff/kubeconfig.yaml"));
        assert_eq!(config.kubeconfig_mode, 0o600);
        assert_eq!(config.cgroup_root, "skiff");
        assert!(config.disabled.is_empty());
    }

    #[test]
    fn cluster_dns_defaults_to_the_tenth_address_of_the_service_cidr() {
        let config = parse(&["--service-cidr", "10.243.0.0/16", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(config.cluster_dns, Ipv4Addr::new(10, 243, 0, 10));
        assert_eq!(config.kubeconfig_path, PathBuf::from("/tmp/x/kubeconfig.yaml"));
    }

    #[test]
    fn overlapping_cidrs_and_foreign_dns_are_refused() {
        let err = parse(&["--cluster-cidr", "10.0.0.0/8", "--service-cidr", "10.43.0.0/16"]).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        let err = parse(&["--cluster-dns", "192.168.1.1"]).unwrap_err();
        assert!(err.to_string().contains("outside --service-cidr"), "{err}");
    }

    #[test]
    fn kubeconfig_mode_is_octal_and_disable_takes_a_list() {
        let config = parse(&["--write-kubeconfig-mode", "644", "--disable", "traefik,servicelb"]).unwrap();
        assert_eq!(config.kubeconfig_mode, 0o644);
        assert_eq!(config.disabled, ["traefik", "servicelb"]);
        assert!(parse(&["--write-kubeconfig-mode", "0999"]).is_err());
        assert!(parse(&["--disable", "kubelet"]).unwrap_err().to_string().contains("unknown component"));
    }

    #[test]
    fn node_names_and_cgroup_roots_are_checked() {
        assert!(is_dns_subdomain("node-1.example"));
        assert!(!is_dns_subdomain("Node_1"));
        assert!(!is_dns_subdomain("-a"));
        assert!(parse(&["--cgroup-root", "a/b"]).is_err());
        assert_eq!(parse(&["--cgroup-root", "skiff-test-1-2"]).unwrap().cgroup_root, "skiff-test-1-2");
    }
}
