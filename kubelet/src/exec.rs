//! `pods/exec`: runs a command in a running container of a pod through the runtime, copying
//! the client's stdin to the process and its output back, and answers with the exit code once
//! the output has been handed over. `pods/attach` does the same with the container's own
//! stdio, held by its shim.
//!
//! The container is found in the runtime's own records (sandbox id = pod UID, container name),
//! so exec needs nothing of the pod workers' state and works for adopted containers too.

use bytes::Bytes;
use skiff_api::{ApiError, ExecIo, ExecOptions};
use skiff_runtime::{AttachStream, ContainerState, ExecReader, ExecSpec, Runtime, TerminalSize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The id of the running container `name` of the pod with `uid`.
pub fn running_container(runtime: &Runtime, uid: &str, name: &str) -> Result<String, ApiError> {
    let containers = runtime.list_containers().map_err(|e| ApiError::internal(e.to_string()))?;
    containers
        .into_iter()
        .find(|c| c.sandbox_id == uid && c.name == name && matches!(c.state, ContainerState::Running { .. }))
        .map(|c| c.id)
        // The kubelet's wording when the runtime has no running container of that name.
        .ok_or_else(|| ApiError::bad_request(format!("container not found ({name:?})")))
}

/// How long an exec with a terminal waits for the client's first size before it starts: kubectl
/// sends it right after connecting, and a process that starts on a 0x0 terminal (`stty size`,
/// `vi`, `top`) may read that size before the resize lands.
const FIRST_SIZE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

pub async fn exec(runtime: &Runtime, uid: &str, opts: &ExecOptions, mut io: ExecIo) -> Result<i32, ApiError> {
    let id = running_container(runtime, uid, &opts.container)?;
    let terminal_size = match (&mut io.resize, opts.tty) {
        (Some(rx), true) => match tokio::time::timeout(FIRST_SIZE_WAIT, rx.recv()).await {
            Ok(Some(size)) if size.width > 0 && size.height > 0 => {
                Some(TerminalSize { width: size.width, height: size.height })
            }
            _ => None,
        },
        _ => None,
    };
    let spec = ExecSpec {
        argv: opts.command.clone(),
        env: Vec::new(),
        tty: opts.tty,
        stdin: opts.stdin && io.stdin.is_some(),
        stdout: opts.stdout && io.stdout.is_some(),
        stderr: opts.stderr && io.stderr.is_some(),
        terminal_size,
    };
    let mut process = runtime.exec(&id, spec).await.map_err(|e| {
        // containerd's wording, which kubectl users know from `kubectl exec`.
        ApiError::internal(format!(
            "error executing command in container: failed to exec in container: failed to start exec {id:?}: \
             OCI runtime exec failed: exec failed: unable to start container process: {e}: unknown"
        ))
    })?;
    let ExecIo { stdin, stdout, stderr, resize } = io;

    let stdin_task = match (stdin, process.take_stdin()) {
        (Some(mut rx), Some(mut writer)) => Some(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if writer.write_all(&chunk).await.is_err() {
                    break; // the process closed its stdin or exited
                }
            }
            let _ = writer.shutdown().await;
            // Dropping the writer closes the pipe: the process sees the end of input.
        })),
        _ => None,
    };
    let output =
        futures::future::join(copy_out(process.take_stdout(), stdout), copy_out(process.take_stderr(), stderr));
    let mut output = std::pin::pin!(output);
    // Resizes are applied while the output flows (kubectl sends one at the start).
    let mut resize = if opts.tty { resize } else { None };
    loop {
        tokio::select! {
            _ = &mut output => break,
            size = next(&mut resize) => match size {
                Some(size) if size.width > 0 && size.height > 0 => {
                    let _ = process.resize(TerminalSize { width: size.width, height: size.height });
                }
                Some(_) => {}
                None => resize = None,
            },
        }
    }
    let code = process.wait().await.map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(task) = stdin_task {
        task.abort();
    }
    Ok(code)
}

pub async fn attach(runtime: &Runtime, uid: &str, opts: &ExecOptions, io: ExecIo) -> Result<(), ApiError> {
    let id = running_container(runtime, uid, &opts.container)?;
    let (mut output, mut input) = runtime
        .attach(&id)
        .await
        .map_err(|e| ApiError::internal(format!("error attaching to container {}: {e}", opts.container)))?;
    let ExecIo { stdin, stdout, stderr, resize } = io;
    let mut stdin = if opts.stdin { stdin } else { None };
    let mut resize = if opts.tty { resize } else { None };
    let (stdout, stderr) = (stdout.filter(|_| opts.stdout), stderr.filter(|_| opts.stderr && !opts.tty));
    // The container runs on after the session: a client gone (its output receivers dropped) or
    // the container's output ended both end it.
    let client_gone = async {
        match (&stdout, &stderr) {
            (Some(tx), _) | (None, Some(tx)) => tx.closed().await,
            (None, None) => std::future::pending().await,
        }
    };
    let mut client_gone = std::pin::pin!(client_gone);
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Ok(Some((stream, data))) => {
                    let tx = match stream {
                        AttachStream::Stdout => &stdout,
                        AttachStream::Stderr => if opts.tty { &stdout } else { &stderr },
                    };
                    if let Some(tx) = tx {
                        let _ = tx.send(Bytes::from(data)).await;
                    }
                }
                Ok(None) | Err(_) => break,
            },
            chunk = next(&mut stdin) => match chunk {
                Some(data) => {
                    if input.stdin(&data).await.is_err() {
                        break;
                    }
                }
                None => {
                    stdin = None;
                    let _ = input.end_stdin().await;
                }
            },
            size = next(&mut resize) => match size {
                Some(size) if size.width > 0 && size.height > 0 => {
                    let _ = input.resize(TerminalSize { width: size.width, height: size.height }).await;
                }
                Some(_) => {}
                None => resize = None,
            },
            _ = &mut client_gone => break,
        }
    }
    Ok(())
}

/// The next message of a channel the client may not have opened (then: never).
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Copies a process stream to the client until it ends. A client that went away does not stop
/// the copy: the process must not block on a full pipe.
async fn copy_out(reader: Option<ExecReader>, tx: Option<mpsc::Sender<Bytes>>) {
    let Some(mut reader) = reader else { return };
    let mut tx = tx;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(sender) = &tx
                    && sender.send(Bytes::copy_from_slice(&buf[..n])).await.is_err()
                {
                    tx = None;
                }
            }
        }
    }
}
