//! kubectl's side of a SPDY connection, enough for tests to drive a [`super::Session`].

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::Frame;
use super::headers::{HeaderDecoder, HeaderEncoder, Headers};

/// kubectl's side of the connection, enough to drive the session.
pub(crate) struct Client {
    io: DuplexStream,
    encoder: HeaderEncoder,
    decoder: HeaderDecoder,
    buf: BytesMut,
}

impl Client {
    pub fn new(io: DuplexStream) -> Self {
        Client { io, encoder: HeaderEncoder::new(), decoder: HeaderDecoder::new(), buf: BytesMut::new() }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut wire = Vec::new();
        frame.encode(&mut wire);
        self.io.write_all(&wire).await.unwrap();
    }

    pub async fn open(&mut self, stream: u32, pairs: &[(&str, &str)]) {
        let headers = Headers(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect());
        let block = self.encoder.encode(&headers).unwrap().into();
        self.send(Frame::SynStream { stream, fin: false, block }).await;
    }

    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = Frame::parse(&mut self.buf).unwrap() {
                if let Frame::SynReply { block, .. } = &frame {
                    self.decoder.decode(block).unwrap();
                }
                return Some(frame);
            }
            if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }
}
