//! The HTTPS front of the API server: a thin adapter that turns Kubernetes REST requests into
//! calls on the in-process [`ApiClient`], and its replies into what kubectl expects on the wire
//! (lists, Tables, watch streams, `Status` errors, discovery, OpenAPI).
//!
//! Requests flow: TLS accept → hyper (HTTP/1.1, upgrades allowed) → bearer-token check →
//! [`route::parse`] (a hand-written router over the path) → one handler per kind of endpoint.
//! Business errors are always an [`ApiError`] written as its `Status`; nothing here decides
//! validity, defaulting or resourceVersion rules: the `ApiClient` does.

// Every handler returns `ApiError`, which *is* a Kubernetes Status and so carries its details by
// value; boxing it would only move the allocation, on the error path that is cold anyway.
#![allow(clippy::result_large_err)]

mod discovery;
mod exec;
mod logs;
mod metrics;
mod openapi;
mod portforward;
mod protobuf;
mod query;
mod reply;
mod resource;
mod route;
mod spdy;
mod strict;
mod table;
mod tls;
mod upgrade;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use skiff_api::{ApiClient, ApiError, PodStreams, StatusReason};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use tls::{Tls, load_or_create_tls};

use reply::Body;
use route::Route;

/// Failures of the HTTP layer itself (certificates, sockets); request failures are `ApiError`s.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid PEM: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate validity: {0}")]
    Time(String),
}

impl From<crate::atomic_file::WriteError> for Error {
    fn from(e: crate::atomic_file::WriteError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After shutdown, how long open connections get to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may use the API: the admin bearer token, and (when an issuer is given) any valid service
/// account token it signed. Skiff has no authorization: whoever authenticates may do anything.
/// (No `Debug`: it holds the admin token.)
#[derive(Clone)]
pub struct Auth {
    pub admin_token: String,
    pub service_accounts: Option<Arc<crate::token::TokenIssuer>>,
}

impl From<String> for Auth {
    fn from(admin_token: String) -> Auth {
        Auth { admin_token, service_accounts: None }
    }
}

/// What every request handler shares.
pub(crate) struct State {
    pub api: Arc<dyn ApiClient>,
    pub streams: Arc<OnceLock<Arc<dyn PodStreams>>>,
    auth: Auth,
    /// Cancelled at shutdown: ends watch and log streams so connections can close.
    pub shutdown: CancellationToken,
}

/// Serves the Kubernetes API over TLS on `listener` until `shutdown` is cancelled, then gives open
/// connections a few seconds to finish and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    auth: impl Into<Auth>,
    api: Arc<dyn ApiClient>,
    streams: Arc<OnceLock<Arc<dyn PodStreams>>>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let state = Arc::new(State { api, streams, auth: auth.into(), shutdown: shutdown.clone() });
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    connections.spawn(connection(state.clone(), acceptor.clone(), tcp));
                }
                // Accept fails for reasons local to one connection (aborted handshakes) or
                // transient ones (out of descriptors): neither should stop the server.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::debug!(left = connections.len(), "aborting connections still open at shutdown");
        connections.shutdown().await;
    }
    Ok(())
}

async fn connection(state: Arc<State>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let shutdown = state.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.handle(req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that opens a connection and never finishes its headers must not hold it forever.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Compares in time independent of where the first difference is, so the token cannot be
/// guessed byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl State {
    /// The admin token (one comparison), else a service account token: a cached signature
    /// check plus a store read of the objects it is bound to.
    async fn authenticated(&self, req: &Request<Incoming>) -> bool {
        let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) else { return false };
        let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else { return false };
        let token = token.trim_ascii();
        if constant_time_eq(token, self.auth.admin_token.as_bytes()) {
            return true;
        }
        let (Some(issuer), Ok(token)) = (&self.auth.service_accounts, std::str::from_utf8(token)) else {
            return false;
        };
        match issuer.authenticate(self.api.as_ref(), token).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, "service account token refused");
                false
            }
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        tracing::debug!(method = %req.method(), uri = %req.uri(), "request");
        match path.as_str() {
            "/livez" | "/readyz" | "/healthz" => return reply::text(StatusCode::OK, "ok"),
            // Kubernetes serves both; the Python client asks for `/version/`.
            "/version" | "/version/" => return reply::json(StatusCode::OK, &version()),
            _ => {}
        }
        if !self.authenticated(&req).await {
            return reply::error(&ApiError::new(401, StatusReason::Unauthorized, "Unauthorized"));
        }
        let route = match route::parse(&path) {
            Ok(route) => route,
            Err(e) => return reply::error(&e),
        };
        let is_get = req.method() == Method::GET;
        let result = match route {
            Route::Resource(target) => resource::handle(&self, req, target).await,
            _ if !is_get => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({} {path})",
                req.method()
            ))),
            Route::Api => Ok(discovery::api(req.headers(), req.uri().authority().map(|a| a.as_str()))),
            Route::Apis => Ok(discovery::apis(req.headers())),
            Route::Group(group) => discovery::group(&group),
            Route::ResourceList { group, version } => discovery::resource_list(&group, &version),
            Route::OpenApiV3Index => Ok(openapi::index()),
            Route::OpenApiV3 { group_version } => openapi::document(&group_version),
            Route::Metrics(target) => metrics::handle(&self, req.uri().query(), req.headers(), target).await,
        };
        result.unwrap_or_else(|e| reply::error(&e))
    }
}

/// The `/version` reply, as `k8s.io/apimachinery/pkg/version.Info`.
fn version() -> serde_json::Value {
    let (major, minor, git_version) = skiff_api::KUBERNETES_VERSION;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    serde_json::json!({
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{arch}", std::env::consts::OS),
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn token_comparison_needs_equal_length_and_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn version_reports_the_served_kubernetes_release() {
        let v = version();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "33");
        assert_eq!(v["gitVersion"], "v1.33.0+skiff");
        assert!(v["platform"].as_str().unwrap().starts_with("linux/"));
    }
}
