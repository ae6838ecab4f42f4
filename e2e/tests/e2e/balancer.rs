//! HubBalancer end to end (issue 13, item 4): three hub replicas behind HAProxy, 3,000 hollow
//! agents that know only HAProxy's address, the balancer as the chart's ServiceAccount. One
//! life, scenario after scenario on the same fleet (see `balancer_bed` for the bed):
//!
//! 1. a hub restarts → sessions pile on the other two → balanced within tolerance in ≤ 2
//!    observation periods, releases ≤ 1.1 × the minimum, no donor pushed below expected −
//!    tolerance, no hollow node NotReady; then stale, replaced-pod and missing reports are
//!    ignored and no order at all comes for 5 periods (no oscillation);
//! 2. a rolling restart of the hubs' Deployment: no order until it has finished;
//! 3. the balancer SIGKILLed right after its order is written: the next leader resumes without
//!    a second release.
//!
//! The balancer's metrics (`edgefleet_balancer_*`, left out of the observability e2e) are
//! checked here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use edgefleet_api::balancer::{HubBalancer, LOAD_REPORT_LABEL, report_keys};
use edgefleet_e2e::edge::metrics;
use edgefleet_e2e::operator::SYSTEM_NAMESPACE;
use edgefleet_e2e::{TestNamespace, client, install_crds, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::balancer_bed::{Bed, HUBS, PERIOD, Sample, lock, pod_ready, ramp_time, total};

const P: Duration = Duration::from_secs(PERIOD);

#[tokio::test]
async fn hubs_come_back_even_behind_haproxy_without_oscillation_or_a_second_release() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "balancer").await?;
    let mut bed = Bed::up(&client, &ns.name).await?;

    let start = Instant::now();
    bed.sample_where("every session up and even", ramp_time(), start, |s| {
        s.total() >= total() as i64 * 99 / 100 && s.balanced() && !s.orders_in_flight()
    })
    .await?;
    wait_condition(&bed, "WithinTolerance", Duration::from_secs(120)).await?;

    restart_then_balance_and_hold(&bed).await?;
    balancer_metrics(&bed).await?;
    rolling_restart_releases_nothing_until_done(&bed).await?;
    balancer_killed_mid_round(&mut bed).await?;
    Ok(())
}

/// The HubBalancer's Balanced condition reaching `reason`.
async fn wait_condition(bed: &Bed, reason: &str, timeout: Duration) -> Result<HubBalancer> {
    let api: Api<HubBalancer> = Api::namespaced(bed.client.clone(), SYSTEM_NAMESPACE);
    wait_for(&format!("Balanced reason {reason}"), timeout, || async {
        let hb = api.get(&bed.balancer_name).await?;
        let c = hb
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Balanced"));
        Ok(c.is_some_and(|c| c.reason == reason).then_some(hb))
    })
    .await
}

/// The first release order issued after `after` (order, hub, when the monitor saw it). On a
/// timeout the error says what the balancer decided meanwhile and what the hubs held, so a CI
/// failure explains itself.
async fn first_order_after(
    bed: &Bed,
    what: &str,
    after: Instant,
) -> Result<(edgefleet_api::balancer::ReleaseOrder, String, Instant)> {
    let seen = bed.seen.clone();
    let found = wait_for(
        &format!("{what}: a release order"),
        Duration::from_secs(180),
        || {
            let o = lock(&seen).orders_after(after).first().cloned();
            async move { Ok(o) }
        },
    )
    .await;
    if found.is_ok() {
        return found;
    }
    let api: Api<HubBalancer> = Api::namespaced(bed.client.clone(), SYSTEM_NAMESPACE);
    let decided = match api.get(&bed.balancer_name).await {
        Ok(hb) => hb
            .status
            .map(|s| {
                s.conditions
                    .iter()
                    .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default(),
        Err(e) => format!("(reading the HubBalancer: {e})"),
    };
    let last = lock(&seen).last().map(Sample::describe).unwrap_or_default();
    found.with_context(|| format!("the balancer's conditions: {decided}; last sample: {last}"))
}

/// The pod of the Deployment holding the most sessions (the restart hurts most there).
fn busiest(s: &Sample) -> Result<String> {
    s.hubs
        .iter()
        .max_by_key(|(_, l)| l.connections)
        .map(|(h, _)| h.clone())
        .context("no hub in the sample")
}

/// Sums up one round (from `after` to a balanced sample with nothing in flight): the orders,
/// what was released against the minimum (from the last settled sample before the first
/// order), and
/// the judgement of every sample in between.
async fn judge_round(bed: &Bed, what: &str, after: Instant) -> Result<(Instant, Sample)> {
    let seen = bed.seen.clone();
    let first = first_order_after(bed, what, after).await?;
    let first_at = first.2;
    // The state the order answered: the last sample before it with every hub reporting and
    // the fleet connected (a sample taken mid-reconnect, two hubs and a tenth of the fleet,
    // once made a right order of 1,000 look like 10 × a minimum of 95).
    let before = lock(&seen)
        .samples
        .iter()
        .rev()
        .filter(|s| s.at < first_at)
        .find(|s| s.hubs.len() == HUBS && s.total() >= total() as i64 * 95 / 100)
        .cloned()
        .context(
            "no sample with every hub reporting and the fleet connected before the first order",
        )?;
    let minimum = before.minimum_release();
    // Balanced within two observation periods of the first order (plus the report interval
    // and the monitor's half second).
    let balanced = bed
        .sample_where(
            &format!("{what}: balanced within 2 observation periods of the first order"),
            2 * P + Duration::from_secs(4) - first_at.elapsed().min(2 * P),
            first_at,
            |s| s.balanced() && !s.orders_in_flight() && s.total() >= before.total() * 98 / 100,
        )
        .await?;
    let orders = lock(&seen).orders_after(after);
    let released: i64 = orders.iter().map(|(o, _, _)| o.release).sum();
    let list = orders
        .iter()
        .map(|(o, h, _)| format!("{h} release {} keep {}", o.release, o.keep))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "{what}: before {} → balanced {} in {:.0?} (orders: {list}; released {released}, minimum {minimum})",
        before.describe(),
        balanced.describe(),
        balanced.at - first_at
    );
    ensure!(
        released * 10 <= minimum * 11,
        "{what}: released {released}, more than 1.1 × the minimum {minimum} ({list})"
    );
    // No donor pushed below expected − tolerance, at any sample once its order was issued.
    let donors: BTreeMap<String, Instant> =
        orders.iter().map(|(_, h, at)| (h.clone(), *at)).collect();
    for s in lock(&seen).samples.iter().filter(|s| s.at > first_at) {
        let floor = s.expected() * (100 - crate::balancer_bed::TOLERANCE) / 100;
        for (hub, since) in &donors {
            if let Some(l) = s.hubs.get(hub)
                && s.at > *since
                && l.connections < floor
            {
                bail!(
                    "{what}: donor {hub} at {} sessions, below expected − tolerance ({floor}): {}",
                    l.connections,
                    s.describe()
                );
            }
        }
    }
    Ok((first_at, balanced))
}

async fn restart_then_balance_and_hold(bed: &Bed) -> Result<()> {
    let what = "hub restart";
    let now = Instant::now();
    let last = lock(&bed.seen).last().cloned().context("no sample")?;
    let victim = busiest(&last)?;
    bed.kill_hub(&victim)?;
    let (first_at, balanced) = judge_round(bed, what, now).await?;

    // No hollow node NotReady from the release (restart to balance, and the hold below).
    let hold_from = Instant::now();
    // Now the reports that must not count: a stale one and one from a replaced pod (both
    // naming a Ready pod the selector picks, whose own report is missing).
    let bare = bare_pod(bed).await?;
    let cms: Api<ConfigMap> = Api::namespaced(bed.client.clone(), SYSTEM_NAMESPACE);
    let stale_at = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600)).to_string();
    fake_report(bed, &cms, "stale", &bare.0, &bare.1, &stale_at).await?;
    let refresher = {
        let (cms, bare, tag) = (cms.clone(), bare.0.clone(), bed.tag.clone());
        tokio::spawn(async move {
            loop {
                let now = jiff::Timestamp::now().to_string();
                let patch = serde_json::json!({"data": {report_keys::TIMESTAMP: now, report_keys::REPLICA: bare}});
                let _ = cms
                    .patch(
                        &format!("e2e-balancer-{tag}-replaced"),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let replaced = fake_report(
        bed,
        &cms,
        "replaced",
        &bare.0,
        "uid-of-a-pod-long-gone",
        &jiff::Timestamp::now().to_string(),
    )
    .await;
    let hold = async {
        replaced?;
        // The status says why they are ignored (once a round has seen them).
        let api: Api<HubBalancer> = Api::namespaced(bed.client.clone(), SYSTEM_NAMESPACE);
        let st = wait_for(
            &format!("{what}: WithinTolerance, naming the stale and the replaced-pod report"),
            2 * P,
            || async {
                let st = api
                    .get(&bed.balancer_name)
                    .await?
                    .status
                    .unwrap_or_default();
                let msg = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Balanced" && c.reason == "WithinTolerance")
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                Ok((msg.contains("s old)")
                    && msg.contains("report from pod uid-of-a-pod-long-gone"))
                .then_some(st))
            },
        )
        .await?;
        let mut counted: Vec<String> = st.hubs.iter().map(|h| h.name.clone()).collect();
        counted.sort();
        let mut live: Vec<String> = bed
            .pods()
            .await?
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        live.sort();
        ensure!(
            counted == live && st.hub_count == HUBS as i32,
            "{what}: counted {counted:?}, want the live hubs {live:?}"
        );
        // No order at all for 5 periods after balance.
        let until = balanced.at + 5 * P;
        while Instant::now() < until {
            let late = lock(&bed.seen).orders_after(balanced.at);
            ensure!(
                late.is_empty(),
                "{what}: an order after balance (oscillation or a fake report counted): {:?}",
                late.iter()
                    .map(|(o, h, _)| format!("{h}: {}", o.id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }
    .await;
    refresher.abort();
    hold?;
    let not_ready: Vec<String> = lock(&bed.seen)
        .not_ready
        .iter()
        .filter(|(_, at)| *at > first_at.min(hold_from))
        .map(|(n, _)| n.clone())
        .collect();
    ensure!(
        not_ready.is_empty(),
        "{what}: nodes NotReady during the release: {not_ready:?}"
    );
    eprintln!(
        "{what}: no order for 5 periods after balance, fake reports ignored, no node NotReady"
    );
    Ok(())
}

/// A pod the HubBalancer's selector picks that runs no hub (no `run=process`): kwok makes it
/// Ready; it writes no report. Returns (name, uid).
async fn bare_pod(bed: &Bed) -> Result<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), SYSTEM_NAMESPACE);
    let name = format!("{}-bare", bed.deployment);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": bed.app},
                     "annotations": {"edgefleet.io/sim-pull-seconds": "0"}},
        "spec": {"nodeSelector": {"type": "kwok"}, "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "hub", "image": "edgefleet/hub:e2e"}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let p = wait_for(
        "the bare hub pod Ready",
        Duration::from_secs(60),
        || async { Ok(pods.get_opt(&name).await?.filter(pod_ready)) },
    )
    .await?;
    Ok((name, p.uid().unwrap_or_default()))
}

async fn fake_report(
    bed: &Bed,
    cms: &Api<ConfigMap>,
    kind: &str,
    replica: &str,
    uid: &str,
    timestamp: &str,
) -> Result<()> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("e2e-balancer-{}-{kind}", bed.tag)),
            labels: Some(BTreeMap::from([
                (LOAD_REPORT_LABEL.to_string(), "hub".to_string()),
                ("edgefleet.io/e2e-balancer".to_string(), bed.tag.clone()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (report_keys::REPLICA.to_string(), replica.to_string()),
            (report_keys::POD_UID.to_string(), uid.to_string()),
            // Were it counted, the expected share would jump and every real hub would look
            // under-loaded next to it: orders would follow.
            (report_keys::CONNECTIONS.to_string(), "9000".to_string()),
            (report_keys::CAPACITY.to_string(), "20000".to_string()),
            (report_keys::TIMESTAMP.to_string(), timestamp.to_string()),
        ])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await?;
    Ok(())
}

/// `edgefleet_balancer_*` as the leader serves them after a round.
async fn balancer_metrics(bed: &Bed) -> Result<()> {
    let addr = bed.balancer.metrics_addr().await?;
    let m = metrics(&addr.to_string(), "edgefleet_balancer_")?;
    let get = |name: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with(name)
                    && k.contains(&format!(
                        "balancer=\"{}/{}\"",
                        SYSTEM_NAMESPACE, bed.balancer_name
                    ))
                    || k.starts_with(name)
                        && k.contains(&format!("balancer=\"{}\"", bed.balancer_name))
            })
            .map(|(_, v)| *v)
            .sum()
    };
    let orders = get("edgefleet_balancer_orders_total");
    let released = get("edgefleet_balancer_released_sessions_total");
    let hubs = get("edgefleet_balancer_hubs");
    let balanced = get("edgefleet_balancer_balanced");
    let per_hub = m
        .keys()
        .filter(|k| k.starts_with("edgefleet_balancer_hub_connections"))
        .count();
    let rounds = get("edgefleet_balancer_rounds_total");
    ensure!(
        orders >= 1.0
            && released >= 1.0
            && hubs == HUBS as f64
            && balanced == 1.0
            && per_hub >= HUBS
            && rounds > 1.0,
        "edgefleet_balancer_* series: orders {orders}, released {released}, hubs {hubs}, balanced {balanced}, per-hub series {per_hub}, rounds {rounds}: {m:?}"
    );
    Ok(())
}

async fn rolling_restart_releases_nothing_until_done(bed: &Bed) -> Result<()> {
    let what = "rolling restart";
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), SYSTEM_NAMESPACE);
    // Settled means these pods are all gone and HUBS new ones are Ready: the Deployment's status
    // alone once read "settled" 275 ms after the patch with the old pods still serving (a CI
    // run), and the rollout then landed in the next scenario, where it held every order back.
    let old: Vec<String> = bed.pods().await?.iter().filter_map(|p| p.uid()).collect();
    let began = Instant::now();
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": jiff::Timestamp::now().to_string()}}}}});
    deployments
        .patch(
            &bed.deployment,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    let settled = wait_for(
        &format!("{what}: the Deployment settled"),
        Duration::from_secs(300),
        || async {
            let d = deployments.get(&bed.deployment).await?;
            let st = d.status.clone().unwrap_or_default();
            let done = st.observed_generation >= d.metadata.generation
                && st.updated_replicas == Some(HUBS as i32)
                && st.ready_replicas == Some(HUBS as i32)
                && st.replicas == Some(HUBS as i32);
            let pods = bed.pods().await?;
            let replaced = pods.len() == HUBS
                && pods
                    .iter()
                    .all(|p| pod_ready(p) && p.uid().is_some_and(|u| !old.contains(&u)));
            Ok((done && replaced).then(Instant::now))
        },
    )
    .await?;
    // The balancer may see the Deployment settled a poll before this test does.
    let early: Vec<String> = lock(&bed.seen)
        .orders_after(began)
        .iter()
        .filter(|(_, _, at)| *at + Duration::from_secs(2) < settled)
        .map(|(o, h, _)| format!("{h}: {}", o.id))
        .collect();
    ensure!(
        early.is_empty(),
        "{what}: orders while the Deployment rolled out: {early:?}"
    );
    eprintln!(
        "{what}: settled in {:.0?}, no order meanwhile",
        settled - began
    );
    // After it, the last restarted hub is short: a round brings it back (when it is short).
    let s = bed
        .sample_where(
            &format!("{what}: the new pods report"),
            Duration::from_secs(60),
            settled,
            |s| s.hubs.len() == HUBS && s.total() >= total() as i64 * 95 / 100,
        )
        .await?;
    if s.balanced() {
        eprintln!(
            "{what}: even after the rollout ({}), nothing to release",
            s.describe()
        );
    } else {
        judge_round(bed, what, began).await?;
    }
    Ok(())
}

async fn balancer_killed_mid_round(bed: &mut Bed) -> Result<()> {
    let what = "balancer SIGKILLed mid-round";
    // Settle first: the last round's observation must be over.
    wait_condition(bed, "WithinTolerance", 3 * P).await?;
    let now = Instant::now();
    let last = lock(&bed.seen).last().cloned().context("no sample")?;
    let victim = busiest(&last)?;
    bed.kill_hub(&victim)?;
    first_order_after(bed, what, now).await?;
    // The order is written, the hubs are carrying it out: the leader dies now.
    bed.balancer.restart()?;
    let (_, _) = judge_round(bed, what, now).await?;
    // Never two orders to one hub within one observation period (a re-issued order).
    let orders = lock(&bed.seen).orders_after(now);
    let mut by_hub: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (o, h, _) in &orders {
        let t: jiff::Timestamp = o.issued_at.parse()?;
        by_hub.entry(h.as_str()).or_default().push(t.as_second());
    }
    for (h, mut ts) in by_hub {
        ts.sort();
        if ts.windows(2).any(|w| w[1] - w[0] < PERIOD as i64) {
            bail!("{what}: {h} was ordered twice within one observation period: {ts:?}");
        }
    }
    wait_condition(bed, "WithinTolerance", 3 * P).await?;
    Ok(())
}
