//! The whole edge channel on the real control plane: the objectsync operator decides what each
//! node needs, hub replicas deliver it, hollow edge agents (`edge-agent simulate`) store and ACK
//! it. Every component runs as its real binary; hubs and the operator as the chart's
//! ServiceAccounts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_api::objectsync::{NODE_LABEL, ObjectSync};
use edgefleet_e2e::edge::{HubProcess, Simulator, StoredObject, bootstrap_token_file};
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::{TestNamespace, client, install_crds, repo_root, wait_for};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

const OBJECT_UID_LABEL: &str = "edgefleet.io/object-uid";

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_nodes_ready(client: &Client, nodes: &[String], timeout: Duration) {
    let api: Api<Node> = Api::all(client.clone());
    let want: BTreeSet<&String> = nodes.iter().collect();
    wait_for(
        &format!("{} hollow nodes Ready", nodes.len()),
        timeout,
        || async {
            let ready: BTreeSet<String> = api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(is_ready)
                .map(|n| n.name_any())
                .collect();
            Ok(want.iter().all(|n| ready.contains(*n)).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// A pod bound to `node` (no scheduler, no kubelet: it stays Pending, which is all the edge
/// channel cares about) mounting the ConfigMaps `configmaps` and taking env from `secret`.
fn pod(name: &str, node: &str, configmaps: &[String], secret: Option<&str>) -> Pod {
    let volumes: Vec<_> = configmaps
        .iter()
        .enumerate()
        .map(|(i, cm)| json!({"name": format!("c{i}"), "configMap": {"name": cm}}))
        .collect();
    let env_from: Vec<_> = secret
        .map(|s| json!({"secretRef": {"name": s}}))
        .into_iter()
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            // Keeps each node's set exact (otherwise kube-root-ca.crt rides along).
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "volumes": volumes,
            "containers": [{"name": "app", "image": "registry.example/toll/app:1", "envFrom": env_from}]
        }
    }))
    .unwrap()
}

fn configmap(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": value}})).unwrap()
}

/// What each node should hold: node → {(uid, live resourceVersion)} of the objects its syncs
/// name, read from the API.
async fn expected_stores(
    ns: &TestNamespace,
    nodes: &[String],
) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    for cm in ns
        .api::<ConfigMap>()
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        live.insert(cm.uid().unwrap(), cm.resource_version().unwrap());
    }
    for s in ns
        .api::<Secret>()
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        live.insert(s.uid().unwrap(), s.resource_version().unwrap());
    }
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> =
        nodes.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
    for p in ns.api::<Pod>().list(&ListParams::default()).await.unwrap() {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        let Some(set) = out.get_mut(&node) else {
            continue;
        };
        set.insert((p.uid().unwrap(), p.resource_version().unwrap()));
        for v in p.spec.as_ref().unwrap().volumes.iter().flatten() {
            if let Some(cm) = &v.config_map {
                let obj = ns.api::<ConfigMap>().get(&cm.name).await.unwrap();
                set.insert((obj.uid().unwrap(), live[&obj.uid().unwrap()].clone()));
            }
        }
        for c in &p.spec.as_ref().unwrap().containers {
            for e in c.env_from.iter().flatten() {
                if let Some(s) = &e.secret_ref {
                    let obj = ns.api::<Secret>().get(&s.name).await.unwrap();
                    set.insert((obj.uid().unwrap(), live[&obj.uid().unwrap()].clone()));
                }
            }
        }
    }
    out
}

fn stored_set(objects: &[StoredObject]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .map(|o| (o.uid.clone(), o.resource_version.clone()))
        .collect()
}

/// Every sync in `ns` acked at its object's live resourceVersion: `None` while one trails.
async fn syncs_trailing(ns: &TestNamespace) -> anyhow::Result<Vec<String>> {
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    for cm in ns.api::<ConfigMap>().list(&ListParams::default()).await? {
        live.insert(
            cm.uid().unwrap_or_default(),
            cm.resource_version().unwrap_or_default(),
        );
    }
    for s in ns.api::<Secret>().list(&ListParams::default()).await? {
        live.insert(
            s.uid().unwrap_or_default(),
            s.resource_version().unwrap_or_default(),
        );
    }
    for p in ns.api::<Pod>().list(&ListParams::default()).await? {
        live.insert(
            p.uid().unwrap_or_default(),
            p.resource_version().unwrap_or_default(),
        );
    }
    let mut trailing = Vec::new();
    for sync in ns.api::<ObjectSync>().list(&ListParams::default()).await? {
        let uid = sync
            .labels()
            .get(OBJECT_UID_LABEL)
            .cloned()
            .unwrap_or_default();
        let acked = sync
            .status
            .as_ref()
            .and_then(|s| s.object_resource_version.clone())
            .unwrap_or_default();
        if live.get(&uid) != Some(&acked) {
            trailing.push(format!(
                "{} acked {acked:?} live {:?}",
                sync.name_any(),
                live.get(&uid)
            ));
        }
    }
    Ok(trailing)
}

/// Numeric resourceVersion (the API server's are); odd ones compare as 0 and are never flagged.
fn rv(s: &str) -> u64 {
    s.parse().unwrap_or(0)
}

#[tokio::test]
async fn channel_delivers_each_node_its_own_objects_and_deletes_on_the_edge() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "channel").await.unwrap();
    let dir = repo_root().join("hack/.cluster/e2e").join(&ns.name);
    let _objectsync = Operator::start_with_args(
        "objectsync",
        &ns.name,
        &["--resend-window-seconds=5".to_string()],
    )
    .await
    .unwrap();
    let hub = HubProcess::start(&ns.name, &[]).await.unwrap();
    let token = bootstrap_token_file(&client, &dir).await.unwrap();
    let prefix = format!("{}-", ns.name);
    let (a, b) = (format!("{prefix}00000"), format!("{prefix}00001"));
    let mut sim = Simulator::start(
        &ns.name,
        &[
            "--nodes=2".to_string(),
            format!("--name-prefix={prefix}"),
            format!("--hub={}", hub.url()),
            format!("--token-file={}", token.display()),
        ],
    )
    .unwrap();
    wait_nodes_ready(&client, &[a.clone(), b.clone()], Duration::from_secs(60)).await;

    let cms: Api<ConfigMap> = ns.api();
    let pp = PostParams::default();
    cms.create(&pp, &configmap("cfg", "0")).await.unwrap();
    cms.create(&pp, &configmap("other", "0")).await.unwrap();
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}),
    )
    .unwrap();
    ns.api::<Secret>().create(&pp, &secret).await.unwrap();
    let pods: Api<Pod> = ns.api();
    pods.create(&pp, &pod("app-a", &a, &["cfg".into()], Some("creds")))
        .await
        .unwrap();
    pods.create(&pp, &pod("app-b", &b, &["other".into()], None))
        .await
        .unwrap();

    // Several updates in a row: the edge ends at the last one.
    for i in 1..=5 {
        cms.patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    let nodes = vec![a.clone(), b.clone()];
    let want = wait_for(
        "each node's store equal to what the API says it needs",
        Duration::from_secs(90),
        || async {
            let want = expected_stores(&ns, &nodes).await;
            for node in &nodes {
                if stored_set(&sim.objects(node)?) != want[node] {
                    return Ok(None);
                }
            }
            Ok(Some(want))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        want[&a].len(),
        3,
        "pod, ConfigMap and Secret on A: {want:?}"
    );
    assert_eq!(want[&b].len(), 2, "pod and ConfigMap on B: {want:?}");
    let cfg_uid = cms.get("cfg").await.unwrap().uid().unwrap();
    assert!(
        !sim.objects(&b).unwrap().iter().any(|o| o.uid == cfg_uid),
        "A's ConfigMap reached B"
    );
    wait_for(
        "every sync acked at the live version",
        Duration::from_secs(30),
        || async { Ok(syncs_trailing(&ns).await?.is_empty().then_some(())) },
    )
    .await
    .unwrap();

    // The pod leaves A: its pod, ConfigMap and Secret are deleted on the edge, then the syncs go.
    pods.delete("app-a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for(
        "A's store emptied and its syncs gone",
        Duration::from_secs(90),
        || async {
            let left = sim.objects(&a)?;
            let syncs = ns
                .api::<ObjectSync>()
                .list(&ListParams::default().labels(&format!("{NODE_LABEL}={a}")))
                .await?;
            Ok((left.is_empty() && syncs.items.is_empty()).then_some(()))
        },
    )
    .await
    .unwrap();

    // Node B is deleted (its agent gone first, so nothing registers it again): its syncs go.
    sim.kill();
    Api::<Node>::all(client.clone())
        .delete(&b, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "B's syncs removed with the node",
        Duration::from_secs(60),
        || async {
            let syncs = ns.api::<ObjectSync>().list(&ListParams::default()).await?;
            Ok(syncs.items.is_empty().then_some(()))
        },
    )
    .await
    .unwrap();
    let _ = Api::<Node>::all(client.clone())
        .delete(&a, &DeleteParams::default())
        .await;
}

/// The chaos test of the issue: while 1,000 ConfigMaps across 100 nodes change 3,000 times, a
/// hub replica is killed, the objectsync operator is killed, every agent connection drops at
/// once and every agent restarts (from its SQLite store). Afterwards every ObjectSync is acked
/// at the live version and every agent's store equals the API; at no point did an acked
/// version or a stored version go backwards.
#[tokio::test]
async fn channel_chaos_converges_with_nothing_lost_or_older() {
    const NODES: usize = 100;
    const CMS_PER_NODE: usize = 10;
    const UPDATES: usize = 3_000;

    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "chaos").await.unwrap();
    let dir = repo_root().join("hack/.cluster/e2e").join(&ns.name);
    let mut objectsync = Operator::start_with_args(
        "objectsync",
        &ns.name,
        &["--resend-window-seconds=5".to_string()],
    )
    .await
    .unwrap();
    let mut hub_a = HubProcess::start(&ns.name, &[]).await.unwrap();
    let mut hub_b = HubProcess::start(&ns.name, &[]).await.unwrap();
    let token = bootstrap_token_file(&client, &dir).await.unwrap();
    let prefix = format!("{}-", ns.name);
    let nodes: Vec<String> = (0..NODES).map(|i| format!("{prefix}{i:05}")).collect();
    let sim = Simulator::start(
        &ns.name,
        &[
            format!("--nodes={NODES}"),
            format!("--name-prefix={prefix}"),
            format!("--hub={}", hub_a.url()),
            format!("--hub={}", hub_b.url()),
            format!("--token-file={}", token.display()),
            format!("--data-dir={}", dir.join("agents").display()),
            "--sqlite".to_string(),
            "--ramp-per-second=50".to_string(),
        ],
    )
    .unwrap();
    let sim = Arc::new(Mutex::new(sim));
    wait_nodes_ready(&client, &nodes, Duration::from_secs(120)).await;

    // 1,000 ConfigMaps, ten per node, each mounted by that node's pod.
    let cms: Api<ConfigMap> = ns.api();
    let names: Vec<String> = (0..NODES)
        .flat_map(|n| (0..CMS_PER_NODE).map(move |k| format!("cfg-{n}-{k}")))
        .collect();
    stream::iter(names.clone())
        .map(|name| {
            let cms = cms.clone();
            async move {
                cms.create(&PostParams::default(), &configmap(&name, "0"))
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let pods: Api<Pod> = ns.api();
    stream::iter(nodes.iter().enumerate())
        .map(|(n, node)| {
            let pods = pods.clone();
            let mounts: Vec<String> = (0..CMS_PER_NODE).map(|k| format!("cfg-{n}-{k}")).collect();
            async move {
                pods.create(
                    &PostParams::default(),
                    &pod(&format!("app-{n}"), node, &mounts, None),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();

    // Watchers of the two promises that must hold at every moment, not only at the end.
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let acked_watch = {
        let api: Api<ObjectSync> = ns.api();
        let violations = violations.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            // A watch error (the API server busy, a connection dropped) is not the end: the
            // watcher re-lists and goes on after its back-off; only the end of the stream is.
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let sync = match event {
                    Ok(sync) => sync,
                    Err(e) => {
                        eprintln!("acked-version watch: {e}; restarting");
                        continue;
                    }
                };
                let acked = sync
                    .status
                    .as_ref()
                    .and_then(|s| s.object_resource_version.as_deref())
                    .map(rv)
                    .unwrap_or(0);
                let last = seen.entry(sync.name_any()).or_insert(0);
                if acked < *last {
                    violations.lock().unwrap().push(format!(
                        "{}: acked version went back from {last} to {acked}",
                        sync.name_any()
                    ));
                }
                *last = (*last).max(acked);
            }
        })
    };
    let store_watch = {
        let sim = sim.clone();
        let nodes = nodes.clone();
        let violations = violations.clone();
        tokio::task::spawn_blocking(move || {
            let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
            loop {
                for node in &nodes {
                    // The simulator is down for a moment during the chaos: skip, try later.
                    let Ok(objects) = sim.lock().unwrap().objects(node) else {
                        continue;
                    };
                    for o in objects {
                        let last = seen.entry((node.clone(), o.uid.clone())).or_insert(0);
                        let stored = rv(&o.resource_version);
                        if stored < *last {
                            violations.lock().unwrap().push(format!(
                                "{node} {}: stored version went back from {last} to {stored}",
                                o.resource
                            ));
                        }
                        *last = (*last).max(stored);
                    }
                }
                if Arc::strong_count(&sim) == 1 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // Churn: 3,000 updates over the 1,000 ConfigMaps, spread by a fixed pseudo-random order.
    let churn = {
        let cms = cms.clone();
        let names = names.clone();
        tokio::spawn(async move {
            stream::iter(0..UPDATES)
                .map(|i| {
                    let cms = cms.clone();
                    let name = names[(i * 7919 + 13) % names.len()].clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(20 * (i as u64 % 8))).await;
                        cms.patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"data": {"v": i.to_string()}})),
                        )
                        .await
                    }
                })
                .buffer_unordered(8)
                .try_collect::<Vec<_>>()
                .await
                .map(|v| v.len())
        })
    };

    // The chaos, while the churn runs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    hub_a.op.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    hub_a.restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    objectsync.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    objectsync.restart().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.lock().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.lock().unwrap().restart().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    hub_b.restart().await.unwrap();

    let updated = churn.await.unwrap().unwrap();
    assert_eq!(updated, UPDATES);

    wait_for(
        "every ObjectSync acked at the live version",
        Duration::from_secs(240),
        || async {
            let trailing = syncs_trailing(&ns).await?;
            if !trailing.is_empty() {
                eprintln!(
                    "{} syncs trail, e.g. {:?}",
                    trailing.len(),
                    trailing.first()
                );
            }
            Ok(trailing.is_empty().then_some(()))
        },
    )
    .await
    .unwrap();
    let syncs = ns
        .api::<ObjectSync>()
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        syncs.items.len(),
        NODES * (CMS_PER_NODE + 1),
        "one sync per (node, object)"
    );

    let want = expected_stores(&ns, &nodes).await;
    wait_for(
        "every agent store equal to the API",
        Duration::from_secs(60),
        || async {
            let sim = sim.lock().unwrap();
            for node in &nodes {
                if stored_set(&sim.objects(node)?) != want[node] {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap();

    assert!(
        !acked_watch.is_finished(),
        "the acked-version watcher stopped watching before the end"
    );
    acked_watch.abort();
    // The store watcher stops once it holds the last reference (and then kills the simulator).
    drop(sim);
    store_watch.await.unwrap();
    let violations = violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "older overwrote newer: {violations:?}"
    );

    // The nodes go away: the objectsync operator removes their syncs (and their finalizers).
    let node_api: Api<Node> = Api::all(client.clone());
    for node in &nodes {
        let _ = node_api.delete(node, &DeleteParams::default()).await;
    }
    wait_for(
        "the deleted nodes' syncs gone",
        Duration::from_secs(120),
        || async {
            let syncs = ns.api::<ObjectSync>().list(&ListParams::default()).await?;
            Ok(syncs.items.is_empty().then_some(()))
        },
    )
    .await
    .unwrap();
}

/// The node's Ready condition: (status, reason).
async fn ready_of(nodes: &Api<Node>, node: &str) -> Result<(String, String), kube::Error> {
    let n = nodes.get(node).await?;
    Ok(n.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status, c.reason.unwrap_or_default()))
        .unwrap_or_default())
}

/// A connected node the node-lifecycle controller marked NotReady comes back Ready from the
/// hub, not only once per session: a 10,000-session benchmark once left 2,194 live nodes
/// NotReady after their renewals lagged past the Lease (the hub re-asserted Ready once, 60 s
/// into a session, and never retried). Here the hub renews every 35 s, so every renewal counts
/// as a possible lapse; the agent's own status report (every 5 min) is out of the window.
#[tokio::test]
async fn channel_a_live_node_marked_not_ready_is_set_ready_again_by_the_hub() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "reready").await.unwrap();
    let dir = repo_root().join("hack/.cluster/e2e").join(&ns.name);
    let hub = HubProcess::start(&ns.name, &["--lease-renew-seconds=35"])
        .await
        .unwrap();
    let token = bootstrap_token_file(&client, &dir).await.unwrap();
    let prefix = format!("{}-", ns.name);
    let node = format!("{prefix}00000");
    let _sim = Simulator::start(
        &ns.name,
        &[
            "--nodes=1".to_string(),
            format!("--name-prefix={prefix}"),
            format!("--hub={}", hub.url()),
            format!("--token-file={}", token.display()),
        ],
    )
    .unwrap();
    wait_nodes_ready(
        &client,
        std::slice::from_ref(&node),
        Duration::from_secs(60),
    )
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    // Twice: the first comes back with the session's first re-assertion (60 s in), the second
    // only if the hub keeps watching for lapses after it.
    for round in ["first", "second"] {
        edgefleet_e2e::mark_node_unknown(&nodes, &node, "Kubelet stopped posting node status.")
            .await
            .unwrap();
        let marked = std::time::Instant::now();
        wait_for(
            &format!("{round} time: the hub sets {node} Ready again"),
            Duration::from_secs(120),
            || async {
                let (status, reason) = ready_of(&nodes, &node).await?;
                Ok((status == "True" && reason == "EdgeSessionReady").then_some(()))
            },
        )
        .await
        .unwrap();
        eprintln!("{round} time: Ready again after {:.0?}", marked.elapsed());
    }
}
