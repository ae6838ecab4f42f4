//! One agent's life on the wire: connect (mTLS WebSocket), register the node, ACK what arrives,
//! ping every 15 s, report status now and then; when the session ends, back off and reconnect.
//!
//! The real agent runs one [`run`]; `simulate` runs thousands in one process, each a single task
//! with a few KiB of state. Same code, only the [`Store`] differs.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use edgefleet_channel::envelope::{GROUP_RESOURCE, MAX_FRAME_BYTES, SOURCE_EDGE};
use edgefleet_channel::session::{
    CLOSE_RECONNECT, HEADER_NODE_ID, HEADER_PROJECT_ID, SESSION_IDLE_TIMEOUT, parse_reconnect_hint,
};
use edgefleet_channel::{Message, Operation, Resource, ResourceType};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::handler::handle_frame;
use crate::hub::{HubAddr, Hubs};
use crate::metrics::{Metrics, inc};
use crate::node;
use crate::store::Store;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long was healthy: the next back-off starts from the beginning.
const STABLE_SESSION: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub node: String,
    pub project_id: String,
    /// The hub, or the hub replicas to choose from.
    pub hubs: Hubs,
    /// WebSocket ping period (channel contract: 15 s).
    pub keepalive: Duration,
    /// Period of the small `update /nodestatus/<node>` heartbeat after the first, full one.
    pub status_interval: Duration,
    /// Register the Node and send its heartbeats over the channel (the hub writes them, as
    /// KubeEdge's cloud side writes edgecore's). Off when something else is the node's kubelet
    /// (kwok in the test bed): a Node has one heartbeat writer.
    pub node_status: bool,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// WebSocket read buffer (eagerly allocated per session; small for hollow agents).
    pub read_buffer: usize,
}

/// One agent: identity, store, counters.
pub struct Agent {
    pub config: SessionConfig,
    /// Swapped by [`crate::renew`] when the certificate is renewed.
    pub tls: Arc<crate::renew::TlsSlot>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub connected: Arc<AtomicBool>,
    /// Device reports to send to the hub (DMI mappers, or hollow devices).
    pub uplink: Option<crate::dmi::uplink::UplinkSource>,
}

/// Reports are coalesced: at most one flush per this interval.
const REPORT_FLUSH: Duration = Duration::from_millis(250);
/// How often unanswered (or `busy`) reports are looked at again.
const REPORT_RECHECK: Duration = Duration::from_secs(5);

/// How a session ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The hub closed it; with code 4000 it names when to come back.
    Closed {
        hint: Option<Duration>,
    },
    Lost(String),
    Cancelled,
}

#[derive(Debug)]
enum ConnectError {
    /// 503 before the upgrade: over capacity, `Retry-After` seconds.
    Busy(Option<Duration>),
    Failed(String),
}

type Ws = WebSocketStream<tokio_rustls::client::TlsStream<Counted<TcpStream>>>;

/// Keeps a session up until `cancel` trips.
pub async fn run(agent: &Agent, cancel: &CancellationToken) {
    let cfg = &agent.config;
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap);
    let mut hubs = cfg.hubs.cursor();
    let mut hint: Option<Duration> = None;
    let mut first = true;
    loop {
        if !first {
            inc(&agent.metrics.reconnects);
            let delay = backoff.next_delay(hint);
            tracing::debug!(node = %cfg.node, ?delay, ?hint, "reconnecting after back-off");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        first = false;
        hint = None;
        let hub = hubs.next_hub();
        let ws = tokio::select! {
            () = cancel.cancelled() => return,
            ws = connect(agent, hub) => ws,
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(ConnectError::Busy(retry_after)) => {
                inc(&agent.metrics.busy_refusals);
                tracing::info!(node = %cfg.node, %hub, ?retry_after, "hub over capacity");
                hint = retry_after;
                continue;
            }
            Err(ConnectError::Failed(reason)) => {
                inc(&agent.metrics.connect_failures);
                tracing::info!(node = %cfg.node, %hub, %reason, "cannot open a session");
                continue;
            }
        };
        let started = Instant::now();
        inc(&agent.metrics.connects);
        agent.metrics.sessions_up.fetch_add(1, Ordering::Relaxed);
        agent.connected.store(true, Ordering::Relaxed);
        tracing::info!(node = %cfg.node, %hub, "session up");
        let ended = session(agent, ws, cancel).await;
        agent.connected.store(false, Ordering::Relaxed);
        agent.metrics.sessions_up.fetch_sub(1, Ordering::Relaxed);
        if started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        match ended {
            Ended::Cancelled => return,
            Ended::Closed { hint: h } => {
                if h.is_some() {
                    inc(&agent.metrics.reconnect_hints);
                }
                tracing::info!(node = %cfg.node, %hub, hint = ?h, "hub closed the session");
                hint = h;
            }
            Ended::Lost(reason) => {
                tracing::info!(node = %cfg.node, %hub, %reason, "session lost");
            }
        }
    }
}

/// The upgrade request of `node`'s session: the URL and headers of docs/channel.md.
fn session_request(
    hub: &HubAddr,
    project_id: &str,
    node: &str,
) -> Result<http::Request<()>, String> {
    let mut request = hub
        .events_url(project_id, node)
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let headers = request.headers_mut();
    for (name, value) in [(HEADER_NODE_ID, node), (HEADER_PROJECT_ID, project_id)] {
        let value = http::HeaderValue::from_str(value).map_err(|e| format!("header: {e}"))?;
        headers.insert(name, value);
    }
    Ok(request)
}

async fn connect(agent: &Agent, hub: &HubAddr) -> Result<Ws, ConnectError> {
    let cfg = &agent.config;
    let failed =
        |what: &str, e: &dyn std::fmt::Display| ConnectError::Failed(format!("{what}: {e}"));
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((hub.host.as_str(), hub.port)),
    )
    .await
    .map_err(|e| failed("tcp", &e))?
    .map_err(|e| failed("tcp", &e))?;
    let _ = tcp.set_nodelay(true);
    let counted = Counted {
        inner: tcp,
        metrics: agent.metrics.clone(),
    };
    let server_name = hub.server_name().map_err(|e| failed("server name", &e))?;
    let handshake = async {
        let tls = tokio_rustls::TlsConnector::from(agent.tls.get())
            .connect(server_name, counted)
            .await
            .map_err(|e| failed("tls", &e))?;
        let request =
            session_request(hub, &cfg.project_id, &cfg.node).map_err(ConnectError::Failed)?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(cfg.read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        match tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(WsError::Http(response)) if response.status().as_u16() == 503 => {
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_reconnect_hint);
                Err(ConnectError::Busy(retry_after))
            }
            Err(WsError::Http(response)) => Err(ConnectError::Failed(format!(
                "upgrade refused: HTTP {}",
                response.status()
            ))),
            Err(e) => Err(failed("upgrade", &e)),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|e| failed("handshake", &e))?
}

fn uplink(
    operation: Operation,
    type_: ResourceType,
    node: &str,
    content: serde_json::Value,
) -> Message {
    Message::new(
        SOURCE_EDGE,
        GROUP_RESOURCE,
        operation,
        &Resource::new("", type_, node),
    )
    .with_content(content)
}

/// What a session starts with: register the node, then a full status report (the hub marks it
/// Ready); nothing when the agent does not report its node's status.
fn opening(node: &str, node_status: bool) -> Vec<Message> {
    if !node_status {
        return Vec::new();
    }
    vec![
        uplink(
            Operation::Insert,
            ResourceType::Node,
            node,
            node::registration(node),
        ),
        uplink(
            Operation::Update,
            ResourceType::NodeStatus,
            node,
            node::status(true),
        ),
    ]
}

async fn send(ws: &mut Ws, metrics: &Metrics, message: &Message) -> Result<(), WsError> {
    inc(&metrics.messages_sent);
    ws.send(WsMessage::text(message.to_frame())).await
}

async fn session(agent: &Agent, mut ws: Ws, cancel: &CancellationToken) -> Ended {
    let cfg = &agent.config;
    let metrics = &*agent.metrics;
    for message in opening(&cfg.node, cfg.node_status) {
        if let Err(e) = send(&mut ws, metrics, &message).await {
            return Ended::Lost(format!("registering: {e}"));
        }
    }
    let now = Instant::now();
    let mut keepalive = tokio::time::interval_at(now + cfg.keepalive, cfg.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = tokio::time::interval_at(now + cfg.status_interval, cfg.status_interval);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = now;
    let mut reports = agent.uplink.clone().map(crate::dmi::uplink::Uplink::new);
    let reported = reports.as_ref().map(crate::dmi::uplink::Uplink::reported);
    // Pending reports (kept while offline) go at once in a new session.
    let mut flush_at = reports.as_ref().map(|_| now);
    let mut last_flush = now;
    let mut recheck = tokio::time::interval_at(now + REPORT_RECHECK, REPORT_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "agent stopping".into() })).await;
                return Ended::Cancelled;
            }
            frame = ws.next() => {
                last_heard = Instant::now();
                let text = match frame {
                    None => return Ended::Lost("connection closed".into()),
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    Some(Ok(WsMessage::Text(text))) => text.as_str().to_owned(),
                    // KubeEdge's wire is JSON text; a binary frame is read as text, or refused.
                    Some(Ok(WsMessage::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
                    Some(Ok(WsMessage::Close(frame))) => return Ended::Closed { hint: close_hint(frame.as_ref()) },
                    Some(Ok(_)) => continue,
                };
                if let Some(up) = reports.as_mut()
                    && up.on_frame(&text)
                {
                    continue;
                }
                if let Some(reply) = handle_frame(agent.store.as_ref(), &cfg.node, &text, metrics)
                    && let Err(e) = send(&mut ws, metrics, &reply).await
                {
                    return Ended::Lost(format!("replying: {e}"));
                }
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() > SESSION_IDLE_TIMEOUT {
                    return Ended::Lost(format!("nothing from the hub for {:?}", SESSION_IDLE_TIMEOUT));
                }
                inc(&metrics.keepalives);
                if let Err(e) = ws.send(WsMessage::Ping(Default::default())).await {
                    return Ended::Lost(format!("ping: {e}"));
                }
            }
            () = async {
                match &reported {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            } => {
                flush_at.get_or_insert((last_flush + REPORT_FLUSH).max(Instant::now()));
            }
            _ = recheck.tick(), if reports.is_some() => {
                flush_at.get_or_insert(Instant::now());
            }
            () = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                flush_at = None;
                last_flush = Instant::now();
                if let Some(up) = reports.as_mut() {
                    for report in up.due(crate::dmi::now_ms()) {
                        if let Err(e) = send(&mut ws, metrics, &report).await {
                            return Ended::Lost(format!("device report: {e}"));
                        }
                    }
                }
            }
            _ = status.tick(), if cfg.node_status => {
                let report = uplink(Operation::Update, ResourceType::NodeStatus, &cfg.node, node::status(false));
                if let Err(e) = send(&mut ws, metrics, &report).await {
                    return Ended::Lost(format!("status: {e}"));
                }
            }
        }
    }
}

/// The back-off hint of a close frame: only code 4000 carries one.
fn close_hint(frame: Option<&CloseFrame>) -> Option<Duration> {
    frame
        .filter(|f| u16::from(f.code) == CLOSE_RECONNECT)
        .and_then(|f| parse_reconnect_hint(&f.reason))
}

/// A TCP stream that counts its bytes into the process's metrics (TLS records included: what
/// crosses the link, less TCP/IP headers).
struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.metrics
            .bytes_received
            .fetch_add(read as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.metrics
                .bytes_sent
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_names_the_node_in_path_and_headers() {
        let hub: HubAddr = "wss://127.0.0.1:10000".parse().unwrap();
        let request = session_request(&hub, "proj", "edge-1").unwrap();
        assert_eq!(
            request.uri().to_string(),
            "wss://127.0.0.1:10000/proj/edge-1/events"
        );
        assert_eq!(request.headers()["node_id"], "edge-1");
        assert_eq!(request.headers()["project_id"], "proj");
        assert!(request.headers().contains_key("sec-websocket-key"));
    }

    #[test]
    fn a_session_opens_with_registration_then_full_status() {
        let [register, status] = <[Message; 2]>::try_from(opening("edge-1", true)).unwrap();
        assert_eq!(
            (
                register.route.operation.as_str(),
                register.route.resource.as_str()
            ),
            ("insert", "/node/edge-1")
        );
        assert_eq!(
            (
                status.route.operation.as_str(),
                status.route.resource.as_str()
            ),
            ("update", "/nodestatus/edge-1")
        );
        assert_eq!(register.route.source, SOURCE_EDGE);
        assert!(
            status.content["conditions"].is_array(),
            "{}",
            status.content
        );
    }

    #[test]
    fn without_node_status_a_session_says_nothing_about_its_node() {
        assert!(opening("edge-1", false).is_empty());
    }

    #[test]
    fn only_code_4000_carries_a_hint() {
        let frame = |code: u16, reason: &str| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        assert_eq!(
            close_hint(Some(&frame(4000, "reconnect-after=7"))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(close_hint(Some(&frame(4000, "whenever"))), None);
        assert_eq!(close_hint(Some(&frame(1000, "reconnect-after=7"))), None);
        assert_eq!(close_hint(None), None);
    }
}
