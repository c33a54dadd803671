//! What a pull reports as it goes, for `skiff image pull`'s per-layer lines. The kubelet pulls
//! without an observer; a download shared by several pulls reports to each observer attached.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::Image;

/// One layer of the resolved manifest: its blob digest (Docker's layer ID) and compressed size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    /// Already unpacked in the store when the manifest was resolved.
    pub present: bool,
}

/// A step of a pull. Layer events name the layer by its blob digest, as the manifest does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest for this host's platform and its config are known: `digest` is what the
    /// reference resolved to (the index's digest when it was an index), `layers` the layers in
    /// order. Sent again when a mirror failed and the next endpoint is tried.
    Resolved { digest: String, layers: Vec<LayerInfo> },
    /// The layer is unpacked in the store already (Docker's "Already exists").
    LayerExists { digest: String },
    /// Bytes of the layer arrived from the registry: `current` of `total` so far.
    Downloading { digest: String, current: u64, total: u64 },
    /// Every byte arrived; what is left of the download is checking it against its digest.
    Verifying { digest: String },
    /// The download is whole and matches its digest: `bytes` came over the network.
    Downloaded { digest: String, bytes: u64 },
    /// The layer's blob is being unpacked: `current` of `total` blob bytes read so far.
    Extracting { digest: String, current: u64, total: u64 },
    /// The layer is unpacked into the store and its diff ID checked (Docker's "Pull complete").
    LayerDone { digest: String },
}

/// Receives a pull's events, from the pull's tasks (also from a blocking unpack thread).
pub trait PullProgress: Send + Sync {
    fn event(&self, event: PullEvent);
}

/// The events of a pull in a list (tests, and callers that only want a summary).
#[derive(Debug, Default)]
pub struct RecordedProgress(pub std::sync::Mutex<Vec<PullEvent>>);

impl PullProgress for RecordedProgress {
    fn event(&self, event: PullEvent) {
        self.0.lock().expect("recorded events poisoned by a panic").push(event);
    }
}

/// What [`crate::ImageManager::pull`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub image: Image,
    /// The digest the reference resolved to (Docker's `Digest:` line).
    pub digest: String,
    /// The reference already named this image, with every layer present: nothing changed
    /// (Docker's "Image is up to date").
    pub up_to_date: bool,
}

/// Reports each chunk written through it as [`PullEvent::Downloading`], and
/// [`PullEvent::Verifying`] once the expected size is reached (the client checks the digest
/// after the last byte).
pub(crate) struct CountingWriter<W> {
    inner: W,
    progress: Arc<dyn PullProgress>,
    digest: String,
    current: u64,
    total: u64,
    verifying_sent: bool,
}

impl<W> CountingWriter<W> {
    pub(crate) fn new(inner: W, progress: Arc<dyn PullProgress>, digest: &str, total: u64) -> Self {
        CountingWriter { inner, progress, digest: digest.to_string(), current: 0, total, verifying_sent: false }
    }

    /// Counts on from `offset` bytes already there (a resumed download).
    pub(crate) fn starting_at(mut self, offset: u64) -> Self {
        self.current = offset;
        self
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.current
    }

    fn count(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.current += n as u64;
        let (digest, current, total) = (self.digest.clone(), self.current, self.total);
        self.progress.event(PullEvent::Downloading { digest, current, total });
        if current >= total && !self.verifying_sent {
            self.verifying_sent = true;
            self.progress.event(PullEvent::Verifying { digest: self.digest.clone() });
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.count(n);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Calls `on_read` with the running total of bytes read through it.
pub(crate) struct CountingReader<R, F> {
    inner: R,
    on_read: F,
    current: u64,
}

impl<R, F: FnMut(u64)> CountingReader<R, F> {
    pub(crate) fn new(inner: R, on_read: F) -> Self {
        CountingReader { inner, on_read, current: 0 }
    }
}

impl<R: Read, F: FnMut(u64)> Read for CountingReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.current += n as u64;
            (self.on_read)(self.current);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn recorded() -> Arc<RecordedProgress> {
        Arc::new(RecordedProgress::default())
    }

    #[tokio::test]
    async fn downloaded_bytes_add_up_to_the_layer_size_and_verifying_comes_once_at_the_end() {
        let progress = recorded();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let mut writer = CountingWriter::new(&mut out, progress.clone(), "sha256:l", data.len() as u64);
        for chunk in data.chunks(777) {
            writer.write_all(chunk).await.unwrap();
        }
        writer.flush().await.unwrap();
        assert_eq!(writer.bytes(), data.len() as u64);
        assert_eq!(out, data);
        let events = progress.0.lock().unwrap().clone();
        let counts: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                PullEvent::Downloading { current, total, .. } => {
                    assert_eq!(*total, 10_000);
                    Some(*current)
                }
                _ => None,
            })
            .collect();
        assert!(counts.windows(2).all(|w| w[0] < w[1]), "the count only grows: {counts:?}");
        assert_eq!(counts.last(), Some(&10_000), "the last count is the layer's size");
        assert_eq!(counts.len(), data.chunks(777).count(), "one event per chunk written");
        let verifying: Vec<_> = events.iter().filter(|e| matches!(e, PullEvent::Verifying { .. })).collect();
        assert_eq!(verifying.len(), 1);
        assert!(matches!(events.last(), Some(PullEvent::Verifying { digest }) if digest == "sha256:l"));
    }

    #[test]
    fn the_reader_reports_its_running_total() {
        let data = vec![7u8; 5000];
        let mut seen = Vec::new();
        let mut reader = CountingReader::new(&data[..], |n| seen.push(n));
        let mut buf = [0u8; 1024];
        while reader.read(&mut buf).unwrap() > 0 {}
        assert_eq!(seen, [1024, 2048, 3072, 4096, 5000]);
    }
}
