//! One SPDY/3.1 connection, server side: the peer (kubectl) opens streams, this side answers each
//! with SYN_REPLY, echoes PINGs, and carries DATA both ways.
//!
//! Two tasks own the two directions. The reader parses frames, decompresses every header block
//! in arrival order (one zlib context per direction) and hands DATA to per-stream channels. The
//! writer is the only one to touch the outgoing zlib context and the socket, so replies and data
//! go out in the order they were queued: a SYN_REPLY is queued before its stream is handed out,
//! hence always precedes the stream's first DATA. Flow control is not enforced (kubectl's
//! spdystream sends no WINDOW_UPDATE and ignores ours); TCP's own backpressure applies.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Error;
use super::frame::{self, Frame};
use super::headers::{HeaderDecoder, HeaderEncoder, Headers};

/// DATA chunks buffered per stream before the reader waits for the stream's consumer.
const STREAM_BUFFER: usize = 64;
/// The largest DATA frame this side sends; larger writes are split.
const MAX_DATA: usize = 32 * 1024;

enum Out {
    Frame(Frame),
    /// A SYN_REPLY with an empty header block, compressed by the writer in wire order.
    Reply {
        stream: u32,
    },
    /// GOAWAY, then the end of the write side.
    Close,
}

/// A stream the peer opened, with the headers it opened it with.
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

/// What the peer sends on one stream.
#[derive(Debug)]
pub(crate) struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    /// The next chunk; `None` once the peer sent FIN, reset the stream, or the connection ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

/// This side's half of one stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Frame(frame) => write!(f, "{frame:?}"),
            Out::Reply { stream } => write!(f, "Reply({stream})"),
            Out::Close => write!(f, "Close"),
        }
    }
}

impl StreamWriter {
    pub async fn write(&self, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(MAX_DATA) {
            let frame = Frame::Data { stream: self.id, fin: false, data: Bytes::copy_from_slice(chunk) };
            self.out.send(Out::Frame(frame)).await.map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream: an empty DATA frame with FIN.
    pub async fn finish(self) -> Result<(), Error> {
        let frame = Frame::Data { stream: self.id, fin: true, data: Bytes::new() };
        self.out.send(Out::Frame(frame)).await.map_err(|_| Error::Closed)
    }

    /// Aborts the stream in both directions.
    pub async fn reset(self, status: u32) {
        let _ = self.out.send(Out::Frame(Frame::RstStream { stream: self.id, status })).await;
    }
}

/// The server side of a SPDY/3.1 connection over any byte stream.
pub(crate) struct Session {
    incoming: mpsc::Receiver<Stream>,
    out: mpsc::Sender<Out>,
    closed: CancellationToken,
}

impl Session {
    pub fn start<T>(io: T) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (incoming_tx, incoming_rx) = mpsc::channel(32);
        let closed = CancellationToken::new();
        tokio::spawn(write_loop(write, out_rx));
        let reader_closed = closed.clone();
        let reader_out = out_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = read_loop(read, reader_out, incoming_tx).await {
                tracing::debug!(error = %e, "SPDY connection ended");
            }
            reader_closed.cancel();
        });
        Session { incoming: incoming_rx, out: out_tx, closed }
    }

    /// The next stream the peer opens; `None` once the peer sent GOAWAY or the connection ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Cancelled when the peer's side of the connection has ended.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Sends GOAWAY and ends the write side once everything queued before it is written.
    pub async fn close(self) {
        let _ = self.out.send(Out::Close).await;
    }
}

async fn read_loop<R>(mut read: R, out: mpsc::Sender<Out>, incoming: mpsc::Sender<Stream>) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
{
    let mut decoder = HeaderDecoder::new();
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut incoming = Some(incoming);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        while let Some(frame) = Frame::parse(&mut buf)? {
            match frame {
                Frame::Data { stream, fin, data } => {
                    if !data.is_empty()
                        && let Some(tx) = streams.get(&stream)
                        && tx.send(data).await.is_err()
                    {
                        // Its consumer is gone: later data for it is dropped.
                        streams.remove(&stream);
                    }
                    if fin {
                        streams.remove(&stream);
                    }
                }
                Frame::SynStream { stream, fin, block } => {
                    // Decoded even when refused: the zlib context must see every block.
                    let headers = decoder.decode(&block)?;
                    let Some(accepting) = &incoming else {
                        let _ = out.send(Out::Frame(Frame::RstStream { stream, status: frame::RST_CANCEL })).await;
                        continue;
                    };
                    if stream % 2 == 0 || streams.contains_key(&stream) {
                        let refused = Frame::RstStream { stream, status: frame::RST_PROTOCOL_ERROR };
                        let _ = out.send(Out::Frame(refused)).await;
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                    if !fin {
                        streams.insert(stream, tx);
                    }
                    out.send(Out::Reply { stream }).await.map_err(|_| Error::Closed)?;
                    let writer = StreamWriter { id: stream, out: out.clone() };
                    let opened = Stream { id: stream, headers, reader: StreamReader { rx }, writer };
                    if accepting.send(opened).await.is_err() {
                        incoming = None;
                    }
                }
                Frame::SynReply { block, .. } | Frame::Headers { block, .. } => {
                    decoder.decode(&block)?;
                }
                Frame::RstStream { stream, .. } => {
                    streams.remove(&stream);
                }
                Frame::Ping { id } => {
                    let _ = out.send(Out::Frame(Frame::Ping { id })).await;
                }
                // No new streams after GOAWAY; the open ones carry on.
                Frame::GoAway { .. } => incoming = None,
                Frame::Ignored { .. } => {}
            }
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn write_loop<W>(mut write: W, mut rx: mpsc::Receiver<Out>)
where
    W: AsyncWrite + Unpin,
{
    let mut encoder = HeaderEncoder::new();
    let mut last_accepted = 0;
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Some(out) = rx.recv().await {
        buf.clear();
        let close = matches!(out, Out::Close);
        match out {
            Out::Frame(frame) => frame.encode(&mut buf),
            Out::Reply { stream } => {
                last_accepted = stream;
                match encoder.encode(&Headers::default()) {
                    Ok(block) => Frame::SynReply { stream, fin: false, block: block.into() }.encode(&mut buf),
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY reply");
                        break;
                    }
                }
            }
            Out::Close => Frame::GoAway { last_good: last_accepted, status: 0 }.encode(&mut buf),
        }
        if write.write_all(&buf).await.is_err() {
            break;
        }
        // Frames queued together go out in one flush.
        if (close || rx.is_empty()) && write.flush().await.is_err() {
            break;
        }
        if close {
            let _ = write.shutdown().await;
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::spdy::testing::Client;

    fn data_frame(stream: u32, fin: bool, bytes: &'static [u8]) -> Frame {
        Frame::Data { stream, fin, data: Bytes::from_static(bytes) }
    }

    #[tokio::test]
    async fn streams_are_replied_to_and_carry_data_both_ways() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut session = Session::start(server_io);
        let mut client = Client::new(client_io);

        client.open(1, &[("streamtype", "error"), ("requestid", "0")]).await;
        client.open(3, &[("streamtype", "data"), ("requestid", "0")]).await;
        assert!(matches!(client.next().await, Some(Frame::SynReply { stream: 1, .. })));
        assert!(matches!(client.next().await, Some(Frame::SynReply { stream: 3, .. })));
        let error = session.accept().await.unwrap();
        let mut data = session.accept().await.unwrap();
        assert_eq!((error.id, error.headers.get("streamtype")), (1, Some("error")));
        assert_eq!(data.headers.get("requestid"), Some("0"));

        client.send(data_frame(3, false, b"ping")).await;
        client.send(Frame::Data { stream: 3, fin: false, data: Bytes::new() }).await;
        client.send(data_frame(3, true, b"!")).await;
        assert_eq!(data.reader.recv().await.unwrap(), "ping");
        assert_eq!(data.reader.recv().await.unwrap(), "!");
        assert_eq!(data.reader.recv().await, None, "FIN ends the stream's input");

        data.writer.write(b"pong").await.unwrap();
        data.writer.clone().finish().await.unwrap();
        assert_eq!(client.next().await, Some(data_frame(3, false, b"pong")));
        assert_eq!(client.next().await, Some(data_frame(3, true, b"")));

        client.send(Frame::Ping { id: 7 }).await;
        assert_eq!(client.next().await, Some(Frame::Ping { id: 7 }));

        session.close().await;
        assert_eq!(client.next().await, Some(Frame::GoAway { last_good: 3, status: 0 }));
        assert_eq!(client.next().await, None, "the write side ends after GOAWAY");
    }

    #[tokio::test]
    async fn the_end_of_the_connection_ends_every_stream_and_accept() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut session = Session::start(server_io);
        let mut client = Client::new(client_io);
        client.open(1, &[("streamtype", "stdout")]).await;
        let mut stream = session.accept().await.unwrap();
        let closed = session.closed();
        drop(client);
        assert_eq!(stream.reader.recv().await, None);
        assert!(session.accept().await.is_none());
        closed.cancelled().await;
    }

    #[tokio::test]
    async fn a_reset_stream_ends_its_input_and_even_ids_from_the_client_are_refused() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut session = Session::start(server_io);
        let mut client = Client::new(client_io);
        client.open(1, &[("streamtype", "data")]).await;
        let mut stream = session.accept().await.unwrap();
        client.send(Frame::RstStream { stream: 1, status: frame::RST_CANCEL }).await;
        assert_eq!(stream.reader.recv().await, None);

        client.open(2, &[("streamtype", "data")]).await;
        assert!(matches!(client.next().await, Some(Frame::SynReply { stream: 1, .. })));
        assert_eq!(client.next().await, Some(Frame::RstStream { stream: 2, status: frame::RST_PROTOCOL_ERROR }));
    }

    #[tokio::test]
    async fn large_writes_are_split_into_frames_the_peer_can_take() {
        let (server_io, client_io) = tokio::io::duplex(256 * 1024);
        let mut session = Session::start(server_io);
        let mut client = Client::new(client_io);
        client.open(1, &[("streamtype", "stdout")]).await;
        let stream = session.accept().await.unwrap();
        let big = vec![7u8; MAX_DATA * 2 + 5];
        stream.writer.write(&big).await.unwrap();
        let _reply = client.next().await;
        let mut received = Vec::new();
        while received.len() < big.len() {
            match client.next().await {
                Some(Frame::Data { data, .. }) => {
                    assert!(data.len() <= MAX_DATA);
                    received.extend_from_slice(&data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(received, big);
    }
}
