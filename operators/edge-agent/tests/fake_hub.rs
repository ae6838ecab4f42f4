//! The session against a minimal in-process hub (mTLS WebSocket): 503 + Retry-After honoured,
//! registration first, store before ACK, malformed frames refused without dropping the session,
//! close 4000 with a hint followed by a reconnect. The real hub is exercised by
//! hack/test/agent-hub on the test bed.
#![allow(clippy::unwrap_used, clippy::panic, clippy::result_large_err)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use edgefleet_channel::envelope::{GROUP_RESOURCE, SOURCE_CLOUD};
use edgefleet_channel::session::{CLOSE_RECONNECT, DEFAULT_PROJECT_ID};
use edgefleet_channel::{Message, Operation, Resource, ResourceType};
use edgefleet_edge_agent::hub::HubAddr;
use edgefleet_edge_agent::identity::{Identity, key_and_csr};
use edgefleet_edge_agent::metrics::Metrics;
use edgefleet_edge_agent::session::{self, Agent, SessionConfig};
use edgefleet_edge_agent::store::{Key, MemoryStore, Store};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: Identity,
}

fn pki(node: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let (key_pem, csr) = key_and_csr(node).unwrap();
    let client_cert = rcgen::CertificateSigningRequestParams::from_pem(&csr)
        .unwrap()
        .signed_by(&issuer)
        .unwrap();
    let provider = edgefleet_edge_agent::identity::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server_cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    Pki {
        server: Arc::new(server),
        client: Identity {
            key_pem,
            cert_pem: client_cert.pem(),
            ca_pem: ca_cert.pem(),
        },
    }
}

fn configmap(name: &str, rv: &str) -> Message {
    Message::new(
        SOURCE_CLOUD,
        GROUP_RESOURCE,
        Operation::Insert,
        &Resource::new("default", ResourceType::ConfigMap, name),
    )
    .with_resource_version(rv)
    .with_content(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "uid": "u-1", "resourceVersion": rv},
        "data": {"rate": "5"}}))
}

#[tokio::test]
async fn a_session_with_a_hub() {
    let node = "edge-it-1";
    let pki = pki(node);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = Arc::new(MemoryStore::new());
    let connections = Arc::new(AtomicUsize::new(0));
    // What the hub saw, in order.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();

    let hub_store = store.clone();
    let hub_connections = connections.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let attempt = hub_connections.fetch_add(1, Ordering::SeqCst);
            let tls = acceptor.accept(tcp).await.unwrap();
            let seen = seen_tx.clone();
            let store = hub_store.clone();
            tokio::spawn(async move {
                let headers_ok = Arc::new(AtomicBool::new(false));
                let ok = headers_ok.clone();
                let accepted = tokio_tungstenite::accept_hdr_async(
                    tls,
                    move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        ok.store(
                            req.uri().path() == format!("/{DEFAULT_PROJECT_ID}/edge-it-1/events")
                                && req
                                    .headers()
                                    .get("node_id")
                                    .is_some_and(|v| v == "edge-it-1")
                                && req.headers().get("project_id").is_some(),
                            Ordering::SeqCst,
                        );
                        if attempt == 0 {
                            let mut busy = ErrorResponse::new(None);
                            *busy.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            busy.headers_mut()
                                .insert("retry-after", http::HeaderValue::from_static("1"));
                            return Err(busy);
                        }
                        Ok(resp)
                    },
                )
                .await;
                let Ok(mut ws) = accepted else { return };
                assert!(
                    headers_ok.load(Ordering::SeqCst),
                    "URL and headers per docs/channel.md"
                );
                // Registration first.
                for _ in 0..2 {
                    let Some(Ok(Ws::Text(t))) = ws.next().await else {
                        panic!("registration")
                    };
                    let m = Message::parse(&t).unwrap();
                    seen.send(format!("{} {}", m.route.operation, m.route.resource))
                        .unwrap();
                }
                if attempt == 1 {
                    // Garbage is refused, the session stays.
                    ws.send(Ws::text("{not json")).await.unwrap();
                    let Some(Ok(Ws::Text(t))) = ws.next().await else {
                        panic!("refusal")
                    };
                    let m = Message::parse(&t).unwrap();
                    seen.send(m.route.operation.clone()).unwrap();
                    // A delivery is stored before its ACK.
                    let msg = configmap("toll", "42");
                    ws.send(Ws::text(msg.to_frame())).await.unwrap();
                    let Some(Ok(Ws::Text(t))) = ws.next().await else {
                        panic!("ack")
                    };
                    let ack = Message::parse(&t).unwrap();
                    let held = store
                        .get(&Key::new(ResourceType::ConfigMap, "default", "toll"))
                        .unwrap()
                        .map(|o| o.resource_version);
                    seen.send(format!(
                        "{} parent={} rv={} held={held:?}",
                        ack.route.operation,
                        ack.header.parent_id == msg.header.id,
                        ack.header.resource_version
                    ))
                    .unwrap();
                    // Move the node away with a hint.
                    ws.close(Some(CloseFrame {
                        code: CloseCode::from(CLOSE_RECONNECT),
                        reason: "reconnect-after=1".into(),
                    }))
                    .await
                    .unwrap();
                    while ws.next().await.is_some() {}
                } else {
                    while ws.next().await.is_some() {}
                }
            });
        }
    });

    let metrics = Arc::new(Metrics::default());
    let agent = Agent {
        config: SessionConfig {
            node: node.into(),
            project_id: DEFAULT_PROJECT_ID.into(),
            hubs: HubAddr {
                host: "127.0.0.1".into(),
                port,
            }
            .into(),
            keepalive: Duration::from_secs(15),
            status_interval: Duration::from_secs(300),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(2),
            read_buffer: 4096,
        },
        tls: pki.client.client_config().unwrap(),
        store: store.clone(),
        metrics: metrics.clone(),
        connected: Arc::new(AtomicBool::new(false)),
    };
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let running = tokio::spawn(async move { session::run(&agent, &stop).await });

    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(15), seen_rx.recv())
            .await
            .unwrap()
            .unwrap()
    };
    let started = tokio::time::Instant::now();
    assert_eq!(next().await, format!("insert /node/{node}"));
    // The 503's Retry-After (1 s) was waited out.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(next().await, format!("update /nodestatus/{node}"));
    assert_eq!(next().await, "error");
    assert_eq!(next().await, "response parent=true rv=42 held=Some(\"42\")");
    // Close 4000 reconnect-after=1: back within [1 s, 2 s] plus a handshake.
    let closed = tokio::time::Instant::now();
    assert_eq!(next().await, format!("insert /node/{node}"));
    let away = closed.elapsed();
    assert!(
        away >= Duration::from_secs(1) && away < Duration::from_secs(4),
        "{away:?}"
    );
    assert_eq!(next().await, format!("update /nodestatus/{node}"));

    assert_eq!(metrics.busy_refusals.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.messages_refused.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.messages_acked.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.connects.load(Ordering::Relaxed), 2);
    assert!(metrics.bytes_sent.load(Ordering::Relaxed) > 0);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.sessions_up.load(Ordering::Relaxed), 0);
}
