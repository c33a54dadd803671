//! SPDY/3.1 framing: every frame starts with 8 bytes.
//!
//! ```text
//! control: 1 | version (15) | type (16) | flags (8) | length (24) | payload
//! data:    0 | stream id (31)           | flags (8) | length (24) | payload
//! ```
//! Header blocks travel still compressed here; [`super::headers`] owns the zlib contexts.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Error;

pub(crate) const VERSION: u16 = 3;
pub(crate) const FLAG_FIN: u8 = 0x01;
/// The largest payload one frame can carry (a 24-bit length).
pub(crate) const MAX_PAYLOAD: usize = 0x00ff_ffff;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

/// RST_STREAM status codes (draft 3, 2.6.3).
pub(crate) const RST_PROTOCOL_ERROR: u32 = 1;
pub(crate) const RST_CANCEL: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    /// Associated stream, priority and slot are read and dropped: kubectl does not use them.
    SynStream {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    SynReply {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE, and types this side does not act on.
    Ignored {
        kind: u16,
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn need(payload: &[u8], n: usize, what: &str) -> Result<(), Error> {
    if payload.len() < n {
        return Err(Error::Protocol(format!("{what} frame of {} bytes is too short", payload.len())));
    }
    Ok(())
}

impl Frame {
    /// Takes one whole frame off the front of `buf`, or `None` when more bytes are needed.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let word = be32(&buf[0..4]);
        let flags = buf[4];
        let length = (be32(&buf[4..8]) & 0x00ff_ffff) as usize;
        if buf.len() < 8 + length {
            buf.reserve(8 + length - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let payload = buf.split_to(length).freeze();
        let fin = flags & FLAG_FIN != 0;
        if word & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream: word, fin, data: payload }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Error::Protocol(format!("SPDY version {version} is not supported (only 3)")));
        }
        let stream = || be32(&payload[0..4]) & 0x7fff_ffff;
        Ok(Some(match (word & 0xffff) as u16 {
            SYN_STREAM => {
                need(&payload, 10, "SYN_STREAM")?;
                Frame::SynStream { stream: stream(), fin, block: payload.slice(10..) }
            }
            SYN_REPLY => {
                need(&payload, 4, "SYN_REPLY")?;
                Frame::SynReply { stream: stream(), fin, block: payload.slice(4..) }
            }
            HEADERS => {
                need(&payload, 4, "HEADERS")?;
                Frame::Headers { stream: stream(), fin, block: payload.slice(4..) }
            }
            RST_STREAM => {
                need(&payload, 8, "RST_STREAM")?;
                Frame::RstStream { stream: stream(), status: be32(&payload[4..8]) }
            }
            PING => {
                need(&payload, 4, "PING")?;
                Frame::Ping { id: be32(&payload[0..4]) }
            }
            GOAWAY => {
                need(&payload, 8, "GOAWAY")?;
                Frame::GoAway { last_good: stream(), status: be32(&payload[4..8]) }
            }
            kind => Frame::Ignored { kind },
        }))
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[&[u8]]| {
            let length: usize = payload.iter().map(|p| p.len()).sum();
            debug_assert!(length <= MAX_PAYLOAD);
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u32((u32::from(flags) << 24) | length as u32);
            for p in payload {
                out.extend_from_slice(p);
            }
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match self {
            Frame::Data { stream, fin, data } => {
                debug_assert!(data.len() <= MAX_PAYLOAD);
                out.put_u32(stream & 0x7fff_ffff);
                out.put_u32((u32::from(fin_flag(*fin)) << 24) | data.len() as u32);
                out.extend_from_slice(data);
            }
            Frame::SynStream { stream, fin, block } => {
                // Associated stream 0, priority 0, slot 0.
                control(out, SYN_STREAM, fin_flag(*fin), &[&stream.to_be_bytes(), &[0; 6], block]);
            }
            Frame::SynReply { stream, fin, block } => {
                control(out, SYN_REPLY, fin_flag(*fin), &[&stream.to_be_bytes(), block]);
            }
            Frame::Headers { stream, fin, block } => {
                control(out, HEADERS, fin_flag(*fin), &[&stream.to_be_bytes(), block]);
            }
            Frame::RstStream { stream, status } => {
                control(out, RST_STREAM, 0, &[&stream.to_be_bytes(), &status.to_be_bytes()]);
            }
            Frame::Ping { id } => control(out, PING, 0, &[&id.to_be_bytes()]),
            Frame::GoAway { last_good, status } => {
                control(out, GOAWAY, 0, &[&last_good.to_be_bytes(), &status.to_be_bytes()]);
            }
            Frame::Ignored { kind } => control(out, *kind, 0, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut wire = Vec::new();
        frame.encode(&mut wire);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(Frame::parse(&mut buf).unwrap(), Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_frame_kind_survives_encoding_and_parsing() {
        round_trip(Frame::Data { stream: 3, fin: false, data: Bytes::from_static(b"hello") });
        round_trip(Frame::Data { stream: 0x7fff_ffff, fin: true, data: Bytes::new() });
        round_trip(Frame::SynStream { stream: 1, fin: false, block: Bytes::from_static(b"zz") });
        round_trip(Frame::SynReply { stream: 1, fin: true, block: Bytes::from_static(b"z") });
        round_trip(Frame::Headers { stream: 5, fin: false, block: Bytes::from_static(b"h") });
        round_trip(Frame::RstStream { stream: 7, status: RST_CANCEL });
        round_trip(Frame::Ping { id: 1 });
        round_trip(Frame::GoAway { last_good: 9, status: 0 });
    }

    #[test]
    fn headers_are_eight_bytes_in_the_draft3_layout() {
        let mut wire = Vec::new();
        Frame::Ping { id: 0x0102_0304 }.encode(&mut wire);
        assert_eq!(wire, [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
        wire.clear();
        Frame::Data { stream: 1, fin: true, data: Bytes::from_static(b"ab") }.encode(&mut wire);
        assert_eq!(wire, [0, 0, 0, 1, 0x01, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_last_byte() {
        let mut wire = Vec::new();
        Frame::Data { stream: 1, fin: false, data: Bytes::from_static(b"abc") }.encode(&mut wire);
        Frame::Ping { id: 2 }.encode(&mut wire);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = Frame::parse(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            [Frame::Data { stream: 1, fin: false, data: Bytes::from_static(b"abc") }, Frame::Ping { id: 2 }]
        );
    }

    #[test]
    fn settings_and_window_updates_are_read_and_ignored_but_other_versions_are_refused() {
        let mut settings = BytesMut::from(&[0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0, 0, 0, 0][..]);
        assert_eq!(Frame::parse(&mut settings).unwrap(), Some(Frame::Ignored { kind: 4 }));
        let mut window = BytesMut::from(&[0x80, 0x03, 0x00, 0x09, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 1, 0][..]);
        assert_eq!(Frame::parse(&mut window).unwrap(), Some(Frame::Ignored { kind: 9 }));
        let mut spdy2 = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(Frame::parse(&mut spdy2).is_err());
        let mut short = BytesMut::from(&[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 2, 0, 0][..]);
        assert!(Frame::parse(&mut short).is_err());
    }
}
