//! `pods/{name}/exec` over WebSocket, kubectl's default since 1.30: the subprotocols
//! `v5.channel.k8s.io` and `v4.channel.k8s.io`, where every binary message starts with a channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 the final Status, 4 terminal resize, 255 close a
//! stream). The node runs the command through [`PodStreams::exec`]; this only carries the bytes.
//!
//! SPDY (kubectl before 1.30, and its fallback when the WebSocket upgrade is refused) is not
//! spoken: such requests get a 400 Status, which kubectl prints.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use skiff_api::{ApiError, ExecIo, ExecOptions, PodStreams, ResourceKind, StatusReason, TerminalSize};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::State;
use super::logs::resolve_container;
use super::query::Query;
use super::reply::{self, Body};

/// The channel protocols served, most preferred first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// After the Status is sent, how long the client gets to answer the close frame.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn header_values<'a>(headers: &'a HeaderMap, name: &hyper::header::HeaderName) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// The subprotocol to answer with, from what a WebSocket upgrade request offers.
fn negotiate(headers: &HeaderMap) -> Result<&'static str, ApiError> {
    let websocket = header_values(headers, &UPGRADE).any(|v| v.eq_ignore_ascii_case("websocket"));
    if !websocket {
        return Err(ApiError::bad_request(
            "exec needs a WebSocket upgrade (v5.channel.k8s.io); SPDY is not supported by this server",
        ));
    }
    let offered: Vec<&str> = header_values(headers, &SEC_WEBSOCKET_PROTOCOL).collect();
    PROTOCOLS.iter().copied().find(|p| offered.contains(p)).ok_or_else(|| {
        ApiError::bad_request(format!(
            "none of the offered WebSocket subprotocols {offered:?} is supported; supported: {PROTOCOLS:?}"
        ))
    })
}

pub(crate) fn options(query: &Query, container: String) -> Result<ExecOptions, ApiError> {
    let opts = ExecOptions {
        container,
        command: query.all("command"),
        stdin: query.bool("stdin")?,
        stdout: query.bool("stdout")?,
        stderr: query.bool("stderr")?,
        tty: query.bool("tty")?,
    };
    if opts.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least one command for the container"));
    }
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
    }
    Ok(opts)
}

pub(crate) async fn exec(
    state: &State,
    mut req: Request<Incoming>,
    res: &'static ResourceKind,
    namespace: &str,
    name: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    // The request is checked before the transport: kubectl retries a refused WebSocket over
    // SPDY, and should print why the exec itself was refused, not that SPDY is unsupported.
    let pod = state.api.get(res, Some(namespace), name).await?;
    let opts = options(query, resolve_container(&pod, query.get("container"))?)?;
    let protocol = negotiate(req.headers())?;
    let key = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
        .ok_or_else(|| ApiError::bad_request("the WebSocket upgrade has no Sec-WebSocket-Key"))?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let streams =
        state.streams.get().cloned().ok_or_else(|| {
            ApiError::new(503, StatusReason::ServiceUnavailable, "the kubelet is not ready to exec yet")
        })?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let (namespace, name) = (namespace.to_string(), name.to_string());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                session(ws, streams, &namespace, &name, &uid, opts).await;
            }
            Err(e) => tracing::debug!(error = %e, pod = %name, "exec upgrade failed"),
        }
    });

    let mut response = reply::with_type(StatusCode::SWITCHING_PROTOCOLS, reply::JSON, reply::full(Bytes::new()));
    let headers = response.headers_mut();
    headers.remove(hyper::header::CONTENT_TYPE);
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header value"));
    headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    Ok(response)
}

/// The final message of the error channel: Success, or why the command failed.
pub(crate) fn final_status(result: &Result<i32, ApiError>) -> Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => e.to_status(),
    }
}

async fn next_chunk(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

async fn session<S>(
    ws: WebSocketStream<S>,
    streams: Arc<dyn PodStreams>,
    namespace: &str,
    name: &str,
    uid: &str,
    opts: ExecOptions,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let pair = |wanted: bool| if wanted { Some(mpsc::channel::<Bytes>(16)) } else { None };
    let (stdin_tx, stdin_rx) = pair(opts.stdin).unzip();
    let (stdout_tx, mut stdout_rx) = pair(opts.stdout).unzip();
    let (stderr_tx, mut stderr_rx) = pair(opts.stderr && !opts.tty).unzip();
    let (resize_tx, resize_rx) = if opts.tty { Some(mpsc::channel::<TerminalSize>(4)) } else { None }.unzip();
    let io = ExecIo { stdin: stdin_rx, stdout: stdout_tx, stderr: stderr_tx, resize: resize_rx };

    // Client → process. Pings are answered by tungstenite as it reads.
    let reader = tokio::spawn(async move {
        let mut stdin_tx = stdin_tx;
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) if !data.is_empty() => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match data[0] {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(data.slice(1..)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    if let (Some(tx), Ok(size)) = (&resize_tx, serde_json::from_slice::<Value>(&data[1..])) {
                        let dimension = |key: &str| size[key].as_u64().and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
                        let _ = tx.try_send(TerminalSize { width: dimension("Width"), height: dimension("Height") });
                    }
                }
                CLOSE if data.get(1) == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    });

    // Process → client, until the node drops both senders; the exit code comes alongside.
    let forward = async {
        loop {
            let (channel, chunk) = tokio::select! {
                Some(chunk) = next_chunk(&mut stdout_rx) => (STDOUT, chunk),
                Some(chunk) = next_chunk(&mut stderr_rx) => (STDERR, chunk),
                else => break,
            };
            if sink.send(frame(channel, &chunk)).await.is_err() {
                // The client is gone; keep draining so the process is not blocked on output.
                continue;
            }
        }
    };
    let (result, ()) = tokio::join!(streams.exec(namespace, name, uid, &opts, io), forward);
    if let Err(e) = &result {
        tracing::debug!(pod = %name, error = %e, "exec failed");
    }

    let status = serde_json::to_vec(&final_status(&result)).expect("serde_json::Value always serialises");
    let _ = sink.send(frame(ERROR, &status)).await;
    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    if tokio::time::timeout(CLOSE_GRACE, reader).await.is_err() {
        tracing::debug!(pod = %name, "exec client did not close its WebSocket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_newest_channel_protocol_offered_is_chosen() {
        let h =
            headers(&[("upgrade", "websocket"), ("sec-websocket-protocol", "v4.channel.k8s.io, v5.channel.k8s.io")]);
        assert_eq!(negotiate(&h).unwrap(), "v5.channel.k8s.io");
        let v4 = headers(&[("upgrade", "WebSocket"), ("sec-websocket-protocol", "v4.channel.k8s.io")]);
        assert_eq!(negotiate(&v4).unwrap(), "v4.channel.k8s.io");
        let spdy = headers(&[("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", "v4.channel.k8s.io")]);
        assert_eq!(negotiate(&spdy).unwrap_err().code, 400);
        let base64 = headers(&[("upgrade", "websocket"), ("sec-websocket-protocol", "base64.channel.k8s.io")]);
        assert_eq!(negotiate(&base64).unwrap_err().code, 400);
    }

    #[test]
    fn exec_needs_a_command_and_a_stream() {
        let q = Query::parse(Some("command=sh&command=-c&command=echo%20hi&stdout=true&stderr=true"));
        let o = options(&q, "app".into()).unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdout && o.stderr && !o.stdin && !o.tty);
        assert_eq!(options(&Query::parse(Some("stdout=true")), "app".into()).unwrap_err().code, 400);
        assert_eq!(options(&Query::parse(Some("command=ls")), "app".into()).unwrap_err().code, 400);
    }

    #[test]
    fn the_final_status_carries_the_exit_code_as_kubectl_reads_it() {
        assert_eq!(final_status(&Ok(0))["status"], "Success");
        let failed = final_status(&Ok(3));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        let refused = final_status(&Err(ApiError::bad_request("no such container")));
        assert_eq!(
            (refused["status"].as_str(), refused["message"].as_str()),
            (Some("Failure"), Some("no such container"))
        );
    }
}
