//! A real Prometheus scrapes the operators during a rollout and a delivery run: every metric
//! the dashboards and alert rules query returns data, and the chart's rules load and evaluate.
//!
//! The delivery run uses the hub tests' own edge client (bootstrap, mTLS session, ACK). When
//! the edge-agent lands, `edge-agent simulate --nodes N` pointed at the hub replaces it.

use std::collections::BTreeSet;
use std::time::Duration;

use edgefleet_api::rollout::RolloutPhase;
use edgefleet_channel::Operation;
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::prometheus::Prometheus;
use edgefleet_e2e::{TestNamespace, run, wait_for};
use edgefleet_monitoring::{
    exported_metrics, metrics_in, only_on_failure, resolve, shipped_queries,
};
use kube::ResourceExt;
use serde_json::Value;

use crate::hub::{
    Edge, Hub, cleanup_nodes, configmap, node_name, object_sync, token_of, update_configmap,
};
use crate::rollout::{NEW, STATION, bed, create_job, daemonset, wait_phase};

/// The chart's PrometheusRule, rendered as a cluster with the Prometheus Operator would get
/// it, reduced to its spec: a plain rules file.
fn rendered_rules() -> String {
    let rendered = run(
        "helm",
        &[
            "template",
            "obs",
            "charts/edgefleet",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
            "--api-versions",
            "monitoring.coreos.com/v1/PodMonitor",
        ],
        None,
    )
    .unwrap();
    // Parsed one document at a time: only the monitoring ones matter here.
    let docs: Vec<serde_yaml::Value> = rendered
        .split("\n---")
        .filter(|d| d.contains("kind: PodMonitor") || d.contains("kind: PrometheusRule"))
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["PodMonitor", "PrometheusRule"]);
    let rule = &docs[1];
    serde_yaml::to_string(&rule["spec"]).unwrap()
}

#[test]
fn monitoring_objects_render_only_with_their_crds() {
    let plain = run("helm", &["template", "obs", "charts/edgefleet"], None).unwrap();
    assert!(!plain.contains("kind: PodMonitor") && !plain.contains("kind: PrometheusRule"));
    assert_eq!(
        plain.matches("grafana_dashboard: \"1\"").count(),
        3,
        "three dashboards"
    );
    let off = run(
        "helm",
        &[
            "template",
            "obs",
            "charts/edgefleet",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
            "--api-versions",
            "monitoring.coreos.com/v1/PodMonitor",
            "--set",
            "monitoring.podMonitor.enabled=false",
            "--set",
            "monitoring.prometheusRule.enabled=false",
            "--set",
            "monitoring.dashboards.enabled=false",
            "--set",
            "monitoring.dashboards.namespace=grafana",
        ],
        None,
    )
    .unwrap();
    assert!(!off.contains("kind: PodMonitor") && !off.contains("kind: PrometheusRule"));
    assert!(!off.contains("grafana_dashboard"));
}

#[test]
fn promtool_accepts_the_rendered_rules() {
    let rules = rendered_rules();
    let dir = edgefleet_e2e::repo_root().join("hack/.cluster/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rendered-rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let out = run(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        None,
    )
    .unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A short delivery run through the hub: two nodes bootstrap and open sessions, objects are
/// delivered and ACKed (one update superseded), a query answered, a forged session and a
/// malformed frame refused.
async fn delivery_run(client: &kube::Client, ns: &TestNamespace, hub: &Hub) -> Vec<String> {
    let edge = Edge::new(client, hub).await.unwrap();
    let token = token_of(client).await.unwrap();
    let nodes = vec![node_name(ns, "a"), node_name(ns, "b")];
    let mut sessions = Vec::new();
    for n in &nodes {
        let id = edge.bootstrap(n, &token).await.unwrap();
        sessions.push((n.clone(), id.clone(), edge.connect(&id, n).await.unwrap()));
    }
    for i in 0..3 {
        let name = format!("cfg-{i}");
        let cm = configmap(ns, &name, "1").await.unwrap();
        let resource = format!("{}/configmap/{name}", ns.name);
        for (node, _, s) in sessions.iter_mut() {
            object_sync(ns, node, "ConfigMap", &name, &cm.uid().unwrap())
                .await
                .unwrap();
            let first = s.expect(&resource, Duration::from_secs(15)).await.unwrap();
            s.ack(&first).await.unwrap();
        }
        update_configmap(ns, &name, "2").await.unwrap();
        update_configmap(ns, &name, "3").await.unwrap();
        for (_, _, s) in sessions.iter_mut() {
            let next = s.expect(&resource, Duration::from_secs(15)).await.unwrap();
            s.ack(&next).await.unwrap();
        }
    }
    let (node, id, s) = &mut sessions[0];
    // A device report (KubeEdge's twin topic) for a device of node a: written by the hub.
    let devices: kube::Api<edgefleet_api::devices::Device> = ns.api();
    let dev: edgefleet_api::devices::Device = serde_json::from_value(serde_json::json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "meter"},
        "spec": {"deviceModelRef": {"name": "m"}, "nodeName": node, "properties": [{"name": "kwh"}]},
    }))
    .unwrap();
    devices
        .create(&kube::api::PostParams::default(), &dev)
        .await
        .unwrap();
    let report = edgefleet_channel::device::report(
        &edgefleet_channel::device::DeviceRoute::new(
            &ns.name,
            "meter",
            edgefleet_channel::device::DeviceTopic::TwinEdgeUpdated,
        ),
        serde_json::json!({"timestamp": 1, "twin": {"kwh": {"actual": {"value": "7"}}}}),
    );
    s.send(&report).await.unwrap();
    let answer = s
        .expect(&report.route.resource, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(answer.content, serde_json::json!("OK"), "{answer:?}");
    let reply = s
        .request(
            Operation::Query,
            &format!("{}/configmap/cfg-0", ns.name),
            Value::Null,
        )
        .await
        .unwrap();
    assert_eq!(reply.route.operation, "response");
    // Refusals: a session for another node's name, and a frame that is not an envelope.
    let forged = edge.connect_as(Some(id), &nodes[1], node).await.unwrap();
    assert!(forged.is_err(), "a session for another node is refused");
    let mut extra = edge.connect(id, node).await.unwrap();
    extra.send_raw("not an envelope").await.unwrap();
    drop(sessions);
    nodes
}

#[tokio::test]
async fn prometheus_scrapes_every_metric_the_dashboards_and_alerts_use() {
    // A rollout (the rollout operator) with the objectsync operator beside it, in one namespace.
    let bed = bed("obs-rollout").await;
    let objectsync = Operator::start("objectsync", &bed.ns.name).await.unwrap();
    // A delivery run through a hub in a namespace of its own (its ObjectSyncs are the test's).
    let hub_ns = TestNamespace::new(&bed.client, "obs-hub").await.unwrap();
    let hub = Hub::start(&hub_ns.name, &[]).await.unwrap();

    let targets = [
        bed.operator.metrics_addr().await.unwrap(),
        objectsync.metrics_addr().await.unwrap(),
        hub.op.metrics_addr().await.unwrap(),
    ];
    let prom = Prometheus::start("obs", &targets, &rendered_rules())
        .await
        .unwrap();

    daemonset(&bed, "toll", (STATION, "station-1")).await;
    create_job(
        &bed,
        "to-v2",
        "toll",
        NEW,
        serde_json::json!({"batches": {"size": 5}, "prePull": {"parallelism": 5}}),
    )
    .await;
    let nodes = delivery_run(&bed.client, &hub_ns, &hub).await;
    wait_phase(&bed, "to-v2", RolloutPhase::Completed, 240).await;

    // Every target is up, then every series a query names has data.
    wait_for("3 targets up", Duration::from_secs(30), || async {
        let up = prom.query("sum(up)").await?;
        Ok((up.first().and_then(|v| v["value"][1].as_str()) == Some("3")).then_some(()))
    })
    .await
    .unwrap();
    let exported = exported_metrics();
    let mut series = BTreeSet::new();
    for q in shipped_queries().unwrap() {
        for name in metrics_in(&q.expr) {
            let base = resolve(&name, &exported).unwrap_or_else(|| panic!("{}: {name}", q.source));
            // The balancer does not run here (off by default, no HubBalancer in this test):
            // its series are checked by the balancer's own e2e when it lands (issue 13). Nor
            // does the device operator (not started here): `edgefleet_device_*` are its own.
            if !only_on_failure(&base)
                && !base.starts_with("edgefleet_balancer_")
                && !base.starts_with("edgefleet_device_")
            {
                series.insert(name);
            }
        }
    }
    assert!(series.len() > 40, "{series:?}");
    let mut missing = Vec::new();
    // A scrape or two after the run's last events.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in &series {
        let found = wait_for(
            &format!("{name} in Prometheus"),
            Duration::from_secs(10),
            || async {
                Ok((!prom.query(&format!("group({name})")).await?.is_empty()).then_some(()))
            },
        )
        .await;
        if found.is_err() {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "no data for {missing:?}");

    // The rollout's own figures: progress timestamp and phase of this job.
    let phase = prom
        .query(&format!(
            "edgefleet_rollout_phase{{namespace=\"{}\", job=\"to-v2\", phase=\"Completed\"}}",
            bed.ns.name
        ))
        .await
        .unwrap();
    assert_eq!(
        phase.first().and_then(|v| v["value"][1].as_str()),
        Some("1"),
        "{phase:?}"
    );

    // The rules loaded and evaluate without errors; none of the alerts fires on a healthy run.
    let groups = prom.api("rules").await.unwrap();
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    // Every alert the chart renders, loaded (counted from the rendering, not a number kept by
    // hand: adding an alert failed this until the number was bumped).
    let alerts = rendered_rules().matches("- alert:").count();
    assert!(alerts >= 12, "{alerts} alerts rendered");
    assert_eq!(rules.len(), alerts, "{groups}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
        assert_ne!(r["state"], "firing", "{r}");
    }
    cleanup_nodes(&bed.client, &nodes).await;
}
