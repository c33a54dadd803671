//! SPDY/3.1, the stream multiplexing kubectl speaks for port-forward and for exec when WebSocket
//! is off or refused. Only the server side, and only what kubectl uses: streams it opens, DATA
//! with FIN half-closes, RST_STREAM, PING, GOAWAY; header blocks zlib-compressed with the SPDY/3
//! dictionary. [`Session`] runs over any byte stream: an upgraded HTTP/1.1 connection, or a
//! WebSocket whose binary messages carry the SPDY bytes ([`WebSocketTunnel`]).

mod frame;
mod headers;
mod session;
#[cfg(test)]
pub(crate) mod testing;
mod tunnel;

#[cfg(test)]
pub(crate) use frame::Frame;
pub(crate) use frame::RST_CANCEL;
pub(crate) use headers::Headers;
pub(crate) use session::{Session, Stream, StreamReader, StreamWriter};
pub(crate) use tunnel::WebSocketTunnel;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("the SPDY connection is closed")]
    Closed,
    #[error("reading the SPDY connection: {0}")]
    Io(#[from] std::io::Error),
}
