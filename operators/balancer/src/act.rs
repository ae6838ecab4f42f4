//! Act on a plan: write the orders into the hubs' load reports, then the HubBalancer's status
//! and an event for each round that ordered something or changed the condition.
//!
//! The order is the whole state of a round: it carries its id, the pod it is for and when it
//! was issued, and the hub marks it started and done in the same ConfigMap. A balancer killed
//! after writing one order and before the status reads that order back on restart and waits.

use edgefleet_api::balancer::{HubBalancer, HubBalancerStatus, HubLoad, ReleaseOrder, report_keys};
use edgefleet_kit::{self as kit, ConditionStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};

use crate::error::Result;
use crate::plan::{Decision, Plan, Release, Settings};

/// The operator's name: field manager, event reporter, Lease name.
pub const OPERATOR: &str = "edgefleet-balancer";
/// The condition this operator owns.
pub const BALANCED: &str = "Balanced";

/// The order for `r`, issued `now`, valid for the observation period.
pub fn order_for(r: &Release, now: Timestamp, observation_seconds: i64) -> ReleaseOrder {
    let expires =
        Timestamp::from_second(now.as_second().saturating_add(observation_seconds)).unwrap_or(now);
    ReleaseOrder {
        expires_at: expires.to_string(),
        id: format!("{}-{}", now.as_second(), r.replica),
        pod_uid: r.pod_uid.clone(),
        release: r.release,
        keep: r.keep,
        issued_at: now.to_string(),
    }
}

/// Writes each order as a merge patch of the one key the balancer owns.
pub async fn write_orders(
    client: &kube::Client,
    namespace: &str,
    releases: &[Release],
    s: &Settings,
    now: Timestamp,
) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for r in releases {
        let order = serde_json::to_string(&order_for(r, now, s.observation_seconds))?;
        let patch = serde_json::json!({ "data": { report_keys::RELEASE_ORDER: order } });
        api.patch(&r.configmap, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// The condition's (status, reason, message) for a plan: a message a person can act on.
pub fn condition(plan: &Plan, s: &Settings) -> (ConditionStatus, &'static str, String) {
    let ignored: Vec<String> = plan
        .hubs
        .iter()
        .filter_map(|h| {
            h.ignored
                .as_ref()
                .map(|why| format!("{} ({why})", h.replica))
        })
        .collect();
    let ignored = if ignored.is_empty() {
        String::new()
    } else {
        format!("; reports ignored: {}", ignored.join(", "))
    };
    let numbers = |balanced: bool| ConditionStatus::from(balanced);
    let balanced = plan.balanced(s);
    let over: Vec<String> = plan
        .counted()
        .filter(|h| crate::plan::over(h.connections, h.expected, s.tolerance_percent))
        .map(|h| {
            format!(
                "{} holds {} (expected {})",
                h.replica, h.connections, h.expected
            )
        })
        .collect();
    match &plan.decision {
        Decision::TooFewHubs { counted } => (
            ConditionStatus::Unknown,
            "TooFewHubs",
            format!(
                "{counted} hub(s) with a fresh report from a Ready pod of the same UID; at least 2 are needed{ignored}. Check that the hubs run, are Ready and can write their load-report ConfigMaps"
            ),
        ),
        Decision::RollingOut(why) => (
            numbers(balanced),
            "RollingOut",
            format!("{why}; balancing resumes when it has finished"),
        ),
        Decision::OrderInFlight { replica } => (
            numbers(balanced),
            "OrderInFlight",
            format!("waiting for {replica} to carry out its release order{ignored}"),
        ),
        Decision::Observing { until, .. } => (
            numbers(balanced),
            "Observing",
            format!(
                "released sessions are reconnecting; next look at {until}{}{ignored}",
                if over.is_empty() {
                    String::new()
                } else {
                    format!("; over tolerance: {}", over.join(", "))
                }
            ),
        ),
        Decision::Balanced => (
            ConditionStatus::True,
            "WithinTolerance",
            format!(
                "{} hubs, {} sessions, each within {}% of its expected share{ignored}",
                plan.counted().count(),
                plan.total,
                s.tolerance_percent
            ),
        ),
        Decision::Settling { from, to } => (
            ConditionStatus::False,
            "Settling",
            format!(
                "{}; sessions still arriving or leaving ({from} → {to} since the last look): no order until the total holds within {}%{ignored}",
                over.join(", "),
                s.tolerance_percent / 2
            ),
        ),
        Decision::Release(rs) => (
            ConditionStatus::False,
            "Releasing",
            format!(
                "{}; ordered {}{ignored}",
                over.join(", "),
                rs.iter()
                    .map(|r| format!("{} to release {}", r.replica, r.release))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

/// The status for `plan`, keeping `old`'s conditions' transition times.
pub fn status(hb: &HubBalancer, plan: &Plan, s: &Settings, now: Timestamp) -> HubBalancerStatus {
    let old = hb.status.clone().unwrap_or_default();
    let ordered = |name: &str| match &plan.decision {
        Decision::Release(rs) => rs.iter().find(|r| r.replica == name).map(|r| r.release),
        _ => None,
    };
    let hubs: Vec<HubLoad> = plan
        .hubs
        .iter()
        .filter(|h| h.ignored.is_none())
        .map(|h| HubLoad {
            name: h.replica.clone(),
            connections: h.connections,
            capacity: h.capacity,
            expected: h.expected,
            release_order: ordered(&h.replica).unwrap_or(h.in_flight),
            report_time: None,
        })
        .collect();
    let mut conditions = old.conditions.clone();
    let (st, reason, message) = condition(plan, s);
    kit::set_condition(
        &mut conditions,
        BALANCED,
        st,
        reason,
        &message,
        hb.metadata.generation,
        now,
    );
    HubBalancerStatus {
        observed_generation: hb.metadata.generation,
        hub_count: i32::try_from(hubs.len()).unwrap_or(i32::MAX),
        total_connections: plan.total,
        hubs,
        last_release_time: plan.last_order.map(Time),
        conditions,
    }
}

/// Writes the status; publishes an event when orders went out or the condition changed.
pub async fn report(
    client: &kube::Client,
    recorder: &Recorder,
    hb: &HubBalancer,
    plan: &Plan,
    s: &Settings,
    now: Timestamp,
) -> Result<()> {
    let status = status(hb, plan, s, now);
    let changed = {
        let old = hb
            .status
            .as_ref()
            .map(|st| st.conditions.as_slice())
            .unwrap_or_default();
        let old = kit::find_condition(old, BALANCED).map(|c| (c.status.clone(), c.reason.clone()));
        let new = kit::find_condition(&status.conditions, BALANCED)
            .map(|c| (c.status.clone(), c.reason.clone()));
        old != new
    };
    let api: Api<HubBalancer> =
        Api::namespaced(client.clone(), &hb.namespace().unwrap_or_default());
    kit::apply_status(&api, &hb.name_any(), &status, OPERATOR).await?;
    let releasing = matches!(plan.decision, Decision::Release(_));
    if releasing || changed {
        let (st, reason, message) = condition(plan, s);
        let event = Event {
            type_: if st == ConditionStatus::False
                && !releasing
                && !matches!(reason, "Observing" | "Settling")
            {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: if releasing {
                "ReleaseOrdered".into()
            } else {
                reason.into()
            },
            note: Some(message.chars().take(1000).collect()),
            action: "Balance".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &hb.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Hub, Observed, plan as make_plan};

    fn settings() -> Settings {
        Settings {
            tolerance_percent: 10,
            observation_seconds: 60,
            max_release_per_round: None,
            stale_after_seconds: 30,
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let hub = |name: &str, c| Hub {
            replica: name.into(),
            configmap: String::new(),
            pod_uid: String::new(),
            connections: c,
            capacity: 1,
            expected: 1000,
            in_flight: 0,
            ignored: None,
        };
        let p = Plan {
            hubs: vec![hub("a", 1500), hub("b", 500)],
            total: 2000,
            decision: Decision::Release(vec![Release {
                replica: "a".into(),
                configmap: String::new(),
                pod_uid: String::new(),
                release: 500,
                keep: 1000,
            }]),
            last_order: None,
        };
        let (st, reason, msg) = condition(&p, &settings());
        assert_eq!((st, reason), (ConditionStatus::False, "Releasing"));
        assert_eq!(
            msg,
            "a holds 1500 (expected 1000); ordered a to release 500"
        );
        let p = make_plan(&Observed::default(), &settings(), Timestamp::UNIX_EPOCH);
        let (st, _, msg) = condition(&p, &settings());
        assert_eq!(st, ConditionStatus::Unknown);
        assert!(msg.contains("at least 2 are needed"), "{msg}");
    }

    #[test]
    fn order_ids_name_time_and_hub() {
        let r = Release {
            replica: "hub-1".into(),
            configmap: "cm".into(),
            pod_uid: "u".into(),
            release: 3,
            keep: 7,
        };
        let o = order_for(&r, Timestamp::from_second(100).unwrap(), 60);
        assert_eq!(o.expires_at, "1970-01-01T00:02:40Z");
        assert_eq!(o.id, "100-hub-1");
        assert_eq!((o.release, o.keep, o.pod_uid.as_str()), (3, 7, "u"));
        assert_eq!(o.issued_at, "1970-01-01T00:01:40Z");
    }
}
