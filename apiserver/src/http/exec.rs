//! `pods/{name}/exec` over WebSocket, kubectl's default since 1.30: the subprotocols
//! `v5.channel.k8s.io` and `v4.channel.k8s.io`, where every binary message starts with a channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 the final Status, 4 terminal resize, 255 close a
//! stream). The node runs the command through [`PodStreams::exec`]; this only carries the bytes.
//!
//! SPDY/3.1 (kubectl before 1.30, its fallback when the WebSocket upgrade is refused, and with
//! `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`) carries the same streams as SPDY streams named by a
//! `streamtype` header (`error`, `stdin`, `stdout`, `stderr`, `resize`); the final Status goes on
//! the error stream. Both transports share the options, the stream plumbing and the Status.
//!
//! `pods/{name}/attach` is the same session on the container's own stdio
//! ([`PodStreams::attach`]): no command, and it ends with the container's output.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use skiff_api::{ApiError, ExecIo, ExecOptions, PodStreams, ResourceKind, StatusReason, TerminalSize};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::State;
use super::logs::resolve_container;
use super::query::Query;
use super::reply::Body;
use super::spdy::{RST_CANCEL, Session, Stream};
use super::upgrade::{self, Transport};

/// The channel protocols served over WebSocket, most preferred first.
const WEBSOCKET_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Over SPDY, v5 adds nothing to v4; v4 is what the kubelet answers.
const SPDY_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v5.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// After the Status is sent, how long the client gets to close its side.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a SPDY client gets to open all its streams (the kubelet's streamCreationTimeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What a session runs in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Exec,
    Attach,
}

pub(crate) fn options(query: &Query, container: String, op: Operation) -> Result<ExecOptions, ApiError> {
    let opts = ExecOptions {
        container,
        command: query.all("command"),
        stdin: query.bool("stdin")?,
        stdout: query.bool("stdout")?,
        stderr: query.bool("stderr")?,
        tty: query.bool("tty")?,
    };
    if op == Operation::Exec && opts.command.is_empty() {
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
    op: Operation,
) -> Result<Response<Body>, ApiError> {
    // The request is checked before the transport: kubectl retries a refused WebSocket over
    // SPDY, and should print why the exec itself was refused.
    let pod = state.api.get(res, Some(namespace), name).await?;
    let opts = options(query, resolve_container(&pod, query.get("container"))?, op)?;
    let transport = upgrade::negotiate(req.headers(), WEBSOCKET_PROTOCOLS, SPDY_PROTOCOLS)?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let streams =
        state.streams.get().cloned().ok_or_else(|| {
            ApiError::new(503, StatusReason::ServiceUnavailable, "the kubelet is not ready to exec yet")
        })?;
    let response = upgrade::switching_protocols(&req, transport)?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let target = Target { namespace: namespace.to_string(), name: name.to_string(), uid, streams, op };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => match transport {
                Transport::WebSocket { .. } => {
                    websocket_session(upgrade::websocket(upgraded).await, target, opts).await
                }
                Transport::Spdy { .. } => {
                    spdy_session(upgrade::spdy_session(upgraded, transport).await, target, opts).await
                }
            },
            Err(e) => tracing::debug!(error = %e, pod = %target.name, "exec upgrade failed"),
        }
    });
    Ok(response)
}

/// The pod an exec session runs in.
struct Target {
    namespace: String,
    name: String,
    uid: String,
    streams: Arc<dyn PodStreams>,
    op: Operation,
}

impl Target {
    /// Runs the session; an attach that ends reports success, as the kubelet's does.
    async fn exec(&self, opts: &ExecOptions, io: ExecIo) -> Result<i32, ApiError> {
        let (ns, name, uid) = (&self.namespace, &self.name, &self.uid);
        let result = match self.op {
            Operation::Exec => self.streams.exec(ns, name, uid, opts, io).await,
            Operation::Attach => self.streams.attach(ns, name, uid, opts, io).await.map(|()| 0),
        };
        if let Err(e) = &result {
            tracing::debug!(pod = %self.name, op = ?self.op, error = %e, "stream session failed");
        }
        result
    }
}

/// This side's ends of the channels of [`ExecIo`], whatever carries them to the client.
struct Ends {
    stdin: Option<mpsc::Sender<Bytes>>,
    stdout: Option<mpsc::Receiver<Bytes>>,
    stderr: Option<mpsc::Receiver<Bytes>>,
    resize: Option<mpsc::Sender<TerminalSize>>,
}

fn exec_io(opts: &ExecOptions) -> (ExecIo, Ends) {
    let pair = |wanted: bool| if wanted { Some(mpsc::channel::<Bytes>(16)) } else { None };
    let (stdin_tx, stdin_rx) = pair(opts.stdin).unzip();
    let (stdout_tx, stdout_rx) = pair(opts.stdout).unzip();
    let (stderr_tx, stderr_rx) = pair(opts.stderr && !opts.tty).unzip();
    let (resize_tx, resize_rx) = if opts.tty { Some(mpsc::channel::<TerminalSize>(4)) } else { None }.unzip();
    let io = ExecIo { stdin: stdin_rx, stdout: stdout_tx, stderr: stderr_tx, resize: resize_rx };
    (io, Ends { stdin: stdin_tx, stdout: stdout_rx, stderr: stderr_rx, resize: resize_tx })
}

impl Ends {
    /// The process's next output chunk and its channel, until the node drops both senders.
    async fn next_output(&mut self) -> Option<(u8, Bytes)> {
        tokio::select! {
            Some(chunk) = next_chunk(&mut self.stdout) => Some((STDOUT, chunk)),
            Some(chunk) = next_chunk(&mut self.stderr) => Some((STDERR, chunk)),
            else => None,
        }
    }
}

/// `{"Width":100,"Height":30}`, as kubectl sends a terminal size on either transport.
fn terminal_size(json: &[u8]) -> Option<TerminalSize> {
    let size: Value = serde_json::from_slice(json).ok()?;
    let dimension = |key: &str| size[key].as_u64().and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
    Some(TerminalSize { width: dimension("Width"), height: dimension("Height") })
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

async fn websocket_session<S>(ws: WebSocketStream<S>, target: Target, opts: ExecOptions)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (io, mut ends) = exec_io(&opts);

    // Client → process. Pings are answered by tungstenite as it reads.
    let (mut stdin_tx, resize_tx) = (ends.stdin.take(), ends.resize.take());
    let reader = tokio::spawn(async move {
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
                    if let (Some(tx), Some(size)) = (&resize_tx, terminal_size(&data[1..])) {
                        let _ = tx.try_send(size);
                    }
                }
                CLOSE if data.get(1) == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    });

    // Process → client, until the node drops both senders; the exit code comes alongside.
    let forward = async {
        while let Some((channel, chunk)) = ends.next_output().await {
            // A client that is gone is not waited for; the output is still drained so the
            // process is not blocked on it.
            let _ = sink.send(frame(channel, &chunk)).await;
        }
    };
    let (result, ()) = tokio::join!(target.exec(&opts, io), forward);

    let status = serde_json::to_vec(&final_status(&result)).expect("serde_json::Value always serialises");
    let _ = sink.send(frame(ERROR, &status)).await;
    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    if tokio::time::timeout(CLOSE_GRACE, reader).await.is_err() {
        tracing::debug!(pod = %target.name, "exec client did not close its WebSocket");
    }
}

/// The streams a SPDY exec client opens for `opts`, as the kubelet expects them (v4).
fn expected_streams(opts: &ExecOptions) -> Vec<&'static str> {
    let mut kinds = vec!["error"];
    for (wanted, kind) in
        [(opts.stdin, "stdin"), (opts.stdout, "stdout"), (opts.stderr && !opts.tty, "stderr"), (opts.tty, "resize")]
    {
        if wanted {
            kinds.push(kind);
        }
    }
    kinds
}

/// Waits for the client to open every stream in `expected`; `None` if it gave up first.
async fn accept_streams(session: &mut Session, expected: &[&'static str]) -> Option<Vec<Stream>> {
    let mut opened: Vec<Option<Stream>> = expected.iter().map(|_| None).collect();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while opened.iter().any(Option::is_none) {
        let stream = tokio::select! {
            stream = session.accept() => stream?,
            _ = &mut deadline => {
                tracing::debug!("exec client did not open all its streams in time");
                return None;
            }
        };
        let kind = stream.headers.get("streamtype").unwrap_or_default();
        match expected.iter().position(|k| *k == kind) {
            Some(i) if opened[i].is_none() => opened[i] = Some(stream),
            _ => stream.writer.reset(RST_CANCEL).await,
        }
    }
    Some(opened.into_iter().flatten().collect())
}

async fn spdy_session(mut session: Session, target: Target, opts: ExecOptions) {
    let expected = expected_streams(&opts);
    let Some(opened) = accept_streams(&mut session, &expected).await else {
        session.close().await;
        return;
    };
    let mut by_kind: std::collections::HashMap<&str, Stream> = expected.iter().copied().zip(opened).collect();
    let (io, mut ends) = exec_io(&opts);
    // kubectl only reads the error stream; its input side is dropped so it can hold nothing up.
    let error = by_kind.remove("error").expect("the error stream is always expected").writer;

    if let (Some(mut stream), Some(tx)) = (by_kind.remove("stdin"), ends.stdin.take()) {
        // FIN on the stream is the end of input: dropping the sender tells the node.
        tokio::spawn(async move {
            while let Some(chunk) = stream.reader.recv().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
    }
    if let (Some(mut stream), Some(tx)) = (by_kind.remove("resize"), ends.resize.take()) {
        // One JSON object per line (Go's json.Encoder), possibly split across frames.
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(chunk) = stream.reader.recv().await {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Some(size) = terminal_size(&line) {
                        let _ = tx.try_send(size);
                    }
                }
            }
        });
    }
    let stdout = by_kind.remove("stdout").map(|s| s.writer);
    let stderr = by_kind.remove("stderr").map(|s| s.writer);

    let forward = async {
        while let Some((channel, chunk)) = ends.next_output().await {
            let writer = if channel == STDOUT { &stdout } else { &stderr };
            if let Some(writer) = writer {
                let _ = writer.write(&chunk).await;
            }
        }
    };
    let (result, ()) = tokio::join!(target.exec(&opts, io), forward);

    // kubectl reads stdout and stderr to their end before it reads the error stream.
    for writer in [stdout, stderr].into_iter().flatten() {
        let _ = writer.finish().await;
    }
    let status = serde_json::to_vec(&final_status(&result)).expect("serde_json::Value always serialises");
    let _ = error.write(&status).await;
    let _ = error.finish().await;
    // kubectl closes the connection once it has the Status; GOAWAY only if it does not.
    if tokio::time::timeout(CLOSE_GRACE, session.closed().cancelled()).await.is_err() {
        tracing::debug!(pod = %target.name, "exec client did not close its SPDY connection");
    }
    session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_needs_a_command_and_a_stream() {
        let q = Query::parse(Some("command=sh&command=-c&command=echo%20hi&stdout=true&stderr=true"));
        let o = options(&q, "app".into(), Operation::Exec).unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdout && o.stderr && !o.stdin && !o.tty);
        assert_eq!(options(&Query::parse(Some("stdout=true")), "app".into(), Operation::Exec).unwrap_err().code, 400);
        assert_eq!(options(&Query::parse(Some("command=ls")), "app".into(), Operation::Exec).unwrap_err().code, 400);
    }

    #[test]
    fn attach_needs_a_stream_but_no_command() {
        let q = Query::parse(Some("container=app&stdin=true&stdout=true&tty=true"));
        let o = options(&q, "app".into(), Operation::Attach).unwrap();
        assert!(o.command.is_empty() && o.stdin && o.stdout && o.tty);
        assert_eq!(options(&Query::parse(None), "app".into(), Operation::Attach).unwrap_err().code, 400);
    }

    #[test]
    fn a_spdy_client_opens_the_streams_the_kubelet_expects() {
        let opts = |stdin, stderr, tty| ExecOptions { stdin, stdout: true, stderr, tty, ..Default::default() };
        assert_eq!(expected_streams(&opts(false, true, false)), ["error", "stdout", "stderr"]);
        assert_eq!(expected_streams(&opts(true, true, false)), ["error", "stdin", "stdout", "stderr"]);
        // A terminal merges stderr into stdout and adds the resize stream.
        assert_eq!(expected_streams(&opts(true, true, true)), ["error", "stdin", "stdout", "resize"]);
    }

    #[test]
    fn terminal_sizes_are_read_as_kubectl_writes_them() {
        assert_eq!(terminal_size(br#"{"Width":100,"Height":30}"#), Some(TerminalSize { width: 100, height: 30 }));
        assert_eq!(terminal_size(b"{\"Width\":80,\"Height\":24}\n"), Some(TerminalSize { width: 80, height: 24 }));
        assert_eq!(terminal_size(b"nope"), None);
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
