//! Layer unpacking: a tar (plain, gzip'd or zstd-compressed) becomes a directory an overlay mount can use as a lower dir.
//! OCI whiteouts become overlay's own: `.wh.NAME` a 0/0 character device `NAME`, and
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT_PREFIX: &str = ".wh.";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading layer: {0}")]
    Read(#[source] std::io::Error),
    #[error("unpacking {path}: {source}")]
    Entry {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("layer entry {0} escapes the layer root")]
    Escape(PathBuf),
    #[error("layer digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: String, actual: String },
}

/// Hex sha256 of everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new() }
    }

    /// Reads what is left (tar leaves its end padding unread); returns `sha256:<hex>` of all of
    /// it and the inner reader.
    pub fn finish(mut self) -> std::io::Result<(String, R)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((format!("sha256:{}", hex::encode(self.hasher.finalize())), self.inner))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// What [`unpack_layer`] verified: the digests of the blob and of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub blob_digest: String,
    pub diff_id: String,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Unpacks `blob` (plain, gzip'd or zstd-compressed tar, told apart by magic bytes, as the layer
/// media types `tar`, `tar+gzip` and `tar+zstd` promise) into `dest`, which must exist and be
/// empty, and returns the digests it computed on the way.
pub fn unpack_layer(blob: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut compressed = BufReader::with_capacity(256 * 1024, HashingReader::new(blob));
    let magic = compressed.fill_buf().map_err(UnpackError::Read)?;
    if magic.starts_with(&ZSTD_MAGIC) {
        let tar = unpack_tar(HashingReader::new(ZstdDecoder::new(compressed)), dest)?;
        let (diff_id, zstd) = tar.finish().map_err(UnpackError::Read)?;
        let (blob_digest, _) = zstd.source.into_inner().finish().map_err(UnpackError::Read)?;
        Ok(Unpacked { blob_digest, diff_id })
    } else if magic.starts_with(&[0x1f, 0x8b]) {
        let tar = unpack_tar(HashingReader::new(flate2::bufread::GzDecoder::new(compressed)), dest)?;
        let (diff_id, gz) = tar.finish().map_err(UnpackError::Read)?;
        let (blob_digest, _) = gz.into_inner().into_inner().finish().map_err(UnpackError::Read)?;
        Ok(Unpacked { blob_digest, diff_id })
    } else {
        let tar = unpack_tar(compressed, dest)?;
        let (diff_id, _) = tar.into_inner().finish().map_err(UnpackError::Read)?;
        Ok(Unpacked { blob_digest: diff_id.clone(), diff_id })
    }
}

/// A zstd stream of one or more frames (skippable frames skipped, as the format allows
/// concatenation); `ruzstd`'s own streaming decoder stops after the first frame.
struct ZstdDecoder<R> {
    source: R,
    frame: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdDecoder<R> {
    fn new(source: R) -> Self {
        ZstdDecoder { source, frame: ruzstd::decoding::FrameDecoder::new(), in_frame: false }
    }
}

impl<R: BufRead> Read for ZstdDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                if self.frame.can_collect() > 0 {
                    return self.frame.read(buf);
                }
                if self.frame.is_finished() {
                    self.in_frame = false;
                    // The frame's own checksum, when it has one, catches a broken decoder
                    // before the diff ID comparison would.
                    if let (Some(stored), Some(computed)) =
                        (self.frame.get_checksum_from_data(), self.frame.get_calculated_checksum())
                        && stored != computed
                    {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("zstd frame checksum mismatch: stored {stored:08x}, computed {computed:08x}"),
                        ));
                    }
                    continue;
                }
                self.frame
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
                continue;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.frame.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let skipped = std::io::copy(&mut (&mut self.source).take(length.into()), &mut std::io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "zstd: truncated skippable frame",
                        ));
                    }
                }
                Err(e) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("zstd: {e}")));
                }
            }
        }
    }
}

fn unpack_tar<R: Read>(reader: R, dest: &Path) -> Result<R, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let path = entry.path().map_err(UnpackError::Read)?.into_owned();
        let rel = clean(&path)?;
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let entry_err = |source| UnpackError::Entry { path: path.clone(), source };
        if name == OPAQUE {
            let parent = real_parent(dest, &rel)?;
            std::fs::create_dir_all(&parent).map_err(entry_err)?;
            set_xattr(&parent, "trusted.overlay.opaque", b"y").map_err(entry_err)?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = real_parent(dest, &rel)?;
            std::fs::create_dir_all(&parent).map_err(entry_err)?;
            whiteout(&parent.join(hidden)).map_err(entry_err)?;
        } else {
            entry.unpack_in(dest).map_err(entry_err)?;
        }
    }
    Ok(archive.into_inner())
}

/// The directory a whiteout entry acts in, refusing a path through a symlink the layer itself
/// planted (`evil -> /etc` then `evil/.wh.passwd` must not delete the host's file). `tar`
/// guards ordinary entries the same way.
fn real_parent(dest: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let mut dir = dest.to_path_buf();
    for c in rel.parent().unwrap_or(Path::new("")).components() {
        dir.push(c);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(UnpackError::Escape(rel.to_path_buf()));
        }
    }
    Ok(dir)
}

/// The entry path relative to the layer root, refusing `..` that would leave it.
fn clean(path: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(UnpackError::Escape(path.to_path_buf())),
        }
    }
    Ok(out)
}

/// Overlay's whiteout: a character device 0/0 in place of the hidden name.
pub fn whiteout(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let n = CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: valid C strings and a buffer of `value.len()` bytes.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn whiteouts_become_overlay_char_devices_and_opaque_xattrs() {
        let tar = tar_of(&[
            ("etc/", None),
            ("etc/.wh.passwd", Some(b"")),
            ("./opt/app/", None),
            ("opt/app/.wh..wh..opq", Some(b"")),
            ("opt/app/new", Some(b"kept")),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let out = unpack_layer(&tar[..], dir.path()).unwrap();
        assert_eq!(out.diff_id, sha(&tar));
        assert_eq!(out.blob_digest, out.diff_id);

        let wh = std::fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.passwd").exists());

        let mut buf = [0u8; 8];
        let p = CString::new(dir.path().join("opt/app").as_os_str().as_bytes()).unwrap();
        let n = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: valid strings and buffer.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..len.max(0) as usize], b"y");
        assert!(!dir.path().join("opt/app/.wh..wh..opq").exists());
        assert_eq!(std::fs::read(dir.path().join("opt/app/new")).unwrap(), b"kept");
    }

    #[test]
    fn gzip_layers_report_both_the_blob_digest_and_the_diff_id() {
        let tar = tar_of(&[("hello.txt", Some(b"hi\n"))]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = unpack_layer(&blob[..], dir.path()).unwrap();
        assert_eq!(out, Unpacked { blob_digest: sha(&blob), diff_id: sha(&tar) });
        assert_eq!(std::fs::read(dir.path().join("hello.txt")).unwrap(), b"hi\n");
    }

    #[test]
    fn zstd_layers_report_both_the_blob_digest_and_the_diff_id() {
        let tar = tar_of(&[("dir/", None), ("dir/hello.txt", Some(b"hi zstd\n"))]);
        let blob = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert!(blob.starts_with(&ZSTD_MAGIC));
        let dir = tempfile::tempdir().unwrap();
        let out = unpack_layer(&blob[..], dir.path()).unwrap();
        assert_eq!(out, Unpacked { blob_digest: sha(&blob), diff_id: sha(&tar) });
        assert_eq!(std::fs::read(dir.path().join("dir/hello.txt")).unwrap(), b"hi zstd\n");
    }

    /// `tar --format=ustar` of `real.txt` ("made by zstd(1)\n"), compressed by `zstd -19 --check`,
    /// so the decoder is checked against the reference encoder's FSE/Huffman blocks and checksum.
    const REAL_ZSTD: &str = "28b52ffd640027ad0200f2430d11a02f06fa67e711abeac390e55b00e1910206a30836e50d7685c6d4f38430fe8e6a4a6a3fb8a463ca7ddffcf739e89e7512a75a0c0b202035320ed90b7e499c027010187060f8ff99b095081814603871394ad72e70";

    #[test]
    fn a_layer_compressed_by_the_zstd_tool_unpacks() {
        let blob = hex::decode(REAL_ZSTD).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = unpack_layer(&blob[..], dir.path()).unwrap();
        assert_eq!(out.blob_digest, "sha256:5414e329b7717386f87c15bb214bb7c81e078d32c19fcafd30e7ea0e4c75ffdb");
        assert_eq!(out.diff_id, "sha256:b279ae6cb3f699c5329009ea80951820586bb31bb5c55d003d61f1870e9b3fc8");
        assert_eq!(std::fs::read(dir.path().join("real.txt")).unwrap(), b"made by zstd(1)\n");
    }

    #[test]
    fn concatenated_and_skippable_zstd_frames_are_one_stream() {
        let tar = tar_of(&[("a.txt", Some(b"first frame\n")), ("b.txt", Some(&[7u8; 3000][..]))]);
        let (head, tail) = tar.split_at(1024);
        let mut blob = ruzstd::encoding::compress_to_vec(head, ruzstd::encoding::CompressionLevel::Uncompressed);
        // A skippable frame: magic 0x184D2A5?, little-endian length, then that many bytes.
        blob.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        blob.extend(ruzstd::encoding::compress_to_vec(tail, ruzstd::encoding::CompressionLevel::Fastest));
        let dir = tempfile::tempdir().unwrap();
        let out = unpack_layer(&blob[..], dir.path()).unwrap();
        assert_eq!(out, Unpacked { blob_digest: sha(&blob), diff_id: sha(&tar) });
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"first frame\n");
        assert_eq!(std::fs::read(dir.path().join("b.txt")).unwrap(), vec![7u8; 3000]);
    }

    #[test]
    fn a_corrupt_zstd_layer_is_an_error_not_a_short_layer() {
        let mut blob = hex::decode(REAL_ZSTD).unwrap();
        let n = blob.len();
        blob[n - 10] ^= 0xff;
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(unpack_layer(&blob[..], dir.path()), Err(UnpackError::Read(_))));
        blob.truncate(n - 20);
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack_layer(&blob[..], dir.path()).is_err());
    }

    #[test]
    fn a_whiteout_through_a_planted_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), "host file").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "evil", outside.path()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        b.append_data(&mut h, "evil/.wh.victim", &[][..]).unwrap();
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(unpack_layer(&tar[..], dir.path()), Err(UnpackError::Escape(_))));
        assert_eq!(std::fs::read_to_string(outside.path().join("victim")).unwrap(), "host file");
    }

    #[test]
    fn entries_escaping_the_layer_root_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        // append_data refuses `..`, so the name is written into the header directly.
        h.as_gnu_mut().unwrap().name[..16].copy_from_slice(b"../.wh.outside\0\0");
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(unpack_layer(&tar[..], dir.path()), Err(UnpackError::Escape(_))));
    }
}
