//! The container's own stdio, held by its shim: output copied into the CRI log, and attach
//! sessions (`kubectl attach`, `kubectl run -i`) that see the output live and feed stdin.
//!
//! With `stdin`, the init reads a pipe whose write end the shim keeps, so the process waits for
//! input instead of seeing end of file while nobody is attached; with `stdin_once` the pipe
//! closes when the first session that wrote to it ends (Kubernetes' `stdinOnce`). With `tty`,
//! the init makes a pty in the container's own devpts (as exec does), sends the master to the
//! shim over a socketpair and takes the slave as its controlling terminal; what the terminal
//! prints is logged as stdout.
//!
//! Sessions connect to `attach.sock` in the container's directory, reached through
//! `/proc/self/fd/N/` because socket paths are limited to 108 bytes. Frames both ways are
//! `[kind u8][length u32 BE][payload]`: client → shim `0` stdin, `1` end of stdin, `2` resize
//! (width u16 BE, height u16 BE); shim → client `1` stdout, `2` stderr. The shim closes the
//! sessions when the container's output ends.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, SystemTime};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::log::{CriStream, LineSplitter};
use crate::rootfs::ContainerDir;
use crate::{Error, Result, StdioSpec, TerminalSize};

pub const ATTACH_SOCKET: &str = "attach.sock";

const TO_STDIN: u8 = 0;
const TO_STDIN_END: u8 = 1;
const TO_RESIZE: u8 = 2;
const FROM_STDOUT: u8 = 1;
const FROM_STDERR: u8 = 2;
const HEADER: usize = 5;
const MAX_FRAME: usize = 1 << 20;
/// A session this far behind is dropped rather than stall the container's output (the log keeps
/// everything).
const MAX_BACKLOG: usize = 4 << 20;

/// The init's halves of the wiring.
pub(crate) struct InitStdio {
    stdin: Option<OwnedFd>,
    console: Option<OwnedFd>,
}

/// The shim's halves of the wiring.
pub(crate) struct ShimStdio {
    stdin: Option<OwnedFd>,
    console: Option<OwnedFd>,
    stdin_once: bool,
}

/// Made before the fork; each side drops the other's halves.
pub(crate) fn wire(spec: &StdioSpec) -> std::result::Result<(InitStdio, ShimStdio), String> {
    let mut init = InitStdio { stdin: None, console: None };
    let mut shim = ShimStdio { stdin: None, console: None, stdin_once: spec.stdin_once };
    if spec.tty {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| format!("socketpair: {e}"))?;
        init.console = Some(a);
        shim.console = Some(b);
    } else if spec.stdin {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        init.stdin = Some(r);
        shim.stdin = Some(w);
    }
    Ok((init, shim))
}

impl InitStdio {
    /// In the init, after the pivot (the pty must come from the container's devpts): the
    /// terminal as fds 0–2 and controlling terminal, or the stdin pipe as fd 0.
    pub(crate) fn install(self) -> std::result::Result<(), String> {
        if let Some(console) = self.console {
            let (master, slave_path) = crate::exec::open_terminal(None)?;
            let slave = nix::fcntl::open(slave_path.as_str(), OFlag::O_RDWR, nix::sys::stat::Mode::empty())
                .map_err(|e| format!("opening {slave_path}: {e}"))?;
            let fds = [master.as_raw_fd()];
            sendmsg::<()>(
                console.as_raw_fd(),
                &[IoSlice::new(b"pty")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .map_err(|e| format!("handing the terminal to the shim: {e}"))?;
            drop(master);
            nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
            // SAFETY: TIOCSCTTY takes an int argument; slave is open.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!(
                    "making {slave_path} the controlling terminal: {}",
                    std::io::Error::last_os_error()
                ));
            }
            for target in 0..3 {
                // SAFETY: both fds are open; the copies are not close-on-exec, as wanted.
                unsafe { libc::dup2(slave.as_raw_fd(), target) };
            }
        } else if let Some(stdin) = self.stdin {
            // SAFETY: as above.
            if unsafe { libc::dup2(stdin.as_raw_fd(), 0) } < 0 {
                return Err(format!("dup2 onto fd 0: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

impl ShimStdio {
    /// The pty master the init made, when the container has a terminal. Blocks until the init
    /// sends it or fails (its end of the socketpair closes).
    pub(crate) fn receive_terminal(&mut self) -> std::result::Result<Option<OwnedFd>, String> {
        let Some(console) = self.console.take() else { return Ok(None) };
        let mut buf = [0u8; 16];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(console.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("receiving the container's terminal: {e}")),
            };
            for c in msg.cmsgs().map_err(|e| e.to_string())? {
                if let ControlMessageOwned::ScmRights(fds) = c
                    && let Some(&fd) = fds.first()
                {
                    // SAFETY: the kernel just installed this fd in this process.
                    return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            // No fd: the init failed before making the terminal; its sync pipe tells why.
            return Ok(None);
        }
    }
}

/// Where the container's input goes: the stdin pipe or the pty master.
struct Sink {
    fd: OwnedFd,
    pending: Vec<u8>,
    /// With `stdinOnce`, a pipe closes at the end of a session's input. A terminal stays (its
    /// end of input is a typed ^D), and so does a pipe without `stdinOnce`.
    closable: bool,
    closing: bool,
}

struct Source {
    fd: OwnedFd,
    splitter: LineSplitter,
    frame: u8,
}

struct Session {
    sock: std::os::unix::net::UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    wrote_stdin: bool,
}

#[derive(Clone, Copy)]
enum Slot {
    Source(usize),
    Sync,
    Listener,
    Session(usize),
    Sink,
}

/// Copies the container's output into the log (and to attached sessions) until every output
/// closes; feeds sessions' input to the container. Returns the exec error the init reported.
pub(crate) fn pump(
    listener: Option<std::os::unix::net::UnixListener>,
    out: OwnedFd,
    err: OwnedFd,
    terminal: Option<OwnedFd>,
    sync: std::fs::File,
    log: &mut impl Write,
    stdio: ShimStdio,
) -> Option<String> {
    let mut sources = vec![
        Source { fd: out, splitter: LineSplitter::new(CriStream::Stdout), frame: FROM_STDOUT },
        Source { fd: err, splitter: LineSplitter::new(CriStream::Stderr), frame: FROM_STDERR },
    ];
    let mut sources: Vec<Option<Source>> = sources.drain(..).map(Some).collect();
    let mut sink = stdio.stdin.map(|fd| Sink { fd, pending: Vec::new(), closable: stdio.stdin_once, closing: false });
    if let Some(master) = terminal {
        if let Ok(input) = master.try_clone() {
            sink = Some(Sink { fd: input, pending: Vec::new(), closable: false, closing: false });
        }
        sources.push(Some(Source { fd: master, splitter: LineSplitter::new(CriStream::Stdout), frame: FROM_STDOUT }));
    }
    if let Some(s) = &sink {
        let _ = nix::fcntl::fcntl(&s.fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    let mut sync: Option<OwnedFd> = Some(sync.into());
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let mut exec_error: Option<String> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending_log = Vec::new();

    while sources.iter().any(Option::is_some) {
        let mut slots: Vec<(Slot, RawFd, PollFlags)> = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            if let Some(s) = s {
                slots.push((Slot::Source(i), s.fd.as_raw_fd(), PollFlags::POLLIN));
            }
        }
        if let Some(s) = &sync {
            slots.push((Slot::Sync, s.as_raw_fd(), PollFlags::POLLIN));
        }
        if let Some(l) = &listener {
            slots.push((Slot::Listener, l.as_raw_fd(), PollFlags::POLLIN));
        }
        for (i, s) in sessions.iter().enumerate() {
            if let Some(s) = s {
                let flags =
                    if s.outbuf.is_empty() { PollFlags::POLLIN } else { PollFlags::POLLIN | PollFlags::POLLOUT };
                slots.push((Slot::Session(i), s.sock.as_raw_fd(), flags));
            }
        }
        if let Some(s) = sink.as_ref().filter(|s| !s.pending.is_empty()) {
            slots.push((Slot::Sink, s.fd.as_raw_fd(), PollFlags::POLLOUT));
        }
        // SAFETY: every fd stays open for the duration of this poll call.
        let borrowed: Vec<BorrowedFd> = slots.iter().map(|(_, fd, _)| unsafe { BorrowedFd::borrow_raw(*fd) }).collect();
        let mut fds: Vec<PollFd> =
            borrowed.iter().zip(&slots).map(|(b, (_, _, f))| PollFd::new(b.as_fd(), *f)).collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<(Slot, PollFlags)> = slots
            .iter()
            .zip(&fds)
            .filter_map(|((slot, _, _), p)| p.revents().filter(|r| !r.is_empty()).map(|r| (*slot, r)))
            .collect();
        drop(fds);
        let now = SystemTime::now();
        for (slot, revents) in ready {
            match slot {
                Slot::Source(i) => {
                    let Some(source) = sources[i].as_mut() else { continue };
                    match nix::unistd::read(source.fd.as_fd(), &mut buf) {
                        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                        // A pty master reads EIO once every slave fd is closed: its end of file.
                        Ok(0) | Err(_) => {
                            let _ = source.splitter.finish(now, &mut pending_log);
                            sources[i].take();
                        }
                        Ok(n) => {
                            let _ = source.splitter.feed(&buf[..n], now, &mut pending_log);
                            for session in sessions.iter_mut() {
                                if let Some(s) = session
                                    && !queue_frame(s, source.frame, &buf[..n])
                                {
                                    *session = None;
                                }
                            }
                        }
                    }
                }
                Slot::Sync => {
                    let Some(fd) = sync.as_ref() else { continue };
                    let n = nix::unistd::read(fd.as_fd(), &mut buf).unwrap_or(0);
                    if n == 0 {
                        sync = None;
                    } else if buf[0] == b'E' || exec_error.is_some() {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let e = exec_error.get_or_insert_with(String::new);
                        e.push_str(text.strip_prefix('E').unwrap_or(&text));
                    }
                }
                Slot::Listener => {
                    if let Some(l) = &listener {
                        while let Ok((sock, _)) = l.accept() {
                            if sock.set_nonblocking(true).is_ok() {
                                sessions.push(Some(Session {
                                    sock,
                                    inbuf: Vec::new(),
                                    outbuf: Vec::new(),
                                    wrote_stdin: false,
                                }));
                            }
                        }
                    }
                }
                Slot::Session(i) => {
                    let Some(s) = sessions[i].as_mut() else { continue };
                    let mut open = true;
                    if revents.intersects(PollFlags::POLLOUT) {
                        open = flush(s);
                    }
                    if open && revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                        open = match s.sock.read(&mut buf) {
                            Ok(0) => false,
                            Ok(n) => {
                                s.inbuf.extend_from_slice(&buf[..n]);
                                take_frames(s, sink.as_mut())
                            }
                            Err(e) => {
                                matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
                            }
                        };
                    }
                    if !open {
                        if s.wrote_stdin {
                            close_input(&mut sink);
                        }
                        sessions[i] = None;
                    }
                }
                Slot::Sink => {}
            }
        }
        if let Some(s) = sink.as_mut() {
            if !write_pending(s) {
                sink = None;
            } else if s.closing && s.pending.is_empty() {
                sink = None;
            }
        }
        sessions.retain(Option::is_some);
        if !pending_log.is_empty() {
            let _ = log.write_all(&pending_log);
            pending_log.clear();
        }
    }
    // Hand what is queued to the sessions still attached, without waiting on a stuck one.
    for s in sessions.into_iter().flatten() {
        let _ = s.sock.set_nonblocking(false);
        let _ = s.sock.set_write_timeout(Some(Duration::from_secs(1)));
        let mut sock = &s.sock;
        let _ = sock.write_all(&s.outbuf);
    }
    exec_error
}

/// The attach socket's path through a handle on the container's directory (socket paths are
/// limited to 108 bytes; the directory's own path may be longer). Valid while the handle lives.
fn socket_path(dir: &ContainerDir) -> std::io::Result<(std::fs::File, String)> {
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir.path())?;
    let path = format!("/proc/self/fd/{}/{ATTACH_SOCKET}", handle.as_raw_fd());
    Ok((handle, path))
}

/// The attach socket; the shim makes it before it reports the container ready, so a session
/// can connect as soon as the container runs.
pub(crate) fn listen(dir: &ContainerDir) -> std::io::Result<std::os::unix::net::UnixListener> {
    let (_handle, path) = socket_path(dir)?;
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Queues an output frame for a session; false when the session fell too far behind.
fn queue_frame(s: &mut Session, kind: u8, data: &[u8]) -> bool {
    s.outbuf.push(kind);
    s.outbuf.extend_from_slice(&(data.len() as u32).to_be_bytes());
    s.outbuf.extend_from_slice(data);
    flush(s) && s.outbuf.len() <= MAX_BACKLOG
}

/// Writes what the socket takes now; false when the session is gone.
fn flush(s: &mut Session) -> bool {
    while !s.outbuf.is_empty() {
        match s.sock.write(&s.outbuf) {
            Ok(0) => return false,
            Ok(n) => {
                s.outbuf.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Handles the complete frames a session sent; false on a malformed one.
fn take_frames(s: &mut Session, mut sink: Option<&mut Sink>) -> bool {
    while s.inbuf.len() >= HEADER {
        let len = u32::from_be_bytes([s.inbuf[1], s.inbuf[2], s.inbuf[3], s.inbuf[4]]) as usize;
        if len > MAX_FRAME {
            return false;
        }
        if s.inbuf.len() < HEADER + len {
            break;
        }
        let payload = &s.inbuf[HEADER..HEADER + len];
        match (s.inbuf[0], sink.as_deref_mut()) {
            (TO_STDIN, Some(sink)) if !sink.closing => {
                s.wrote_stdin = true;
                sink.pending.extend_from_slice(payload);
            }
            (TO_STDIN_END, Some(sink)) if sink.closable => {
                s.wrote_stdin = true;
                sink.closing = true;
            }
            (TO_RESIZE, Some(sink)) if payload.len() == 4 => {
                let size = TerminalSize {
                    width: u16::from_be_bytes([payload[0], payload[1]]),
                    height: u16::from_be_bytes([payload[2], payload[3]]),
                };
                let _ = crate::exec::set_window_size(sink.fd.as_raw_fd(), size);
            }
            _ => {}
        }
        s.inbuf.drain(..HEADER + len);
    }
    true
}

fn close_input(sink: &mut Option<Sink>) {
    if let Some(s) = sink.as_mut().filter(|s| s.closable) {
        s.closing = true;
    }
}

/// Writes queued input; false once the container closed its input.
fn write_pending(s: &mut Sink) -> bool {
    while !s.pending.is_empty() {
        match nix::unistd::write(&s.fd, &s.pending) {
            Ok(n) => {
                s.pending.drain(..n);
            }
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Output of an attach session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachStream {
    Stdout,
    Stderr,
}

/// The reading half of an attach session: the container's output from now on.
pub struct AttachOutput(tokio::net::unix::OwnedReadHalf);

/// The writing half of an attach session: the container's stdin and terminal size.
pub struct AttachInput(tokio::net::unix::OwnedWriteHalf);

impl AttachOutput {
    /// The next piece of output; `None` once the container's output ended.
    pub async fn next(&mut self) -> std::io::Result<Option<(AttachStream, Vec<u8>)>> {
        let mut header = [0u8; HEADER];
        match self.0.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut data = vec![0u8; len];
        self.0.read_exact(&mut data).await?;
        let stream = if header[0] == FROM_STDERR { AttachStream::Stderr } else { AttachStream::Stdout };
        Ok(Some((stream, data)))
    }
}

impl AttachInput {
    pub async fn stdin(&mut self, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(MAX_FRAME) {
            self.send(TO_STDIN, chunk).await?;
        }
        Ok(())
    }

    /// The end of this session's input: with `stdinOnce` the container sees end of file.
    pub async fn end_stdin(&mut self) -> std::io::Result<()> {
        self.send(TO_STDIN_END, &[]).await
    }

    pub async fn resize(&mut self, size: TerminalSize) -> std::io::Result<()> {
        let mut payload = size.width.to_be_bytes().to_vec();
        payload.extend_from_slice(&size.height.to_be_bytes());
        self.send(TO_RESIZE, &payload).await
    }

    async fn send(&mut self, kind: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.push(kind);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.0.write_all(&frame).await
    }
}

pub(crate) async fn connect(dir: &ContainerDir) -> Result<(AttachOutput, AttachInput)> {
    let ctx = |e: std::io::Error| Error::Io { context: format!("attaching to {}", dir.path().display()), source: e };
    let (handle, path) = socket_path(dir).map_err(ctx)?;
    let stream = tokio::net::UnixStream::connect(&path).await.map_err(ctx)?;
    drop(handle);
    let (r, w) = stream.into_split();
    Ok((AttachOutput(r), AttachInput(w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_pair() -> (Session, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Session { sock: a, inbuf: Vec::new(), outbuf: Vec::new(), wrote_stdin: false }, b)
    }

    #[test]
    fn stdin_frames_reach_the_sink_and_the_end_of_input_closes_a_pipe() {
        let (mut s, _peer) = session_pair();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut sink = Sink { fd: w, pending: Vec::new(), closable: true, closing: false };
        s.inbuf.extend_from_slice(&[TO_STDIN, 0, 0, 0, 3]);
        s.inbuf.extend_from_slice(b"abc");
        s.inbuf.extend_from_slice(&[TO_STDIN, 0, 0, 0, 2, b'd']); // incomplete: waits for more
        assert!(take_frames(&mut s, Some(&mut sink)));
        assert_eq!(sink.pending, b"abc");
        assert_eq!(s.inbuf.len(), 6);
        s.inbuf.extend_from_slice(b"e");
        s.inbuf.extend_from_slice(&[TO_STDIN_END, 0, 0, 0, 0]);
        assert!(take_frames(&mut s, Some(&mut sink)));
        assert!(s.inbuf.is_empty() && s.wrote_stdin && sink.closing);
        assert!(write_pending(&mut sink));
        drop(sink);
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "abcde");
    }

    #[test]
    fn without_stdin_once_the_end_of_a_sessions_input_keeps_the_pipe_open() {
        let (mut s, _peer) = session_pair();
        let (_r, w) = nix::unistd::pipe().unwrap();
        let mut sink = Some(Sink { fd: w, pending: Vec::new(), closable: false, closing: false });
        s.inbuf.extend_from_slice(&[TO_STDIN, 0, 0, 0, 1, b'x', TO_STDIN_END, 0, 0, 0, 0]);
        assert!(take_frames(&mut s, sink.as_mut()));
        close_input(&mut sink);
        let sink = sink.unwrap();
        assert_eq!(sink.pending, b"x");
        assert!(!sink.closing, "the next session can still write");
    }

    #[test]
    fn an_oversized_frame_ends_the_session() {
        let (mut s, _peer) = session_pair();
        s.inbuf.extend_from_slice(&[TO_STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert!(!take_frames(&mut s, None));
    }

    #[tokio::test]
    async fn output_frames_read_back_as_streams_in_order() {
        let (mut s, peer) = session_pair();
        assert!(queue_frame(&mut s, FROM_STDOUT, b"out"));
        assert!(queue_frame(&mut s, FROM_STDERR, b"err"));
        drop(s);
        peer.set_nonblocking(true).unwrap();
        let (r, _w) = tokio::net::UnixStream::from_std(peer).unwrap().into_split();
        let mut output = AttachOutput(r);
        assert_eq!(output.next().await.unwrap(), Some((AttachStream::Stdout, b"out".to_vec())));
        assert_eq!(output.next().await.unwrap(), Some((AttachStream::Stderr, b"err".to_vec())));
        assert_eq!(output.next().await.unwrap(), None);
    }
}
