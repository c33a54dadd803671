//! Building responses: JSON objects, `Status` errors, plain text and streams.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue, VARY};
use hyper::{Response, StatusCode};
use serde_json::Value;
use skiff_api::{ApiError, ByteStream};

/// Every response body: a whole buffer or a stream of chunks.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub(crate) const JSON: &str = "application/json";

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn with_type(code: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(JSON)));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    response
}

pub(crate) fn json(code: StatusCode, value: &Value) -> Response<Body> {
    json_as(code, JSON, value)
}

/// JSON with a specific media type, as aggregated discovery needs.
pub(crate) fn json_as(code: StatusCode, content_type: &str, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("serde_json::Value always serialises");
    with_type(code, content_type, full(bytes))
}

/// Kubernetes gzips resource responses larger than this for clients that accept gzip.
const GZIP_THRESHOLD: usize = 128 * 1024;

/// Whether the request's `Accept-Encoding` offers gzip (and does not refuse it with `q=0`).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0)));
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

/// A JSON resource response, gzipped as Kubernetes does when it is large and the client (as
/// kubectl always does) accepts gzip.
pub(crate) fn json_for(code: StatusCode, value: &Value, request: &HeaderMap) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("serde_json::Value always serialises");
    if bytes.len() <= GZIP_THRESHOLD || !accepts_gzip(request) {
        return with_type(code, JSON, full(bytes));
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    let compressed = std::io::Write::write_all(&mut encoder, &bytes).and_then(|()| encoder.finish());
    let Ok(compressed) = compressed else { return with_type(code, JSON, full(bytes)) };
    let mut response = with_type(code, JSON, full(compressed));
    response.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    response.headers_mut().insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

pub(crate) fn text(code: StatusCode, text: &'static str) -> Response<Body> {
    with_type(code, "text/plain; charset=utf-8", full(Bytes::from_static(text.as_bytes())))
}

/// An error as its Kubernetes `Status`, with the Status code as the HTTP code.
pub(crate) fn error(err: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(code, &err.to_status())
}

/// A chunked response that sends each item as soon as it is produced.
pub(crate) fn stream(content_type: &str, stream: ByteStream) -> Response<Body> {
    let body = StreamBody::new(stream.map(|chunk| chunk.map(Frame::data)));
    with_type(StatusCode::OK, content_type, BodyExt::boxed_unsync(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept_encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(accept_encoding).unwrap());
        h
    }

    async fn body_of(response: Response<Body>) -> Vec<u8> {
        response.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[test]
    fn gzip_is_accepted_unless_absent_or_refused() {
        assert!(accepts_gzip(&headers("gzip")));
        assert!(accepts_gzip(&headers("deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn only_large_bodies_are_gzipped_and_they_decode_to_the_same_json() {
        let small = serde_json::json!({"kind": "PodList", "items": []});
        let response = json_for(StatusCode::OK, &small, &headers("gzip"));
        assert!(response.headers().get(CONTENT_ENCODING).is_none());
        assert_eq!(body_of(response).await, serde_json::to_vec(&small).unwrap());

        let large = serde_json::json!({"kind": "ConfigMapList", "items": [{"data": {"x": "y".repeat(200 * 1024)}}]});
        let plain = json_for(StatusCode::OK, &large, &HeaderMap::new());
        assert!(plain.headers().get(CONTENT_ENCODING).is_none());
        let response = json_for(StatusCode::OK, &large, &headers("gzip"));
        assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(response.headers()[VARY], "Accept-Encoding");
        let compressed = body_of(response).await;
        assert!(compressed.len() < 200 * 1024);
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(compressed.as_slice()), &mut decoded).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&decoded).unwrap(), large);
    }
}
