//! What the API server asks of the node for `pods/log`, `pods/exec` and `pods/portforward`
//! (later attach): the kubelet implements [`PodStreams`]; the HTTP layer only carries the bytes.

use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::ApiError;

/// The query of `GET …/pods/NAME/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Already resolved by the API server: the named container, or the only/default one.
    pub container: String,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    /// RFC 3339.
    pub since_time: Option<String>,
    pub limit_bytes: Option<u64>,
}

pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// The query of `…/pods/NAME/exec`: what to run, and which streams the client attached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Already resolved by the API server, as for logs.
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// With a terminal, stderr is not a separate stream: the terminal merges it into stdout.
    pub tty: bool,
}

/// A terminal size, as kubectl sends it when the window changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The client's ends of an exec session. Each is `Some` exactly when [`ExecOptions`] asked for
/// it (`resize` with `tty`). The node drops the senders when the process's output ends; the
/// `stdin` receiver yielding `None` is the client's end of input.
#[derive(Debug)]
pub struct ExecIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// A connection to a port inside a pod (see [`PodStreams::port_forward`]).
pub trait PortConnection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PortConnection for T {}

#[async_trait::async_trait]
pub trait PodStreams: Send + Sync {
    /// The log of one container of a pod (`namespace/name`, with the pod's `uid`).
    async fn logs(&self, namespace: &str, name: &str, uid: &str, opts: &LogOptions) -> Result<ByteStream, ApiError>;

    /// Runs a command in a container of a running pod with `io` as its streams, and returns
    /// its exit code once it has exited and its output has been handed over.
    async fn exec(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        opts: &ExecOptions,
        io: ExecIo,
    ) -> Result<i32, ApiError> {
        let _ = (namespace, uid, opts, io);
        Err(ApiError::bad_request(format!("exec into pod {name} is not supported by this node yet")))
    }

    /// Attaches `io` to the running container's own stdio (`opts.command` is unused) until its
    /// output ends or the client goes away.
    async fn attach(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        opts: &ExecOptions,
        io: ExecIo,
    ) -> Result<(), ApiError> {
        let _ = (namespace, uid, opts, io);
        Err(ApiError::bad_request(format!("attach to pod {name} is not supported by this node yet")))
    }

    /// Opens a TCP connection to `port` on the pod's own loopback, inside its network
    /// namespace, as the kubelet does for `kubectl port-forward`. Shutting down its write side
    /// half-closes the connection.
    async fn port_forward(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        port: u16,
    ) -> Result<Box<dyn PortConnection>, ApiError> {
        let _ = (namespace, uid, port);
        Err(ApiError::bad_request(format!("port-forward to pod {name} is not supported by this node yet")))
    }

    /// The usage the node measures for `metrics.k8s.io` (the kubelet's `/metrics/resource`),
    /// `None` when it measures none.
    fn resource_metrics(&self) -> Option<&dyn crate::ResourceMetrics> {
        None
    }
}
