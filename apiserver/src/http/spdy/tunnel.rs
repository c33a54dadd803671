//! A byte stream carried in WebSocket binary messages, as kubectl ≥1.31 tunnels SPDY for
//! port-forward (`SPDY/3.1+portforward.k8s.io`). Message boundaries mean nothing: a frame may be
//! split over messages or several frames share one, and an empty message is not the end.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub(crate) struct WebSocketTunnel<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

impl<S> WebSocketTunnel<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WebSocketTunnel { ws, pending: Bytes::new() }
    }
}

fn io_error(e: WsError) -> std::io::Error {
    match e {
        WsError::Io(e) => e,
        other => std::io::Error::other(other),
    }
}

impl<S> AsyncRead for WebSocketTunnel<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Pings are answered by tungstenite itself while it reads.
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WebSocketTunnel<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.ws).start_send(Message::Binary(Bytes::copy_from_slice(data))).map_err(io_error)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[tokio::test]
    async fn bytes_flow_across_arbitrary_and_empty_messages_until_close() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let mut tunnel = WebSocketTunnel::new(server);

        for piece in [&b"\x80"[..], b"", b"\x03\x00", b"", b"\x06\x00\x00\x00\x04"] {
            client.send(Message::Binary(Bytes::copy_from_slice(piece))).await.unwrap();
        }
        client.send(Message::Close(None)).await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\x80\x03\x00\x06\x00\x00\x00\x04");
    }

    #[tokio::test]
    async fn each_write_becomes_one_binary_message() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let mut tunnel = WebSocketTunnel::new(server);
        tunnel.write_all(b"frame").await.unwrap();
        tunnel.flush().await.unwrap();
        use futures::StreamExt;
        assert_eq!(client.next().await.unwrap().unwrap(), Message::Binary(Bytes::from_static(b"frame")));
    }
}
