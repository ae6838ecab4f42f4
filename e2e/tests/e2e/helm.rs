//! The charts through Helm itself against the real API server: install into a namespace that
//! enforces the restricted Pod Security Standard, upgrade with changed values, uninstall leaving
//! nothing of ours but the CRDs and the custom resources; the CRD chart upgraded from an older
//! rendering. Pods never run here (no kubelet can run the operator image): the tests assert on
//! objects, and on the pods being admitted and kept off the edge nodes.

use edgefleet_e2e::{FIELD_MANAGER, TestNamespace, client, install_crds, repo_root, run, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use std::time::Duration;

fn helm(args: &[&str]) -> String {
    run("helm", args, None).unwrap_or_else(|e| panic!("{e:#}"))
}

fn container(d: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn args(d: &Deployment) -> Vec<String> {
    container(d).args.clone().unwrap_or_default()
}

fn env(d: &Deployment, name: &str) -> Option<String> {
    container(d)
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// Names of the objects of kind `K` carrying the release's instance label.
async fn names_of<K>(api: &Api<K>, release: &str) -> Vec<String>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let selector = format!("app.kubernetes.io/instance={release}");
    api.list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect()
}

/// Everything of the release, namespaced and cluster-scoped, by kind.
async fn leftovers(client: &Client, ns: &str, release: &str) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! collect {
        ($kind:ty, $api:expr) => {
            let api: Api<$kind> = $api;
            for name in names_of(&api, release).await {
                out.push(format!("{} {name}", stringify!($kind)));
            }
        };
    }
    collect!(Deployment, Api::namespaced(client.clone(), ns));
    collect!(Pod, Api::namespaced(client.clone(), ns));
    collect!(ServiceAccount, Api::namespaced(client.clone(), ns));
    collect!(
        k8s_openapi::api::core::v1::Service,
        Api::namespaced(client.clone(), ns)
    );
    collect!(PodDisruptionBudget, Api::namespaced(client.clone(), ns));
    collect!(Role, Api::namespaced(client.clone(), ns));
    collect!(RoleBinding, Api::namespaced(client.clone(), ns));
    collect!(Role, Api::namespaced(client.clone(), "kube-node-lease"));
    collect!(
        RoleBinding,
        Api::namespaced(client.clone(), "kube-node-lease")
    );
    collect!(ClusterRole, Api::all(client.clone()));
    collect!(ClusterRoleBinding, Api::all(client.clone()));
    out
}

#[tokio::test]
async fn install_upgrade_uninstall_in_a_restricted_namespace() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "helm").await.unwrap();
    // The release is named after the namespace: its cluster-scoped names are unique too.
    let release = ns.name.as_str();
    run(
        "kubectl",
        &[
            "label",
            "namespace",
            release,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
            "pod-security.kubernetes.io/warn=restricted",
        ],
        None,
    )
    .unwrap();

    // Install with the defaults.
    helm(&[
        "install",
        release,
        "charts/edgefleet",
        "--namespace",
        release,
    ]);
    let deployments: Api<Deployment> = ns.api();
    let name = |op: &str| format!("{release}-edgefleet-{op}");
    let mut want_pods = 0;
    for op in ["rollout", "objectsync", "hub", "balancer", "device"] {
        let d = deployments.get(&name(op)).await.unwrap();
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2), "{op}");
        want_pods += 2;
        let a = args(&d);
        assert!(a.contains(&"--log-format=json".to_owned()), "{op}: {a:?}");
        assert!(a.contains(&"--leader-elect=true".to_owned()), "{op}: {a:?}");
        assert_eq!(env(&d, "RUST_LOG").as_deref(), Some("info"), "{op}");
        let pdbs: Api<PodDisruptionBudget> = ns.api();
        pdbs.get(&name(op)).await.unwrap();
    }
    // Every operator is on by default, the device operator included.
    let sas: Api<ServiceAccount> = ns.api();
    let mut sa_names = names_of(&sas, release).await;
    sa_names.sort();
    assert_eq!(
        sa_names,
        [
            name("balancer"),
            name("device"),
            name("hub"),
            name("objectsync"),
            name("rollout")
        ],
        "one ServiceAccount per enabled operator"
    );

    // Restricted pod security, enforced on the pods the ReplicaSets create: every replica
    // admitted. And none lands on an edge node (every node of the test bed is one).
    let pods: Api<Pod> = ns.api();
    let selector = format!("app.kubernetes.io/instance={release}");
    wait_for(
        &format!("{want_pods} pods admitted under the restricted policy"),
        Duration::from_secs(60),
        || async {
            let n = pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .len();
            Ok((n == want_pods).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| {
        let rs = run("kubectl", &["get", "rs", "-n", release, "-o", "yaml"], None);
        panic!("{e:#}\nReplicaSets: {rs:?}")
    });
    wait_for(
        "the scheduler to find no non-edge node for every pod",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default().labels(&selector)).await?;
            let unschedulable = list.items.iter().all(|p| {
                let status = p.status.clone().unwrap_or_default();
                p.spec.as_ref().and_then(|s| s.node_name.clone()).is_none()
                    && status.conditions.unwrap_or_default().iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
            });
            Ok(unschedulable.then_some(()))
        },
    )
    .await
    .unwrap();

    // A custom resource of the user's: it must outlive the release.
    let jobs: Api<edgefleet_api::rollout::RolloutJob> = ns.api();
    jobs.patch(
        "keep-me",
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "edgefleet.io/v1alpha1",
            "kind": "RolloutJob",
            "metadata": {"name": "keep-me"},
            "spec": {
                "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll-agent"}}},
                "image": "registry.example/toll/agent:2.0",
                "batches": {"size": 1}
            }
        })),
    )
    .await
    .unwrap();

    // Upgrade: changed values show in the objects; a disabled operator leaves no trace.
    helm(&[
        "upgrade",
        release,
        "charts/edgefleet",
        "--namespace",
        release,
        "--set",
        "operators.rollout.replicas=3",
        "--set",
        "operators.rollout.logLevel=debug",
        "--set",
        "logFormat=text",
        "--set",
        "operators.objectsync.extraArgs={--workers=8}",
        "--set",
        "image.tag=0.1.1",
        "--set",
        "operators.hub.enabled=false",
    ]);
    let rollout = deployments.get(&name("rollout")).await.unwrap();
    assert_eq!(rollout.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(env(&rollout, "RUST_LOG").as_deref(), Some("debug"));
    assert!(args(&rollout).contains(&"--log-format=text".to_owned()));
    assert_eq!(
        container(&rollout).image.as_deref(),
        Some("ghcr.io/edgefleet/edgefleet:0.1.1")
    );
    let objectsync = deployments.get(&name("objectsync")).await.unwrap();
    assert!(args(&objectsync).contains(&"--workers=8".to_owned()));
    assert_eq!(env(&objectsync, "RUST_LOG").as_deref(), Some("info"));
    let left = leftovers(&client, release, release).await;
    let hub_left: Vec<&String> = left
        .iter()
        .filter(|o| o.contains("edgefleet-hub") && !o.starts_with("Pod "))
        .collect();
    assert!(hub_left.is_empty(), "hub disabled, yet: {hub_left:?}");

    // A typo in values fails the upgrade with the path of the key, and changes nothing.
    let typo = run(
        "helm",
        &[
            "upgrade",
            release,
            "charts/edgefleet",
            "--namespace",
            release,
            "--set",
            "operators.rollout.replica=1",
        ],
        None,
    )
    .unwrap_err();
    assert!(
        format!("{typo:#}").contains("additional properties 'replica' not allowed"),
        "{typo:#}"
    );

    // Uninstall: nothing of ours left (cluster-scoped RBAC included) but the CRDs and the CRs.
    helm(&[
        "uninstall",
        release,
        "--namespace",
        release,
        "--wait",
        "--timeout",
        "60s",
    ]);
    wait_for(
        "every object of the release to be gone",
        Duration::from_secs(60),
        || async {
            let left = leftovers(&client, release, release).await;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!("{e:#}: left over");
    });
    let secrets = run(
        "kubectl",
        &[
            "get",
            "secrets",
            "-n",
            release,
            "-l",
            "owner=helm",
            "-o",
            "name",
        ],
        None,
    )
    .unwrap();
    assert!(secrets.trim().is_empty(), "helm release records: {secrets}");
    jobs.get("keep-me").await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get("rolloutjobs.edgefleet.io").await.unwrap();
}

/// The CRD chart as a release of its own: an older rendering installed (adopting CRDs applied
/// before without Helm), then upgraded to this one; the CRDs follow the chart, and survive the
/// release's uninstall (`helm.sh/resource-policy: keep`).
///
/// The CRDs are cluster-wide and other tests use them at the same time, so the "older"
/// rendering differs only where no test looks: the chart version (the `helm.sh/chart` label,
/// written by Helm alone) and an extra label the upgrade must remove.
#[tokio::test]
async fn crd_chart_upgrades_from_an_older_rendering_and_keeps_crds() {
    let client = client().await.unwrap();
    let names = install_crds(&client).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    const RELEASE: &str = "edgefleet-crds";
    const NS: &str = "default";

    // The older chart: version 0.0.9, one more label on every CRD.
    let old = repo_root().join("hack/.cluster/e2e/edgefleet-crds-0.0.9");
    let _ = std::fs::remove_dir_all(&old);
    std::fs::create_dir_all(old.join("templates")).unwrap();
    let src = repo_root().join("charts/edgefleet-crds");
    for entry in ["values.yaml", "values.schema.json"] {
        std::fs::copy(src.join(entry), old.join(entry)).unwrap();
    }
    run(
        "cp",
        &["-r", "charts/edgefleet-crds/files", old.to_str().unwrap()],
        None,
    )
    .unwrap();
    let chart = std::fs::read_to_string(src.join("Chart.yaml")).unwrap();
    std::fs::write(
        old.join("Chart.yaml"),
        chart.replace("\nversion: 0.1.0\n", "\nversion: 0.0.9\n"),
    )
    .unwrap();
    let template = std::fs::read_to_string(src.join("templates/crds.yaml")).unwrap();
    let marked = template.replace(
        r#"(dict "app.kubernetes.io/part-of" "edgefleet""#,
        r#"(dict "edgefleet.io/e2e-old-rendering" "true" "app.kubernetes.io/part-of" "edgefleet""#,
    );
    assert_ne!(
        marked, template,
        "the CRD template changed: update this test"
    );
    std::fs::write(old.join("templates/crds.yaml"), marked).unwrap();

    // CRDs applied without Helm (install_crds) are adopted into the release, as README says.
    for name in &names {
        let crd = format!("crd/{name}");
        run(
            "kubectl",
            &[
                "annotate",
                "--overwrite",
                &crd,
                &format!("meta.helm.sh/release-name={RELEASE}"),
                &format!("meta.helm.sh/release-namespace={NS}"),
            ],
            None,
        )
        .unwrap();
        run(
            "kubectl",
            &[
                "label",
                "--overwrite",
                &crd,
                "app.kubernetes.io/managed-by=Helm",
            ],
            None,
        )
        .unwrap();
    }
    helm(&[
        "upgrade",
        "--install",
        RELEASE,
        old.to_str().unwrap(),
        "--namespace",
        NS,
    ]);
    for name in &names {
        let labels = crds.get(name).await.unwrap().labels().clone();
        assert_eq!(labels["helm.sh/chart"], "edgefleet-crds-0.0.9", "{name}");
        assert_eq!(labels["edgefleet.io/e2e-old-rendering"], "true", "{name}");
    }
    let uids: Vec<String> = {
        let mut v = Vec::new();
        for name in &names {
            v.push(crds.get(name).await.unwrap().uid().unwrap());
        }
        v
    };

    helm(&[
        "upgrade",
        RELEASE,
        "charts/edgefleet-crds",
        "--namespace",
        NS,
    ]);
    for name in &names {
        let crd = crds.get(name).await.unwrap();
        let labels = crd.labels();
        assert_eq!(labels["helm.sh/chart"], "edgefleet-crds-0.1.0", "{name}");
        assert!(
            !labels.contains_key("edgefleet.io/e2e-old-rendering"),
            "{name}: the upgrade left the old rendering's label"
        );
        assert_eq!(
            crd.annotations()
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep"),
            "{name}: without keep, uninstalling would delete every custom resource"
        );
    }

    helm(&["uninstall", RELEASE, "--namespace", NS, "--wait"]);
    for (name, uid) in names.iter().zip(&uids) {
        let crd = crds.get(name).await.unwrap();
        assert_eq!(crd.uid().as_ref(), Some(uid), "{name} was recreated");
        assert!(crd.metadata.deletion_timestamp.is_none(), "{name} deleting");
    }
}
