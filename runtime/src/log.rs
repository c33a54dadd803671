//! Container logs in the CRI format the kubelet reads:
//! `<RFC3339Nano UTC> <stdout|stderr> <F|P> <line>\n`, `F` for a full line, `P` for a part of
//! one (a line longer than [`MAX_LINE`], or a last line without its newline).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines longer than this are split into `P` records (containerd's default is 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriStream {
    Stdout,
    Stderr,
}

impl CriStream {
    pub fn as_str(self) -> &'static str {
        match self {
            CriStream::Stdout => "stdout",
            CriStream::Stderr => "stderr",
        }
    }
}

/// `2026-11-25T08:00:00.123456789Z`: always nine fractional digits, UTC.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One CRI log record; `line` is without its newline.
pub fn format_cri_line(t: SystemTime, stream: CriStream, partial: bool, line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 48);
    out.extend_from_slice(rfc3339_nano(t).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(line);
    out.push(b'\n');
    out
}

/// Splits one stream's bytes into CRI records, keeping an unfinished line until more arrives.
#[derive(Debug)]
pub struct LineSplitter {
    stream: CriStream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: CriStream) -> Self {
        LineSplitter { stream, pending: Vec::new() }
    }

    /// Feeds `data` and writes every record it completes.
    pub fn feed(&mut self, data: &[u8], now: SystemTime, out: &mut impl Write) -> std::io::Result<()> {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.pending);
            line.extend_from_slice(&rest[..pos]);
            self.write_chunks(&line, now, out)?;
            rest = &rest[pos + 1..];
        }
        self.pending.extend_from_slice(rest);
        while self.pending.len() > MAX_LINE {
            let tail = self.pending.split_off(MAX_LINE);
            let head = std::mem::replace(&mut self.pending, tail);
            out.write_all(&format_cri_line(now, self.stream, true, &head))?;
        }
        Ok(())
    }

    /// At end of stream: an unfinished last line is written as a partial record.
    pub fn finish(&mut self, now: SystemTime, out: &mut impl Write) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            out.write_all(&format_cri_line(now, self.stream, true, &line))?;
        }
        Ok(())
    }

    fn write_chunks(&self, line: &[u8], now: SystemTime, out: &mut impl Write) -> std::io::Result<()> {
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if chunks.peek().is_none() {
            return out.write_all(&format_cri_line(now, self.stream, false, b""));
        }
        while let Some(chunk) = chunks.next() {
            out.write_all(&format_cri_line(now, self.stream, chunks.peek().is_some(), chunk))?;
        }
        Ok(())
    }
}

/// The shim's log file, reopened when the kubelet has rotated it: the kubelet renames the file
/// and puts an empty one at the path; before the next write this notices that the path no
/// longer names the open file and appends to the new one (CRI's `ReopenContainerLog`, without
/// a call). Nothing is lost: what was written before lands in the rotated file.
#[derive(Debug)]
pub struct ReopeningLog {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl ReopeningLog {
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(ReopeningLog { path: path.to_path_buf(), file })
    }

    fn reopen_if_rotated(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let same = match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(at_path), Ok(open)) => at_path.ino() == open.ino() && at_path.dev() == open.dev(),
            // Gone (the pod's logs are being removed): keep the open file.
            _ => true,
        };
        if !same && let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            self.file = file;
        }
    }
}

impl Write for ReopeningLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.reopen_if_rotated();
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.reopen_if_rotated();
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rotated_log_is_reopened_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = ReopeningLog::open(&path).unwrap();
        log.write_all(b"before\n").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::fs::File::create(&path).unwrap();
        log.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("0.log.1")).unwrap(), "before\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    fn t() -> SystemTime {
        // 2026-11-25T08:00:00.123456789Z
        UNIX_EPOCH + Duration::new(1_795_593_600, 123_456_789)
    }

    #[test]
    fn timestamps_are_rfc3339_with_nine_fraction_digits() {
        assert_eq!(rfc3339_nano(t()), "2026-11-25T08:00:00.123456789Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn a_full_line_is_tagged_f() {
        let rec = format_cri_line(t(), CriStream::Stdout, false, b"hello");
        assert_eq!(rec, b"2026-11-25T08:00:00.123456789Z stdout F hello\n");
    }

    #[test]
    fn split_writes_buffer_lines_until_their_newline_and_a_final_fragment_is_partial() {
        let mut s = LineSplitter::new(CriStream::Stderr);
        let mut out = Vec::new();
        s.feed(b"one\ntw", t(), &mut out).unwrap();
        s.feed(b"o\n\nthr", t(), &mut out).unwrap();
        s.finish(t(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let ts = "2026-11-25T08:00:00.123456789Z";
        assert_eq!(text, format!("{ts} stderr F one\n{ts} stderr F two\n{ts} stderr F \n{ts} stderr P thr\n"));
    }

    #[test]
    fn overlong_lines_become_partial_records_then_a_full_one() {
        let mut s = LineSplitter::new(CriStream::Stdout);
        let mut out = Vec::new();
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.push(b'\n');
        s.feed(&data, t(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "F"]);
        assert_eq!(text.lines().last().unwrap().len(), 30 + 10 + 10);
    }
}
