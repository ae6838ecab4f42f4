//! The load report: one ConfigMap per replica, rewritten every few seconds, read by the
//! balancer. The balancer's own key (`releaseOrder`) and the hub's record of it
//! (`releaseStarted`, `releaseDone`) are kept when the report is rewritten; the order itself is
//! carried out by [`crate::release`].

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefleet_api::balancer::{LOAD_REPORT_LABEL, report_keys};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::hub::{Hub, lock};
use crate::release::Releaser;

/// The keys a rewrite keeps from the stored report.
const KEPT: [&str; 3] = [
    report_keys::RELEASE_ORDER,
    report_keys::RELEASE_STARTED,
    report_keys::RELEASE_DONE,
];

/// The report ConfigMap's name for a replica.
pub fn report_name(identity: &str) -> String {
    let name = format!("edgefleet-hub-load-{identity}");
    let mut name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// The report's data (pure).
pub fn report_data(
    identity: &str,
    pod_uid: &str,
    connections: usize,
    capacity: usize,
    queued: i64,
    now: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (report_keys::REPLICA.to_string(), identity.to_string()),
        (report_keys::POD_UID.to_string(), pod_uid.to_string()),
        (
            report_keys::CONNECTIONS.to_string(),
            connections.to_string(),
        ),
        (report_keys::CAPACITY.to_string(), capacity.to_string()),
        (report_keys::QUEUED.to_string(), queued.max(0).to_string()),
        (report_keys::TIMESTAMP.to_string(), now.to_string()),
    ])
}

/// Writes the report; returns the stored data it kept (order, started, done).
async fn write_report(
    hub: &Hub,
    releaser: &Releaser,
    api: &Api<ConfigMap>,
    name: &str,
) -> Result<BTreeMap<String, String>, kube::Error> {
    let mut data = report_data(
        &hub.config.identity,
        &releaser.settings.pod_uid,
        hub.registry.len(),
        hub.config.max_sessions,
        hub.metrics.queue_depth.get(),
        &jiff::Timestamp::now().to_string(),
    );
    let labels = BTreeMap::from([(LOAD_REPORT_LABEL.to_string(), "hub".to_string())]);
    let mut kept = BTreeMap::new();
    match api.get_opt(name).await? {
        Some(mut cm) => {
            for key in KEPT {
                if let Some(v) = cm.data.as_ref().and_then(|d| d.get(key)) {
                    kept.insert(key.to_string(), v.clone());
                }
            }
            // What this process recorded wins over an older stored value.
            if let Some(id) = lock(&releaser.started).clone() {
                kept.insert(report_keys::RELEASE_STARTED.into(), id);
            }
            if let Some(id) = lock(&releaser.done).clone() {
                kept.insert(report_keys::RELEASE_DONE.into(), id);
            }
            data.extend(kept.clone());
            cm.data = Some(data);
            cm.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .extend(labels);
            api.replace(name, &PostParams::default(), &cm).await?;
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await?;
        }
    }
    Ok(kept)
}

/// The unix time now, in seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Rewrites the report every `report_interval` until shutdown, and hands the order it finds to
/// the releaser.
pub async fn run(hub: Arc<Hub>, releaser: Arc<Releaser>) {
    let api: Api<ConfigMap> = Api::namespaced(hub.client.clone(), &hub.config.namespace);
    let name = report_name(&hub.config.identity);
    let mut tick = tokio::time::interval(hub.config.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match write_report(&hub, &releaser, &api, &name).await {
            Ok(kept) => {
                hub.metrics.load_report_written.set(unix_now());
                let order = kept
                    .get(report_keys::RELEASE_ORDER)
                    .and_then(|o| serde_json::from_str(o).ok());
                if let Some(order) = order {
                    let started = kept.get(report_keys::RELEASE_STARTED).cloned();
                    let done = kept.get(report_keys::RELEASE_DONE).cloned();
                    releaser
                        .consider(&hub, &api, &name, order, started, done)
                        .await;
                }
            }
            Err(e) => {
                hub.metrics
                    .api_errors
                    .with_label_values(&["load_report"])
                    .inc();
                tracing::warn!(error = %e, "writing the load report");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_data() {
        assert_eq!(report_name("Hub_0"), "edgefleet-hub-load-hub-0");
        let d = report_data("hub-0", "uid-0", 3, 100, -1, "2025-01-01T00:00:00Z");
        assert_eq!(d[report_keys::CONNECTIONS], "3");
        assert_eq!(d[report_keys::CAPACITY], "100");
        assert_eq!(d[report_keys::QUEUED], "0");
        assert_eq!(d[report_keys::REPLICA], "hub-0");
        assert_eq!(d[report_keys::POD_UID], "uid-0");
    }
}
