//! The bench image: one uncompressed layer of the host's static busybox (Debian
//! `busybox-static`) with its applet links, as an OCI layout archive that
//! `Runtime::import_archive` loads. The same layer tar, unpacked, is the peers' bundle rootfs,
//! so every runtime runs the very same files.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Never resolvable (`.invalid`), so nothing ever tries to pull it from a registry.
pub const REFERENCE: &str = "skiff.invalid/bench/busybox:1";
const BUSYBOX: &str = "/bin/busybox";
/// Fixed mtimes keep the digests stable from run to run.
const MTIME: u64 = 1_700_000_000;

pub struct BenchImage {
    /// The OCI layout archive to import.
    pub archive: std::path::PathBuf,
    /// The layer, an uncompressed tar.
    pub layer: Vec<u8>,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Builds the image under `dir` (the archive is `dir/busybox-oci.tar`).
pub fn build(dir: &Path) -> anyhow::Result<BenchImage> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX}: the bench image is made of it (apt-get install busybox-static)")
    })?;
    if has_interpreter(&busybox) {
        bail!("{BUSYBOX} is dynamically linked; the bench image needs a static one (apt-get install busybox-static)");
    }
    let list = Command::new(BUSYBOX).arg("--list-full").output().context("running busybox --list-full")?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();

    let layer = layer_tar(&busybox, &applets)?;
    let config = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    }))?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": REFERENCE, "org.opencontainers.image.ref.name": "1"},
        }],
    }))?;

    let archive = dir.join("busybox-oci.tar");
    let file = std::fs::File::create(&archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: String, data: &[u8]| -> std::io::Result<()> {
        let mut h = header(tar::EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, data)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json".into(), &index)?;
    for blob in [&layer, &config, &manifest] {
        add(format!("blobs/sha256/{}", sha256(blob).trim_start_matches("sha256:")), blob)?;
    }
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .with_context(|| format!("writing {}", archive.display()))?;
    Ok(BenchImage { archive, layer })
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h
}

fn layer_tar(busybox: &[u8], applets: &[String]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sbin", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
    ] {
        b.append_data(&mut header(tar::EntryType::Directory, mode), dir, std::io::empty())?;
    }
    let files: [(&str, &[u8], u32); 3] = [
        ("bin/busybox", busybox, 0o755),
        ("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n", 0o644),
    ];
    for (path, data, mode) in files {
        let mut h = header(tar::EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data)?;
    }
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777);
        b.append_link(&mut h, applet, "/bin/busybox")?;
    }
    b.into_inner()
}

/// Unpacks the layer as a plain directory: the peers' bundle rootfs.
pub fn unpack(layer: &[u8], dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.unpack(dest).with_context(|| format!("unpacking the busybox layer into {}", dest.display()))
}

/// Whether an ELF64 little-endian executable names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| elf.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP)
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_from_a_static_one() {
        // This test binary itself is dynamically linked (it uses glibc's loader).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
        assert!(!has_interpreter(b"#!/bin/sh\n"));
    }

    #[test]
    fn the_layer_holds_busybox_its_applets_and_the_mount_points() {
        let tar = layer_tar(b"binary", &["bin/sh".to_string(), "bin/true".to_string()]).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string().trim_end_matches('/').to_string())
            .collect();
        for want in ["bin/busybox", "bin/true", "proc", "sys", "dev", "etc/passwd"] {
            assert!(paths.iter().any(|p| p == want), "{want} in {paths:?}");
        }
    }
}
