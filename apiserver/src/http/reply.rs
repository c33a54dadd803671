//! Building responses: JSON objects, `Status` errors, plain text and streams.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
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
