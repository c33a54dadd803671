//! gRPC probes (Kubernetes `pkg/probe/grpc`): one `grpc.health.v1.Health/Check` call over
//! plaintext HTTP/2 (h2c, no TLS, as Kubernetes' insecure credentials) to the pod IP. Success is
//! a `SERVING` answer; every other outcome fails with the message Kubernetes gives. The two
//! messages are small enough to encode by hand: a request with the optional `service` (field 1,
//! string) and a response with `status` (field 1, enum).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use crate::events::go_duration;

const PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus` by number, as its `String()` spells them.
fn serving_status_name(n: u64) -> String {
    match n {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => other.to_string(),
    }
}

/// gRPC status code names, as Go's `codes.Code.String()`.
fn code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).map_or_else(|| format!("Code({code})"), |n| n.to_string())
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A `HealthCheckRequest` in a gRPC length-prefixed message (uncompressed).
pub fn encode_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

/// The `status` of a framed `HealthCheckResponse` (0, UNKNOWN, when absent, as proto3 omits it).
pub fn decode_response(framed: &[u8]) -> Result<u64, String> {
    if framed.len() < 5 {
        return Err("response message is missing".into());
    }
    if framed[0] != 0 {
        return Err("compressed responses are not supported".into());
    }
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    let msg = framed.get(5..5 + len).ok_or("response message is truncated")?;
    let (mut at, mut status) = (0, 0);
    while at < msg.len() {
        let key = varint(msg, &mut at).ok_or("malformed response")?;
        match key & 7 {
            0 => {
                let v = varint(msg, &mut at).ok_or("malformed response")?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 => at += 8,
            2 => at += varint(msg, &mut at).ok_or("malformed response")? as usize,
            5 => at += 4,
            _ => return Err("malformed response".into()),
        }
    }
    Ok(status)
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten();
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Outcome {
    Status(u64),
    /// A gRPC error status: code and message.
    Rpc(u32, String),
}

async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: &str,
    service: &str,
) -> Result<Outcome, String> {
    let request = http::Request::post(format!("http://{addr}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.33")
        .body(Full::new(encode_request(service)))
        .map_err(|e| e.to_string())?;
    let response =
        sender.send_request(request).await.map_err(|e| format!("rpc error: code = Unavailable desc = {e}"))?;
    let (parts, body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Ok(Outcome::Rpc(
            2,
            format!("unexpected HTTP status code received from server: {}", parts.status.as_u16()),
        ));
    }
    let collected = body.collect().await.map_err(|e| format!("rpc error: code = Unavailable desc = {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    // A trailers-only answer carries the status among the headers.
    let field = |name: &str| trailers.get(name).or_else(|| parts.headers.get(name)).and_then(|v| v.to_str().ok());
    let code = field("grpc-status").and_then(|c| c.parse::<u32>().ok()).unwrap_or(2);
    let message = field("grpc-message").map(percent_decode).unwrap_or_default();
    if code != 0 {
        return Ok(Outcome::Rpc(code, message));
    }
    decode_response(&collected.to_bytes())
        .map(Outcome::Status)
        .map_err(|e| format!("rpc error: code = Internal desc = {e}"))
}

/// One gRPC health check of `host:port` (optionally of `service`) within `timeout`. `Err`
/// carries the message Kubernetes' prober gives.
pub async fn check(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let deadline = Instant::now() + timeout;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        // Ends when the sender is dropped.
        tokio::spawn(conn);
        Ok::<_, String>(sender)
    };
    // Kubernetes dials with WithBlock: a refused connection is retried until the timeout, and
    // the message is the timeout's either way.
    let mut sender = match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(sender)) => sender,
        Ok(Err(_)) | Err(_) => {
            return Err(format!(
                "timeout: failed to connect service {addr:?} within {}: context deadline exceeded",
                go_duration(timeout)
            ));
        }
    };
    match tokio::time::timeout_at(deadline, call(&mut sender, &addr, service)).await {
        Err(_) | Ok(Ok(Outcome::Rpc(4, _))) => {
            Err(format!("timeout: health rpc did not complete within {}", go_duration(timeout)))
        }
        Ok(Ok(Outcome::Status(1))) => Ok(()),
        Ok(Ok(Outcome::Status(other))) => {
            Err(format!("service unhealthy (responded with {:?})", serving_status_name(other)))
        }
        Ok(Ok(Outcome::Rpc(12, message))) => Err(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {message}"
        )),
        Ok(Ok(Outcome::Rpc(code, message))) => {
            Err(format!("error: health rpc probe failed: rpc error: code = {} desc = {message}", code_name(code)))
        }
        Ok(Err(e)) => Err(format!("error: health rpc probe failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>>;

    fn trailers(code: u32, message: &str) -> http::HeaderMap {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", code.to_string().parse().unwrap());
        if !message.is_empty() {
            t.insert("grpc-message", message.parse().unwrap());
        }
        t
    }

    fn response(status: Option<u64>, code: u32, message: &str) -> http::Response<Body> {
        let mut frames = Vec::new();
        if let Some(s) = status {
            let mut msg = BytesMut::new();
            if s != 0 {
                msg.put_u8(0x08);
                put_varint(&mut msg, s);
            }
            let mut framed = BytesMut::new();
            framed.put_u8(0);
            framed.put_u32(msg.len() as u32);
            framed.put_slice(&msg);
            frames.push(Ok(Frame::data(framed.freeze())));
        }
        frames.push(Ok(Frame::trailers(trailers(code, message))));
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap()
    }

    /// A health server over h2c: the empty service and "web" serve, "db" does not, "slow"
    /// never answers, "legacy" has no health service, anything else is unknown.
    async fn serve() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.headers()["content-type"], "application/grpc");
                    assert_eq!(req.headers()["user-agent"], "kube-probe/1.33");
                    assert_eq!(req.uri().path(), PATH);
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let name = String::from_utf8_lossy(&body[5..]).chars().skip(2).collect::<String>();
                    Ok::<_, std::convert::Infallible>(match name.as_str() {
                        "" | "web" => response(Some(1), 0, ""),
                        "db" => response(Some(2), 0, ""),
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            response(Some(1), 0, "")
                        }
                        "legacy" => response(None, 12, "unknown service grpc.health.v1.Health"),
                        _ => response(None, 5, "unknown%20service"),
                    })
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        port
    }

    #[test]
    fn requests_and_responses_encode_as_protobuf() {
        assert_eq!(&encode_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&encode_request("web")[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'w', b'e', b'b']);
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(decode_response(&[0, 0, 0, 0, 0]), Ok(0), "proto3 leaves UNKNOWN out");
        // An unknown string field before the status is skipped.
        assert_eq!(decode_response(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2]), Ok(2));
        assert!(decode_response(&[0, 0, 0]).is_err());
        assert_eq!(percent_decode("unknown%20service%"), "unknown service%");
    }

    #[tokio::test]
    async fn health_checks_succeed_only_when_serving_with_kubernetes_messages_otherwise() {
        let port = serve().await;
        let second = Duration::from_secs(1);
        assert_eq!(check("127.0.0.1", port, "", second).await, Ok(()));
        assert_eq!(check("127.0.0.1", port, "web", second).await, Ok(()));
        assert_eq!(
            check("127.0.0.1", port, "db", second).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        assert_eq!(
            check("127.0.0.1", port, "cache", second).await,
            Err("error: health rpc probe failed: rpc error: code = NotFound desc = unknown service".into())
        );
        assert_eq!(
            check("127.0.0.1", port, "legacy", second).await,
            Err("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): unknown \
                 service grpc.health.v1.Health"
                .into())
        );
        assert_eq!(
            check("127.0.0.1", port, "slow", Duration::from_millis(300)).await,
            Err("timeout: health rpc did not complete within 300ms".into())
        );
    }

    #[tokio::test]
    async fn a_closed_port_fails_as_a_connect_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert_eq!(
            check("127.0.0.1", port, "", Duration::from_secs(1)).await,
            Err(format!(
                "timeout: failed to connect service \"127.0.0.1:{port}\" within 1s: context deadline exceeded"
            ))
        );
    }
}
