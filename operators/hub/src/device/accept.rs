//! Taking one device report from a session: parse, check the binding, classify it against the
//! Device as the hub knows it (a value change, only times to renew, nothing), put it on the
//! board, and answer once it is written — at once when nothing of it waits for the write, or
//! `busy: queued` when the write is farther than the answer timeout. Refusals are answered
//! (`error` with the reason) and counted; the session is never closed for a bad report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgefleet_api::devices::Device;
use edgefleet_channel::Message;
use edgefleet_channel::ResourceType;
use edgefleet_channel::device::{
    DeviceRoute, DeviceStateUpdate, DeviceTopic, DeviceTwinUpdate, QUEUED, answer,
};
use kube::Api;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::MAX_WAITING_PER_SESSION;
use super::base::known;
use super::board::{Class, DeviceKey, Pending, Refusal, Report, Taken};
use super::merge::{Change, merge};
use crate::hub::{Hub, Session};
use crate::lock;

/// A parsed report.
enum Parsed {
    Twins(DeviceTwinUpdate),
    State(DeviceStateUpdate),
}

fn topic_label(t: DeviceTopic) -> &'static str {
    match t {
        DeviceTopic::TwinEdgeUpdated => "twin",
        DeviceTopic::StateUpdate => "state",
    }
}

/// Handles one report of `session` in its own task; the answer goes to `tx`.
pub fn on_report(
    hub: &Arc<Hub>,
    session: &Arc<Session>,
    tx: &mpsc::Sender<WsMessage>,
    route: DeviceRoute,
    mut msg: Message,
) {
    let metrics = &hub.metrics.devices;
    let topic = topic_label(route.topic);
    if session.device_reports.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING_PER_SESSION {
        session.device_reports.fetch_sub(1, Ordering::Relaxed);
        metrics.reports.with_label_values(&[topic, "busy"]).inc();
        let reply = answer(&msg, Err("busy: too many device reports waiting"));
        let _ = tx.try_send(WsMessage::text(reply.to_frame()));
        return;
    }
    let (hub, session, tx) = (hub.clone(), session.clone(), tx.clone());
    // The answer needs only the header and route; the content is not held while it waits.
    let content = std::mem::take(&mut msg.content);
    tokio::spawn(async move {
        let result = take(&hub, &session.node, &route, content).await;
        let label = match &result {
            Ok(()) => "accepted",
            Err((label, _)) => label,
        };
        hub.metrics
            .devices
            .reports
            .with_label_values(&[topic, label])
            .inc();
        let reply = match &result {
            Ok(()) => answer(&msg, Ok(())),
            Err((_, reason)) => {
                tracing::debug!(node = %session.node, %route, %reason, "device report refused");
                answer(&msg, Err(reason))
            }
        };
        let _ = tx.send(WsMessage::text(reply.to_frame())).await;
        session.device_reports.fetch_sub(1, Ordering::Relaxed);
    });
}

/// How long a report waits for a turn to read an uncached Device before it is answered busy: a
/// burst from one node waits (a few reads at most), a replica with a cold cache under a whole
/// fleet's reports sheds them instead of queueing for ever.
pub const READ_WAIT: Duration = Duration::from_secs(5);

/// Whether the device `ns/name` is bound to `node`: from the hub's cache when held, else read.
async fn bound(hub: &Hub, node: &str, route: &DeviceRoute) -> Result<(), (&'static str, String)> {
    let cached = hub
        .caches
        .object(ResourceType::Device, &route.namespace, &route.name)
        .map(|o| {
            o.data
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let bound_to = match cached {
        Some(n) => n,
        // Not cached (a replica that has not fetched it yet), but the objectsync operator gave
        // this node a sync for it: bound, with no read (a cold replica under a whole fleet's
        // reports once read a Device per report).
        None if hub.caches.node_syncs(
            node,
            ResourceType::Device,
            &route.namespace,
            &route.name,
        ) =>
        {
            Some(node.to_string())
        }
        None => {
            // Not cached yet: a bounded read (a burst waits its turn briefly), or busy (the edge
            // resends; the fetcher fills the cache meanwhile).
            let Ok(Ok(_read)) = tokio::time::timeout(READ_WAIT, hub.devices.reads.acquire()).await
            else {
                return Err((
                    "busy",
                    "busy: the device is not cached on this replica yet; resend".into(),
                ));
            };
            let api: Api<Device> = Api::namespaced(hub.client.clone(), &route.namespace);
            match api.get_opt(&route.name).await {
                Ok(Some(d)) => d.node_name().map(str::to_string),
                Ok(None) => {
                    return Err((
                        "not_found",
                        format!("not found: device {}/{}", route.namespace, route.name),
                    ));
                }
                Err(e) => return Err(("busy", format!("busy: reading the device: {e}"))),
            }
        }
    };
    if bound_to.as_deref() == Some(node) {
        Ok(())
    } else {
        Err((
            "forbidden",
            format!(
                "forbidden: device {}/{} is not bound to node {node}",
                route.namespace, route.name
            ),
        ))
    }
}

/// What `parsed` would change in `key`'s Device as the hub knows it, with no read (a Device not
/// known is a [`Class::Change`]: the writer reads it). Counts what the classification settles.
fn classify(hub: &Hub, key: &DeviceKey, parsed: &Parsed) -> Class {
    let (epoch, joins) = {
        let board = lock(&hub.devices.board);
        (board.epoch(), board.holds_change(key))
    };
    // A value change of this device waits already: the report joins it (no Device to decode;
    // at full load, where every device waits, this is most reports).
    if joins {
        return Class::Change;
    }
    let Some((device, _)) = known(hub, key) else {
        return Class::Change;
    };
    let mut alone = Pending::default();
    match parsed {
        Parsed::Twins(u) => {
            alone.add_twins(u);
        }
        Parsed::State(u) => {
            alone.add_state(u);
        }
    }
    let refresh_ms = hub.devices.settings.refresh_ms();
    let merged = merge(
        &device,
        &alone,
        refresh_ms,
        &jiff::Timestamp::now().to_string(),
    );
    match merged.change {
        Change::Value => Class::Change,
        Change::Refresh { since_ms } => Class::Refresh { since_ms },
        Change::Nothing => {
            // Not written, so the writer will not count these: counted here.
            hub.metrics.devices.left_out(&key.0, &merged);
            Class::Settled { epoch }
        }
    }
}

/// The answer to a report whose values wait on the board longer than the answer timeout.
fn queued() -> String {
    format!("{QUEUED}: the device's status write has not come yet; newer values join it")
}

/// Parses, checks and puts the report on the board, then waits for its write.
async fn take(
    hub: &Hub,
    node: &str,
    route: &DeviceRoute,
    content: Value,
) -> Result<(), (&'static str, String)> {
    let parsed = match route.topic {
        DeviceTopic::TwinEdgeUpdated => DeviceTwinUpdate::parse(&content).map(Parsed::Twins),
        DeviceTopic::StateUpdate => DeviceStateUpdate::parse(&content).map(Parsed::State),
    }
    .map_err(|e| ("malformed", e.to_string()))?;
    drop(content);
    bound(hub, node, route).await?;
    let metrics = &hub.metrics.devices;
    let key = (route.namespace.clone(), route.name.clone());
    let class = classify(hub, &key, &parsed);
    let (waiter, answered) = oneshot::channel();
    let (offered, far) = {
        let mut board = lock(&hub.devices.board);
        let report = match &parsed {
            Parsed::Twins(u) => Report::Twins(u),
            Parsed::State(u) => Report::State(u),
        };
        let r = board.offer(&key, report, class, waiter, Instant::now());
        metrics.waiting(&board);
        if board.changes() * 2 > hub.devices.settings.pending_max {
            hub.devices.wake.notify_one();
        }
        let settings = &hub.devices.settings;
        let far = board.waits_beyond(settings.writes_per_second, settings.answer_timeout);
        (r, far)
    };
    // On the board now (copied): not held while the write is awaited.
    drop(parsed);
    match offered {
        Ok(o) => {
            if o.older > 0 {
                metrics
                    .older
                    .with_label_values(&["board"])
                    .inc_by(u64::try_from(o.older).unwrap_or(0));
            }
            let settled = match o.taken {
                Taken::Waiting => None,
                Taken::Unchanged => Some("unchanged"),
                Taken::RefreshQueued { evicted } => {
                    if evicted {
                        metrics
                            .settled
                            .with_label_values(&["refresh_deferred"])
                            .inc();
                    }
                    Some("refresh_queued")
                }
                Taken::RefreshDeferred => Some("refresh_deferred"),
            };
            if let Some(how) = settled {
                metrics.settled.with_label_values(&[how]).inc();
            }
            // The backlog outlasts the answer timeout: say so now rather than hold a task (and
            // the edge's report) 30 s for the same answer; the values wait on the board.
            if o.taken == Taken::Waiting && far {
                metrics.give_ups.with_label_values(&["queued"]).inc();
                return Err(("queued", queued()));
            }
        }
        Err((refusal, _)) => {
            let reason = match refusal {
                Refusal::Full => "full",
                Refusal::DeviceBusy => "device_busy",
            };
            metrics.give_ups.with_label_values(&[reason]).inc();
            return Err((
                "busy",
                format!("busy: device reports {reason}; resend later"),
            ));
        }
    }
    match tokio::time::timeout(hub.devices.settings.answer_timeout, answered).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(reason))) => Err(("busy", reason)),
        Ok(Err(_)) | Err(_) => {
            // Its values are on the board, coalesced, and go with the device's next write:
            // the edge should keep sending newer ones, not hold back (a held edge's values
            // were a minute old when written at full load).
            metrics.give_ups.with_label_values(&["timeout"]).inc();
            Err(("queued", queued()))
        }
    }
}
