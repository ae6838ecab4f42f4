//! The hub against the real API server, with a real edge client written here: TLS bootstrap
//! (token + CSR → certificate), then a WebSocket over mTLS speaking the KubeEdge envelope.
//! The ObjectSyncs are created by the tests, as the objectsync operator would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use edgefleet_api::objectsync::{NODE_LABEL, ObjectSync, ObjectSyncSpec, sync_name};
use edgefleet_channel::bootstrap::{BOOTSTRAP_PATH, BootstrapResponse};
use edgefleet_channel::envelope::{GROUP_RESOURCE, SOURCE_EDGE};
use edgefleet_channel::session::{
    CLOSE_PROTOCOL, CLOSE_REPLACED, DEFAULT_PROJECT_ID, HEADER_NODE_ID, HEADER_PROJECT_ID,
    events_path,
};
use edgefleet_channel::{Message, Operation, Resource, ResourceType};
use edgefleet_e2e::operator::SYSTEM_NAMESPACE;
use edgefleet_e2e::{TestNamespace, client, install_crds, wait_for};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::CertificateDer};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const FINALIZER: &str = "edgefleet.io/edge-delete";

/// A hub replica (the same fixture the other channel tests use).
pub(crate) use edgefleet_e2e::edge::HubProcess as Hub;

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

pub(crate) async fn secret_value(client: &Client, name: &str, key: &str) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let s = api.get(name).await?;
    let b = s
        .data
        .and_then(|d| d.get(key).cloned())
        .context("no such key")?;
    Ok(String::from_utf8(b.0)?)
}

/// An identity of an edge node: its certificate and key, plus the CA.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) cert: String,
    pub(crate) key: String,
}

pub(crate) struct Edge {
    pub(crate) addr: SocketAddr,
    ca: String,
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A refused session request: HTTP status and Retry-After.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    retry_after: Option<String>,
}

impl Edge {
    pub(crate) async fn new(client: &Client, hub: &Hub) -> Result<Edge> {
        let ca = secret_value(client, "edgefleet-hub-ca", "ca.crt").await?;
        Ok(Edge { addr: hub.addr, ca })
    }

    fn tls(&self, id: Option<&Identity>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for c in pem_certs(&self.ca) {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match id {
            Some(id) => {
                use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
                let key = PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap();
                builder
                    .with_client_auth_cert(pem_certs(&id.cert), key)
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        TlsConnector::from(Arc::new(config))
    }

    pub(crate) async fn tls_stream(&self, id: Option<&Identity>) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        Ok(self.tls(id).connect(name, tcp).await?)
    }

    /// `POST /v1/bootstrap`: (status, body).
    pub(crate) async fn bootstrap_raw(
        &self,
        node: &str,
        token: &str,
        csr: &str,
    ) -> Result<(u16, String)> {
        let body = json!({"nodeName": node, "token": token, "csr": csr}).to_string();
        let mut s = self.tls_stream(None).await?;
        let req = format!(
            "POST {BOOTSTRAP_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        Ok((status, body))
    }

    pub(crate) async fn bootstrap(&self, node: &str, token: &str) -> Result<Identity> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node);
        let csr = params.serialize_request(&key)?.pem()?;
        let (status, body) = self.bootstrap_raw(node, token, &csr).await?;
        if status != 200 {
            bail!("bootstrap of {node}: HTTP {status}: {body}");
        }
        let resp: BootstrapResponse = serde_json::from_str(&body)?;
        assert!(resp.ca.contains("BEGIN CERTIFICATE"));
        Ok(Identity {
            cert: resp.certificate,
            key: key.serialize_pem(),
        })
    }

    /// Opens a session for `path_node` with header `node_id`, as `id`.
    pub(crate) async fn connect_as(
        &self,
        id: Option<&Identity>,
        path_node: &str,
        header_node: &str,
    ) -> Result<std::result::Result<Session, Refusal>> {
        let stream = self.tls_stream(id).await?;
        let url = format!(
            "wss://localhost{}",
            events_path(DEFAULT_PROJECT_ID, path_node)
        );
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert(HEADER_NODE_ID, header_node.parse()?);
        req.headers_mut()
            .insert(HEADER_PROJECT_ID, DEFAULT_PROJECT_ID.parse()?);
        match tokio_tungstenite::client_async_with_config(req, stream, None).await {
            Ok((ws, _)) => Ok(Ok(Session { ws })),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(Err(Refusal {
                status: resp.status().as_u16(),
                retry_after: resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            })),
            Err(e) => Err(anyhow!("connect: {e}")),
        }
    }

    pub(crate) async fn connect(&self, id: &Identity, node: &str) -> Result<Session> {
        self.connect_as(Some(id), node, node)
            .await?
            .map_err(|r| anyhow!("session of {node} refused: {r:?}"))
    }
}

pub(crate) struct Session {
    ws: Ws,
}

/// What the edge saw: a message, or the session's close code.
#[derive(Debug)]
pub(crate) enum Got {
    Msg(Box<Message>),
    Closed(Option<u16>),
}

impl Session {
    pub(crate) async fn send(&mut self, msg: &Message) -> Result<()> {
        self.ws.send(WsMessage::text(msg.to_frame())).await?;
        Ok(())
    }

    pub(crate) async fn send_raw(&mut self, frame: &str) -> Result<()> {
        self.ws.send(WsMessage::text(frame.to_string())).await?;
        Ok(())
    }

    /// The next message or close within `timeout` (None: nothing came).
    pub(crate) async fn next(&mut self, timeout: Duration) -> Option<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Got::Closed(None)),
                Ok(Some(Err(_))) => return Some(Got::Closed(None)),
                Ok(Some(Ok(WsMessage::Text(t)))) => {
                    return Some(Got::Msg(Box::new(Message::parse(t.as_str()).unwrap())));
                }
                Ok(Some(Ok(WsMessage::Close(f)))) => {
                    return Some(Got::Closed(f.map(|f| u16::from(f.code))));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next message for `resource` (others are skipped), within `timeout`.
    pub(crate) async fn expect(&mut self, resource: &str, timeout: Duration) -> Result<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| anyhow!("no message for {resource} within {timeout:?}"))?;
            match self.next(left).await {
                Some(Got::Msg(m)) if m.route.resource == resource => return Ok(*m),
                Some(Got::Msg(_)) => continue,
                Some(Got::Closed(c)) => bail!("session closed ({c:?}) waiting for {resource}"),
                None => bail!("no message for {resource} within {timeout:?}"),
            }
        }
    }

    pub(crate) async fn ack(&mut self, msg: &Message) -> Result<()> {
        let rv = msg.header.resource_version.clone();
        self.send(&msg.ack(SOURCE_EDGE, &rv)).await
    }

    /// A keepalive gets an answer: the session is alive and served.
    pub(crate) async fn alive(&mut self) -> Result<()> {
        let ka = Message::new(
            SOURCE_EDGE,
            GROUP_RESOURCE,
            Operation::Keepalive,
            &Resource::new("", ResourceType::Node, "x"),
        );
        self.send(&ka).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .context("no keepalive answer")?;
            match self.next(left).await {
                Some(Got::Msg(m)) if m.header.parent_id == ka.header.id => return Ok(()),
                Some(Got::Msg(_)) => continue,
                other => bail!("no keepalive answer: {other:?}"),
            }
        }
    }

    pub(crate) async fn request(
        &mut self,
        op: Operation,
        resource: &str,
        content: Value,
    ) -> Result<Message> {
        let mut msg = Message::new(
            SOURCE_EDGE,
            GROUP_RESOURCE,
            op,
            &Resource::new("", ResourceType::Node, "x"),
        )
        .with_content(content);
        msg.route.resource = resource.to_string();
        self.send(&msg).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .context("no reply")?;
            match self.next(left).await {
                Some(Got::Msg(m)) if m.header.parent_id == msg.header.id => return Ok(*m),
                Some(Got::Msg(_)) => continue,
                other => bail!("no reply to {resource}: {other:?}"),
            }
        }
    }
}

pub(crate) fn node_name(ns: &TestNamespace, tag: &str) -> String {
    format!("{}-{tag}", ns.name)
}

pub(crate) async fn configmap(ns: &TestNamespace, name: &str, value: &str) -> Result<ConfigMap> {
    let api: Api<ConfigMap> = ns.api();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    };
    Ok(api.create(&PostParams::default(), &cm).await?)
}

pub(crate) async fn update_configmap(
    ns: &TestNamespace,
    name: &str,
    value: &str,
) -> Result<String> {
    let api: Api<ConfigMap> = ns.api();
    let cm = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": value}})),
        )
        .await?;
    Ok(cm.resource_version().unwrap_or_default())
}

/// The ObjectSync the objectsync operator would create.
pub(crate) async fn object_sync(
    ns: &TestNamespace,
    node: &str,
    kind: &str,
    name: &str,
    uid: &str,
) -> Result<()> {
    let api: Api<ObjectSync> = ns.api();
    let mut sync = ObjectSync::new(
        &sync_name(node, uid),
        ObjectSyncSpec {
            object_api_version: Some("v1".into()),
            object_kind: kind.into(),
            object_name: name.into(),
        },
    );
    sync.metadata.labels = Some(BTreeMap::from([
        (NODE_LABEL.to_string(), node.to_string()),
        ("edgefleet.io/object-uid".to_string(), uid.to_string()),
    ]));
    sync.metadata.finalizers = Some(vec![FINALIZER.into()]);
    api.create(&PostParams::default(), &sync).await?;
    Ok(())
}

pub(crate) async fn acked(ns: &TestNamespace, name: &str) -> Result<Option<String>> {
    let api: Api<ObjectSync> = ns.api();
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|s| s.status)
        .and_then(|s| s.object_resource_version))
}

pub(crate) async fn cleanup_nodes(client: &Client, nodes: &[String]) {
    let api: Api<Node> = Api::all(client.clone());
    for n in nodes {
        let _ = api.delete(n, &DeleteParams::default()).await;
    }
}

/// A group join token for the tests' nodes (names no Node holds yet: approved on first use).
pub(crate) async fn token_of(client: &Client) -> Result<String> {
    edgefleet_e2e::edge::join_token(
        client,
        edgefleet_e2e::edge::TokenScope::Group("edgefleet.io/e2e-group=e2e".into()),
        3600,
    )
    .await
}

/// Delivery: only to the node whose sync names the object; latest wins while unacked (the
/// superseded version is never sent); ACK → acked RV; delete → ACK → finalizer removed.
#[tokio::test]
async fn hub_delivers_to_the_right_node_latest_wins_and_deletes() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "hub-deliver").await.unwrap();
    let hub = Hub::start(&ns.name, &[]).await.unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let (a, b) = (node_name(&ns, "a"), node_name(&ns, "b"));
    let id_a = edge.bootstrap(&a, &token).await.unwrap();
    let id_b = edge.bootstrap(&b, &token).await.unwrap();
    let mut sa = edge.connect(&id_a, &a).await.unwrap();
    let mut sb = edge.connect(&id_b, &b).await.unwrap();

    let cm = configmap(&ns, "toll-config", "1").await.unwrap();
    let uid = cm.uid().unwrap();
    object_sync(&ns, &a, "ConfigMap", "toll-config", &uid)
        .await
        .unwrap();
    let resource = format!("{}/configmap/toll-config", ns.name);
    let first = sa.expect(&resource, Duration::from_secs(15)).await.unwrap();
    assert_eq!(first.route.operation, "insert");
    assert_eq!(
        first.header.resource_version,
        cm.resource_version().unwrap()
    );
    assert_eq!(first.content["data"]["v"], "1");
    assert!(first.content["metadata"].get("managedFields").is_none());

    // Two updates while the insert is unacked: the first of them is superseded. The counter
    // proves the hub queued rv2 at all (else the test below would pass without supersession).
    let metrics_addr = hub.op.metrics_addr().await.unwrap().to_string();
    let superseded = |addr: &str| {
        edgefleet_e2e::edge::metrics(addr, "edgefleet_hub_messages_superseded_total")
            .ok()
            .and_then(|m| m.values().next().copied())
            .unwrap_or(0.0)
    };
    let superseded_before = superseded(&metrics_addr);
    let rv2 = update_configmap(&ns, "toll-config", "2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rv3 = update_configmap(&ns, "toll-config", "3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sa.ack(&first).await.unwrap();
    let next = sa.expect(&resource, Duration::from_secs(15)).await.unwrap();
    assert_eq!(next.route.operation, "update");
    assert_eq!(
        next.header.resource_version, rv3,
        "rv2 {rv2} must never be sent"
    );
    assert_eq!(next.content["data"]["v"], "3");
    assert!(
        superseded(&metrics_addr) > superseded_before,
        "rv2 was never queued: nothing was superseded"
    );
    sa.ack(&next).await.unwrap();
    let name = sync_name(&a, &uid);
    wait_for("acked RV = rv3", Duration::from_secs(15), || async {
        Ok((acked(&ns, &name).await?.as_deref() == Some(rv3.as_str())).then_some(()))
    })
    .await
    .unwrap();
    let sync: ObjectSync = ns.api::<ObjectSync>().get(&name).await.unwrap();
    let conds = sync.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Delivered" && c.status == "True")
    );

    // B saw none of it.
    match sb.next(Duration::from_secs(2)).await {
        None => {}
        Some(Got::Msg(m)) => panic!("node B received {}", m.route.resource),
        Some(Got::Closed(c)) => panic!("node B's session closed: {c:?}"),
    }
    // B cannot read it either.
    let reply = sb
        .request(Operation::Query, &resource, Value::Null)
        .await
        .unwrap();
    assert_eq!(reply.route.operation, "error");
    let reply = sa
        .request(Operation::Query, &resource, Value::Null)
        .await
        .unwrap();
    assert_eq!(reply.route.operation, "response");
    assert_eq!(reply.content["data"]["v"], "3");

    // Delete: the sync is deleted (finalizer holds it) → delete to the edge → ACK → gone.
    ns.api::<ObjectSync>()
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let del = sa.expect(&resource, Duration::from_secs(15)).await.unwrap();
    assert_eq!(del.route.operation, "delete");
    assert_eq!(del.content["uid"], uid.as_str());
    assert!(
        acked(&ns, &name).await.unwrap().is_some(),
        "finalizer holds until the ACK"
    );
    sa.ack(&del).await.unwrap();
    wait_for("the sync to be gone", Duration::from_secs(15), || async {
        Ok(ns
            .api::<ObjectSync>()
            .get_opt(&name)
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
    sb.alive().await.unwrap();
    drop(hub);
    cleanup_nodes(&client, &[a, b]).await;
}

/// No ACK → the same message again after 5 s (5 sends in all, then silence); a new session of
/// the same node replaces the old one (closed with 4001) and gets what is trailing.
#[tokio::test]
async fn hub_resends_and_a_new_session_replaces_the_old() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "hub-resend").await.unwrap();
    let hub = Hub::start(&ns.name, &[]).await.unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let a = node_name(&ns, "a");
    let id = edge.bootstrap(&a, &token).await.unwrap();
    let mut s1 = edge.connect(&id, &a).await.unwrap();

    let cm = configmap(&ns, "cfg", "1").await.unwrap();
    let uid = cm.uid().unwrap();
    object_sync(&ns, &a, "ConfigMap", "cfg", &uid)
        .await
        .unwrap();
    let resource = format!("{}/configmap/cfg", ns.name);
    let first = s1.expect(&resource, Duration::from_secs(15)).await.unwrap();
    let t0 = Instant::now();
    let mut sends = vec![first.clone()];
    for _ in 0..4 {
        let m = s1.expect(&resource, Duration::from_secs(9)).await.unwrap();
        sends.push(m);
    }
    let elapsed = t0.elapsed();
    assert!(
        sends.iter().all(|m| m.header.id == first.header.id),
        "resends keep the msg_id"
    );
    assert!(
        elapsed >= Duration::from_secs(19),
        "4 resends 5 s apart, took {elapsed:?}"
    );
    // Five sends in all: then it is left to resync.
    assert!(
        s1.expect(&resource, Duration::from_secs(8)).await.is_err(),
        "a sixth send"
    );
    let sync: ObjectSync = ns
        .api::<ObjectSync>()
        .get(&sync_name(&a, &uid))
        .await
        .unwrap();
    assert_eq!(sync.status.and_then(|s| s.attempts), Some(5));

    // The same node again (an edge restart): the old session is closed, the new one is served
    // and gets the trailing object at once.
    let mut s2 = edge.connect(&id, &a).await.unwrap();
    match s1.next(Duration::from_secs(10)).await {
        Some(Got::Closed(code)) => assert_eq!(code, Some(CLOSE_REPLACED)),
        other => panic!("old session not closed: {other:?}"),
    }
    let again = s2.expect(&resource, Duration::from_secs(15)).await.unwrap();
    assert_eq!(again.route.operation, "insert");
    s2.ack(&again).await.unwrap();
    let rv2 = update_configmap(&ns, "cfg", "2").await.unwrap();
    let upd = s2.expect(&resource, Duration::from_secs(15)).await.unwrap();
    assert_eq!(upd.header.resource_version, rv2);
    s2.alive().await.unwrap();
    drop(hub);
    // No hub is left to ACK an edge delete: release the sync so the namespace can go.
    ns.api::<ObjectSync>()
        .patch(
            &sync_name(&a, &uid),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    cleanup_nodes(&client, &[a]).await;
}

/// Forged identities, bad tokens and malformed frames are refused; another node's session goes
/// on undisturbed.
#[tokio::test]
async fn hub_refuses_forgeries_and_malformed_frames() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "hub-refuse").await.unwrap();
    let hub = Hub::start(&ns.name, &[]).await.unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let (a, b) = (node_name(&ns, "a"), node_name(&ns, "b"));
    let id_a = edge.bootstrap(&a, &token).await.unwrap();
    let id_b = edge.bootstrap(&b, &token).await.unwrap();
    let mut sb = edge.connect(&id_b, &b).await.unwrap();

    // Bad token; a CSR for another name.
    let err = edge.bootstrap(&a, "not-the-token").await.unwrap_err();
    assert!(format!("{err}").contains("HTTP 401"), "{err}");
    // A's certificate for B's path, a header naming another node, no certificate at all.
    for (id, path, header) in [
        (Some(&id_a), b.as_str(), b.as_str()),
        (Some(&id_a), b.as_str(), a.as_str()),
        (Some(&id_a), a.as_str(), b.as_str()),
        (None, a.as_str(), a.as_str()),
    ] {
        match edge.connect_as(id, path, header).await.unwrap() {
            Err(r) => assert_eq!(r.status, 403, "{path} {header}"),
            Ok(_) => panic!("session for path {path} header {header} accepted"),
        }
    }

    // Forged resources get an error reply and the session stays.
    let mut sa = edge.connect(&id_a, &a).await.unwrap();
    for (op, res) in [
        (Operation::Update, format!("/nodestatus/{b}")),
        (Operation::Insert, format!("/node/{b}")),
        (Operation::Update, format!("{}/configmap/x", ns.name)),
        (Operation::Update, "default/configmap/../../x".to_string()),
    ] {
        let reply = sa.request(op, &res, json!({})).await.unwrap();
        assert_eq!(reply.route.operation, "error", "{res}");
    }
    sa.alive().await.unwrap();
    // Malformed frames close only the offender with CLOSE_PROTOCOL.
    for bad in [
        "not json".to_string(),
        r#"{"header":{"msg_id":"1"},"route":{"operation":"explode","resource":"a/pod/b"}}"#
            .to_string(),
    ] {
        let mut s = edge.connect(&id_a, &a).await.unwrap();
        s.send_raw(&bad).await.unwrap();
        match s.next(Duration::from_secs(10)).await {
            Some(Got::Closed(code)) => assert_eq!(code, Some(CLOSE_PROTOCOL), "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Oversize: refused without disturbing anyone.
    let mut s = edge.connect(&id_a, &a).await.unwrap();
    let huge = format!(
        r#"{{"header":{{"msg_id":"1"}},"route":{{"operation":"keepalive"}},"content":"{}"}}"#,
        "x".repeat(edgefleet_channel::envelope::MAX_FRAME_BYTES + 10)
    );
    let _ = s.send_raw(&huge).await;
    assert!(
        matches!(s.next(Duration::from_secs(10)).await, Some(Got::Closed(_))),
        "oversize frame not refused"
    );
    sb.alive().await.unwrap();
    drop(hub);
    cleanup_nodes(&client, &[a, b]).await;
}

/// Node status → Node Ready + Lease renewed; the retired `<ns>/devicetwin/<name>` path refused;
/// over capacity → 503 + Retry-After; two replicas each write a load report.
#[tokio::test]
async fn hub_heartbeats_twins_capacity_and_load_reports() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "hub-edge").await.unwrap();
    let hub = Hub::start(&ns.name, &["--max-sessions=2"]).await.unwrap();
    let hub2 = Hub::start(&ns.name, &["--max-sessions=5"]).await.unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let (a, b, c) = (
        node_name(&ns, "a"),
        node_name(&ns, "b"),
        node_name(&ns, "c"),
    );
    let id_a = edge.bootstrap(&a, &token).await.unwrap();
    let id_b = edge.bootstrap(&b, &token).await.unwrap();
    let id_c = edge.bootstrap(&c, &token).await.unwrap();
    let mut sa = edge.connect(&id_a, &a).await.unwrap();

    // Registration and heartbeat.
    let reply = sa
        .request(
            Operation::Insert,
            &format!("/node/{a}"),
            json!({"metadata": {"labels": {"topology.edgefleet.io/station": "s1"}}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.route.operation, "response", "{:?}", reply.content);
    let reply = sa
        .request(
            Operation::Update,
            &format!("/nodestatus/{a}"),
            json!({"nodeInfo": {"kubeletVersion": "edgefleet-agent"}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.route.operation, "response", "{:?}", reply.content);
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(&a).await.unwrap();
    assert!(node.labels().contains_key("node-role.kubernetes.io/edge"));
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "node not Ready");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let first = renew(leases.get(&a).await.unwrap()).unwrap();
    wait_for(
        "the Lease renewed again",
        Duration::from_secs(15),
        || async {
            let now = renew(leases.get(&a).await?);
            Ok(now.filter(|t| *t > first).map(|_| ()))
        },
    )
    .await
    .unwrap();

    // The pre-KubeEdge twin path (`<ns>/devicetwin/<name>`, an unordered merge of
    // `status.twins`) is gone: refused, nothing written, even for the node's own device. Twin
    // reports go by `device/<ns>/<name>/twin/edge_updated` only (device_hub.rs).
    let ar = ApiResource {
        group: "devices.kubeedge.io".into(),
        version: "v1beta1".into(),
        api_version: "devices.kubeedge.io/v1beta1".into(),
        kind: "Device".into(),
        plural: "devices".into(),
    };
    let devices: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let dev: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "thermo-a"},
        "spec": {"deviceModelRef": {"name": "thermo"}, "nodeName": &a},
    }))
    .unwrap();
    devices.create(&PostParams::default(), &dev).await.unwrap();
    let twin = json!({"twins": [{"propertyName": "temperature", "reported": {"value": "21.5", "metadata": {"timestamp": "1"}}}]});
    let reply = sa
        .request(
            Operation::Update,
            &format!("{}/devicetwin/thermo-a", ns.name),
            twin,
        )
        .await
        .unwrap();
    assert_eq!(reply.route.operation, "error", "{:?}", reply.content);
    let dev = devices.get("thermo-a").await.unwrap();
    assert!(dev.data.pointer("/status/twins").is_none());
    sa.alive().await.unwrap();

    // Capacity 2: a and b fit, c is refused with a Retry-After.
    let _sb = edge.connect(&id_b, &b).await.unwrap();
    match edge.connect_as(Some(&id_c), &c, &c).await.unwrap() {
        Err(r) => {
            assert_eq!(r.status, 503);
            let secs: u64 = r.retry_after.expect("Retry-After").parse().unwrap();
            assert!(secs >= 1);
        }
        Ok(_) => panic!("session over capacity accepted"),
    }
    // ...and replacing its own session still works at capacity.
    let mut sa2 = edge.connect(&id_a, &a).await.unwrap();
    sa2.alive().await.unwrap();
    // The other replica has room.
    let edge2 = Edge::new(&client, &hub2).await.unwrap();
    let mut sc = edge2.connect(&id_c, &c).await.unwrap();
    sc.alive().await.unwrap();

    // Both replicas report their load.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let reports = wait_for("two load reports", Duration::from_secs(20), || async {
        let list = cms
            .list(&kube::api::ListParams::default().labels("edgefleet.io/load-report=hub"))
            .await?;
        let ours: Vec<BTreeMap<String, String>> = list
            .items
            .into_iter()
            .filter_map(|cm| cm.data)
            .filter(|d| d.get("replica").is_some_and(|r| r.contains(&ns.name)))
            .collect();
        let full = ours.len() == 2
            && ours.iter().any(|d| {
                d.get("connections").map(String::as_str) == Some("2")
                    && d.get("capacity").map(String::as_str) == Some("2")
            })
            && ours.iter().any(|d| {
                d.get("connections").map(String::as_str) == Some("1")
                    && d.get("capacity").map(String::as_str) == Some("5")
            });
        Ok(full.then_some(ours))
    })
    .await
    .unwrap();
    for r in &reports {
        for key in ["replica", "connections", "capacity", "queued", "timestamp"] {
            assert!(r.contains_key(key), "{key} missing in {r:?}");
        }
    }
    let _ = (&hub.op, &hub2.op);
    drop(hub);
    drop(hub2);
    cleanup_nodes(&client, &[a, b, c]).await;
}
