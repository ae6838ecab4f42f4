//! The objectsync operator against the real control plane, run as the chart's ServiceAccount.
//! No hub runs here: the tests play the hub's part of the contract themselves (ACK = status
//! patch, edge delete ACK = finalizer removed).
//!
//! Each test makes its own Node objects (unique names, edge label, no kwok annotation, so
//! nothing plays their kubelet; a NoSchedule taint keeps other tests' pods off them, and the
//! disturbed label keeps them out of the all-Ready check). Pods are bound by `nodeName`.

use edgefleet_api::objectsync::{NODE_LABEL, ObjectSync};
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::{DISTURBED_LABEL, TestNamespace, apply_object, client, install_crds, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const EDGE_LABEL: &str = "node-role.kubernetes.io/edge";
const FINALIZER: &str = "edgefleet.io/edge-delete";
const UID_LABEL: &str = "edgefleet.io/object-uid";
const RESYNC: &str = "edgefleet.io/resync-requested";
const WAIT: Duration = Duration::from_secs(60);

struct Bed {
    client: Client,
    ns: TestNamespace,
    nodes: Vec<String>,
}

async fn bed(prefix: &str) -> Bed {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, prefix).await.unwrap();
    Bed {
        client,
        ns,
        nodes: Vec::new(),
    }
}

impl Bed {
    async fn operator(&self, extra: &[&str]) -> Operator {
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        Operator::start_with_args("objectsync", &self.ns.name, &extra)
            .await
            .unwrap()
    }

    /// A Node named after the namespace; `edge` adds the edge role label.
    async fn node(&mut self, suffix: &str, edge: bool) -> String {
        let name = format!("{}-{suffix}", self.ns.name);
        let mut labels = json!({ DISTURBED_LABEL: "objectsync" });
        if edge {
            labels[EDGE_LABEL] = json!("");
        }
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": [{"key": "edgefleet.io/e2e-objectsync", "effect": "NoSchedule"}]}
        }))
        .unwrap();
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        self.nodes.push(name.clone());
        name
    }

    async fn delete_node(&self, name: &str) {
        let _ = Api::<Node>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }

    async fn apply(&self, value: serde_json::Value) -> String {
        apply_object(&self.client, &value, Some(&self.ns.name))
            .await
            .unwrap()
            .uid()
            .unwrap()
    }

    async fn configmap(&self, name: &str) -> String {
        self.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name}, "data": {"k": "v"}
        }))
        .await
    }

    async fn secret(&self, name: &str) -> String {
        self.apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "stringData": {"k": "v"}
        }))
        .await
    }

    /// A pod bound to `node`: ConfigMap `cm` as a volume, Secret `env` through envFrom,
    /// Secret `pull` as an imagePullSecret (each optional).
    async fn pod(
        &self,
        name: &str,
        node: &str,
        cm: Option<&str>,
        env: Option<&str>,
        pull: Option<&str>,
    ) -> String {
        let mut spec = json!({
            "nodeName": node,
            // Else the token volume adds kube-root-ca.crt (delivered too, as the edge mounts
            // it; the unit tests cover projected volumes).
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
            "tolerations": [{"operator": "Exists"}],
        });
        if let Some(cm) = cm {
            spec["volumes"] = json!([{"name": "cfg", "configMap": {"name": cm}}]);
            spec["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/cfg"}]);
        }
        if let Some(env) = env {
            spec["containers"][0]["envFrom"] = json!([{"secretRef": {"name": env}}]);
        }
        if let Some(pull) = pull {
            spec["imagePullSecrets"] = json!([{"name": pull}]);
        }
        self.apply(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
        )
        .await
    }

    async fn delete_pod(&self, name: &str) {
        self.ns
            .api::<Pod>()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }

    fn syncs(&self) -> Api<ObjectSync> {
        self.ns.api()
    }

    async fn list_syncs(&self) -> Vec<ObjectSync> {
        self.syncs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Waits until the syncs of `node` are exactly the ones for `uids`, none being deleted.
    async fn wait_syncs(&self, node: &str, uids: &[&str]) -> Vec<ObjectSync> {
        let want: BTreeSet<String> = uids.iter().map(|u| format!("{node}.{u}")).collect();
        let api = self.syncs();
        wait_for(&format!("syncs of {node} = {want:?}"), WAIT, || async {
            let list = api
                .list(&ListParams::default().labels(&format!("{NODE_LABEL}={node}")))
                .await?
                .items;
            let live: BTreeSet<String> = list
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none())
                .map(|s| s.name_any())
                .collect();
            Ok((live == want).then_some(list))
        })
        .await
        .unwrap()
    }

    /// Plays the hub's edge-delete ACK: drops the finalizer of every sync being deleted.
    async fn ack_deletes(&self) -> usize {
        let mut acked = 0;
        for s in self.list_syncs().await {
            if s.metadata.deletion_timestamp.is_some()
                && s.finalizers().iter().any(|f| f == FINALIZER)
            {
                let kept: Vec<&String> =
                    s.finalizers().iter().filter(|f| *f != FINALIZER).collect();
                let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": s.resource_version()}});
                self.syncs()
                    .patch(
                        &s.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .unwrap();
                acked += 1;
            }
        }
        acked
    }

    /// Plays the hub's delivery ACK.
    async fn ack(&self, sync: &str, rv: &str) {
        let now = jiff::Timestamp::now().to_string();
        let patch = json!({"status": {
            "objectResourceVersion": rv,
            "lastAttemptTime": now,
            "attempts": 1,
            "conditions": [{"type": "Delivered", "status": "True", "reason": "Acked", "message": "", "lastTransitionTime": now}]
        }});
        self.syncs()
            .patch_status(sync, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Deletes the test's nodes with the operator still running and waits until every sync
    /// of the namespace is gone (the operator releases a deleted node's syncs itself).
    async fn finish(self, operator: Operator) {
        for n in &self.nodes {
            self.delete_node(n).await;
        }
        let api = self.syncs();
        wait_for("every sync released after the nodes went", WAIT, || async {
            Ok(api
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        })
        .await
        .unwrap();
        drop(operator);
    }
}

/// A failed test leaves no node behind, and no finalizer that would keep its namespace
/// Terminating forever (no hub, and the operator is stopped before the bed is dropped).
impl Drop for Bed {
    fn drop(&mut self) {
        if std::env::var("EDGEFLEET_E2E_KEEP").as_deref() == Ok("1") {
            return;
        }
        let kubectl = |args: &[&str]| {
            std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(edgefleet_e2e::kubeconfig_path())
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
        };
        if !self.nodes.is_empty() {
            let mut args = vec!["delete", "node", "--ignore-not-found", "--wait=false"];
            args.extend(self.nodes.iter().map(String::as_str));
            kubectl(&args);
        }
        let names = kubectl(&["get", "objectsyncs", "-n", &self.ns.name, "-o", "name"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for name in names.lines().filter(|l| !l.is_empty()) {
            kubectl(&[
                "patch",
                "-n",
                &self.ns.name,
                name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
}

/// The operator's `/metrics` (its address is in its log: it listens on a free port).
fn scrape(operator: &Operator) -> BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let log = operator.log();
    let addr = log
        .lines()
        .rev()
        .find_map(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        .expect("the operator logs its metrics address");
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with("edgefleet_objectsync_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn labels_of(s: &ObjectSync) -> BTreeMap<String, String> {
    s.labels().clone()
}

#[tokio::test]
async fn objectsync_delivers_what_each_edge_node_needs_and_collects_the_rest() {
    let mut bed = bed("objectsync").await;
    let a = bed.node("a", true).await;
    let b = bed.node("b", true).await;
    let cloud = bed.node("cloud", false).await;
    let cm = bed.configmap("cfg").await;
    let env = bed.secret("creds").await;
    let pull = bed.secret("pull").await;
    let _unused = bed.configmap("unused").await;
    let model = bed
        .apply(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": "thermometer"},
            "spec": {"protocol": "modbus", "properties": [{"name": "temp", "type": "INT", "accessMode": "ReadOnly"}]}
        }))
        .await;
    let device = bed
        .apply(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "gantry-thermo"},
            "spec": {"deviceModelRef": {"name": "thermometer"}, "nodeName": a}
        }))
        .await;
    let pa = bed
        .pod("pa", &a, Some("cfg"), Some("creds"), Some("pull"))
        .await;
    let pb = bed.pod("pb", &b, Some("cfg"), None, None).await;
    let _pc = bed
        .pod("pc", &cloud, Some("cfg"), Some("creds"), None)
        .await;

    let operator = bed.operator(&[]).await;

    let on_a = bed
        .wait_syncs(&a, &[&pa, &cm, &env, &pull, &device, &model])
        .await;
    bed.wait_syncs(&b, &[&pb, &cm]).await;
    for s in &on_a {
        let labels = labels_of(s);
        let uid = s.name_any().rsplit_once('.').unwrap().1.to_owned();
        assert_eq!(labels.get(NODE_LABEL), Some(&a), "{}", s.name_any());
        assert_eq!(labels.get(UID_LABEL), Some(&uid), "{}", s.name_any());
        assert_eq!(s.finalizers(), [FINALIZER], "{}", s.name_any());
        assert!(s.status.is_none(), "status starts empty: {:?}", s.status);
    }
    let kinds: BTreeSet<(String, String, Option<String>)> = on_a
        .iter()
        .map(|s| {
            (
                s.spec.object_kind.clone(),
                s.spec.object_name.clone(),
                s.spec.object_api_version.clone(),
            )
        })
        .collect();
    let v1 = Some("v1".to_string());
    let dev = Some("devices.kubeedge.io/v1beta1".to_string());
    assert_eq!(
        kinds,
        BTreeSet::from([
            ("ConfigMap".into(), "cfg".into(), v1.clone()),
            ("Device".into(), "gantry-thermo".into(), dev.clone()),
            ("DeviceModel".into(), "thermometer".into(), dev),
            ("Pod".into(), "pa".into(), v1.clone()),
            ("Secret".into(), "creds".into(), v1.clone()),
            ("Secret".into(), "pull".into(), v1),
        ])
    );
    // The non-edge node's pod, and objects no edge pod references, get nothing.
    let all = bed.list_syncs().await;
    assert_eq!(
        all.len(),
        8,
        "{:?}",
        all.iter().map(|s| s.name_any()).collect::<Vec<_>>()
    );
    assert!(
        !all.iter()
            .any(|s| s.name_any().starts_with(&format!("{cloud}.")))
    );

    // The pod goes: its sync and those of what only it referenced on A are deleted, held by
    // the finalizer until the (simulated) hub has the edge delete them.
    bed.delete_pod("pa").await;
    let held: BTreeSet<String> = [&pa, &cm, &env, &pull]
        .iter()
        .map(|u| format!("{a}.{u}"))
        .collect();
    let api = bed.syncs();
    wait_for("A's pod syncs marked for deletion", WAIT, || async {
        let deleting: BTreeSet<String> = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_some())
            .map(|s| s.name_any())
            .collect();
        Ok((deleting == held).then_some(()))
    })
    .await
    .unwrap();
    // Still held a while later: only the edge's ACK releases them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in &held {
        let s = api.get(name).await.unwrap();
        assert_eq!(
            s.finalizers(),
            [FINALIZER],
            "{name} released without an ACK"
        );
    }
    assert_eq!(bed.ack_deletes().await, 4);
    bed.wait_syncs(&a, &[&device, &model]).await;
    bed.wait_syncs(&b, &[&pb, &cm]).await;

    // Node A deleted: its syncs are removed by the operator, finalizers and all.
    bed.delete_node(&a).await;
    wait_for("A's syncs gone", WAIT, || async {
        let left = api
            .list(&ListParams::default().labels(&format!("{NODE_LABEL}={a}")))
            .await?
            .items;
        Ok(left.is_empty().then_some(()))
    })
    .await
    .unwrap();
    bed.wait_syncs(&b, &[&pb, &cm]).await;
    bed.finish(operator).await;
}

#[tokio::test]
async fn objectsync_asks_for_a_resync_of_trailing_deliveries_after_the_window() {
    let mut bed = bed("objectsync-resync").await;
    let a = bed.node("a", true).await;
    let cm = bed.configmap("cfg").await;
    let odd = bed.secret("odd").await;
    let pod = bed.pod("p", &a, Some("cfg"), Some("odd"), None).await;
    let operator = bed.operator(&["--resend-window-seconds=2"]).await;
    bed.wait_syncs(&a, &[&pod, &cm, &odd]).await;

    let cm_sync = format!("{a}.{cm}");
    let odd_sync = format!("{a}.{odd}");
    let pod_sync = format!("{a}.{pod}");
    let cms: Api<ConfigMap> = bed.ns.api();
    let api = bed.syncs();

    // Never acked: asked for after the window.
    wait_for(
        "a resync request for the unacked pod sync",
        WAIT,
        || async {
            let s = api.get(&pod_sync).await?;
            Ok(s.annotations().contains_key(RESYNC).then_some(()))
        },
    )
    .await
    .unwrap();

    // Acked at the live version: left alone (whatever was asked before the ACK stays as it
    // was). An unorderable acked version: left alone, no crash (the operator still works).
    let rv = cms.get("cfg").await.unwrap().resource_version().unwrap();
    bed.ack(&cm_sync, &rv).await;
    bed.ack(&odd_sync, "not-a-number").await;
    let mut asked_before = BTreeMap::new();
    for name in [&cm_sync, &odd_sync] {
        let s = api.get(name).await.unwrap();
        asked_before.insert(name.clone(), s.annotations().get(RESYNC).cloned());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in [&cm_sync, &odd_sync] {
        let s = api.get(name).await.unwrap();
        assert_eq!(
            s.annotations().get(RESYNC),
            asked_before[name].as_ref(),
            "{name} asked for after its ACK"
        );
    }

    // The ConfigMap changes and the "hub" does not deliver: asked for after the window.
    let before = jiff::Timestamp::now();
    cms.patch(
        "cfg",
        &PatchParams::apply("edgefleet-e2e").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v2"}})),
    )
    .await
    .unwrap();
    let previous = asked_before[&cm_sync].clone();
    let asked: String = wait_for(
        "a resync request for the trailing ConfigMap sync",
        WAIT,
        || async {
            let s = api.get(&cm_sync).await?;
            Ok(s.annotations()
                .get(RESYNC)
                .cloned()
                .filter(|a| Some(a) != previous.as_ref()))
        },
    )
    .await
    .unwrap();
    let asked_at: jiff::Timestamp = asked.parse().unwrap();
    assert!(
        asked_at.duration_since(before) >= jiff::SignedDuration::from_millis(1500),
        "asked {asked_at} before the window since the change at {before} was over"
    );

    // Delivered now: no further asks.
    let rv = cms.get("cfg").await.unwrap().resource_version().unwrap();
    bed.ack(&cm_sync, &rv).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = api.get(&cm_sync).await.unwrap();
    assert_eq!(
        s.annotations().get(RESYNC),
        Some(&asked),
        "asked again after the ACK"
    );

    let metrics = scrape(&operator);
    assert!(
        metrics["edgefleet_objectsync_resyncs_total"] >= 2.0,
        "{metrics:?}"
    );
    assert!(
        metrics["edgefleet_objectsync_created_total"] >= 3.0,
        "{metrics:?}"
    );
    assert_eq!(metrics["edgefleet_objectsync_leader"], 1.0);
    bed.finish(operator).await;
}

#[tokio::test]
async fn objectsync_killed_mid_way_converges_without_duplicates() {
    let mut bed = bed("objectsync-restart").await;
    let a = bed.node("a", true).await;
    let b = bed.node("b", true).await;
    let shared = bed.configmap("shared").await;
    let mut uids: BTreeMap<String, Vec<String>> = BTreeMap::new();

    // A sync as KubeEdge would have made it (no labels, no finalizer) before the operator
    // ever ran: adopted, not duplicated.
    let first = bed.pod("p-0", &a, Some("shared"), None, None).await;
    bed.syncs()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{a}.{first}")},
                "spec": {"objectAPIVersion": "v1", "objectKind": "Pod", "objectName": "p-0"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    uids.entry(a.clone())
        .or_default()
        .extend([first, shared.clone()]);

    let mut operator = bed.operator(&[]).await;
    for i in 1..24 {
        let node = if i % 2 == 0 { &a } else { &b };
        let secret = bed.secret(&format!("s-{i}")).await;
        let pod = bed
            .pod(
                &format!("p-{i}"),
                node,
                Some("shared"),
                Some(&format!("s-{i}")),
                None,
            )
            .await;
        let list = uids.entry(node.clone()).or_default();
        list.extend([pod, secret]);
        if !list.contains(&shared) {
            list.push(shared.clone());
        }
        // Killed at arbitrary points while it works.
        if i % 8 == 0 {
            operator.restart().unwrap();
        }
        if i == 12 {
            operator.kill();
        }
        if i == 16 {
            operator.restart().unwrap();
        }
    }
    for (node, list) in &uids {
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        bed.wait_syncs(node, &refs).await;
    }
    // One sync per (node, object), every one labelled and held by the finalizer.
    let all = bed.list_syncs().await;
    let expected: usize = uids.values().map(Vec::len).sum();
    assert_eq!(all.len(), expected);
    // The exact set of (node, object) pairs the pods ask for, read from what each sync says
    // (its labels and its spec), not from its name: a sync for a wrong node or object, or two
    // syncs naming the same object in different ways, makes the sets differ.
    let want: BTreeSet<(String, String)> = uids
        .iter()
        .flat_map(|(node, list)| list.iter().map(move |uid| (node.clone(), uid.clone())))
        .collect();
    let mut pairs = BTreeSet::new();
    let mut objects = BTreeSet::new();
    for s in &all {
        let labels = labels_of(s);
        let (Some(node), Some(uid)) = (labels.get(NODE_LABEL), labels.get(UID_LABEL)) else {
            panic!("{} unlabelled", s.name_any());
        };
        pairs.insert((node.clone(), uid.clone()));
        assert!(
            objects.insert((
                node.clone(),
                s.spec.object_kind.clone(),
                s.spec.object_name.clone()
            )),
            "two syncs deliver {} {} to {node}",
            s.spec.object_kind,
            s.spec.object_name
        );
        assert_eq!(s.finalizers(), [FINALIZER]);
    }
    assert_eq!(pairs, want, "the syncs' (node, object) pairs");
    bed.finish(operator).await;
}
