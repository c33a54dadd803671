//! Part one: one container's whole life (create, start, wait, delete) running `/bin/true` from
//! the same busybox layer, for Skiff's runtime and for the OCI runtimes installed beside it,
//! interleaved (every iteration runs each runtime once, in turn) so that load from elsewhere on
//! the machine hits all of them alike.
//!
//! Skiff is driven through `skiff_runtime::Runtime` in this process, twice over: a whole pod
//! (sandbox with its net/ipc/uts namespaces, then the container: the same namespaces runc's
//! default spec makes) and a container in a sandbox that already exists (what a container
//! restart in a running pod costs). The peers run `<peer> run` on an OCI bundle whose config is
//! `runc spec`'s with `/bin/true`, no terminal and a writable root (as Skiff's overlay root is),
//! and whose rootfs is the busybox layer unpacked. `run` is create + start + wait + delete in one
//! command, the way a caller would use it.
//!
//! crun 1.8 refuses a hybrid cgroup host ("cgroups in hybrid mode not supported"); there it runs
//! in a mount namespace of its own in which the empty cgroup2 mount is detached (done in the
//! forked child before exec, so no extra process is timed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skiff_runtime::{ContainerSpec, Image, Runtime, RuntimeConfig, SandboxSpec};
use tokio_util::sync::CancellationToken;

use super::stats::{cpu_time, mean, median, ms, percentile, ratio};

/// Untimed rounds first: page cache, dentries, the first cgroup creations.
const WARMUP: usize = 3;
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// The timings of one runtime.
#[derive(Default)]
struct Samples {
    total: Vec<Duration>,
    cpu: Vec<Duration>,
    /// Skiff only: (phase name, durations).
    phases: Vec<(&'static str, Vec<Duration>)>,
}

impl Samples {
    fn phase(&mut self, name: &'static str, d: Duration) {
        match self.phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(d),
            None => self.phases.push((name, vec![d])),
        }
    }
}

struct Peer {
    name: &'static str,
    exe: PathBuf,
    version: String,
    /// Run in a private mount namespace without the hybrid host's cgroup2 mount (crun).
    hide_unified: bool,
    state: PathBuf,
    samples: Samples,
    failed: Option<String>,
}

pub struct Setup<'a> {
    pub scratch: &'a Path,
    pub cgroup_root: &'a str,
    pub layer: &'a [u8],
    pub archive: &'a Path,
    pub iterations: usize,
}

pub async fn run(setup: Setup<'_>, cancel: &CancellationToken) -> anyhow::Result<()> {
    let shim_exe = std::env::current_exe().context("finding the skiff executable to run shims with")?;
    let rt = Runtime::new(RuntimeConfig {
        root: setup.scratch.join("runtime"),
        shim_exe,
        cgroup_root: setup.cgroup_root.to_string(),
    })
    .context("opening Skiff's runtime")?;
    let image = rt
        .import_archive(setup.archive)
        .await
        .context("importing the bench image")?
        .into_iter()
        .next()
        .context("the bench archive held no image")?;

    let bundle = setup.scratch.join("bundle");
    super::image::unpack(setup.layer, &bundle.join("rootfs"))?;
    let mut peers = find_peers(setup.scratch);
    if let Some(spec_tool) = peers.first() {
        write_bundle_config(&spec_tool.exe, &bundle, setup.cgroup_root).await?;
    }

    let result = measure(&rt, &image, &bundle, &mut peers, &setup, cancel).await;
    // The shared sandbox and anything a failed cycle left, removed through the runtime itself.
    for c in rt.list_containers().unwrap_or_default() {
        let _ = rt.remove_container(&c.id).await;
    }
    for s in rt.list_sandboxes().unwrap_or_default() {
        let _ = rt.remove_sandbox(&s).await;
    }
    let (pod, ctr) = result?;
    report(&pod, &ctr, &peers, setup.iterations);
    Ok(())
}

async fn measure(
    rt: &Runtime,
    image: &Image,
    bundle: &Path,
    peers: &mut [Peer],
    setup: &Setup<'_>,
    cancel: &CancellationToken,
) -> anyhow::Result<(Samples, Samples)> {
    let logs = setup.scratch.join("logs");
    let spec = |n: usize| ContainerSpec {
        name: "true".into(),
        image: Some(image.clone()),
        argv: vec!["/bin/true".into()],
        env: image.config.env.clone(),
        log_path: logs.join(format!("{n}.log")),
        ..Default::default()
    };
    rt.run_sandbox(&SandboxSpec { id: "bench-shared".into(), hostname: "bench".into(), host_network: false })
        .await
        .context("creating the shared sandbox")?;
    let (mut pod, mut ctr) = (Samples::default(), Samples::default());
    println!(
        "container cycle: {} iterations (+{WARMUP} warm-up) of create+start+wait+delete of /bin/true, interleaved",
        setup.iterations
    );
    for n in 0..WARMUP + setup.iterations {
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        let keep = n >= WARMUP;
        let mut scratch = Samples::default();
        skiff_pod_cycle(rt, &spec(n), n, if keep { &mut pod } else { &mut scratch }).await?;
        for peer in peers.iter_mut().filter(|p| p.failed.is_none()) {
            let id = format!("skiff-bench-{}-{}-{n}", std::process::id(), peer.name);
            let started = Instant::now();
            let cpu = cpu_time();
            match run_peer(peer, bundle, &id).await {
                Ok(()) if keep => {
                    peer.samples.total.push(started.elapsed());
                    peer.samples.cpu.push(cpu_time().saturating_sub(cpu));
                }
                Ok(()) => {}
                Err(e) => {
                    println!("  {}: failed, left out from here on: {e:#}", peer.name);
                    peer.failed = Some(format!("{e:#}"));
                }
            }
        }
        skiff_container_cycle(rt, &spec(n), if keep { &mut ctr } else { &mut scratch }).await?;
        let _ = std::fs::remove_file(logs.join(format!("{n}.log")));
    }
    Ok((pod, ctr))
}

/// Sandbox + container + teardown of both: a one-container pod's whole life.
async fn skiff_pod_cycle(rt: &Runtime, spec: &ContainerSpec, n: usize, into: &mut Samples) -> anyhow::Result<()> {
    let sandbox = format!("bench-pod-{n}");
    let (t0, cpu) = (Instant::now(), cpu_time());
    rt.run_sandbox(&SandboxSpec { id: sandbox.clone(), hostname: "bench".into(), host_network: false }).await?;
    let t1 = Instant::now();
    let times = container_phases(rt, &sandbox, spec).await?;
    let t2 = Instant::now();
    rt.remove_sandbox(&sandbox).await?;
    let t3 = Instant::now();
    into.total.push(t3 - t0);
    into.cpu.push(cpu_time().saturating_sub(cpu));
    into.phase("sandbox", t1 - t0);
    for (name, d) in times {
        into.phase(name, d);
    }
    into.phase("remove sandbox", t3 - t2);
    Ok(())
}

async fn skiff_container_cycle(rt: &Runtime, spec: &ContainerSpec, into: &mut Samples) -> anyhow::Result<()> {
    let (t0, cpu) = (Instant::now(), cpu_time());
    let times = container_phases(rt, "bench-shared", spec).await?;
    into.total.push(t0.elapsed());
    into.cpu.push(cpu_time().saturating_sub(cpu));
    for (name, d) in times {
        into.phase(name, d);
    }
    Ok(())
}

async fn container_phases(
    rt: &Runtime,
    sandbox: &str,
    spec: &ContainerSpec,
) -> anyhow::Result<Vec<(&'static str, Duration)>> {
    let t0 = Instant::now();
    let id = rt.create_container(sandbox, spec).await.context("skiff: create")?;
    let t1 = Instant::now();
    let started = rt.start_container(&id).await.context("skiff: start");
    let t2 = Instant::now();
    let status = match started {
        Ok(()) => rt.wait_container(&id).await.context("skiff: wait"),
        Err(e) => Err(e),
    };
    let t3 = Instant::now();
    let removed = rt.remove_container(&id).await.context("skiff: remove");
    let t4 = Instant::now();
    let status = status?;
    removed?;
    if status.code != 0 {
        bail!("skiff: /bin/true exited with {}", status.code);
    }
    Ok(vec![("create", t1 - t0), ("start", t2 - t1), ("wait", t3 - t2), ("remove", t4 - t3)])
}

/// runc and crun, where installed; those missing are named with the apt line that adds them.
fn find_peers(scratch: &Path) -> Vec<Peer> {
    let hybrid = !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && super::sweep::cgroup_mounts().iter().any(|m| m == Path::new(UNIFIED));
    let mut peers = Vec::new();
    for name in ["runc", "crun"] {
        let Some(exe) = which(name) else {
            println!("  {name}: not installed, skipped (apt-get install -y {name})");
            continue;
        };
        let version = std::process::Command::new(&exe)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
            .unwrap_or_else(|| name.to_string());
        peers.push(Peer {
            name,
            exe,
            version,
            hide_unified: name == "crun" && hybrid,
            state: scratch.join(format!("{name}-state")),
            samples: Samples::default(),
            failed: None,
        });
    }
    peers
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `<peer> spec` adjusted: `/bin/true`, no terminal, a writable root, a cgroup under the
/// bench's own cgroup root (swept at the end).
async fn write_bundle_config(spec_tool: &Path, bundle: &Path, cgroup_root: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(spec_tool)
        .arg("spec")
        .current_dir(bundle)
        .output()
        .await
        .with_context(|| format!("running {} spec", spec_tool.display()))?;
    if !out.status.success() {
        bail!("{} spec: {}", spec_tool.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
    config["hostname"] = "bench".into();
    config["linux"]["cgroupsPath"] = format!("/{cgroup_root}/peer").into();
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?).with_context(|| format!("writing {}", path.display()))
}

async fn run_peer(peer: &Peer, bundle: &Path, id: &str) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(&peer.exe);
    cmd.arg("--root").arg(&peer.state).arg("run").arg("--bundle").arg(bundle).arg(id);
    // Its own process group: a Ctrl-C meant for the bench must not kill a runtime halfway
    // through setting a container up (the bench stops after the cycle instead).
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    if peer.hide_unified {
        // SAFETY: only raw syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Slave first, so the detach below cannot propagate to the host's mounts.
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().await.with_context(|| format!("running {}", peer.exe.display()))?;
    if !out.status.success() {
        bail!("{} run exited with {}: {}", peer.name, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn report(pod: &Samples, ctr: &Samples, peers: &[Peer], iterations: usize) {
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>12}",
        "runtime (same busybox layer, /bin/true)", "median ms", "p90 ms", "cpu ms/cycle"
    );
    let row = |name: &str, s: &Samples| {
        println!(
            "{:<44} {:>9} {:>9} {:>12}",
            name,
            ms(median(&s.total)),
            ms(percentile(&s.total, 90.0)),
            ms(mean(&s.cpu))
        );
    };
    row("skiff: pod (sandbox + container)", pod);
    row("skiff: container in an existing sandbox", ctr);
    for peer in peers {
        match &peer.failed {
            Some(_) if peer.samples.total.len() < iterations => {
                println!("{:<44} failed (see above)", peer.version)
            }
            _ => {
                let name = if peer.hide_unified {
                    format!("{} (cgroup2 mount hidden)", peer.version)
                } else {
                    peer.version.clone()
                };
                row(&name, &peer.samples);
            }
        }
    }
    for peer in peers.iter().filter(|p| !p.samples.total.is_empty()) {
        let theirs = median(&peer.samples.total);
        println!(
            "ratio skiff/{:<5} (medians): pod {}, container {}",
            peer.name,
            ratio(median(&pod.total), theirs),
            ratio(median(&ctr.total), theirs)
        );
    }
    let phases =
        |s: &Samples| s.phases.iter().map(|(n, v)| format!("{n} {}", ms(median(v)))).collect::<Vec<_>>().join(", ");
    println!("skiff pod phases (median ms): {}", phases(pod));
    println!("skiff container phases (median ms): {}", phases(ctr));
}
