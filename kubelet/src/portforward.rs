//! `pods/portforward`: a TCP connection to a port on the pod's own loopback, made from inside
//! the pod's network namespace as the kubelet's runtime does (containerd dials `localhost:PORT`
//! in the sandbox's netns), so a server bound to 127.0.0.1 in the pod is reachable too.
//!
//! The socket is created on a short-lived thread that joins the namespace with setns(2): the
//! namespace is per thread, and the thread exits right after, so no runtime thread is left in a
//! pod's namespace. A socket keeps the namespace it was made in, so tokio drives it from any
//! thread afterwards.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_api::ApiError;
use skiff_runtime::Runtime;

/// How long a connect inside the pod may take; loopback answers at once unless the backlog is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pinned network namespace of the pod sandbox `uid`: the runtime keeps each sandbox's
/// namespaces as bind mounts under `<runtime root>/sandboxes/<id>/ns/` (see its crate docs).
pub fn netns_path(runtime: &Runtime, uid: &str) -> PathBuf {
    runtime.config().root.join("sandboxes").join(uid).join("ns").join("net")
}

/// Connects to `port` on the loopback of the pod with `uid`, first IPv4 then IPv6.
pub async fn connect(runtime: &Runtime, uid: &str, port: u16) -> Result<tokio::net::TcpStream, ApiError> {
    if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
        return Err(ApiError::bad_request(format!("invalid pod uid {uid:?}")));
    }
    let netns = netns_path(runtime, uid);
    if !netns.exists() {
        return Err(ApiError::bad_request(format!("failed to find sandbox of pod with uid {uid:?}: not running")));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-portforward".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&netns, port));
        })
        .map_err(|e| ApiError::internal(format!("starting the port-forward thread: {e}")))?;
    let stream = rx.await.map_err(|_| ApiError::internal("the port-forward thread ended without an answer"))??;
    stream.set_nonblocking(true).map_err(|e| ApiError::internal(format!("port-forward socket: {e}")))?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| ApiError::internal(format!("port-forward socket: {e}")))
}

/// Runs on its own thread: joins the namespace at `netns` and dials the port there.
fn connect_in(netns: &Path, port: u16) -> Result<TcpStream, ApiError> {
    let shown = netns.display();
    let file = std::fs::File::open(netns)
        .map_err(|e| ApiError::internal(format!("failed to open network namespace {shown}: {e}")))?;
    // SAFETY: setns only changes this thread's network namespace; the fd is valid while `file` lives.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(ApiError::internal(format!("failed to enter network namespace {shown}: {e}")));
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e4| {
        TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| {
            // containerd's wording, which kubectl users see in its "an error occurred forwarding" line.
            ApiError::internal(format!(
                "failed to execute portforward in network namespace {shown:?}: failed to connect to localhost:{port} \
                 inside namespace, IPv4: dial tcp4 {v4}: connect: {} IPv6 dial tcp6 {v6}: connect: {}",
                go_errno(&e4),
                go_errno(&e6)
            ))
        })
    })
}

/// An errno as Go prints it (`connection refused`), not as Rust does
/// (`Connection refused (os error 111)`): kubectl users know the former.
fn go_errno(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => text.as_str(),
    };
    let mut chars = text.chars();
    chars.next().map(|first| first.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_go_prints_them() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(go_errno(&refused), "connection refused");
        assert_eq!(go_errno(&std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")), "timed out");
    }

    #[test]
    fn a_missing_namespace_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect_in(&dir.path().join("ns/net"), 80).unwrap_err();
        assert!(err.message.contains("failed to open network namespace"), "{}", err.message);
        assert!(err.message.contains("ns/net"), "{}", err.message);
    }

    #[test]
    fn the_hosts_own_namespace_reaches_a_loopback_listener_and_reports_refusals() {
        // /proc/self/ns/net is the namespace this thread is in already: setns to it is a no-op,
        // which isolates the dialing from namespace creation (that needs root and a sandbox).
        let Ok(listener) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else { return };
        let port = listener.local_addr().unwrap().port();
        let netns = Path::new("/proc/self/ns/net");
        match connect_in(netns, port) {
            Ok(stream) => assert_eq!(stream.peer_addr().unwrap().port(), port),
            // Without CAP_SYS_ADMIN setns is refused; that error must say so.
            Err(e) => assert!(e.message.contains("failed to enter network namespace"), "{}", e.message),
        }
        drop(listener);
        if let Err(e) = connect_in(netns, port) {
            assert!(e.message.contains(&format!("localhost:{port}")), "{}", e.message);
        }
    }
}
