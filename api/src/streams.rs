//! What the API server asks of the node for `pods/log` (and later exec, attach, port-forward):
//! the kubelet implements [`PodStreams`]; the HTTP layer only carries the bytes.

use bytes::Bytes;
use futures::stream::BoxStream;

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

#[async_trait::async_trait]
pub trait PodStreams: Send + Sync {
    /// The log of one container of a pod (`namespace/name`, with the pod's `uid`).
    async fn logs(&self, namespace: &str, name: &str, uid: &str, opts: &LogOptions) -> Result<ByteStream, ApiError>;
}
