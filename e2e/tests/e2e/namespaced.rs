//! The chart's namespaced mode (`watchNamespaces`) against the real control plane: the chart is
//! rendered with one watched namespace, only its ServiceAccounts and RBAC are applied, and the
//! operators run as those ServiceAccounts (their tokens) with the rendered `--watch-namespace`.
//! A second namespace is left unwatched: the operators neither act there nor can read it.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_api::objectsync::{NODE_LABEL, ObjectSync, sync_name};
use edgefleet_api::rollout::RolloutJob;
use edgefleet_e2e::edge::{HubProcess, TokenScope, join_token, metrics};
use edgefleet_e2e::operator::{Operator, SYSTEM_NAMESPACE, install_chart};
use edgefleet_e2e::{
    DISTURBED_LABEL, TestNamespace, apply_object, client, documents, install_crds, run, wait_for,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::hub::{Edge, Got};

const WAIT: Duration = Duration::from_secs(60);

/// The chart's ServiceAccounts and RBAC, rendered in namespaced mode for `watched` and applied;
/// deleted again on drop (the namespaced Roles go with their namespaces).
struct NamespacedRbac {
    release: String,
    manifest: String,
}

impl NamespacedRbac {
    fn apply(watched: &[&str]) -> NamespacedRbac {
        // Release named after the namespace: its ClusterRoles are this test's own.
        let release = format!("edgefleet-{}", watched[0]);
        let list = watched.join(",");
        let rendered = run(
            "helm",
            &[
                "template",
                &release,
                "charts/edgefleet",
                "--namespace",
                SYSTEM_NAMESPACE,
                "--set",
                &format!("watchNamespaces={{{list}}}"),
            ],
            None,
        )
        .unwrap();
        let rbac = [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
        ];
        let items: Vec<serde_json::Value> = documents(&rendered)
            .unwrap()
            .into_iter()
            .filter(|d| rbac.contains(&d["kind"].as_str().unwrap_or_default()))
            .collect();
        // What the operators run with in namespaced mode: the flag the chart renders.
        assert!(
            rendered.contains(&format!("--watch-namespace={list}")),
            "the rendered Deployments do not pass the watched namespace"
        );
        let manifest = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
        run(
            "kubectl",
            &[
                "apply",
                "--server-side",
                "--field-manager=e2e-namespaced",
                "-f",
                "-",
            ],
            Some(&manifest),
        )
        .unwrap();
        NamespacedRbac { release, manifest }
    }

    fn serviceaccount(&self, component: &str) -> String {
        format!("{}-{component}", self.release)
    }
}

impl Drop for NamespacedRbac {
    fn drop(&mut self) {
        let _ = run(
            "kubectl",
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&self.manifest),
        );
    }
}

/// Whether ServiceAccount `sa` of the system namespace may `verb` `resource` in `namespace`
/// (`None`: cluster-wide), as the API server's authorizer answers.
async fn allowed(
    client: &Client,
    sa: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{sa}")),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

/// An edge Node nothing plays the kubelet of (as in objectsync.rs), named after `ns`.
async fn edge_node(client: &Client, ns: &TestNamespace) -> String {
    let name = format!("{}-edge", ns.name);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            DISTURBED_LABEL: "namespaced",
            "node-role.kubernetes.io/edge": "",
        }},
        "spec": {"taints": [{"key": "edgefleet.io/e2e-namespaced", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    name
}

/// A ConfigMap `toll` and a pod bound to `node` mounting it, in `ns`: what makes the
/// objectsync operator create a sync. The ConfigMap's UID.
async fn workload(client: &Client, ns: &str, node: &str, value: &str) -> String {
    let cm = apply_object(
        client,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "toll"}, "data": {"v": value}}),
        Some(ns),
    )
    .await
    .unwrap();
    apply_object(
        client,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "toll-agent"}, "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "toll"}}],
            "tolerations": [{"operator": "Exists"}],
        }}),
        Some(ns),
    )
    .await
    .unwrap();
    cm.uid().unwrap()
}

/// The sum of a counter's series (0 when absent).
fn counter(addr: &str, name: &str) -> f64 {
    metrics(addr, name).map(|m| m.values().sum()).unwrap_or(0.0)
}

/// The least privilege of namespaced mode, as the API server's authorizer sees it: rights on
/// namespaced resources in the watched namespace only, nothing of them cluster-wide; Nodes and
/// CSRs stay cluster-wide where an operator needs them.
#[tokio::test]
async fn namespaced_rbac_grants_only_the_watched_namespace() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    install_chart().await.unwrap();
    let watched = TestNamespace::new(&client, "nsw").await.unwrap();
    let other = TestNamespace::new(&client, "nsu").await.unwrap();
    let rbac = NamespacedRbac::apply(&[&watched.name]);
    let (w, o) = (Some(watched.name.as_str()), Some(other.name.as_str()));
    let checks: &[(&str, &str, &str, &str)] = &[
        ("rollout", "watch", "edgefleet.io", "rolloutjobs"),
        ("rollout", "delete", "", "pods"),
        ("rollout", "patch", "apps", "daemonsets"),
        (
            "objectsync",
            "create",
            "reliablesyncs.kubeedge.io",
            "objectsyncs",
        ),
        ("objectsync", "list", "", "secrets"),
        ("hub", "watch", "", "configmaps"),
        ("hub", "get", "", "secrets"),
        ("hub", "patch", "reliablesyncs.kubeedge.io", "objectsyncs"),
        ("device", "watch", "devices.kubeedge.io", "devices"),
        ("device", "patch", "devices.kubeedge.io", "devicemodels"),
    ];
    for (component, verb, group, resource) in checks {
        let sa = rbac.serviceaccount(component);
        let what = format!("{sa} {verb} {group}/{resource}");
        assert!(
            allowed(&client, &sa, verb, group, resource, w).await,
            "{what} in the watched namespace"
        );
        assert!(
            !allowed(&client, &sa, verb, group, resource, o).await,
            "{what} in an unwatched namespace"
        );
        assert!(
            !allowed(&client, &sa, verb, group, resource, None).await,
            "{what} cluster-wide"
        );
    }
    // What must stay cluster-wide still is.
    for (component, verb, group, resource) in [
        ("rollout", "watch", "", "nodes"),
        ("objectsync", "watch", "", "nodes"),
        ("device", "watch", "", "nodes"),
        ("hub", "patch", "", "nodes"),
        (
            "hub",
            "create",
            "certificates.k8s.io",
            "certificatesigningrequests",
        ),
    ] {
        let sa = rbac.serviceaccount(component);
        assert!(
            allowed(&client, &sa, verb, group, resource, None).await,
            "{sa} {verb} {group}/{resource} cluster-wide"
        );
    }
}

/// objectsync and the hub with only the namespaced RBAC of two watched namespaces: a pod in
/// each gets its ConfigMap synced, delivered and acked, also after both processes were killed
/// and restarted; the same pod in an unwatched namespace gets no sync, and a sync made there by
/// hand is never delivered. Neither process ever had a watch refused (it never tried beyond
/// its namespaces).
#[tokio::test]
async fn namespaced_objectsync_and_hub_serve_the_watched_namespaces_only() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    install_chart().await.unwrap();
    let watched = TestNamespace::new(&client, "nsw").await.unwrap();
    let second = TestNamespace::new(&client, "nsw2").await.unwrap();
    let other = TestNamespace::new(&client, "nsu").await.unwrap();
    let rbac = NamespacedRbac::apply(&[&watched.name, &second.name]);
    let list = format!("{},{}", watched.name, second.name);
    let node = edge_node(&client, &watched).await;

    let mut objectsync =
        Operator::start_as("objectsync", &rbac.serviceaccount("objectsync"), &list, &[])
            .await
            .unwrap();
    let mut hub = HubProcess::start_as(&rbac.serviceaccount("hub"), &list, &[])
        .await
        .unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = join_token(&client, TokenScope::Node(node.clone()), 3600)
        .await
        .unwrap();
    let id = edge.bootstrap(&node, &token).await.unwrap();
    let mut session = edge.connect(&id, &node).await.unwrap();

    let uid_other = workload(&client, &other.name, &node, "unwatched").await;
    let mut uids = Vec::new();
    for ns in [&watched, &second] {
        uids.push(workload(&client, &ns.name, &node, &ns.name).await);
    }

    // Watched, both namespaces: sync created by the operator, delivered by the hub, acked.
    for (ns, uid) in [&watched, &second].into_iter().zip(&uids) {
        let resource = format!("{}/configmap/toll", ns.name);
        let msg = session.expect(&resource, WAIT).await.unwrap();
        assert_eq!(msg.route.operation, "insert");
        assert_eq!(msg.content["data"]["v"], ns.name.as_str());
        session.ack(&msg).await.unwrap();
        let name = sync_name(&node, uid);
        let syncs: Api<ObjectSync> = ns.api();
        let rv = msg.header.resource_version.clone();
        wait_for("the watched sync acked", WAIT, || async {
            let acked = syncs
                .get_opt(&name)
                .await?
                .and_then(|s| s.status)
                .and_then(|s| s.object_resource_version);
            Ok((acked.as_deref() == Some(rv.as_str())).then_some(()))
        })
        .await
        .unwrap();
    }

    // Unwatched: a sync made there by hand (as a cluster-wide objectsync would) is never
    // delivered, and the operator made none of its own.
    let other_syncs: Api<ObjectSync> = other.api();
    let by_hand = sync_name(&node, &uid_other);
    let mut sync = ObjectSync::new(
        &by_hand,
        edgefleet_api::objectsync::ObjectSyncSpec {
            object_api_version: Some("v1".into()),
            object_kind: "ConfigMap".into(),
            object_name: "toll".into(),
        },
    );
    sync.metadata.labels = Some(BTreeMap::from([(NODE_LABEL.to_string(), node.clone())]));
    other_syncs
        .create(&PostParams::default(), &sync)
        .await
        .unwrap();

    // Both processes killed and restarted (a new list of each namespace); the edge reconnects.
    drop(session);
    objectsync.restart().unwrap();
    hub.restart().await.unwrap();
    let mut session = wait_for("the session again", WAIT, || async {
        Ok(edge.connect(&id, &node).await.ok())
    })
    .await
    .unwrap();

    // The watched namespaces keep being served: a change in each arrives (so both processes
    // were live, and listed, while the unwatched sync sat there).
    for ns in [&watched, &second] {
        apply_object(
            &client,
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "toll"}, "data": {"v": "changed"}}),
            Some(&ns.name),
        )
        .await
        .unwrap();
        let resource = format!("{}/configmap/toll", ns.name);
        let update = session.expect(&resource, WAIT).await.unwrap();
        assert_eq!(update.content["data"]["v"], "changed");
        session.ack(&update).await.unwrap();
    }
    let unwatched_prefix = format!("{}/", other.name);
    match session.next(Duration::from_secs(8)).await {
        None => {}
        Some(Got::Msg(m)) => assert!(
            !m.route.resource.starts_with(&unwatched_prefix),
            "delivered from an unwatched namespace: {}",
            m.route.resource
        ),
        Some(Got::Closed(c)) => panic!("session closed: {c:?}"),
    }
    let listed = other_syncs.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = listed.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(
        names,
        [by_hand],
        "objectsync acted in an unwatched namespace"
    );
    assert!(
        listed.items[0].status.is_none(),
        "the hub wrote the status of an unwatched sync"
    );
    // Nor can the node read it through the hub.
    let reply = session
        .request(
            edgefleet_channel::Operation::Query,
            &format!("{}/configmap/toll", other.name),
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    assert_eq!(reply.route.operation, "error", "{:?}", reply.content);

    // Every watch of both processes was namespaced: not one was refused.
    let hub_addr = hub.op.metrics_addr().await.unwrap().to_string();
    let os_addr = objectsync.metrics_addr().await.unwrap().to_string();
    assert_eq!(counter(&hub_addr, "edgefleet_hub_api_errors_total"), 0.0);
    assert_eq!(
        counter(&os_addr, "edgefleet_objectsync_watch_errors_total"),
        0.0
    );
    for log in [hub.op.log(), objectsync.log()] {
        assert!(!log.contains("forbidden"), "{log}");
    }
    drop(session);
    drop(hub);
    drop(objectsync);
    let _ = Api::<Node>::all(client.clone())
        .delete(&node, &DeleteParams::default())
        .await;
}

/// The rollout operator with only the namespaced RBAC reconciles a RolloutJob in its namespace;
/// one in an unwatched namespace is simply not seen: no status, no finalizer, not in its log.
/// Told to watch a namespace its RBAC does not cover (a misconfigured `--watch-namespace`), it
/// says so: the API server's "forbidden" naming that namespace, in its log, while the watched
/// namespace is still served.
#[tokio::test]
async fn namespaced_rollout_ignores_an_unwatched_namespace_and_says_when_it_cannot_watch() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    install_chart().await.unwrap();
    let watched = TestNamespace::new(&client, "nsw").await.unwrap();
    let other = TestNamespace::new(&client, "nsu").await.unwrap();
    let rbac = NamespacedRbac::apply(&[&watched.name]);
    let job = |name: &str| {
        json!({
            "apiVersion": "edgefleet.io/v1alpha1", "kind": "RolloutJob",
            "metadata": {"name": name},
            "spec": {
                "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "none"}}},
                "image": "registry.example/app:2",
            },
        })
    };
    apply_object(&client, &job("in-other"), Some(&other.name))
        .await
        .unwrap();
    apply_object(&client, &job("in-watched"), Some(&watched.name))
        .await
        .unwrap();

    // Misconfigured on purpose: the unwatched namespace is listed but not in its RBAC.
    let rollout = Operator::start_as(
        "rollout",
        &rbac.serviceaccount("rollout"),
        &format!("{},{}", watched.name, other.name),
        &[],
    )
    .await
    .unwrap();
    let jobs: Api<RolloutJob> = watched.api();
    wait_for("the watched job reconciled", WAIT, || async {
        let j = jobs.get("in-watched").await?;
        Ok(j.status.and_then(|s| s.observed_generation).map(|_| ()))
    })
    .await
    .unwrap();
    wait_for("the operator to say it cannot watch", WAIT, || async {
        Ok(rollout
            .log()
            .lines()
            .any(|l| l.contains("forbidden") && l.contains(&other.name))
            .then_some(()))
    })
    .await
    .unwrap();
    let in_other = other.api::<RolloutJob>().get("in-other").await.unwrap();
    assert!(in_other.status.is_none(), "{:?}", in_other.status);
    assert!(
        in_other.finalizers().is_empty(),
        "{:?}",
        in_other.finalizers()
    );
    // Forbidden means not seen: it never reconciled anything there.
    assert!(
        !rollout
            .log()
            .lines()
            .any(|l| l.contains("in-other") && !l.contains("forbidden")),
        "{}",
        rollout.log()
    );
    drop(rollout);
    // The operator is gone: take the watched job's finalizer off so its namespace can go.
    let _ = run(
        "kubectl",
        &[
            "patch",
            "rolloutjob",
            "in-watched",
            "-n",
            &watched.name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
}
