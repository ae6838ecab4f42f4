//! The TLS listener: HTTP/1.1 on every connection, two routes.
//!
//! - `POST /v1/bootstrap`: token + CSR → certificate (no client certificate needed).
//! - `GET /<projectID>/<node>/events` with a WebSocket upgrade: the client certificate's CN must
//!   be the path's node and the `node_id` header (else 403); over capacity → 503 + Retry-After.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use edgefleet_channel::bootstrap::{
    BOOTSTRAP_PATH, BootstrapRequest, BootstrapResponse, TOKEN_KEY, TOKEN_SECRET,
};
use edgefleet_channel::envelope::MAX_FRAME_BYTES;
use edgefleet_channel::session::{HEADER_NODE_ID, parse_events_path};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::hub::{Hub, secrets};
use crate::identity::{check_session_identity, common_name};
use crate::session;

/// A TLS handshake plus the request head must complete within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_BOOTSTRAP_BODY: usize = 64 * 1024;

type Body = Full<Bytes>;

fn reply(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.into())));
    *r.status_mut() = status;
    r
}

/// The WebSocket settings of a session: small buffers (many sessions), frames bounded.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(MAX_FRAME_BYTES * 2)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Accepts connections until shutdown.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, hub: Arc<Hub>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, peer, hub).await {
                tracing::debug!(%peer, error = %e, "connection");
            }
        });
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
) -> anyhow::Result<()> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await??;
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| common_name(c));
    let service = hyper::service::service_fn(move |req| {
        let hub = hub.clone();
        let cn = cn.clone();
        async move { Ok::<_, std::convert::Infallible>(route(hub, cn, peer, req).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await?;
    Ok(())
}

async fn route(
    hub: Arc<Hub>,
    cn: Option<String>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() == Method::POST && req.uri().path() == BOOTSTRAP_PATH {
        return bootstrap(&hub, req).await;
    }
    if req.method() == Method::GET
        && let Some((_project, node)) = parse_events_path(req.uri().path())
    {
        let node = node.to_string();
        return upgrade(hub, cn, peer, node, req);
    }
    reply(StatusCode::NOT_FOUND, "not found")
}

async fn bootstrap(hub: &Hub, req: Request<Incoming>) -> Response<Body> {
    let refuse = |reason: &str, status: StatusCode, text: String| {
        hub.metrics.refused.with_label_values(&[reason]).inc();
        reply(status, text)
    };
    let body = match Limited::new(req.into_body(), MAX_BOOTSTRAP_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refuse(
                "bootstrap_bad_request",
                StatusCode::BAD_REQUEST,
                "body too large or broken".into(),
            );
        }
    };
    let request: BootstrapRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                "bootstrap_bad_request",
                StatusCode::BAD_REQUEST,
                e.to_string(),
            );
        }
    };
    if !edgefleet_channel::resource::is_valid_name(&request.node_name) {
        return refuse(
            "bootstrap_bad_request",
            StatusCode::BAD_REQUEST,
            "invalid node name".into(),
        );
    }
    let token = match secrets(&hub.client, &hub.config.namespace)
        .get_opt(TOKEN_SECRET)
        .await
    {
        Ok(s) => s
            .and_then(|s| s.data)
            .and_then(|d| d.get(TOKEN_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok()),
        Err(e) => {
            hub.metrics
                .api_errors
                .with_label_values(&["get_token"])
                .inc();
            tracing::warn!(error = %e, "reading the bootstrap token");
            return reply(StatusCode::SERVICE_UNAVAILABLE, "token unavailable");
        }
    };
    let valid = token.as_deref().map(str::trim).is_some_and(|t| {
        !t.is_empty() && constant_time_eq(t.as_bytes(), request.token.trim().as_bytes())
    });
    if !valid {
        tracing::info!(node = %request.node_name, "bootstrap with a bad token");
        return refuse("bad_token", StatusCode::UNAUTHORIZED, "bad token".into());
    }
    match hub.ca.sign_node_csr(&request.node_name, &request.csr) {
        Ok(certificate) => {
            tracing::info!(node = %request.node_name, "issued a node certificate");
            let body = BootstrapResponse {
                certificate,
                ca: hub.ca.cert_pem.clone(),
            };
            let mut r = reply(
                StatusCode::OK,
                serde_json::to_string(&body).unwrap_or_default(),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => refuse("bootstrap_bad_csr", StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn upgrade(
    hub: Arc<Hub>,
    cn: Option<String>,
    peer: SocketAddr,
    node: String,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let header_node = req
        .headers()
        .get(HEADER_NODE_ID)
        .and_then(|v| v.to_str().ok());
    if let Err(refusal) = check_session_identity(cn.as_deref(), header_node, &node) {
        hub.metrics
            .refused
            .with_label_values(&[refusal.label()])
            .inc();
        tracing::info!(%peer, %node, cn = ?cn, reason = refusal.label(), "session refused");
        return reply(
            StatusCode::FORBIDDEN,
            format!("forbidden: {}", refusal.label()),
        );
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (Some(accept), true) = (key, is_upgrade) else {
        hub.metrics
            .refused
            .with_label_values(&["not_websocket"])
            .inc();
        return reply(StatusCode::BAD_REQUEST, "a WebSocket upgrade is required");
    };
    // Capacity: a node replacing its own session needs no new slot.
    let count = hub.connections.fetch_add(1, Ordering::Relaxed);
    if count >= hub.config.max_sessions && !hub.registry.contains(&node) {
        hub.connections.fetch_sub(1, Ordering::Relaxed);
        hub.metrics.refused.with_label_values(&["capacity"]).inc();
        let mut r = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "over capacity, retry later",
        );
        if let Ok(v) = http::HeaderValue::from_str(&hub.jittered_retry().as_secs().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if hub.shutdown.is_cancelled() {
        hub.connections.fetch_sub(1, Ordering::Relaxed);
        let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        if let Ok(v) = http::HeaderValue::from_str(&hub.jittered_retry().as_secs().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(websocket_config()),
                )
                .await;
                session::run(hub, node, ws).await;
            }
            Err(e) => {
                hub.connections.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "upgrade failed");
            }
        }
    });
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
