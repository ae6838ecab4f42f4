//! The TLS listener: HTTP/1.1 on every connection, two routes.
//!
//! - `POST /v1/bootstrap`: join token + CSR → certificate, or 202 pending approval (no client
//!   certificate needed); see [`crate::enroll`].
//! - `POST /v1/renew`: the current client certificate + a CSR of the same key → a new one.
//! - `GET /<projectID>/<node>/events` with a WebSocket upgrade: the client certificate's CN must
//!   be the path's node and the `node_id` header, and its key the node's active identity (else
//!   403); over capacity → 503 + Retry-After.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use edgefleet_channel::bootstrap::{BOOTSTRAP_PATH, BootstrapRequest, RENEW_PATH, RenewRequest};
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

use crate::enroll::{self, Outcome};
use crate::hub::Hub;
use crate::identity::{PeerCert, check_session_identity, peer_cert};
use crate::records::Identities;
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
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    hub: Arc<Hub>,
    ids: Arc<Identities>,
) {
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
        let ids = ids.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, peer, hub, ids).await {
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
    ids: Arc<Identities>,
) -> anyhow::Result<()> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await??;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| peer_cert(c));
    let service = hyper::service::service_fn(move |req| {
        let hub = hub.clone();
        let ids = ids.clone();
        let cert = cert.clone();
        async move { Ok::<_, std::convert::Infallible>(route(hub, ids, cert, peer, req).await) }
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
    ids: Arc<Identities>,
    cert: Option<PeerCert>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let enrolment =
        req.method() == Method::POST && [BOOTSTRAP_PATH, RENEW_PATH].contains(&req.uri().path());
    if enrolment {
        // Shed before any work (and before the per-node limiter: busy is not the node's fault).
        let Ok(_permit) = ids.enrolling.try_acquire() else {
            let kind = if req.uri().path() == BOOTSTRAP_PATH {
                &ids.metrics.bootstrap
            } else {
                &ids.metrics.renewals
            };
            kind.with_label_values(&["busy"]).inc();
            return retry_later(&hub, "busy enrolling other nodes, retry later");
        };
        return if req.uri().path() == BOOTSTRAP_PATH {
            bootstrap(&hub, &ids, peer, req).await
        } else {
            renew(&hub, &ids, cert, req).await
        };
    }
    if req.method() == Method::GET
        && let Some((_project, node)) = parse_events_path(req.uri().path())
    {
        let node = node.to_string();
        let cn = cert.as_ref().map(|c| c.cn.clone());
        let header_node = req
            .headers()
            .get(HEADER_NODE_ID)
            .and_then(|v| v.to_str().ok());
        let checked =
            check_session_identity(cn.as_deref(), header_node, &node).map_err(|r| r.label());
        let admitted = match (checked, &cert) {
            (Ok(()), Some(c)) => ids.admit(&hub, &node, &c.key).await.map_err(|g| g.label()),
            (Ok(()), None) => Err("no_certificate"),
            (Err(label), _) => Err(label),
        };
        if let Err(label) = admitted {
            hub.metrics.refused.with_label_values(&[label]).inc();
            tracing::info!(%peer, %node, cn = ?cn, reason = label, "session refused");
            let status = if label == "identity_unavailable" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            };
            return reply(status, format!("forbidden: {label}"));
        }
        return upgrade(hub, peer, node, req);
    }
    reply(StatusCode::NOT_FOUND, "not found")
}

/// Reads a bounded JSON body.
async fn json_body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let body = Limited::new(req.into_body(), MAX_BOOTSTRAP_BODY)
        .collect()
        .await
        .map_err(|_| "body too large or broken".to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// 503 with a jittered Retry-After: the agent comes back then, not at once.
fn retry_later(hub: &Hub, message: &str) -> Response<Body> {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, message.to_string());
    if let Ok(v) = http::HeaderValue::from_str(&hub.jittered_retry().as_secs().to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn answer(hub: &Hub, outcome: Outcome) -> Response<Body> {
    let json = |status, text: String| {
        let mut r = reply(status, text);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    match outcome {
        Outcome::Issued(body) => json(
            StatusCode::OK,
            serde_json::to_string(&body).unwrap_or_default(),
        ),
        Outcome::Pending(body) => json(
            StatusCode::ACCEPTED,
            serde_json::to_string(&body).unwrap_or_default(),
        ),
        Outcome::Refused {
            status, message, ..
        } => {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                return retry_later(hub, &message);
            }
            let mut r = reply(status, message);
            if status == StatusCode::TOO_MANY_REQUESTS {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, http::HeaderValue::from_static("30"));
            }
            r
        }
    }
}

async fn bootstrap(
    hub: &Hub,
    ids: &Identities,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let outcome = match json_body::<BootstrapRequest>(req).await {
        Ok(request) => {
            let outcome = enroll::bootstrap(hub, ids, peer.ip(), &request).await;
            if !matches!(outcome, Outcome::Issued(_)) {
                tracing::info!(%peer, node = %request.node_name, outcome = outcome.label(),
                    "bootstrap not issued");
            }
            outcome
        }
        Err(message) => Outcome::Refused {
            status: StatusCode::BAD_REQUEST,
            outcome: "bad_request",
            message,
        },
    };
    ids.metrics
        .bootstrap
        .with_label_values(&[outcome.label()])
        .inc();
    answer(hub, outcome)
}

async fn renew(
    hub: &Hub,
    ids: &Identities,
    cert: Option<PeerCert>,
    req: Request<Incoming>,
) -> Response<Body> {
    let outcome = match cert {
        None => Outcome::Refused {
            status: StatusCode::UNAUTHORIZED,
            outcome: "refused",
            message: "renewal needs the current client certificate".into(),
        },
        Some(cert) => match ids.admit(hub, &cert.cn, &cert.key).await {
            Err(gate) => Outcome::Refused {
                status: StatusCode::FORBIDDEN,
                outcome: "refused",
                message: gate.label().into(),
            },
            Ok(()) => match json_body::<RenewRequest>(req).await {
                Ok(request) => enroll::renew(hub, ids, &cert, &request).await,
                Err(message) => Outcome::Refused {
                    status: StatusCode::BAD_REQUEST,
                    outcome: "refused",
                    message,
                },
            },
        },
    };
    ids.metrics
        .renewals
        .with_label_values(&[outcome.label()])
        .inc();
    answer(hub, outcome)
}

fn upgrade(
    hub: Arc<Hub>,
    peer: SocketAddr,
    node: String,
    mut req: Request<Incoming>,
) -> Response<Body> {
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

/// File descriptors kept for everything but sessions: API connections, listeners, handshakes
/// and bootstrap requests in flight.
pub const FILES_RESERVED: u64 = 1024;

/// Sessions a hub can hold with `open_files` descriptors, at most `wanted` (pure).
pub fn session_capacity(wanted: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(FILES_RESERVED).max(1);
    usize::try_from(room).map_or(wanted, |room| wanted.min(room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_fit_the_open_file_limit() {
        // (wanted, open files, capacity)
        let cases = [
            (20_000, 1_048_576, 20_000),
            (20_000, 20_000, 20_000 - 1_024),
            (20_000, 1_024, 1),
            (100, 0, 1),
        ];
        for (wanted, files, capacity) in cases {
            assert_eq!(
                session_capacity(wanted, files),
                capacity,
                "{wanted} with {files} files"
            );
        }
    }
}
