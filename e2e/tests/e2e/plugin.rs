//! The kubectl plugin against the real control plane, run as a subprocess the way a user
//! runs it: `kubectl edgefleet ...` through the test bed's kubectl, with `target/debug` on
//! PATH (plugin discovery), or the binary itself where a test needs its own kubeconfig.

use crate::rollout::{NEW, OLD, STATION, bed, create_job, wait_phase};
use edgefleet_api::objectsync::{NODE_LABEL, ObjectSync};
use edgefleet_api::rollout::{RolloutJob, RolloutPhase};
use edgefleet_e2e::{
    TestNamespace, apply_object, client, install_crds, kubeconfig_path, repo_root, wait_for,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn target_debug() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("debug")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `kubectl edgefleet <args>` (plugin discovery through PATH) or, with `direct`, the
/// binary itself, with `kubeconfig`; kills it after `timeout`.
async fn plugin(args: &[&str], kubeconfig: &Path, direct: bool, timeout: Duration) -> Run {
    let bin = target_debug().join("kubectl-edgefleet");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p kubectl-edgefleet",
        bin.display()
    );
    let path = format!(
        "{}:{}",
        target_debug().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = repo_root().join("hack/.cluster/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = dir.join(format!("plugin-{}-{n}.out", std::process::id()));
    let err_path = dir.join(format!("plugin-{}-{n}.err", std::process::id()));
    let mut cmd = if direct {
        Command::new(&bin)
    } else {
        let mut c = Command::new("kubectl");
        c.arg("edgefleet");
        c
    };
    let mut child = cmd
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubectl edgefleet {} still running after {timeout:?}; output so far:\n{}\n{}",
                args.join(" "),
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let run = Run {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(err_path);
    run
}

async fn kubectl_edgefleet(args: &[&str]) -> Run {
    plugin(args, &kubeconfig_path(), false, Duration::from_secs(60)).await
}

/// A DaemonSet `name` with a pod on every node of `station`, all Ready.
async fn daemonset(ns: &TestNamespace, name: &str, station: &str) {
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"edgefleet.io/sim-pull-seconds": "1"}},
                "spec": {
                    "nodeSelector": {STATION: station},
                    "containers": [{"name": "agent", "image": OLD}]
                }
            }
        }
    }))
    .unwrap();
    let api: Api<DaemonSet> = ns.api();
    api.create(&PostParams::default(), &ds).await.unwrap();
    wait_for(
        &format!("DaemonSet {name} Ready"),
        Duration::from_secs(90),
        || async {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok(
                (s.desired_number_scheduled > 0 && s.number_ready == s.desired_number_scheduled)
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_watches_a_rollout_to_completion() {
    let bed = bed("plugin-watch").await;
    let ns = bed.ns.name.clone();
    daemonset(&bed.ns, "toll", "station-0").await;
    create_job(&bed, "toll-2", "toll", NEW, json!({"batches": {"size": 5}})).await;

    // Through kubectl: the plugin is found on PATH. Not a TTY: one line per change.
    let run = plugin(
        &[
            "rollout",
            "status",
            "toll-2",
            "-w",
            "-n",
            &ns,
            "--timeout",
            "150",
        ],
        &kubeconfig_path(),
        false,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Progressing") && l.contains("batch ")),
        "{}",
        run.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Completed") && l.contains("updated 10/10 (100%)")),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains('\x1b'),
        "no cursor movement when not a TTY: {:?}",
        run.stdout
    );
    // The full view at the end: bar and batch table.
    assert!(
        run.stdout
            .contains(&format!("rolloutjob {ns}/toll-2: Completed, batch 2/2")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("[==============================] 100%  updated 10/10"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("BATCH   GROUP   PHASE"),
        "{}",
        run.stdout
    );

    // A finished job: `status -w` returns at once; `-o json` is the object.
    let run = kubectl_edgefleet(&["rollout", "status", "toll-2", "-n", &ns, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let job: RolloutJob = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(job.status.unwrap().phase, RolloutPhase::Completed);
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_pauses_resumes_and_aborts_a_rollout() {
    let bed = bed("plugin-ctl").await;
    let ns = bed.ns.name.clone();
    daemonset(&bed.ns, "toll", "station-1").await;
    create_job(
        &bed,
        "toll-2",
        "toll",
        NEW,
        json!({"batches": {"steps": [{"size": 2, "pause": {}}, {"size": 2, "pause": {}}, {"size": "100%"}]}}),
    )
    .await;
    let api: Api<RolloutJob> = bed.ns.api();
    let paused_reason = |reason: &'static str, batch: i32| {
        let api = api.clone();
        async move {
            wait_for(
                &format!("Paused/{reason} at batch {batch}"),
                Duration::from_secs(90),
                || async {
                    let job = api.get("toll-2").await?;
                    let s = job.status.unwrap_or_default();
                    let hit = s.phase == RolloutPhase::Paused
                        && s.current_batch == batch
                        && s.conditions.iter().any(|c| {
                            c.type_ == "Paused" && c.status == "True" && c.reason == reason
                        });
                    Ok(hit.then_some(()))
                },
            )
            .await
            .unwrap();
        }
    };
    paused_reason("StepPause", 1).await;

    let run = kubectl_edgefleet(&["rollout", "status", "toll-2", "-n", &ns]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("paused     StepPause"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("kubectl edgefleet rollout resume toll-2"),
        "{}",
        run.stdout
    );

    // pause: spec.paused, written by the plugin's field manager; the operator says SpecPaused.
    let run = kubectl_edgefleet(&["rollout", "pause", "toll-2", "-n", &ns]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "rolloutjob.edgefleet.io/toll-2 paused");
    let job = api.get("toll-2").await.unwrap();
    assert!(job.spec.paused);
    assert!(
        job.managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("kubectl-edgefleet")),
        "{:?}",
        job.managed_fields()
    );
    paused_reason("SpecPaused", 1).await;

    // resume: unpauses and approves the step pause after batch 1; the job moves to batch 2.
    let run = kubectl_edgefleet(&["rollout", "resume", "toll-2", "-n", &ns]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let job = api.get("toll-2").await.unwrap();
    assert!(!job.spec.paused);
    assert_eq!(job.spec.approved_batch, Some(1));
    paused_reason("StepPause", 2).await;

    // abort: the operator stops for good; `status -w` exits 3 for an Aborted job.
    let run = kubectl_edgefleet(&["rollout", "abort", "toll-2", "-n", &ns]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(api.get("toll-2").await.unwrap().spec.abort);
    wait_phase(&bed, "toll-2", RolloutPhase::Aborted, 60).await;
    let run = kubectl_edgefleet(&["rollout", "status", "toll-2", "-w", "-n", &ns]).await;
    assert_eq!(
        run.code, 3,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stdout.contains("Aborted"), "{}", run.stdout);

    // A missing job: the exact message and exit code 1.
    let run = kubectl_edgefleet(&["rollout", "status", "nope", "-n", &ns]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr.trim(),
        format!("Error: rolloutjob \"nope\" not found in namespace \"{ns}\"")
    );
    let run = kubectl_edgefleet(&["rollout", "pause", "nope", "-n", &ns]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("rolloutjob \"nope\" not found"),
        "{}",
        run.stderr
    );
}

/// A kubeconfig for ServiceAccount `sa` in `ns`, which has no RBAC at all.
fn no_access_kubeconfig(sa: &str, ns: &str) -> PathBuf {
    let token = edgefleet_e2e::run(
        "kubectl",
        &["create", "token", sa, "-n", ns, "--duration=1h"],
        None,
    )
    .unwrap();
    let admin = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    for user in config["users"].as_sequence_mut().unwrap().iter_mut() {
        user["user"] = serde_yaml::to_value(json!({"token": token.trim()})).unwrap();
    }
    let path = repo_root()
        .join("hack/.cluster/e2e")
        .join(format!("{ns}-{sa}.kubeconfig"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_says_clearly_when_access_is_missing() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "plugin-rbac").await.unwrap();
    apply_object(
        &client,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}),
        Some(&ns.name),
    )
    .await
    .unwrap();
    let kubeconfig = no_access_kubeconfig("nobody", &ns.name);
    let timeout = Duration::from_secs(60);

    let run = plugin(
        &["rollout", "status", "toll", "-n", &ns.name],
        &kubeconfig,
        true,
        timeout,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.starts_with(&format!(
            "Error: forbidden: you may not get rolloutjobs.edgefleet.io in namespace \"{}\"",
            ns.name
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "kubectl auth can-i get rolloutjobs.edgefleet.io -n {}",
            ns.name
        )),
        "{}",
        run.stderr
    );

    // --kubeconfig passed through kubectl to the plugin works the same.
    let flag = kubeconfig.display().to_string();
    let run = plugin(
        &[
            "--kubeconfig",
            &flag,
            "rollout",
            "abort",
            "toll",
            "-n",
            &ns.name,
        ],
        &kubeconfig_path(),
        false,
        timeout,
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("forbidden: you may not get rolloutjobs.edgefleet.io"),
        "{}",
        run.stderr
    );

    let run = plugin(&["hub", "status"], &kubeconfig, true, timeout).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("forbidden: you may not list configmaps --all-namespaces")
            || run
                .stderr
                .contains("forbidden: you may not list configmaps"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("kubectl auth can-i list configmaps --all-namespaces"),
        "{}",
        run.stderr
    );

    let run = plugin(
        &["sync", "status", "edge-1", "-n", &ns.name],
        &kubeconfig,
        true,
        timeout,
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("forbidden: you may not list objectsyncs.reliablesyncs.kubeedge.io"),
        "{}",
        run.stderr
    );
}

async fn configmap(ns: &TestNamespace, name: &str) -> ConfigMap {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap();
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .unwrap()
}

/// An ObjectSync for `kind/name` on `node`, acked at `acked` (no status when `None`).
async fn object_sync(
    ns: &TestNamespace,
    node: &str,
    kind: &str,
    name: &str,
    uid: &str,
    acked: Option<&str>,
) {
    let sync = format!("{node}.{uid}");
    let api: Api<ObjectSync> = ns.api();
    apply_object(
        &ns.client,
        &json!({
            "apiVersion": "reliablesyncs.kubeedge.io/v1alpha1", "kind": "ObjectSync",
            "metadata": {"name": sync, "labels": {NODE_LABEL: node}},
            "spec": {"objectAPIVersion": "v1", "objectKind": kind, "objectName": name}
        }),
        Some(&ns.name),
    )
    .await
    .unwrap();
    if let Some(rv) = acked {
        api.patch_status(
            &sync,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"objectResourceVersion": rv, "attempts": 1,
                "lastAttemptTime": jiff::Timestamp::now().to_string()}}),
            ),
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_shows_what_a_node_has_and_what_is_pending() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "plugin-sync").await.unwrap();
    let node = format!("{}-edge", ns.name);
    // Five ConfigMaps (listed once, metadata only) and one Secret (fetched by name).
    let mut cms = Vec::new();
    for i in 0..5 {
        cms.push(configmap(&ns, &format!("cfg-{i}")).await);
    }
    for (i, cm) in cms.iter().enumerate() {
        let rv = cm.resource_version().unwrap();
        let acked = match i {
            0..=2 => Some(rv.as_str()),
            3 => Some("1"),
            _ => None,
        };
        object_sync(
            &ns,
            &node,
            "ConfigMap",
            &cm.name_any(),
            &cm.uid().unwrap(),
            acked,
        )
        .await;
    }
    let secret = apply_object(&client, &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull"}, "stringData": {"k": "v"}}), Some(&ns.name))
        .await
        .unwrap();
    object_sync(
        &ns,
        &node,
        "Secret",
        "pull",
        &secret.uid().unwrap(),
        secret.resource_version().as_deref(),
    )
    .await;
    // A sync whose object is gone: the edge still has to delete it.
    object_sync(&ns, &node, "ConfigMap", "gone", "0000-gone", Some("5")).await;
    // Another node's sync is not shown.
    object_sync(&ns, "other-node", "ConfigMap", "cfg-0", "1111-other", None).await;

    let run = kubectl_edgefleet(&["sync", "status", &node, "-n", &ns.name]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.trim_end().ends_with(&format!(
            "node {node}: 7 objects, 4 delivered, 2 pending, 0 stale, 1 deleting"
        )),
        "{}",
        run.stdout
    );
    let row = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("cfg-0").contains(" delivered "), "{}", run.stdout);
    assert!(row("cfg-3").contains(" pending "), "{}", run.stdout);
    assert!(row("pull").contains(" delivered "), "{}", run.stdout);
    assert!(row("gone").contains(" deleting "), "{}", run.stdout);

    // Across namespaces (no -n), as JSON, only what is not delivered, stale after 1 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = kubectl_edgefleet(&[
        "sync",
        "status",
        &node,
        "--pending",
        "--stale-after-seconds",
        "1",
        "-o",
        "json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["summary"]["objects"], 7, "{doc}");
    assert_eq!(doc["summary"]["stale"], 2, "{doc}");
    let names: Vec<&str> = doc["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(names, vec!["cfg-3", "cfg-4", "gone"], "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_shows_hub_balance_from_load_reports() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "plugin-hub").await.unwrap();
    let now = jiff::Timestamp::now();
    let old = now - jiff::SignedDuration::from_secs(600);
    for (replica, conns, at) in [
        ("hub-a", 300, now),
        ("hub-b", 100, now),
        ("hub-c", 900, old),
    ] {
        apply_object(
            &client,
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("edgefleet-hub-load-{replica}"), "labels": {"edgefleet.io/load-report": "hub"}},
                "data": {"replica": replica, "connections": conns.to_string(), "capacity": "1000",
                         "queued": "2", "timestamp": at.to_string()}}),
            Some(&ns.name),
        )
        .await
        .unwrap();
    }
    let run = kubectl_edgefleet(&["hub", "status", "-n", &ns.name]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let row = |r: &str| {
        run.stdout
            .lines()
            // The replica column, not a substring: the namespace's random
            // suffix can contain a replica's name ("e2e-plugin-hub-be528").
            .find(|l| l.split_whitespace().nth(1) == Some(r))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("hub-a").contains(" 200 ")
            && row("hub-a").contains("+50%")
            && row("hub-a").trim_end().ends_with("over"),
        "{}",
        run.stdout
    );
    assert!(
        row("hub-b").contains("-50%") && row("hub-b").trim_end().ends_with("ok"),
        "{}",
        run.stdout
    );
    assert!(row("hub-c").contains("stale (ignored)"), "{}", run.stdout);
    assert!(
        run.stdout.contains("2 replicas reporting (1 stale, ignored), 400 sessions of 2000 capacity; imbalance 50% (tolerance 10%): UNBALANCED"),
        "{}",
        run.stdout
    );

    let run = kubectl_edgefleet(&[
        "hub",
        "status",
        "-n",
        &ns.name,
        "-o",
        "yaml",
        "--tolerance-percent",
        "60",
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc: serde_yaml::Value = serde_yaml::from_str(&run.stdout).unwrap();
    assert_eq!(
        doc["balance"]["balanced"],
        serde_yaml::Value::Bool(true),
        "{}",
        run.stdout
    );
    assert_eq!(doc["balance"]["fresh"].as_u64(), Some(2), "{}", run.stdout);
}
