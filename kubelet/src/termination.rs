//! Termination messages (Kubernetes `getTerminationMessage` + `readLastStringFromContainerLogs`).
//! Each run of a container gets a file of its own on the node, bind-mounted at the container's
//! `terminationMessagePath` (default `/dev/termination-log`); after the run ends the kubelet reads
//! the last 4096 bytes of it into `state.terminated.message`. With `terminationMessagePolicy:
//! FallbackToLogsOnError`, a failed run (exit code not 0) that left the file empty gets the tail
//! of its log instead: the last 80 lines, at most their last 2048 bytes.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

/// Kubernetes `MaxContainerTerminationMessageLength`.
pub const MAX_MESSAGE_BYTES: u64 = 4096;
/// Kubernetes `MaxContainerTerminationMessageLogLines`.
pub const MAX_LOG_LINES: usize = 80;
/// Kubernetes `MaxContainerTerminationMessageLogLength`.
pub const MAX_LOG_BYTES: usize = 2048;
/// How much of the end of a log file is read for the fallback: 80 lines are well within it, and
/// a huge log is never read whole.
const LOG_WINDOW: u64 = 1 << 20;

/// The node file of one run's termination message: beside the run's log file (`3.log` →
/// `3.termination-message`), so it lives and goes with the pod's logs.
pub fn message_file(log_path: &Path) -> PathBuf {
    log_path.with_extension("termination-message")
}

/// The path in the container where the file is mounted; `None` when the container has none.
pub fn container_path(c: &Container) -> Option<&str> {
    match c.termination_message_path.as_deref() {
        // The API server defaults it; a pod object made without one gets the default here too.
        None => Some("/dev/termination-log"),
        Some("") => None,
        Some(p) => Some(p),
    }
}

/// Creates the (empty) message file for a run, writable by any user in the container as the
/// kubelet makes it (0666), and returns the bind mount for it.
pub fn prepare(c: &Container, log_path: &Path) -> std::io::Result<Option<skiff_runtime::MountSpec>> {
    let Some(destination) = container_path(c) else { return Ok(None) };
    let path = message_file(log_path);
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display()));
    std::fs::File::create(&path).map_err(named)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(named)?;
    Ok(Some(skiff_runtime::MountSpec {
        source: path,
        destination: destination.to_string(),
        read_only: false,
        ..Default::default()
    }))
}

/// The message of a finished run, or `None` when there is nothing to say.
pub fn read_message(c: Option<&Container>, log_path: &Path, exit_code: i32) -> Option<String> {
    let fallback =
        exit_code != 0 && c.and_then(|c| c.termination_message_policy.as_deref()) == Some("FallbackToLogsOnError");
    let mounted = c.and_then(container_path).is_some();
    let message = if mounted {
        match read_at_most(&message_file(log_path), MAX_MESSAGE_BYTES) {
            Ok(data) => String::from_utf8_lossy(&data).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Some(format!("Error on reading termination log {}: {e}", message_file(log_path).display()));
            }
        }
    } else {
        String::new()
    };
    let message = if message.is_empty() && fallback { log_tail(log_path) } else { message };
    (!message.is_empty()).then_some(message)
}

/// The last `max` bytes of the file (Kubernetes' `tail.ReadAtMost`: a long message keeps its end).
fn read_at_most(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut data = Vec::new();
    file.take(max).read_to_end(&mut data)?;
    Ok(data)
}

/// The last lines of a CRI log file as the container wrote them (what `kubectl logs --tail=80`
/// shows), cut to their last 2048 bytes.
pub fn log_tail(log_path: &Path) -> String {
    let mut raw = Vec::new();
    let read = std::fs::File::open(log_path).and_then(|mut f| {
        let len = f.metadata()?.len();
        let start = len.saturating_sub(LOG_WINDOW);
        f.seek(SeekFrom::Start(start))?;
        f.read_to_end(&mut raw)?;
        Ok(start)
    });
    let start = match read {
        Ok(start) => start,
        Err(e) => return format!("Error on reading termination message from logs: {e}"),
    };
    let text = String::from_utf8_lossy(&raw);
    // A window that starts mid-file starts mid-line: that piece is dropped.
    let text = if start > 0 { text.split_once('\n').map_or("", |(_, rest)| rest) } else { &text };
    let mut assembler = crate::logs::Assembler::default();
    let mut lines: Vec<String> = text.lines().filter_map(|l| assembler.push(l)).map(|e| e.content + "\n").collect();
    if let Some(partial) = assembler.finish() {
        lines.push(partial.content);
    }
    let tail = lines[lines.len().saturating_sub(MAX_LOG_LINES)..].concat();
    let bytes = tail.as_bytes();
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(MAX_LOG_BYTES)..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn cri(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("2026-01-01T00:00:00.000000000Z stdout F {l}\n")).collect()
    }

    #[test]
    fn the_message_file_is_read_up_to_its_last_4096_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let c = container(json!({"name": "c"}));
        let mount = prepare(&c, &log).unwrap().unwrap();
        assert_eq!((mount.destination.as_str(), mount.source.clone()), ("/dev/termination-log", message_file(&log)));
        assert_eq!(read_message(Some(&c), &log, 0), None);
        std::fs::write(&mount.source, format!("{}{}", "x".repeat(5000), "y".repeat(96))).unwrap();
        let message = read_message(Some(&c), &log, 0).unwrap();
        assert_eq!(message.len(), 4096);
        assert!(message.starts_with('x') && message.ends_with(&"y".repeat(96)), "the end is kept");
    }

    #[test]
    fn fallback_to_logs_applies_only_to_failures_with_an_empty_message() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("1.log");
        let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        std::fs::write(&log, cri(&lines.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
        let c = container(json!({"name": "c", "terminationMessagePolicy": "FallbackToLogsOnError"}));
        prepare(&c, &log).unwrap();
        let tail = read_message(Some(&c), &log, 1).unwrap();
        let want: String = (20..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail, want);
        assert_eq!(read_message(Some(&c), &log, 0), None, "a clean exit does not fall back");
        std::fs::write(message_file(&log), "bye").unwrap();
        assert_eq!(read_message(Some(&c), &log, 1).as_deref(), Some("bye"), "the file wins");
        let file_only = container(json!({"name": "c", "terminationMessagePolicy": "File"}));
        std::fs::write(message_file(&log), "").unwrap();
        assert_eq!(read_message(Some(&file_only), &log, 1), None);
    }

    #[test]
    fn the_log_tail_keeps_the_last_2048_bytes_and_joins_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let long = "y".repeat(3000);
        let mut text = cri(&[&long]);
        text.push_str("2026-01-01T00:00:00.000000000Z stderr P par\n2026-01-01T00:00:00.000000000Z stderr F tial\n");
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log);
        assert_eq!(tail.len(), 2048);
        assert!(tail.ends_with("y\npartial\n"), "{}", &tail[tail.len() - 20..]);
    }

    #[test]
    fn an_empty_path_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = container(json!({"name": "c", "terminationMessagePath": ""}));
        assert_eq!(prepare(&c, &dir.path().join("0.log")).unwrap(), None);
    }
}
