//! Read the cluster for one HubBalancer (the only step that fetches): the load-report
//! ConfigMaps in its namespace, the hub pods its selector picks, and whether a Deployment whose
//! pods it selects is rolling out. Each round lists afresh: a few objects per balancer, every
//! few seconds, and nothing a killed balancer could have forgotten.

use std::collections::BTreeMap;

use edgefleet_api::balancer::{LOAD_REPORT_LABEL, ReleaseOrder, report_keys};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::core::{Selector, SelectorExt};

use crate::error::{Error, Result};
use crate::plan::{HubPod, Observed, Report};

/// A load-report ConfigMap as the plan reads it (pure). Missing numbers read as 0, a missing or
/// bad timestamp as `None` (the report then does not count).
pub fn parse_report(cm: &ConfigMap) -> Report {
    let empty = BTreeMap::new();
    let data = cm.data.as_ref().unwrap_or(&empty);
    let get = |k: &str| data.get(k).map(String::as_str);
    let num = |k: &str| {
        get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    Report {
        configmap: cm.metadata.name.clone().unwrap_or_default(),
        replica: get(report_keys::REPLICA).unwrap_or_default().to_string(),
        pod_uid: get(report_keys::POD_UID)
            .filter(|u| !u.is_empty())
            .map(str::to_string),
        connections: num(report_keys::CONNECTIONS),
        capacity: num(report_keys::CAPACITY),
        written: get(report_keys::TIMESTAMP).and_then(|t| t.parse().ok()),
        order: get(report_keys::RELEASE_ORDER)
            .and_then(|o| serde_json::from_str::<ReleaseOrder>(o).ok()),
        started: get(report_keys::RELEASE_STARTED).map(str::to_string),
        done: get(report_keys::RELEASE_DONE).map(str::to_string),
    }
}

/// Ready and not being deleted.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why `d` is not settled, if it is rolling out (pure): a spec the controller has not observed
/// yet, pods not yet updated, not yet ready, or old pods still around.
pub fn rolling(d: &Deployment) -> Option<String> {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    if st.observed_generation.unwrap_or(0) < generation {
        return Some(format!("Deployment {name}: new spec not yet observed"));
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    (updated < want || ready < want || total > want).then(|| {
        format!("Deployment {name} is rolling out ({updated}/{want} updated, {ready}/{want} ready, {total} pods)")
    })
}

/// Reads what one round of `selector` in `namespace` decides on.
pub async fn observe(
    client: &kube::Client,
    namespace: &str,
    selector: &LabelSelector,
) -> Result<Observed> {
    let selector =
        Selector::try_from(selector.clone()).map_err(|e| Error::Selector(e.to_string()))?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let reports = cms
        .list(&ListParams::default().labels(&format!("{LOAD_REPORT_LABEL}=hub")))
        .await?;
    let pods = pods
        .list(&ListParams::default().labels_from(&selector))
        .await?;
    let deployments = deployments.list(&ListParams::default()).await?;
    let rolling = deployments
        .items
        .iter()
        .filter(|d| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
                .is_some_and(|l| selector.matches(l))
        })
        .find_map(rolling);
    Ok(Observed {
        reports: reports.items.iter().map(parse_report).collect(),
        pods: pods
            .items
            .iter()
            .filter_map(|p| {
                Some((
                    p.metadata.name.clone()?,
                    HubPod {
                        uid: p.metadata.uid.clone()?,
                        ready: pod_ready(p),
                    },
                ))
            })
            .collect(),
        rolling,
        previous_total: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use kube::api::ObjectMeta;

    #[test]
    fn parses_a_report_with_an_order() {
        let order = ReleaseOrder {
            id: "o1".into(),
            pod_uid: "u".into(),
            release: 5,
            keep: 10,
            issued_at: "2026-01-01T00:00:00Z".into(),
            expires_at: "2026-01-01T00:01:00Z".into(),
        };
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("edgefleet-hub-load-a".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("replica".to_string(), "a".to_string()),
                ("podUID".to_string(), "u".to_string()),
                ("connections".to_string(), "15".to_string()),
                ("capacity".to_string(), "x".to_string()),
                ("timestamp".to_string(), "2026-01-01T00:00:01Z".to_string()),
                (
                    "releaseOrder".to_string(),
                    serde_json::to_string(&order).unwrap(),
                ),
                ("releaseDone".to_string(), "o0".to_string()),
            ])),
            ..Default::default()
        };
        let r = parse_report(&cm);
        assert_eq!(r.replica, "a");
        assert_eq!(r.connections, 15);
        assert_eq!(r.capacity, 0, "unparseable reads as 0");
        assert_eq!(r.order, Some(order));
        assert_eq!(r.done.as_deref(), Some("o0"));
        assert!(r.written.is_some());
    }

    #[test]
    fn rolling_out_or_settled() {
        let d = |generation, observed, updated, ready, total| Deployment {
            metadata: ObjectMeta {
                name: Some("hub".into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                replicas: Some(total),
                ..Default::default()
            }),
        };
        assert_eq!(rolling(&d(2, 2, 3, 3, 3)), None);
        assert!(rolling(&d(3, 2, 3, 3, 3)).is_some(), "spec not observed");
        assert!(
            rolling(&d(2, 2, 1, 3, 4)).is_some(),
            "not updated, old pod around"
        );
        assert!(rolling(&d(2, 2, 3, 2, 3)).is_some(), "not ready");
        assert!(rolling(&d(2, 2, 3, 3, 4)).is_some(), "old pod still there");
    }
}
