//! The connection upgrades of the streaming subresources (exec, port-forward): WebSocket with a
//! subprotocol, or SPDY/3.1 with `X-Stream-Protocol-Version`. Picks the transport and protocol
//! from the request and writes the `101 Switching Protocols` reply.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use skiff_api::ApiError;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::reply::{self, Body};
use super::spdy::{Session, WebSocketTunnel};

pub(crate) const STREAM_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("x-stream-protocol-version");
const SPDY: &str = "SPDY/3.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket { protocol: &'static str },
    Spdy { protocol: &'static str },
}

fn header_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// The transport and protocol to answer with: the first of `supported` (most preferred first)
/// that the client offers, over the transport its `Upgrade` header names.
pub(crate) fn negotiate(
    headers: &HeaderMap,
    websocket: &[&'static str],
    spdy: &[&'static str],
) -> Result<Transport, ApiError> {
    let upgrade: Vec<&str> = header_values(headers, &UPGRADE).collect();
    let (offered_in, supported, make): (_, _, fn(&'static str) -> Transport) =
        if upgrade.iter().any(|v| v.eq_ignore_ascii_case("websocket")) {
            (SEC_WEBSOCKET_PROTOCOL, websocket, |protocol| Transport::WebSocket { protocol })
        } else if upgrade.iter().any(|v| v.eq_ignore_ascii_case(SPDY)) {
            (STREAM_PROTOCOL_VERSION, spdy, |protocol| Transport::Spdy { protocol })
        } else {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: this endpoint needs an Upgrade to websocket or {SPDY}"
            )));
        };
    let offered: Vec<&str> = header_values(headers, &offered_in).collect();
    supported.iter().copied().find(|p| offered.contains(p)).map(make).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unable to upgrade connection: none of the offered protocols {offered:?} is supported; supported: \
             {supported:?}"
        ))
    })
}

/// The `101` reply for `transport`. The caller awaits `hyper::upgrade::on(req)` afterwards.
pub(crate) fn switching_protocols(req: &Request<Incoming>, transport: Transport) -> Result<Response<Body>, ApiError> {
    let mut response = reply::with_type(StatusCode::SWITCHING_PROTOCOLS, reply::JSON, reply::full(Bytes::new()));
    let headers = response.headers_mut();
    headers.remove(hyper::header::CONTENT_TYPE);
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    match transport {
        Transport::WebSocket { protocol } => {
            let key = req
                .headers()
                .get(SEC_WEBSOCKET_KEY)
                .ok_or_else(|| ApiError::bad_request("the WebSocket upgrade has no Sec-WebSocket-Key"))?;
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header"));
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        Transport::Spdy { protocol } => {
            headers.insert(UPGRADE, HeaderValue::from_static(SPDY));
            headers.insert(STREAM_PROTOCOL_VERSION, HeaderValue::from_static(protocol));
        }
    }
    Ok(response)
}

pub(crate) async fn websocket(upgraded: Upgraded) -> WebSocketStream<TokioIo<Upgraded>> {
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await
}

/// A SPDY session over the upgraded connection, directly or inside WebSocket binary messages.
pub(crate) async fn spdy_session(upgraded: Upgraded, transport: Transport) -> Session {
    match transport {
        Transport::WebSocket { .. } => Session::start(WebSocketTunnel::new(websocket(upgraded).await)),
        Transport::Spdy { .. } => Session::start(TokioIo::new(upgraded)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    const WS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
    const SPDY_EXEC: &[&str] = &["v4.channel.k8s.io", "v5.channel.k8s.io"];

    #[test]
    fn the_transport_follows_the_upgrade_header_and_the_protocol_our_preference() {
        let ws =
            headers(&[("upgrade", "websocket"), ("sec-websocket-protocol", "v4.channel.k8s.io, v5.channel.k8s.io")]);
        assert_eq!(negotiate(&ws, WS, SPDY_EXEC).unwrap(), Transport::WebSocket { protocol: "v5.channel.k8s.io" });
        // kubectl repeats the header, one protocol per line.
        let spdy = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v5.channel.k8s.io"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        assert_eq!(negotiate(&spdy, WS, SPDY_EXEC).unwrap(), Transport::Spdy { protocol: "v4.channel.k8s.io" });
    }

    #[test]
    fn no_upgrade_or_no_common_protocol_is_a_bad_request() {
        assert_eq!(negotiate(&headers(&[]), WS, SPDY_EXEC).unwrap_err().code, 400);
        let old = headers(&[("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", "v2.channel.k8s.io")]);
        assert_eq!(negotiate(&old, WS, SPDY_EXEC).unwrap_err().code, 400);
        let base64 = headers(&[("upgrade", "websocket"), ("sec-websocket-protocol", "base64.channel.k8s.io")]);
        assert_eq!(negotiate(&base64, WS, SPDY_EXEC).unwrap_err().code, 400);
    }
}
