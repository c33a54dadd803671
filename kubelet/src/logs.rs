//! `pods/log`: reads the CRI log files the runtime's shim writes, one per container run, at
//! `<root>/pods/<ns>_<name>_<uid>/<container>/<restartCount>.log` (the kubelet's layout).
//!
//! A CRI line is `<RFC3339Nano> <stdout|stderr> <F|P> <content>`; `P` (partial) pieces are
//! joined with what follows up to the next `F`. Timestamps are kept when asked for.
//!
//! Following: no inotify. After the file is drained the reader waits on the container's exit
//! signal (a `watch` the pod worker sets when the container exits) or 200 ms, whichever comes
//! first, and reads again; once the container has exited and the file is drained, the stream
//! ends. An idle follow costs five reads a second of an open file and no busy loop.
//!
//! Big logs are rotated as the kubelet does ([`rotation`]); reads see the current file, and a
//! follower moves on to the new file after a rotation.

pub mod rotation;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use jiff::Timestamp;
use skiff_api::{ApiError, ByteStream, LogOptions};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// One parsed CRI line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a str,
}

/// Parses `<ts> <stream> <tag> <content>` (content may be empty). `None` for malformed lines.
pub fn parse_cri_line(line: &str) -> Option<CriLine<'_>> {
    let (timestamp, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    let (tag, content) = match rest.split_once(' ') {
        Some((tag, content)) => (tag, content),
        None => (rest, ""),
    };
    if !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    let partial = match tag.split(':').next()? {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    Some(CriLine { timestamp, stream, partial, content })
}

/// One log message: a full line, with the timestamp of its first piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub timestamp: String,
    pub content: String,
}

/// Turns CRI lines into entries, joining partial pieces; holds an unfinished partial between calls.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: Option<Entry>,
}

impl Assembler {
    pub fn push(&mut self, line: &str) -> Option<Entry> {
        let cri = parse_cri_line(line)?;
        let entry = match self.pending.take() {
            Some(mut e) => {
                e.content.push_str(cri.content);
                e
            }
            None => Entry { timestamp: cri.timestamp.to_string(), content: cri.content.to_string() },
        };
        if cri.partial {
            self.pending = Some(entry);
            None
        } else {
            Some(entry)
        }
    }

    /// The unfinished partial line, at the end of a finished log.
    pub fn finish(&mut self) -> Option<Entry> {
        self.pending.take()
    }
}

/// The filters of a log request that apply line by line.
#[derive(Debug, Clone)]
pub struct Filter {
    pub since: Option<Timestamp>,
    pub timestamps: bool,
}

impl Filter {
    pub fn new(opts: &LogOptions, now: Timestamp) -> Result<Self, ApiError> {
        let since = match (&opts.since_time, opts.since_seconds) {
            (Some(t), _) => Some(
                t.parse::<Timestamp>().map_err(|e| ApiError::bad_request(format!("invalid sinceTime {t:?}: {e}")))?,
            ),
            (None, Some(s)) => Some(now - jiff::SignedDuration::from_secs(s as i64)),
            (None, None) => None,
        };
        Ok(Self { since, timestamps: opts.timestamps })
    }

    fn keep(&self, entry: &Entry) -> bool {
        match (&self.since, entry.timestamp.parse::<Timestamp>()) {
            (Some(since), Ok(ts)) => ts >= *since,
            _ => true,
        }
    }

    fn format(&self, entry: &Entry, out: &mut Vec<u8>) {
        if self.timestamps {
            out.extend_from_slice(entry.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(entry.content.as_bytes());
        out.push(b'\n');
    }
}

/// Renders a whole log file's text: parse, filter by time, keep the last `tail` entries, and
/// cut at `limit` bytes.
pub fn render(text: &str, filter: &Filter, tail: Option<u64>, limit: Option<u64>) -> Vec<u8> {
    let mut asm = Assembler::default();
    let mut entries: Vec<Entry> = text.lines().filter_map(|l| asm.push(l)).collect();
    entries.extend(asm.finish());
    entries.retain(|e| filter.keep(e));
    if let Some(n) = tail {
        let skip = entries.len().saturating_sub(n as usize);
        entries.drain(..skip);
    }
    let mut out = Vec::new();
    for e in &entries {
        filter.format(e, &mut out);
    }
    if let Some(limit) = limit {
        out.truncate(limit as usize);
    }
    out
}

/// The directory of a pod's logs.
pub fn pod_log_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join("pods").join(format!("{namespace}_{name}_{uid}"))
}

/// The log file of one run of a container.
pub fn container_log_path(
    root: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
    restart: i32,
) -> PathBuf {
    pod_log_dir(root, namespace, name, uid).join(container).join(format!("{restart}.log"))
}

/// The restart counts that have a log file, ascending.
fn runs(dir: &Path) -> Vec<i32> {
    let mut runs: Vec<i32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    runs.sort_unstable();
    runs
}

/// Which log file a request reads: the latest run, or with `previous` the one before it.
pub fn select_log_file(dir: &Path, pod: &str, opts: &LogOptions) -> Result<PathBuf, ApiError> {
    let runs = runs(dir);
    let pick = if opts.previous { runs.len().checked_sub(2).map(|i| runs[i]) } else { runs.last().copied() };
    match pick {
        Some(run) => Ok(dir.join(format!("{run}.log"))),
        None if opts.previous => Err(ApiError::bad_request(format!(
            "previous terminated container \"{}\" in pod \"{pod}\" not found",
            opts.container
        ))),
        None => Err(ApiError::bad_request(format!(
            "container \"{}\" in pod \"{pod}\" is waiting to start: ContainerCreating",
            opts.container
        ))),
    }
}

/// Which log files belong to running containers: the pod worker marks a file when its container
/// starts and flips the flag when it exits, which wakes followers at once.
#[derive(Default)]
pub struct LogWatchers {
    running: Mutex<HashMap<PathBuf, watch::Sender<bool>>>,
}

impl LogWatchers {
    pub fn started(&self, path: &Path) {
        let (tx, _) = watch::channel(false);
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_path_buf(), tx);
    }

    pub fn exited(&self, path: &Path) {
        if let Some(tx) = self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(path) {
            tx.send_replace(true);
        }
    }

    /// Forgets every file under `dir` (a pod's logs), waking their followers.
    pub fn exited_under(&self, dir: &Path) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|path, tx| {
            let keep = !path.starts_with(dir);
            if !keep {
                tx.send_replace(true);
            }
            keep
        });
    }

    /// The log files of running containers (for rotation).
    pub fn running(&self) -> Vec<PathBuf> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// `None` when the file's container is not running.
    pub fn subscribe(&self, path: &Path) -> Option<watch::Receiver<bool>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).get(path).map(|tx| tx.subscribe())
    }
}

fn io_error(path: &Path, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("reading log file {}: {e}", path.display()))
}

/// The length of the longest prefix of `raw` that ends a message: a newline that is not the end
/// of a partial (`P`) piece.
fn complete_prefix(raw: &[u8]) -> usize {
    let mut cut = raw.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    while cut > 0 {
        let start = raw[..cut - 1].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let line = String::from_utf8_lossy(&raw[start..cut - 1]);
        if parse_cri_line(&line).is_some_and(|l| l.partial) {
            cut = start;
        } else {
            break;
        }
    }
    cut
}

/// The byte stream of a log request over `path`.
pub async fn stream_log(
    path: PathBuf,
    opts: &LogOptions,
    running: Option<watch::Receiver<bool>>,
) -> Result<ByteStream, ApiError> {
    let filter = Filter::new(opts, Timestamp::now())?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| io_error(&path, e))?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).await.map_err(|e| io_error(&path, e))?;
    // Only complete messages now; a follower keeps the unfinished tail (a line still being
    // written, and partial pieces waiting for their end) for the next read.
    let cut = if opts.follow { complete_prefix(&raw) } else { raw.len() };
    let rest = raw.split_off(cut);
    let first = render(&String::from_utf8_lossy(&raw), &filter, opts.tail_lines, opts.limit_bytes);
    let (Some(mut running), true) = (running, opts.follow) else {
        return Ok(futures::stream::once(async move { Ok(Bytes::from(first)) }).boxed());
    };
    let mut remaining = opts.limit_bytes.map(|l| l.saturating_sub(first.len() as u64));
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        let mut buf = rest;
        let mut asm = Assembler::default();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if remaining == Some(0) {
                return;
            }
            let exited = *running.borrow();
            let n = match file.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
                let lines: Vec<u8> = buf.drain(..=end).collect();
                let mut out = Vec::new();
                for line in String::from_utf8_lossy(&lines).lines() {
                    if let Some(e) = asm.push(line).filter(|e| filter.keep(e)) {
                        filter.format(&e, &mut out);
                    }
                }
                if let Some(r) = remaining.as_mut() {
                    out.truncate(*r as usize);
                    *r -= out.len() as u64;
                }
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return;
                }
            }
            if n > 0 {
                continue;
            }
            // Drained. The exit flag was read before this read, so nothing written before the
            // exit can be missed.
            if exited {
                return;
            }
            // Rotated (see [`rotation`]): the shim writes to the new file at the path from its
            // next write on; what it wrote before is drained above, so go on there.
            if rotation::replaced(&path, &file).await {
                match tokio::fs::File::open(&path).await {
                    Ok(new) => {
                        file = new;
                        continue;
                    }
                    Err(e) => tracing::debug!("reopening rotated log {}: {e}", path.display()),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = running.changed() => {}
                _ = tx.closed() => return,
            }
        }
    });
    Ok(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-25T10:00:00.000000001Z stdout F one\n\
2026-11-25T10:00:01.5Z stderr P tw\n\
2026-11-25T10:00:01.6Z stderr F o\n\
2026-11-25T10:00:02Z stdout F \n\
2026-11-25T10:00:03Z stdout F three words here\n";

    fn filter(since: Option<&str>, timestamps: bool) -> Filter {
        Filter { since: since.map(|s| s.parse().unwrap()), timestamps }
    }

    fn text(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn cri_lines_parse_into_their_four_fields() {
        assert_eq!(
            parse_cri_line("2026-11-25T10:00:00Z stdout F hello world"),
            Some(CriLine {
                timestamp: "2026-11-25T10:00:00Z",
                stream: "stdout",
                partial: false,
                content: "hello world"
            })
        );
        assert_eq!(parse_cri_line("2026-11-25T10:00:00Z stderr P ").unwrap().partial, true);
        assert_eq!(parse_cri_line("2026-11-25T10:00:00Z stdout F").unwrap().content, "");
        assert_eq!(parse_cri_line("garbage"), None);
        assert_eq!(parse_cri_line("ts stdin F x"), None);
    }

    #[test]
    fn partial_lines_join_the_next_and_the_prefix_is_stripped() {
        assert_eq!(text(render(LOG, &filter(None, false), None, None)), "one\ntwo\n\nthree words here\n");
    }

    #[test]
    fn timestamps_are_kept_when_asked_for() {
        let out = text(render(LOG, &filter(None, true), Some(2), None));
        assert_eq!(out, "2026-11-25T10:00:02Z \n2026-11-25T10:00:03Z three words here\n");
    }

    #[test]
    fn tail_and_limit_bytes_cut_the_output() {
        assert_eq!(text(render(LOG, &filter(None, false), Some(1), None)), "three words here\n");
        assert_eq!(text(render(LOG, &filter(None, false), Some(0), None)), "");
        assert_eq!(text(render(LOG, &filter(None, false), None, Some(6))), "one\ntw");
    }

    #[test]
    fn since_drops_older_lines() {
        let out = text(render(LOG, &filter(Some("2026-11-25T10:00:01.5Z"), false), None, None));
        assert_eq!(out, "two\n\nthree words here\n");
    }

    #[test]
    fn previous_reads_the_run_before_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = LogOptions { container: "app".into(), ..Default::default() };
        assert_eq!(
            select_log_file(dir.path(), "web", &opts).unwrap_err().message,
            "container \"app\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        std::fs::write(dir.path().join("0.log"), "").unwrap();
        opts.previous = true;
        let err = select_log_file(dir.path(), "web", &opts).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "previous terminated container \"app\" in pod \"web\" not found")
        );
        std::fs::write(dir.path().join("1.log"), "").unwrap();
        std::fs::write(dir.path().join("10.log"), "").unwrap();
        assert_eq!(select_log_file(dir.path(), "web", &opts).unwrap(), dir.path().join("1.log"));
        opts.previous = false;
        assert_eq!(select_log_file(dir.path(), "web", &opts).unwrap(), dir.path().join("10.log"));
    }

    #[test]
    fn a_follower_holds_back_partial_pieces_until_their_line_ends() {
        let full = "t stdout F a\nt stdout P b\nt stdout P c\n";
        assert_eq!(complete_prefix(full.as_bytes()), "t stdout F a\n".len());
        assert_eq!(complete_prefix(b"t stdout F a\nt stdout F b"), "t stdout F a\n".len());
        assert_eq!(complete_prefix(b"t stdout P x\n"), 0);
        assert_eq!(complete_prefix(b""), 0);
    }

    #[tokio::test]
    async fn follow_streams_appended_lines_until_the_container_exits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2026-11-25T10:00:00Z stdout F first\n2026-11-25T10:00:00Z stdout P par").unwrap();
        let watchers = LogWatchers::default();
        watchers.started(&path);
        let opts = LogOptions { container: "c".into(), follow: true, ..Default::default() };
        let mut stream = stream_log(path.clone(), &opts, watchers.subscribe(&path)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "first\n");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"t\n2026-11-25T10:00:01Z stdout F second\n").unwrap();
        // The partial piece "par" + "t" is joined with the full line that follows it.
        assert_eq!(stream.next().await.unwrap().unwrap(), "partsecond\n");
        f.write_all(b"2026-11-25T10:00:02Z stdout F last\n").unwrap();
        watchers.exited(&path);
        let mut rest = Vec::new();
        while let Some(chunk) = stream.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(text(rest), "last\n");
    }

    #[tokio::test]
    async fn without_follow_the_stream_is_the_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        let opts = LogOptions { container: "c".into(), tail_lines: Some(1), ..Default::default() };
        let chunks: Vec<_> = stream_log(path, &opts, None).await.unwrap().collect().await;
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].as_ref().unwrap(), "three words here\n");
    }
}
