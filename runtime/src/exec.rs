//! Running another process in a running container (`kubectl exec`).
//!
//! The server never forks: it starts `skiff shim exec <dir> <request>` (a fresh, single-threaded
//! process) with the caller's pipes as its stdio and one end of a SEQPACKET socket as fd 3. The
//! helper moves itself into the container's cgroup, joins the namespaces of the container's init
//! (ipc, uts, net, pid, mount: the mount namespace's root is the container's root), forks the
//! process (the first child born in the container's pid namespace) and waits for it, exiting
//! with its code (128+signal when killed), as the runtime reports container exits.
//!
//! With a terminal, the pty is made inside the container (its own `/dev/pts`, so `tty` names a
//! device the process can see); the helper sends the master back over the socket
//! (SCM_RIGHTS), and the process gets the slave as its controlling terminal.
//!
//! Socket messages, helper → server: `pty` (with the master fd), then `started <pid>` once the
//! process has exec'd (a close-on-exec pipe tells, as for the container's init), or `error <msg>`.

use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use oci_spec::runtime::Spec;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cgroups::CgroupManager;
use crate::rootfs::{self, ContainerDir};
use crate::security::Identity;
use crate::shim::{DEFAULT_PATH, ShimRecord, lookup};
use crate::state::{io_ctx, read_json};
use crate::{Error, Result, container};

/// The fd on which the helper finds its end of the socket.
const SOCKET_FD: RawFd = 3;

/// A process to run in a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// `KEY=value`, over the container's own environment.
    pub env: Vec<String>,
    /// A pty as the process's stdin, stdout and stderr (stderr is merged into stdout).
    pub tty: bool,
    /// Attach stdin (otherwise the process reads `/dev/null`, or an idle terminal).
    pub stdin: bool,
    /// Attach stdout / stderr as pipes (otherwise `/dev/null`); ignored with `tty`.
    pub stdout: bool,
    pub stderr: bool,
    /// The terminal's size before the process starts.
    pub terminal_size: Option<TerminalSize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

pub type ExecReader = Pin<Box<dyn AsyncRead + Send>>;
pub type ExecWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A process started by [`crate::Runtime::exec`]. Take its streams, then [`ExecProcess::wait`].
/// Dropping it leaves the process running; it ends with the container at the latest.
pub struct ExecProcess {
    pid: i32,
    helper: tokio::process::Child,
    stdin: Option<ExecWriter>,
    stdout: Option<ExecReader>,
    stderr: Option<ExecReader>,
    terminal: Option<Arc<AsyncFd<OwnedFd>>>,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess").field("pid", &self.pid).field("tty", &self.terminal.is_some()).finish()
    }
}

impl ExecProcess {
    /// The process's pid as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Writing feeds the process's stdin; dropping or shutting it down is end of input (with a
    /// terminal the pty stays open: the process sees no end of file).
    pub fn take_stdin(&mut self) -> Option<ExecWriter> {
        self.stdin.take()
    }

    /// The process's stdout, or with a terminal everything it writes to the terminal. Ends once
    /// the process (and whatever inherited the stream) has closed it.
    pub fn take_stdout(&mut self) -> Option<ExecReader> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ExecReader> {
        self.stderr.take()
    }

    /// Resizes the terminal (SIGWINCH to the process). An error without a terminal.
    pub fn resize(&self, size: TerminalSize) -> Result<()> {
        let Some(master) = &self.terminal else {
            return Err(Error::Spawn("the exec'd process has no terminal to resize".into()));
        };
        set_window_size(master.get_ref().as_raw_fd(), size).map_err(io_ctx("resizing the terminal"))
    }

    /// The exit code: the process's code, or 128+signal when a signal ended it.
    pub async fn wait(&mut self) -> Result<i32> {
        let status = self.helper.wait().await.map_err(io_ctx("waiting for the exec helper"))?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

pub(crate) fn set_window_size(fd: RawFd, size: TerminalSize) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: size.height, ws_col: size.width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts the helper and waits until the process has exec'd (or failed to).
pub(crate) async fn spawn(shim_exe: &Path, dir: &ContainerDir, spec: &ExecSpec) -> Result<ExecProcess> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| io_ctx("socketpair for the exec helper")(e.into()))?;
    let request = serde_json::to_string(spec).map_err(|e| Error::Spawn(format!("encoding exec request: {e}")))?;
    let mut cmd = tokio::process::Command::new(shim_exe);
    cmd.arg0("skiff").arg("shim").arg("exec").arg(dir.path()).arg(request);
    let pipe = |wanted: bool| if wanted && !spec.tty { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(pipe(spec.stdin)).stdout(pipe(spec.stdout)).stderr(pipe(spec.stderr)).kill_on_drop(false);
    let theirs_raw = theirs.as_raw_fd();
    // SAFETY: only async-signal-safe calls (fcntl, dup2, setsid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_raw == SOCKET_FD {
                let flags = libc::fcntl(SOCKET_FD, libc::F_GETFD);
                libc::fcntl(SOCKET_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(theirs_raw, SOCKET_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let mut helper = cmd.spawn().map_err(io_ctx(format!("spawning exec helper {}", shim_exe.display())))?;
    drop(theirs);
    let handshake = tokio::task::spawn_blocking(move || handshake(&ours))
        .await
        .map_err(|e| Error::Spawn(format!("exec handshake task failed: {e}")))?;
    let (master, pid) = match handshake {
        Ok(h) => h,
        Err(message) => {
            let _ = helper.wait().await;
            return Err(Error::Spawn(message));
        }
    };
    let mut process = ExecProcess {
        pid,
        stdin: helper.stdin.take().map(|w| Box::pin(w) as ExecWriter),
        stdout: helper.stdout.take().map(|r| Box::pin(r) as ExecReader),
        stderr: helper.stderr.take().map(|r| Box::pin(r) as ExecReader),
        helper,
        terminal: None,
    };
    if let Some(master) = master {
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| io_ctx("making the pty master non-blocking")(e.into()))?;
        // SAFETY: the AsyncFd owns the master, so it cannot be closed while registered.
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|e| io_ctx("registering the pty master")(std::io::Error::from(e)))?;
        let master = Arc::new(master);
        if spec.stdin {
            process.stdin = Some(Box::pin(Pty(master.clone())));
        }
        process.stdout = Some(Box::pin(Pty(master.clone())));
        process.terminal = Some(master);
    }
    Ok(process)
}

/// Reads the helper's messages up to `started` or `error`. Blocking.
fn handshake(sock: &OwnedFd) -> Result<(Option<OwnedFd>, i32), String> {
    let mut master = None;
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("reading from the exec helper: {e}")),
            };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(received) = c {
                        // SAFETY: the kernel just installed these fds in this process.
                        fds.extend(received.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                    }
                }
            }
            (msg.bytes, fds)
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if n == 0 {
            return Err("the exec helper exited during setup".into());
        }
        if text == "pty" {
            master = fds.into_iter().next();
            if master.is_none() {
                return Err("the exec helper sent no terminal".into());
            }
        } else if let Some(pid) = text.strip_prefix("started ") {
            return Ok((master, pid.trim().parse().unwrap_or(0)));
        } else if let Some(message) = text.strip_prefix("error ") {
            return Err(message.to_string());
        } else {
            return Err(format!("unexpected message from the exec helper: {text:?}"));
        }
    }
}

/// The master side of the exec's pty, as reader and writer. A read after the process and its
/// children closed the slave fails with EIO: that is the end of the stream.
struct Pty(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for Pty {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| match nix::unistd::read(fd.get_ref(), unfilled) {
                Ok(n) => Ok(n),
                Err(nix::errno::Errno::EIO) => Ok(0),
                Err(e) => Err(std::io::Error::from(e)),
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// The helper: `skiff shim exec <dir> <request>`, single-threaded.

/// Runs the helper; returns its exit status (the process's exit code).
pub(crate) fn helper_main(dir: &ContainerDir, request: &str) -> i32 {
    // SAFETY: the runtime put the socket at fd 3 for us; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    match run_helper(dir, request, &sock) {
        Ok(code) => code,
        Err(message) => {
            send(&sock, format!("error {message}").as_bytes(), None);
            126
        }
    }
}

fn send(sock: &OwnedFd, text: &[u8], fd: Option<RawFd>) {
    let fds = fd.map(|f| [f]);
    let cmsgs: Vec<ControlMessage> = fds.as_ref().map(|f| ControlMessage::ScmRights(f)).into_iter().collect();
    let _ = sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(text)], &cmsgs, MsgFlags::empty(), None);
}

struct Plan {
    argv: Vec<String>,
    exe: PathBuf,
    env: Vec<String>,
    cwd: PathBuf,
    identity: Identity,
    seccomp: Option<crate::seccomp::Filters>,
}

fn run_helper(dir: &ContainerDir, request: &str, sock: &OwnedFd) -> Result<i32, String> {
    let req: ExecSpec = serde_json::from_str(request).map_err(|e| format!("decoding the exec request: {e}"))?;
    let spec = Spec::load(dir.file(rootfs::CONFIG)).map_err(|e| format!("reading the container's config: {e}"))?;
    let meta = container::Meta::from_spec(&spec).map_err(|e| e.to_string())?;
    let process = spec.process().as_ref().ok_or("the container's config has no process")?;
    let rec: ShimRecord = read_json(&dir.file(rootfs::SHIM_STATE))
        .map_err(|e| e.to_string())?
        .ok_or("the container has no running process")?;
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{}/ns/{name}", rec.init.pid);
        let f = std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
        namespaces.push((OwnedFd::from(f), flag));
    }
    // Checked after opening: the namespaces are those of the container's init, not of a process
    // that took over its pid.
    if !rec.init.is_alive() {
        return Err("the container is not running".into());
    }
    let cgroups = CgroupManager::detect("").map_err(|e| e.to_string())?;
    for procs in cgroups.procs_files(&meta.cgroup_rel) {
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("joining the container's cgroup {}: {e}", procs.display()))?;
    }
    for (fd, flag) in &namespaces {
        setns(fd, *flag).map_err(|e| format!("joining the container's {flag:?} namespace: {e}"))?;
    }
    drop(namespaces);

    let mut env = process.env().clone().unwrap_or_default();
    for e in &req.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|old| old.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let path_var = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH).to_string();
    let arg0 = req.argv.first().ok_or("no command given")?;
    let exe = lookup(arg0, &path_var)?;
    let plan = Plan {
        argv: req.argv.clone(),
        exe,
        env,
        cwd: process.cwd().clone(),
        identity: Identity::from_process(process),
        seccomp: match spec.linux() {
            Some(linux) => crate::shim::seccomp_filters(linux)?,
            None => None,
        },
    };

    let terminal = if req.tty { Some(open_terminal(req.terminal_size)?) } else { None };
    if let Some((master, _)) = &terminal {
        send(sock, b"pty", Some(master.as_raw_fd()));
    }
    let slave = terminal.map(|(master, slave)| {
        drop(master);
        slave
    });

    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the helper is single-threaded (a fresh exec), so the child may allocate.
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(sync_r);
            child_main(&plan, slave.as_deref(), sync_w)
        }
        ForkResult::Parent { child } => child,
    };
    drop(sync_w);
    // The streams belong to the process now: holding them would delay its output's end of file.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: both fds are open.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    let mut message = String::new();
    let _ = std::fs::File::from(sync_r).read_to_string(&mut message);
    if !message.is_empty() {
        let _ = waitpid(child, None);
        return Err(message);
    }
    send(sock, format!("started {}", child.as_raw()).as_bytes(), None);
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for the process: {e}")),
        }
    }
}

/// A pty of the container's devpts (the helper is in its mount namespace): the master and the
/// slave's path.
pub(crate) fn open_terminal(size: Option<TerminalSize>) -> Result<(OwnedFd, String), String> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("opening /dev/ptmx in the container: {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let slave = ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    if let Some(size) = size {
        set_window_size(master.as_raw_fd(), size).map_err(|e| format!("setting the terminal size: {e}"))?;
    }
    Ok((OwnedFd::from(master), slave))
}

/// The exec'd process, in the forked child. Never returns.
fn child_main(plan: &Plan, slave: Option<&str>, sync: OwnedFd) -> ! {
    let mut sync = std::fs::File::from(sync);
    let result = (|| -> Result<(), String> {
        // Own session: a terminal becomes its controlling terminal, and signals to the helper's
        // group do not reach it.
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        if let Some(path) = slave {
            let fd = nix::fcntl::open(path, OFlag::O_RDWR, nix::sys::stat::Mode::empty())
                .map_err(|e| format!("opening {path}: {e}"))?;
            // SAFETY: TIOCSCTTY takes an int argument; fd is open.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!("making {path} the controlling terminal: {}", std::io::Error::last_os_error()));
            }
            for target in 0..3 {
                // SAFETY: both fds are open.
                unsafe { libc::dup2(fd.as_fd().as_raw_fd(), target) };
            }
        }
        std::env::set_current_dir(&plan.cwd).map_err(|e| format!("chdir {}: {e}", plan.cwd.display()))?;
        plan.identity.enter_confined(plan.seccomp.as_ref())
    })();
    if let Err(msg) = result {
        let _ = sync.write_all(msg.as_bytes());
        // SAFETY: _exit skips atexit handlers that belong to the helper.
        unsafe { libc::_exit(127) }
    }
    let cexe = CString::new(plan.exe.as_os_str().as_bytes()).unwrap_or_default();
    let argv: Vec<CString> = plan.argv.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let env: Vec<CString> = plan.env.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let e = nix::unistd::execve(&cexe, &argv, &env).unwrap_err();
    let _ = write!(sync, "exec: {:?}: {}", plan.argv[0], crate::shim::errno_text(e));
    // SAFETY: see above.
    unsafe { libc::_exit(127) }
}
