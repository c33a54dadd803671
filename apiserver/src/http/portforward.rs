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

use hyper::body::Incoming;
use hyper::{Request, Response};
use skiff_api::{ApiError, PodStreams, PortConnection, ResourceKind, StatusReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::State;
use super::reply::Body;
use super::spdy::{Headers, RST_CANCEL, Session, Stream, StreamReader, StreamWriter};
use super::upgrade;

const WEBSOCKET_PROTOCOLS: &[&str] = &["SPDY/3.1+portforward.k8s.io"];
const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

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
#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
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
        let stream = tokio::select! {
            stream = session.accept() => match stream {
                Some(stream) => stream,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let kind = stream.headers.get("streamtype").unwrap_or_default().to_string();
        let id = request_id(&stream, &kind);
        let pair = pending.entry(id.clone()).or_default();
        let slot = match kind.as_str() {
            "error" => &mut pair.error,
            "data" => &mut pair.data,
            other => {
                tracing::debug!(pod = %target.name, streamtype = other, "port-forward stream of unknown type");
                stream.writer.reset(RST_CANCEL).await;
                continue;
            }
        };
        if slot.is_some() {
            tracing::debug!(pod = %target.name, request = %id, "port-forward stream opened twice");
            stream.writer.reset(RST_CANCEL).await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair { error: Some(error), data: Some(data) }) = pending.remove(&id)
        {
            tokio::spawn(forward(target.clone(), error, data, closed.clone()));
        }
    }
    session.close().await;
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
/// whole request still does.
async fn pipe(
    conn: Box<dyn PortConnection>,
    from_client: &mut StreamReader,
    to_client: &StreamWriter,
) -> Result<(), std::io::Error> {
    let (mut pod_read, mut pod_write) = tokio::io::split(conn);
    let upstream = async move {
        while let Some(chunk) = from_client.recv().await {
            pod_write.write_all(&chunk).await?;
        }
        pod_write.shutdown().await?;
        // Keep the pod's side open for reading: the downstream copy decides when this ends.
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
