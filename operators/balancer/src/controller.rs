//! One round per HubBalancer per tick: observe → plan → act. A tick of a few seconds against an
//! observation period of tens of seconds; nothing is kept between rounds but metrics.

use std::time::Duration;

use edgefleet_api::balancer::HubBalancer;
use edgefleet_kit::ReconcileMetrics;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::events::Recorder;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::metrics::BalancerMetrics;
use crate::plan::{self, Decision, Settings};
use crate::{act, watch};

#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    /// Only HubBalancers in this namespace; all when `None`.
    pub namespace: Option<String>,
    pub interval: Duration,
    pub metrics: ReconcileMetrics,
    pub balancer: BalancerMetrics,
    pub recorder: Recorder,
}

/// The spec's numbers.
pub fn settings(hb: &HubBalancer) -> Settings {
    Settings {
        tolerance_percent: i64::from(hb.spec.tolerance_percent),
        observation_seconds: hb.spec.observation_period_seconds,
        max_release_per_round: hb.spec.max_release_per_round,
        stale_after_seconds: hb.spec.report_stale_after_seconds,
    }
}

fn decision_label(d: &Decision) -> &'static str {
    match d {
        Decision::TooFewHubs { .. } => "too_few_hubs",
        Decision::RollingOut(_) => "rolling_out",
        Decision::OrderInFlight { .. } => "order_in_flight",
        Decision::Observing { .. } => "observing",
        Decision::Balanced => "balanced",
        Decision::Settling { .. } => "settling",
        Decision::Release(_) => "release",
    }
}

/// One round for one HubBalancer.
#[tracing::instrument(skip_all, fields(namespace = hb.namespace().unwrap_or_default(), name = hb.name_any()))]
pub async fn round(ctx: &Context, hb: &HubBalancer) -> Result<()> {
    let namespace = hb.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", hb.name_any());
    let s = settings(hb);
    let mut observed = watch::observe(&ctx.client, &namespace, &hb.spec.hub_selector).await?;
    observed.previous_total = hb.status.as_ref().map(|st| st.total_connections);
    let now = Timestamp::now();
    let plan = plan::plan(&observed, &s, now);
    if let Decision::Release(releases) = &plan.decision {
        act::write_orders(&ctx.client, &namespace, releases, &s, now).await?;
        let sessions: i64 = releases.iter().map(|r| r.release).sum();
        tracing::info!(orders = releases.len(), sessions, "release ordered");
        ctx.balancer
            .orders
            .with_label_values(&[&key])
            .inc_by(releases.len() as u64);
        ctx.balancer
            .released
            .with_label_values(&[&key])
            .inc_by(u64::try_from(sessions).unwrap_or(0));
    }
    ctx.balancer
        .rounds
        .with_label_values(&[&key, decision_label(&plan.decision)])
        .inc();
    ctx.balancer
        .balanced
        .with_label_values(&[&key])
        .set(i64::from(plan.balanced(&s) && plan.counted().count() >= 2));
    ctx.balancer
        .hubs
        .with_label_values(&[&key])
        .set(i64::try_from(plan.counted().count()).unwrap_or(0));
    let _ = ctx.balancer.connections.remove_label_values(&[&key, ""]);
    for h in &plan.hubs {
        if h.ignored.is_none() {
            ctx.balancer
                .connections
                .with_label_values(&[&key, &h.replica])
                .set(h.connections);
            ctx.balancer
                .expected
                .with_label_values(&[&key, &h.replica])
                .set(h.expected);
        } else {
            let _ = ctx
                .balancer
                .connections
                .remove_label_values(&[&key, &h.replica]);
            let _ = ctx
                .balancer
                .expected
                .remove_label_values(&[&key, &h.replica]);
        }
    }
    act::report(&ctx.client, &ctx.recorder, hb, &plan, &s, now).await
}

/// Rounds every `interval` until `shutdown` (or the caller drops it on losing the lease).
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let api: Api<HubBalancer> = match &ctx.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut tick = tokio::time::interval(ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let balancers = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing HubBalancers");
                continue;
            }
        };
        for hb in &balancers {
            let timer = ctx.metrics.reconcile_started();
            if let Err(e) = round(&ctx, hb).await {
                ctx.metrics.reconcile_failed(&e);
                tracing::warn!(error = %e, name = hb.name_any(), "balancing round failed");
            }
            timer.finish();
        }
    }
}
