//! `pods/{name}/portforward`: SPDY/3.1 streams, either tunnelled in WebSocket binary messages
//! (`SPDY/3.1+portforward.k8s.io`, kubectl ≥1.31) or over the upgraded connection itself
//! (`portforward.k8s.io`, the fallback). The ports travel in stream headers, not the URL.
//!
//! Per local connection kubectl opens two streams with the same `requestid`: `error`, which it
//! half-closes at once and on which this side writes any failure as text, and `data`, piped to
//! the pod's port through [`PodStreams::port_forward`]. When the pod's side ends, both streams get
//! FIN; when kubectl's side ends, the pod's connection is half-closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use skiff_api::{ApiError, PodStreams, PortConnection, ResourceKind, StatusReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::State;
use super::reply::Body;
use super::spdy::{Headers, RST_CANCEL, Session, Stream, StreamReader, StreamWriter};
use super::upgrade;

const WEBSOCKET_PROTOCOLS: &[&str] = &["SPDY/3.1+portforward.k8s.io"];
const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// How long the second stream of a pair may take after the first (the kubelet's
/// streamCreationTimeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn port_forward(
    state: &State,
    mut req: Request<Incoming>,
    res: &'static ResourceKind,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let pod = state.api.get(res, Some(namespace), name).await?;
    if pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let transport = upgrade::negotiate(req.headers(), WEBSOCKET_PROTOCOLS, SPDY_PROTOCOLS)?;
    let streams = state.streams.get().cloned().ok_or_else(|| {
        ApiError::new(503, StatusReason::ServiceUnavailable, "the kubelet is not ready to forward ports yet")
    })?;
    let response = upgrade::switching_protocols(&req, transport)?;
    let target = Target {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
        streams,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(upgrade::spdy_session(upgraded, transport).await, Arc::new(target), shutdown).await,
            Err(e) => tracing::debug!(error = %e, pod = %target.name, "port-forward upgrade failed"),
        }
    });
    Ok(response)
}

struct Target {
    namespace: String,
    name: String,
    uid: String,
    streams: Arc<dyn PodStreams>,
}

/// The two streams of one forwarded connection, as they arrive.
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    /// When the pair is given up if its second stream has not come.
    deadline: Instant,
}

/// Which forwarded connection a stream belongs to. Clients older than `requestid` open the error
/// stream right before the data stream, so the data stream's id minus 2 pairs them.
fn request_id(stream: &Stream, kind: &str) -> String {
    match stream.headers.get("requestid") {
        Some(id) => id.to_string(),
        None if kind == "data" => stream.id.saturating_sub(2).to_string(),
        None => stream.id.to_string(),
    }
}

async fn serve(mut session: Session, target: Arc<Target>, shutdown: CancellationToken) {
    let closed = session.closed();
    let mut pending: HashMap<String, Pair> = HashMap::new();
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        let stream = tokio::select! {
            stream = session.accept() => match stream {
                Some(stream) => stream,
                None => break,
            },
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                expire(&mut pending, &target).await;
                continue;
            }
        };
        let kind = stream.headers.get("streamtype").unwrap_or_default().to_string();
        if kind != "error" && kind != "data" {
            tracing::debug!(pod = %target.name, streamtype = %kind, "port-forward stream of unknown type");
            stream.writer.reset(RST_CANCEL).await;
            continue;
        }
        let id = request_id(&stream, &kind);
        let pair = pending.entry(id.clone()).or_insert_with(|| Pair {
            error: None,
            data: None,
            deadline: Instant::now() + STREAM_CREATION_TIMEOUT,
        });
        let slot = if kind == "error" { &mut pair.error } else { &mut pair.data };
        if slot.is_some() {
            tracing::debug!(pod = %target.name, request = %id, "port-forward stream opened twice");
            stream.writer.reset(RST_CANCEL).await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair { error: Some(error), data: Some(data), .. }) = pending.remove(&id)
        {
            tokio::spawn(forward(target.clone(), error, data, closed.clone()));
        }
    }
    session.close().await;
}

/// Gives up the pairs whose second stream did not come in time, as the kubelet does.
async fn expire(pending: &mut HashMap<String, Pair>, target: &Target) {
    let now = Instant::now();
    let expired: Vec<String> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
    for id in expired {
        let Some(pair) = pending.remove(&id) else { continue };
        tracing::debug!(pod = %target.name, request = %id, "port-forward streams did not both arrive");
        if let Some(error) = pair.error {
            let _ = error.writer.write(format!("(request={id}) timed out waiting for streams").as_bytes()).await;
            let _ = error.writer.finish().await;
        }
        if let Some(data) = pair.data {
            data.writer.reset(RST_CANCEL).await;
        }
    }
}

/// The port a stream pair names in its `port` header.
fn port_of(headers: &Headers) -> Result<u16, String> {
    let raw = headers.get("port").unwrap_or_default();
    match raw.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("invalid port {raw:?}: must be a number between 1 and 65535")),
    }
}

async fn forward(target: Arc<Target>, error: Stream, data: Stream, closed: CancellationToken) {
    // kubectl half-closes the error stream at once and never writes to it.
    let Stream { writer: error_writer, .. } = error;
    let connected = match port_of(&data.headers) {
        Ok(port) => target
            .streams
            .port_forward(&target.namespace, &target.name, &target.uid, port)
            .await
            .map_err(|e| {
                format!("error forwarding port {port} to pod {}, uid {}: {}", target.name, target.uid, e.message)
            })
            .map(|conn| (port, conn)),
        Err(e) => Err(e),
    };
    let Stream { reader: mut from_client, writer: to_client, .. } = data;
    match connected {
        Err(message) => {
            tracing::debug!(pod = %target.name, %message, "port-forward");
            let _ = error_writer.write(message.as_bytes()).await;
        }
        Ok((port, conn)) => {
            let result = tokio::select! {
                result = pipe(conn, &mut from_client, &to_client) => result,
                _ = closed.cancelled() => Ok(()),
            };
            if let Err(e) = result {
                let message = format!("error forwarding port {port} to pod {}, uid {}: {e}", target.name, target.uid);
                let _ = error_writer.write(message.as_bytes()).await;
            }
        }
    }
    // Both ends are closed for kubectl: it waits for the data stream's end, then the error stream's.
    let _ = to_client.finish().await;
    let _ = error_writer.finish().await;
}

/// Copies between the client's data stream and the pod's port until the pod's side ends. The
/// client's FIN half-closes the pod connection, so a server that answers after reading the
/// whole request still does. Only a failure reading the pod is an error for kubectl (which
/// gives up the whole forward on one): a write into a connection the pod already closed is
/// the ordinary end of it, as in containerd.
async fn pipe(
    conn: Box<dyn PortConnection>,
    from_client: &mut StreamReader,
    to_client: &StreamWriter,
) -> Result<(), std::io::Error> {
    let (mut pod_read, mut pod_write) = tokio::io::split(conn);
    let upstream = async move {
        let copied: Result<(), std::io::Error> = async {
            while let Some(chunk) = from_client.recv().await {
                pod_write.write_all(&chunk).await?;
            }
            pod_write.shutdown().await
        }
        .await;
        if let Err(e) = copied {
            tracing::debug!(error = %e, "port-forward: writing to the pod");
            // Unread input would hold up the connection's other streams: drop it.
            while from_client.recv().await.is_some() {}
        }
        // The pod's side stays open for reading: the downstream copy decides when this ends.
        std::future::pending::<Result<(), std::io::Error>>().await
    };
    let downstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = pod_read.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if to_client.write(&buf[..n]).await.is_err() {
                // kubectl is gone: nothing left to deliver to.
                return Ok(());
            }
        }
    };
    tokio::select! {
        result = upstream => result,
        result = downstream => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::spdy::Frame;
    use crate::http::spdy::testing::Client;
    use bytes::Bytes;

    /// Port 7 echoes until the end of its input; every other port refuses.
    struct Echo;

    #[async_trait::async_trait]
    impl PodStreams for Echo {
        async fn logs(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: &skiff_api::LogOptions,
        ) -> Result<skiff_api::ByteStream, ApiError> {
            Err(ApiError::bad_request("no logs here"))
        }

        async fn port_forward(
            &self,
            _: &str,
            _: &str,
            _: &str,
            port: u16,
        ) -> Result<Box<dyn PortConnection>, ApiError> {
            if port != 7 {
                return Err(ApiError::internal("connect: connection refused"));
            }
            let (ours, theirs) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let (mut from, mut to) = tokio::io::split(theirs);
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            });
            Ok(Box::new(ours))
        }
    }

    fn start() -> Client {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let target =
            Target { namespace: "default".into(), name: "web".into(), uid: "u1".into(), streams: Arc::new(Echo) };
        tokio::spawn(serve(Session::start(server_io), Arc::new(target), CancellationToken::new()));
        Client::new(client_io)
    }

    fn data(stream: u32, fin: bool, bytes: &'static [u8]) -> Frame {
        Frame::Data { stream, fin, data: Bytes::from_static(bytes) }
    }

    async fn open_pair(client: &mut Client, first: u32, request: &str, port: &str) {
        for (stream, kind) in [(first, "error"), (first + 2, "data")] {
            client.open(stream, &[("streamtype", kind), ("port", port), ("requestid", request)]).await;
            assert!(matches!(client.next().await, Some(Frame::SynReply { stream: s, .. }) if s == stream));
        }
        // kubectl half-closes the error stream at once.
        client.send(data(first, true, b"")).await;
    }

    #[tokio::test]
    async fn a_pair_is_piped_to_the_port_and_ends_with_fin_on_both_streams() {
        let mut client = start();
        open_pair(&mut client, 1, "0", "7").await;
        client.send(data(3, false, b"hello")).await;
        assert_eq!(client.next().await, Some(data(3, false, b"hello")));
        client.send(data(3, true, b"")).await;
        // The client's FIN ends the echo's input, the echo closes, and both streams end.
        assert_eq!(client.next().await, Some(data(3, true, b"")));
        assert_eq!(client.next().await, Some(data(1, true, b"")));
    }

    #[tokio::test]
    async fn a_refused_port_is_written_as_text_on_the_error_stream() {
        let mut client = start();
        open_pair(&mut client, 1, "0", "9").await;
        let expected = b"error forwarding port 9 to pod web, uid u1: connect: connection refused";
        assert_eq!(client.next().await, Some(data(1, false, expected)));
        assert_eq!(client.next().await, Some(data(3, true, b"")));
        assert_eq!(client.next().await, Some(data(1, true, b"")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_partner_never_comes_is_given_up_after_the_creation_timeout() {
        let mut client = start();
        client.open(1, &[("streamtype", "error"), ("port", "7"), ("requestid", "4")]).await;
        assert!(matches!(client.next().await, Some(Frame::SynReply { stream: 1, .. })));
        // The paused clock jumps to the deadline once everything waits.
        assert_eq!(client.next().await, Some(data(1, false, b"(request=4) timed out waiting for streams")));
        assert_eq!(client.next().await, Some(data(1, true, b"")));
    }

    #[tokio::test]
    async fn streams_of_unknown_type_are_reset() {
        let mut client = start();
        client.open(1, &[("streamtype", "stdin"), ("port", "7"), ("requestid", "0")]).await;
        assert!(matches!(client.next().await, Some(Frame::SynReply { stream: 1, .. })));
        assert_eq!(client.next().await, Some(Frame::RstStream { stream: 1, status: RST_CANCEL }));
    }

    #[test]
    fn ports_must_be_numbers_in_range() {
        let port = |value: &str| port_of(&Headers(vec![("port".into(), value.into())]));
        assert_eq!(port("8080"), Ok(8080));
        assert!(port("0").is_err());
        assert!(port("70000").is_err());
        assert!(port("http").is_err());
        assert!(port_of(&Headers::default()).is_err());
    }
}
