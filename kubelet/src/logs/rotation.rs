//! Container log rotation (Kubernetes `ContainerLogManager`): every 10 s the log file of each
//! running container is looked at; one bigger than `containerLogMaxSize` (10Mi) is renamed to
//! `<file>.<YYYYMMDD-HHMMSS>` and an empty file takes its place, which the runtime's shim
//! appends to from its next write (see `skiff_runtime`'s `ReopeningLog`). Rotated files but the
//! newest are gzipped, and only `containerLogMaxFiles` (5) files per run are kept, the current
//! one included. As in Kubernetes, `kubectl logs` reads the current file only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

/// How often logs are looked at (Kubernetes `containerLogMonitorInterval`).
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(10);

/// `containerLogMaxSize` and `containerLogMaxFiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    pub max_size: u64,
    /// At least 2: the current file and one rotated.
    pub max_files: usize,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation { max_size: 10 * 1024 * 1024, max_files: 5 }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct RotateError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn named(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RotateError + use<> {
    let path = path.to_path_buf();
    move |source| RotateError { action, path, source }
}

/// Whether `path` now names another file than `open` (a rotation happened).
pub async fn replaced(path: &Path, open: &tokio::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (tokio::fs::metadata(path).await, open.metadata().await) {
        (Ok(at_path), Ok(open)) => at_path.ino() != open.ino() || at_path.dev() != open.dev(),
        _ => false,
    }
}

/// The rotated files of `log`, oldest first (their suffixes are timestamps).
fn rotated(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".tmp")))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn gzip(path: &Path) -> Result<(), RotateError> {
    let target = PathBuf::from(format!("{}.gz", path.display()));
    let tmp = PathBuf::from(format!("{}.tmp", target.display()));
    let mut input = std::fs::File::open(path).map_err(named("opening", path))?;
    let output = std::fs::File::create(&tmp).map_err(named("creating", &tmp))?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder).map_err(named("compressing into", &tmp))?;
    encoder.finish().map_err(named("compressing into", &tmp))?;
    std::fs::rename(&tmp, &target).map_err(named("renaming", &tmp))?;
    std::fs::remove_file(path).map_err(named("removing", path))
}

/// Rotates `log` if it has grown past the limit. True when it did.
pub fn rotate_if_needed(log: &Path, policy: LogRotation, now: Timestamp) -> Result<bool, RotateError> {
    let size = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(named("reading", log)(e)),
    };
    if size < policy.max_size {
        return Ok(false);
    }
    // Leftovers of an interrupted compression, and originals whose .gz is complete.
    if let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) {
        for e in std::fs::read_dir(dir).map_err(named("reading", dir))?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let uncompressed_twin = !n.ends_with(".gz") && dir.join(format!("{n}.gz")).exists();
            if n.starts_with(&format!("{name}.")) && (n.ends_with(".tmp") || uncompressed_twin) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // Room for the file rotated now: keep max_files - 2 older ones.
    let mut old = rotated(log);
    let keep = policy.max_files.max(2) - 2;
    while old.len() > keep {
        let oldest = old.remove(0);
        std::fs::remove_file(&oldest).map_err(named("removing", &oldest))?;
    }
    for path in old.iter().filter(|p| p.extension().is_none_or(|e| e != "gz")) {
        gzip(path)?;
    }
    let stamp = now.strftime("%Y%m%d-%H%M%S");
    let target = PathBuf::from(format!("{}.{stamp}", log.display()));
    std::fs::rename(log, &target).map_err(named("renaming", log))?;
    // An empty current file at once, so readers never miss it; the shim moves over to it.
    std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(named("creating", log))?;
    Ok(true)
}

/// Rotates the logs of running containers every [`MONITOR_INTERVAL`] until `shutdown`.
pub async fn run(watchers: Arc<super::LogWatchers>, policy: LogRotation, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let paths = watchers.running();
        let work = tokio::task::spawn_blocking(move || {
            for path in paths {
                match rotate_if_needed(&path, policy, Timestamp::now()) {
                    Ok(true) => tracing::debug!("rotated {}", path.display()),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("rotating a container log: {e}"),
                }
            }
        });
        let _ = work.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn a_log_is_rotated_only_past_its_size_and_at_most_max_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let policy = LogRotation { max_size: 10, max_files: 3 };
        std::fs::write(&log, "short\n").unwrap();
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        assert!(!rotate_if_needed(&log, policy, t(0)).unwrap());
        for i in 0..4 {
            std::fs::write(&log, format!("run {i} is long enough\n")).unwrap();
            assert!(rotate_if_needed(&log, policy, t(i)).unwrap());
        }
        assert_eq!(names(dir.path()), ["0.log", "0.log.20270115-080002.gz", "0.log.20270115-080003"]);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "", "an empty current file");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("0.log.20270115-080003")).unwrap(),
            "run 3 is long enough\n"
        );
        let mut text = String::new();
        let gz = std::fs::File::open(dir.path().join("0.log.20270115-080002.gz")).unwrap();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
        assert_eq!(text, "run 2 is long enough\n");
    }

    #[test]
    fn rotated_files_are_not_runs_for_kubectl_logs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0.log"), "").unwrap();
        std::fs::write(dir.path().join("0.log.20270115-080002.gz"), "").unwrap();
        std::fs::write(dir.path().join("1.log"), "").unwrap();
        std::fs::write(dir.path().join("1.log.20270115-080003"), "").unwrap();
        let opts = skiff_api::LogOptions { container: "c".into(), ..Default::default() };
        assert_eq!(super::super::select_log_file(dir.path(), "p", &opts).unwrap(), dir.path().join("1.log"));
        let previous = skiff_api::LogOptions { previous: true, ..opts };
        assert_eq!(super::super::select_log_file(dir.path(), "p", &previous).unwrap(), dir.path().join("0.log"));
    }

    #[tokio::test]
    async fn a_follower_notices_the_file_was_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "x".repeat(20)).unwrap();
        let open = tokio::fs::File::open(&log).await.unwrap();
        assert!(!replaced(&log, &open).await);
        rotate_if_needed(&log, LogRotation { max_size: 10, max_files: 5 }, Timestamp::now()).unwrap();
        assert!(replaced(&log, &open).await);
    }
}
