//! SPDY/3 header blocks: a count, then length-prefixed name/value pairs, deflated with the
//! SPDY/3 dictionary. Each direction of a connection has one zlib stream for all its blocks,
//! sync-flushed after each block, so blocks must be compressed and decompressed in wire order.

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::Error;

/// A decompressed block larger than this is refused: kubectl's blocks are a few dozen bytes.
const MAX_BLOCK: usize = 1024 * 1024;

/// The names in the dictionary, each prefixed with its 32-bit length on the wire.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The values in the dictionary, appended without length prefixes.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 zlib dictionary (draft 3, section 2.6.10.1): 1423 bytes.
pub(crate) static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dict = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
});

/// Name/value pairs of one stream, names lower-case as SPDY/3 requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name` (case-insensitive). A value holding several NUL-separated
    /// values yields the whole string.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (name, value) in &self.0 {
            for s in [name.to_ascii_lowercase().as_str(), value.as_str()] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    fn decode(block: &[u8]) -> Result<Headers, Error> {
        let mut cursor = Cursor(block);
        let count = cursor.be32()?;
        let mut pairs = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let name = cursor.text()?;
            let value = cursor.text()?;
            pairs.push((name, value));
        }
        Ok(Headers(pairs))
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Protocol("truncated header block".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn be32(&mut self) -> Result<usize, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn text(&mut self) -> Result<String, Error> {
        let len = self.be32()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Protocol("a header is not UTF-8".into()))
    }
}

/// The compressing side of one direction of a connection.
pub(crate) struct HeaderEncoder {
    zlib: Compress,
}

impl HeaderEncoder {
    pub fn new() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&DICTIONARY).expect("a fresh deflate stream takes a dictionary");
        HeaderEncoder { zlib }
    }

    pub fn encode(&mut self, headers: &Headers) -> Result<Vec<u8>, Error> {
        let input = headers.encode();
        let start = self.zlib.total_in();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.zlib
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Protocol(format!("compressing headers: {e}")))?;
            // zlib's rule for a finished sync flush: all input taken and output space left over.
            if (self.zlib.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The decompressing side of one direction of a connection.
pub(crate) struct HeaderDecoder {
    zlib: Decompress,
}

impl HeaderDecoder {
    pub fn new() -> Self {
        HeaderDecoder { zlib: Decompress::new(true) }
    }

    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, Error> {
        let start = self.zlib.total_in();
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            match self.zlib.decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| Error::Protocol(format!("setting the header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(Error::Protocol(format!("decompressing headers: {e}"))),
            }
            if out.len() > MAX_BLOCK {
                return Err(Error::Protocol("header block too large".into()));
            }
            if (self.zlib.total_in() - start) as usize == block.len() && out.len() < out.capacity() {
                break;
            }
        }
        Headers::decode(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_dictionary_is_the_1423_bytes_of_spdy3() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_survive_a_round_trip_through_one_shared_context() {
        let mut encoder = HeaderEncoder::new();
        let mut decoder = HeaderDecoder::new();
        let blocks = [
            headers(&[("streamtype", "error"), ("port", "8080"), ("requestid", "0")]),
            headers(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
            headers(&[]),
            headers(&[("streamtype", "data"), ("port", "8080"), ("requestid", "1")]),
        ];
        for block in &blocks {
            let wire = encoder.encode(block).unwrap();
            assert_eq!(&decoder.decode(&wire).unwrap(), block);
        }
    }

    #[test]
    fn a_block_compressed_with_the_dictionary_announces_it_and_is_not_readable_without_it() {
        let mut encoder = HeaderEncoder::new();
        let wire = encoder.encode(&headers(&[("streamtype", "stdout")])).unwrap();
        // zlib header: FDICT (bit 5 of FLG) set, followed by the dictionary's Adler-32.
        assert_ne!(wire[1] & 0x20, 0);
        let mut plain = Decompress::new(true);
        let mut out = Vec::with_capacity(1024);
        let err = plain.decompress_vec(&wire, &mut out, FlushDecompress::Sync).unwrap_err();
        assert!(err.needs_dictionary().is_some());
    }

    #[test]
    fn names_are_sent_in_lower_case_and_looked_up_in_any_case() {
        let mut encoder = HeaderEncoder::new();
        let mut decoder = HeaderDecoder::new();
        let wire = encoder.encode(&headers(&[("StreamType", "stdin")])).unwrap();
        let decoded = decoder.decode(&wire).unwrap();
        assert_eq!(decoded.0[0].0, "streamtype");
        assert_eq!(decoded.get("STREAMTYPE"), Some("stdin"));
        assert_eq!(decoded.get("port"), None);
    }

    #[test]
    fn truncated_or_garbage_blocks_are_protocol_errors() {
        assert!(Headers::decode(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        let mut decoder = HeaderDecoder::new();
        assert!(decoder.decode(b"not zlib at all").is_err());
    }
}
