//! `hub status`: every hub replica's load report (ConfigMaps labelled
//! `edgefleet.io/load-report=hub`), the share each should hold, and whether the fleet is
//! balanced; plus what any HubBalancer last observed.

use std::collections::BTreeMap;

use edgefleet_api::balancer::{HubBalancer, LOAD_REPORT_LABEL, report_keys};
use edgefleet_kit::conditions::find_condition;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::cli::{HubArgs, Output};
use crate::error::{Error, Result};
use crate::kube_ctx::Ctx;
use crate::table::{age, render};
use crate::{exit, out, serialize};

const DEFAULT_STALE_AFTER: i64 = 30;
const DEFAULT_TOLERANCE: i64 = 10;

/// One replica's report as read from its ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub config_map: String,
    pub replica: String,
    pub connections: i64,
    pub capacity: i64,
    pub queued: i64,
    pub timestamp: Option<Timestamp>,
    pub release_order: i64,
}

/// Parses a load-report ConfigMap; missing or malformed numbers read as 0.
pub fn parse_report(cm: &ConfigMap) -> Report {
    let empty = BTreeMap::new();
    let data = cm.data.as_ref().unwrap_or(&empty);
    let num = |k: &str| {
        data.get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    let name = cm.metadata.name.clone().unwrap_or_default();
    Report {
        namespace: cm.metadata.namespace.clone().unwrap_or_default(),
        replica: data
            .get(report_keys::REPLICA)
            .cloned()
            .unwrap_or_else(|| name.clone()),
        config_map: name,
        connections: num(report_keys::CONNECTIONS),
        capacity: num(report_keys::CAPACITY),
        queued: num(report_keys::QUEUED),
        timestamp: data
            .get(report_keys::TIMESTAMP)
            .and_then(|t| t.parse().ok()),
        release_order: order_in_flight(data).unwrap_or_else(|| num(report_keys::RELEASE_ORDER)),
    }
}

/// Sessions of the balancer's order the hub has not marked done (0 once done); `None` when
/// `releaseOrder` is not a JSON order (docs/channel.md, "Release orders").
fn order_in_flight(data: &BTreeMap<String, String>) -> Option<i64> {
    let order: edgefleet_api::balancer::ReleaseOrder =
        serde_json::from_str(data.get(report_keys::RELEASE_ORDER)?).ok()?;
    let done = data.get(report_keys::RELEASE_DONE) == Some(&order.id);
    Some(if done { 0 } else { order.release })
}

/// One replica in the balance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRow {
    #[serde(flatten)]
    pub report: Report,
    /// Left out of the balance: its report is older than the stale limit (or undated).
    pub stale: bool,
    /// Connections it should hold when balanced (0 when stale).
    pub expected: i64,
    /// Percent over (+) or under (-) `expected`.
    pub deviation_percent: i64,
    /// More than `tolerance` over `expected`: the balancer would have it release the excess.
    pub over: bool,
}

/// The fleet's balance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    pub hubs: Vec<HubRow>,
    pub fresh: usize,
    pub stale: usize,
    pub total_connections: i64,
    pub total_capacity: i64,
    pub tolerance_percent: i64,
    /// The largest deviation above expected among fresh replicas, in percent.
    pub imbalance_percent: i64,
    pub balanced: bool,
}

/// Expected connections per replica: `total` split in proportion to capacity (evenly when a
/// capacity is unknown), the remainder going to the largest fractions, so the shares add up
/// to `total` exactly.
pub fn expected_shares(total: i64, capacities: &[i64]) -> Vec<i64> {
    if capacities.is_empty() {
        return Vec::new();
    }
    let weights: Vec<i128> = if capacities.iter().all(|c| *c > 0) {
        capacities.iter().map(|c| i128::from(*c)).collect()
    } else {
        vec![1; capacities.len()]
    };
    let sum: i128 = weights.iter().sum();
    let total = i128::from(total.max(0));
    let mut shares: Vec<(i128, i128, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (total * w / sum, total * w % sum, i))
        .collect();
    let mut left = total - shares.iter().map(|s| s.0).sum::<i128>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|a, b| shares[*b].1.cmp(&shares[*a].1).then(a.cmp(b)));
    for i in order {
        if left <= 0 {
            break;
        }
        shares[i].0 += 1;
        left -= 1;
    }
    shares
        .into_iter()
        .map(|s| i64::try_from(s.0).unwrap_or(i64::MAX))
        .collect()
}

/// The balance of `reports` at `now` (pure).
pub fn balance(
    reports: Vec<Report>,
    now: Timestamp,
    stale_after: SignedDuration,
    tolerance_percent: i64,
) -> Balance {
    let is_stale = |r: &Report| {
        r.timestamp
            .is_none_or(|t| now.duration_since(t) > stale_after)
    };
    let fresh: Vec<&Report> = reports.iter().filter(|r| !is_stale(r)).collect();
    let total: i64 = fresh.iter().map(|r| r.connections.max(0)).sum();
    let total_capacity: i64 = fresh.iter().map(|r| r.capacity.max(0)).sum();
    let shares = expected_shares(total, &fresh.iter().map(|r| r.capacity).collect::<Vec<_>>());
    let mut share = shares.into_iter();
    let mut hubs = Vec::new();
    for r in &reports {
        let stale = is_stale(r);
        let expected = if stale { 0 } else { share.next().unwrap_or(0) };
        let deviation_percent = match (stale, expected) {
            (true, _) => 0,
            (false, 0) if r.connections > 0 => 100,
            (false, 0) => 0,
            (false, e) => (r.connections - e) * 100 / e,
        };
        // The balancer's rule: over when connections > expected × (1 + tolerance).
        let over = !stale && r.connections * 100 > expected * (100 + tolerance_percent);
        hubs.push(HubRow {
            report: r.clone(),
            stale,
            expected,
            deviation_percent,
            over,
        });
    }
    hubs.sort_by(|a, b| {
        (&a.report.namespace, &a.report.replica).cmp(&(&b.report.namespace, &b.report.replica))
    });
    let imbalance_percent = hubs
        .iter()
        .filter(|h| !h.stale)
        .map(|h| h.deviation_percent)
        .max()
        .unwrap_or(0)
        .max(0);
    Balance {
        fresh: fresh.len(),
        stale: reports.len() - fresh.len(),
        balanced: !hubs.iter().any(|h| h.over),
        hubs,
        total_connections: total,
        total_capacity,
        tolerance_percent,
        imbalance_percent,
    }
}

/// The table and the summary (pure).
pub fn render_balance(b: &Balance, now: Timestamp) -> String {
    let mut o = String::new();
    if b.hubs.is_empty() {
        o.push_str(&format!(
            "no hub load reports (ConfigMaps labelled {LOAD_REPORT_LABEL}=hub): is a hub running?\n"
        ));
        return o;
    }
    let rows: Vec<Vec<String>> = b
        .hubs
        .iter()
        .map(|h| {
            let r = &h.report;
            let load = if r.capacity > 0 {
                format!("{}%", r.connections * 100 / r.capacity)
            } else {
                "-".into()
            };
            let (expected, deviation, state) = if h.stale {
                ("-".into(), "-".into(), "stale (ignored)".to_string())
            } else {
                let state = if h.over {
                    "over".to_string()
                } else if r.capacity > 0 && r.connections >= r.capacity {
                    "full".into()
                } else {
                    "ok".into()
                };
                (
                    h.expected.to_string(),
                    format!("{:+}%", h.deviation_percent),
                    state,
                )
            };
            vec![
                r.namespace.clone(),
                r.replica.clone(),
                r.connections.to_string(),
                r.capacity.to_string(),
                load,
                r.queued.to_string(),
                expected,
                deviation,
                if r.release_order > 0 {
                    r.release_order.to_string()
                } else {
                    "-".into()
                },
                age(r.timestamp, now),
                state,
            ]
        })
        .collect();
    o.push_str(&render(
        &[
            "NAMESPACE",
            "REPLICA",
            "SESSIONS",
            "CAPACITY",
            "LOAD",
            "QUEUED",
            "EXPECTED",
            "DEVIATION",
            "RELEASE",
            "REPORTED",
            "STATE",
        ],
        &rows,
    ));
    let stale = if b.stale > 0 {
        format!(" ({} stale, ignored)", b.stale)
    } else {
        String::new()
    };
    o.push_str(&format!(
        "\n{} replicas reporting{stale}, {} sessions of {} capacity; imbalance {}% (tolerance {}%): {}\n",
        b.fresh,
        b.total_connections,
        b.total_capacity,
        b.imbalance_percent,
        b.tolerance_percent,
        if b.balanced { "balanced" } else { "UNBALANCED" }
    ));
    o
}

fn render_balancers(balancers: &[HubBalancer], now: Timestamp) -> String {
    let mut o = String::new();
    for hb in balancers {
        let name = hb.metadata.name.as_deref().unwrap_or_default();
        let ns = hb.metadata.namespace.as_deref().unwrap_or_default();
        let s = hb.status.clone().unwrap_or_default();
        let balanced = find_condition(&s.conditions, "Balanced")
            .map(|c| format!("Balanced={} ({})", c.status, c.reason))
            .unwrap_or_else(|| "Balanced=Unknown".into());
        o.push_str(&format!(
            "hubbalancer {ns}/{name}: {} hubs, {} sessions, {balanced}, last release {}\n",
            s.hub_count,
            s.total_connections,
            s.last_release_time.as_ref().map_or_else(
                || "never".into(),
                |t| format!("{} ago", age(Some(t.0), now))
            )
        ));
    }
    o
}

pub async fn run(ctx: &Ctx, args: HubArgs) -> Result<u8> {
    let scope = ctx.scope();
    let cms: Api<ConfigMap> = match scope {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let lp = ListParams::default().labels(&format!("{LOAD_REPORT_LABEL}=hub"));
    let reports: Vec<Report> = cms
        .list(&lp)
        .await
        .map_err(|e| {
            ctx.request("list", "configmaps", "configmap", None, scope)
                .error(e)
        })?
        .items
        .iter()
        .map(parse_report)
        .collect();
    // A HubBalancer is optional: without the CRD or the permission the view goes on.
    let hb_api: Api<HubBalancer> = match scope {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut warnings = Vec::new();
    let balancers = match hb_api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            match ctx
                .request(
                    "list",
                    "hubbalancers.edgefleet.io",
                    "hubbalancer",
                    None,
                    scope,
                )
                .error(e)
            {
                Error::NotServed { .. } => {}
                other => warnings.push(format!("HubBalancers not shown: {other}")),
            }
            Vec::new()
        }
    };
    let spec = balancers.first().map(|b| &b.spec);
    let stale_after = args
        .stale_after_seconds
        .or(spec.map(|s| s.report_stale_after_seconds))
        .unwrap_or(DEFAULT_STALE_AFTER);
    let tolerance = args
        .tolerance_percent
        .or(spec.map(|s| i64::from(s.tolerance_percent)))
        .unwrap_or(DEFAULT_TOLERANCE);
    let now = Timestamp::now();
    let b = balance(
        reports,
        now,
        SignedDuration::from_secs(stale_after.max(1)),
        tolerance.max(0),
    );
    match args.output {
        Output::Table => {
            let mut text = render_balance(&b, now);
            let hb = render_balancers(&balancers, now);
            if !hb.is_empty() {
                text.push('\n');
                text.push_str(&hb);
            }
            for w in &warnings {
                text.push_str(&format!("warning: {w}\n"));
            }
            out(&text)?;
        }
        format => {
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Doc<'a> {
                balance: &'a Balance,
                hub_balancers: Vec<serde_json::Value>,
                warnings: &'a [String],
            }
            let hub_balancers = balancers
                .iter()
                .map(|h| serde_json::json!({"namespace": h.metadata.namespace, "name": h.metadata.name, "status": h.status}))
                .collect();
            out(&serialize(
                &Doc {
                    balance: &b,
                    hub_balancers,
                    warnings: &warnings,
                },
                format,
            )?)?;
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn report(replica: &str, conns: i64, cap: i64, at: i64) -> Report {
        Report {
            namespace: "edgefleet-system".into(),
            config_map: format!("edgefleet-hub-load-{replica}"),
            replica: replica.into(),
            connections: conns,
            capacity: cap,
            queued: 0,
            timestamp: Some(t(at)),
            release_order: 0,
        }
    }

    #[test]
    fn shares_add_up_and_follow_capacity() {
        assert_eq!(expected_shares(10, &[100, 100, 100]), vec![4, 3, 3]);
        assert_eq!(expected_shares(900, &[100, 200]), vec![300, 600]);
        assert_eq!(expected_shares(7, &[0, 100]), vec![4, 3]);
        assert_eq!(expected_shares(0, &[5, 5]), vec![0, 0]);
        assert!(expected_shares(5, &[]).is_empty());
    }

    #[test]
    fn balance_flags_over_tolerance_and_ignores_stale() {
        let reports = vec![
            report("hub-0", 600, 1000, 95),
            report("hub-1", 400, 1000, 98),
            report("hub-2", 900, 1000, 0), // stale: 100s old
        ];
        let b = balance(reports, t(100), SignedDuration::from_secs(30), 10);
        assert_eq!(
            (b.fresh, b.stale, b.total_connections, b.total_capacity),
            (2, 1, 1000, 2000)
        );
        let h0 = &b.hubs[0];
        assert_eq!(
            (h0.expected, h0.deviation_percent, h0.over),
            (500, 20, true)
        );
        let h1 = &b.hubs[1];
        assert_eq!(
            (h1.expected, h1.deviation_percent, h1.over),
            (500, -20, false)
        );
        assert!(b.hubs[2].stale && !b.hubs[2].over);
        assert_eq!(b.imbalance_percent, 20);
        assert!(!b.balanced);

        let even = balance(
            vec![report("a", 520, 1000, 99), report("b", 480, 1000, 99)],
            t(100),
            SignedDuration::from_secs(30),
            10,
        );
        assert!(even.balanced);
        assert_eq!(even.imbalance_percent, 4);
    }

    #[test]
    fn parse_and_render() {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edgefleet-hub-load-hub-0", "namespace": "sys"},
            "data": {"replica": "hub-0", "connections": "600", "capacity": "1000", "queued": "3",
                     "timestamp": "2023-11-14T22:14:55Z", "releaseOrder": "45"}
        }))
        .unwrap();
        let r = parse_report(&cm);
        assert_eq!(
            (r.connections, r.capacity, r.queued, r.release_order),
            (600, 1000, 3, 45)
        );
        assert_eq!(r.timestamp, Some(t(95)));
        // The balancer's JSON order: in flight until the hub marks it done.
        let order =
            r#"{"id":"o1","podUID":"u","release":45,"keep":600,"issuedAt":"x","expiresAt":"y"}"#;
        let mut cm2 = cm.clone();
        let data = cm2.data.as_mut().unwrap();
        data.insert("releaseOrder".into(), order.into());
        assert_eq!(parse_report(&cm2).release_order, 45);
        cm2.data
            .as_mut()
            .unwrap()
            .insert("releaseDone".into(), "o1".into());
        assert_eq!(parse_report(&cm2).release_order, 0);
        let b = balance(
            vec![r, report("hub-1", 400, 1000, 98)],
            t(100),
            SignedDuration::from_secs(30),
            10,
        );
        let text = render_balance(&b, t(100));
        assert!(text.contains("sys                hub-0     600        1000       60%    3        500        +20%        45        5s         over\n"), "{text}");
        assert!(text.ends_with("2 replicas reporting, 1000 sessions of 2000 capacity; imbalance 20% (tolerance 10%): UNBALANCED\n"), "{text}");
        assert!(
            render_balance(
                &balance(vec![], t(0), SignedDuration::from_secs(30), 10),
                t(0)
            )
            .starts_with("no hub load reports")
        );
    }
}
