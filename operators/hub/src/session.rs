//! One edge session: a reader/scheduler loop and a writer task over one WebSocket.
//!
//! The loop reads frames (ACKs, keepalives, edge requests), wakes on new queue entries and
//! resend deadlines, and hands frames to the writer through a small bounded channel — the
//! per-session backpressure: a slow link fills its own channel and nothing else. Edge requests
//! that call the API run in their own tasks (at most [`MAX_EDGE_REQUESTS`] per session).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgefleet_channel::envelope::{GROUP_RESOURCE, SOURCE_CLOUD};
use edgefleet_channel::session::{
    CLOSE_PROTOCOL, CLOSE_RECONNECT, CLOSE_REPLACED, SESSION_IDLE_TIMEOUT, reconnect_reason,
};
use edgefleet_channel::{Message, Operation, ResourceType};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::edge::{self, Incoming, MAX_EDGE_REQUESTS, Refused};
use crate::hub::{Hub, Session};
use crate::lock;
use crate::queue::{Op, seconds};
use crate::route;
use crate::status::{Ack, Event};
use crate::wire::Body;

/// Frames waiting for the writer, per session.
const WRITER_CAPACITY: usize = 16;

fn operation(op: Op) -> Operation {
    match op {
        Op::Insert => Operation::Insert,
        Op::Update => Operation::Update,
        Op::Delete => Operation::Delete,
    }
}

fn close_message(code: u16, reason: &str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Writes frames in order until the channel closes or a Close frame went out; batches what is
/// already queued into one flush.
async fn write_loop<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, WsMessage>,
    mut rx: mpsc::Receiver<WsMessage>,
    hub: Arc<Hub>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bytes = hub.metrics.bytes.with_label_values(&["out"]);
    while let Some(msg) = rx.recv().await {
        let is_close = matches!(msg, WsMessage::Close(_));
        bytes.inc_by(msg.len() as u64);
        if sink.feed(msg).await.is_err() {
            break;
        }
        if is_close {
            let _ = sink.flush().await;
            break;
        }
        if rx.is_empty() && sink.flush().await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Moves what the queue lets out now into the writer channel; `true` when more is waiting for
/// room in the channel.
fn pump(hub: &Hub, session: &Session, tx: &mpsc::Sender<WsMessage>) -> bool {
    let room = tx.capacity();
    let poll = {
        let mut q = lock(&session.queue);
        if room == 0 {
            return q.has_sendable();
        }
        let poll = q.poll(Instant::now(), room);
        session.track_depth(&hub.metrics, q.depth());
        poll
    };
    for g in poll.gave_up {
        hub.metrics.given_up.inc();
        tracing::info!(node = %session.node, resource = %g.payload.resource, rv = %g.rv,
            "no ACK after the last resend; left to resync");
        record(
            hub,
            g.payload.sync_namespace,
            g.payload.sync_name,
            Event::GaveUp {
                attempts: edgefleet_channel::session::MAX_SENDS,
            },
        );
    }
    for o in poll.send {
        let mut msg = Message::new(
            SOURCE_CLOUD,
            GROUP_RESOURCE,
            operation(o.op),
            &o.payload.resource,
        )
        .with_resource_version(o.rv.clone())
        .with_content(o.payload.body.content());
        msg.header.id = o.msg_id;
        if o.sends > 1 {
            hub.metrics.resent.inc();
        } else {
            hub.metrics
                .sent
                .with_label_values(&[operation(o.op).as_str()])
                .inc();
        }
        if tx.try_send(WsMessage::text(msg.to_frame())).is_err() {
            // Cannot happen (we asked for at most `room`); the resend timer covers it anyway.
            break;
        }
    }
    poll.more
}

/// An ACK (or the edge's refusal) of one of our messages.
fn on_ack(hub: &Hub, session: &Session, parent: &str, rv: &str, ok: bool) {
    let acked = {
        let mut q = lock(&session.queue);
        let a = q.ack(parent);
        session.track_depth(&hub.metrics, q.depth());
        a
    };
    let Some(acked) = acked else {
        return; // late ACK of a superseded or given-up message
    };
    if !ok {
        hub.metrics
            .frames_refused
            .with_label_values(&["edge_error"])
            .inc();
        tracing::warn!(node = %session.node, resource = %acked.payload.resource,
            "the edge refused a message; left to resync");
        return;
    }
    hub.metrics.acked.inc();
    if let Body::Object(obj) = &acked.payload.body
        && acked.payload.resource.type_ == ResourceType::Device
    {
        crate::device::delivery::delivered(session, obj);
    }
    hub.metrics
        .delivery_lag
        .observe(seconds(acked.enqueued.elapsed()));
    let event = match (&acked.payload.body, acked.op) {
        (Body::Delete(_), _) | (_, Op::Delete) => Event::EdgeDeleted,
        (body, _) => {
            // The edge's stored version; the one sent when it says nothing.
            let stored = if rv.is_empty() { acked.rv.as_str() } else { rv };
            Event::Acked(Ack {
                content: crate::wire::content_version_of(
                    acked.payload.resource.type_,
                    body,
                    stored,
                ),
                rv: stored.to_string(),
                attempts: acked.sends,
            })
        }
    };
    record(
        hub,
        acked.payload.sync_namespace,
        acked.payload.sync_name,
        event,
    );
}

/// Puts an event on the status board; never waits. A full board is a give-up, counted and
/// logged: the sync is left to the objectsync resync.
fn record(hub: &Hub, namespace: String, name: String, event: Event) {
    if !hub.status.record((namespace.clone(), name.clone()), event) {
        hub.metrics
            .status_give_ups
            .with_label_values(&["board_full"])
            .inc();
        tracing::warn!(%namespace, %name, "status board full; left to resync");
    }
}

enum Step {
    Continue,
    Close(u16, String),
}

fn on_text(
    hub: &Arc<Hub>,
    session: &Arc<Session>,
    tx: &mpsc::Sender<WsMessage>,
    frame: &str,
) -> Step {
    let msg = match Message::parse(frame) {
        Ok(m) => m,
        Err(e) => {
            hub.metrics
                .frames_refused
                .with_label_values(&["malformed"])
                .inc();
            return Step::Close(CLOSE_PROTOCOL, truncate(&e.to_string()));
        }
    };
    match edge::classify(&session.node, &msg) {
        Ok(Incoming::Ack { parent, rv, ok }) => on_ack(hub, session, &parent, &rv, ok),
        Ok(Incoming::Device(route)) => {
            crate::device::accept::on_report(hub, session, tx, route, msg);
        }
        Ok(Incoming::Keepalive) => {
            let _ = tx.try_send(WsMessage::text(msg.ack(SOURCE_CLOUD, "").to_frame()));
        }
        Ok(incoming) => {
            if session.edge_requests.fetch_add(1, Ordering::Relaxed) >= MAX_EDGE_REQUESTS {
                session.edge_requests.fetch_sub(1, Ordering::Relaxed);
                hub.metrics
                    .frames_refused
                    .with_label_values(&["busy"])
                    .inc();
                let _ = tx.try_send(WsMessage::text(
                    msg.refuse(SOURCE_CLOUD, "busy: too many requests in progress")
                        .to_frame(),
                ));
                return Step::Continue;
            }
            let (hub, session, tx) = (hub.clone(), session.clone(), tx.clone());
            tokio::spawn(async move {
                let reply = edge::handle(&hub, &session, incoming, &msg).await;
                let _ = tx.send(WsMessage::text(reply.to_frame())).await;
                session.edge_requests.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Err(Refused::Close(reason)) => {
            hub.metrics
                .frames_refused
                .with_label_values(&["protocol"])
                .inc();
            return Step::Close(CLOSE_PROTOCOL, truncate(&reason));
        }
        Err(Refused::Reply(reason)) => {
            hub.metrics
                .frames_refused
                .with_label_values(&["forbidden"])
                .inc();
            tracing::info!(node = %session.node, %reason, "edge message refused");
            let _ = tx.try_send(WsMessage::text(
                msg.refuse(SOURCE_CLOUD, &reason).to_frame(),
            ));
        }
    }
    Step::Continue
}

/// Close reasons are at most 123 bytes.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Runs one session until it ends. `ws` is the upgraded, identity-checked connection of `node`.
/// The caller counted it in `hub.connections`; this gives it back.
pub async fn run<S>(hub: Arc<Hub>, node: String, ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Arc::new(Session::new(
        hub.next_session_id(),
        &node,
        hub.config.window,
    ));
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(WRITER_CAPACITY);
    let mut writer = tokio::spawn(write_loop(sink, rx, hub.clone()));

    let outcome = match hub.registry.insert(session.clone()) {
        Some(old) => {
            old.request_close(CLOSE_REPLACED, "replaced by a newer session".into());
            "replaced"
        }
        None => "accepted",
    };
    hub.metrics
        .sessions_opened
        .with_label_values(&[outcome])
        .inc();
    hub.metrics.sessions.inc();
    tracing::info!(%node, session = session.id, outcome, "session open");
    route::session_started(&hub, &session);

    let bytes_in = hub.metrics.bytes.with_label_values(&["in"]);
    let mut last_heard = Instant::now();
    let mut more = pump(&hub, &session, &tx);
    let close: Option<(u16, String)> = loop {
        let resend = lock(&session.queue).next_deadline();
        let idle = last_heard + SESSION_IDLE_TIMEOUT;
        let deadline = resend.map_or(idle, |r| r.min(idle));
        let step = tokio::select! {
            _ = session.close.cancelled() => {
                break lock(&session.close_reason).take();
            }
            _ = hub.shutdown.cancelled() => {
                break Some((CLOSE_RECONNECT, reconnect_reason(hub.jittered_retry())));
            }
            _ = session.wake.notified() => Step::Continue,
            permit = tx.reserve(), if more => {
                drop(permit);
                Step::Continue
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if Instant::now() >= last_heard + SESSION_IDLE_TIMEOUT {
                    tracing::info!(%node, "session silent for too long");
                    break None;
                }
                Step::Continue
            }
            frame = stream.next() => match frame {
                None | Some(Err(_)) => break None,
                Some(Ok(frame)) => {
                    last_heard = Instant::now();
                    bytes_in.inc_by(frame.len() as u64);
                    match frame {
                        WsMessage::Text(text) => on_text(&hub, &session, &tx, text.as_str()),
                        WsMessage::Binary(_) => {
                            hub.metrics.frames_refused.with_label_values(&["binary"]).inc();
                            Step::Close(CLOSE_PROTOCOL, "binary frames are not spoken here".into())
                        }
                        WsMessage::Close(_) => break None,
                        // Pings are answered by tungstenite; pongs only prove liveness.
                        _ => Step::Continue,
                    }
                }
            },
        };
        if let Step::Close(code, reason) = step {
            break Some((code, reason));
        }
        more = pump(&hub, &session, &tx);
    };

    hub.registry.remove(&session);
    if let Some((code, reason)) = &close {
        tracing::info!(%node, session = session.id, code, %reason, "closing session");
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tx.send(close_message(*code, reason)),
        )
        .await;
    }
    drop(tx);
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        // A link too slow to take even the close frame: drop the connection.
        writer.abort();
        tracing::debug!(%node, "writer did not finish in time");
    }
    session.track_depth(&hub.metrics, 0);
    hub.metrics.sessions.dec();
    hub.connections.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(%node, session = session.id, "session closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(200);
        assert!(truncate(&long).len() <= 123);
        assert_eq!(truncate("short"), "short");
    }
}
