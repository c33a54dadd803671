//! `skiff bench runtime`: Skiff's container runtime against the OCI runtimes on the same
//! machine ([`cycle`]), and pod start latency through a real server ([`pods`]). Everything it
//! makes lives under one scratch directory and cgroup/bridge names derived from it
//! ([`sweep::Scratch`]), removed at the end also after an error or Ctrl-C.

mod cycle;
mod image;
mod pods;
mod stats;
mod sweep;

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub struct RuntimeBench {
    pub iterations: usize,
    pub pods: usize,
    pub work_dir: PathBuf,
}

pub async fn runtime(opts: RuntimeBench) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("skiff bench runtime starts containers: run it as root");
    }
    let cancel = CancellationToken::new();
    watch_signals(cancel.clone())?;
    let mut scratch = sweep::Scratch::create(&opts.work_dir)?;
    let name = scratch.name();
    let (runtime_cgroups, server_cgroups) = (name.clone(), format!("{name}-srv"));
    // A Linux interface name has at most 15 bytes.
    let bridge = format!("skb{}", std::process::id() % 1_000_000);
    scratch.cgroup_roots = vec![runtime_cgroups.clone(), server_cgroups.clone()];
    scratch.links = vec![bridge.clone()];
    println!("skiff bench runtime: scratch {}, host {}", scratch.dir.display(), host_summary());

    let ip_forward = read_ip_forward();
    let result = async {
        let image = image::build(&scratch.dir)?;
        if opts.iterations > 0 {
            cycle::run(
                cycle::Setup {
                    scratch: &scratch.dir,
                    cgroup_root: &runtime_cgroups,
                    layer: &image.layer,
                    archive: &image.archive,
                    iterations: opts.iterations,
                },
                &cancel,
            )
            .await?;
        }
        if opts.pods > 0 {
            pods::run(
                pods::Setup {
                    scratch: &scratch.dir,
                    cgroup_root: &server_cgroups,
                    bridge: &bridge,
                    archive: &image.archive,
                    pods: opts.pods,
                },
                &cancel,
            )
            .await?;
        }
        anyhow::Ok(())
    }
    .await;
    let left = tokio::task::block_in_place(|| scratch.sweep());
    if left.is_empty() {
        println!("cleanup: nothing left behind (processes, mounts, cgroups, bridge, veths and nftables table checked)");
    } else {
        println!("cleanup: these were left behind and have been removed now:\n{left}");
    }
    let now = read_ip_forward();
    if now != ip_forward {
        // Not put back here: another Skiff server on this host may be the one that needs it.
        println!("note: net.ipv4.ip_forward was {ip_forward} when the bench started and is {now} now");
    }
    result
}

fn read_ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default().trim().to_string()
}

/// Ctrl-C or SIGTERM stop the bench after the step in progress; it then cleans up.
fn watch_signals(cancel: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("skiff bench: stopping and cleaning up…");
        cancel.cancel();
    });
    Ok(())
}

fn host_summary() -> String {
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("kernel {kernel}, {cpus} cpus, load {}", load.join(" "))
}
