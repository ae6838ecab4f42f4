//! The edge-agent against the real hub: both binaries run as processes (`edgefleet-hub` as the
//! chart's ServiceAccount, `target/debug/edge-agent` as the node would run it), the ObjectSyncs
//! are created by the tests as the objectsync operator would. What is checked is what a node
//! sees: its Node Ready, its local API, its metrics, its files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edgefleet_api::objectsync::{NODE_LABEL, ObjectSync, sync_name};
use edgefleet_e2e::edge::{
    HubProcess, Simulator, StoredObject, bootstrap_token_file, free_port, http_get, metrics,
};
use edgefleet_e2e::operator::binary;
use edgefleet_e2e::{TestNamespace, client, install_crds, kubeconfig_path, repo_root, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::hub::{acked, configmap, node_name, object_sync, secret_value, update_configmap};

/// Live sessions on a hub replica (`edgefleet_hub_sessions`).
async fn hub_sessions(hub: &HubProcess) -> Result<f64> {
    let addr = hub.op.metrics_addr().await?.to_string();
    metrics(&addr, "edgefleet_hub_sessions")?
        .get("edgefleet_hub_sessions")
        .copied()
        .context("no edgefleet_hub_sessions")
}

/// `--hub` once per replica.
pub(crate) fn hub_flags(hubs: &[&HubProcess]) -> Vec<String> {
    hubs.iter().map(|h| format!("--hub={}", h.url())).collect()
}

/// What the agents are given: the bootstrap token and the hub CA (from the hub's Secrets), in a
/// directory that also holds the agents' data dirs. Dropped, it removes the nodes the agents
/// registered (every name starts with the namespace's) with their Leases, and the finalizers of
/// the syncs left behind, so that a failed test leaves nothing stuck.
pub(crate) struct Bed {
    ns: String,
    pub(crate) dir: PathBuf,
    token: PathBuf,
    ca: PathBuf,
}

impl Bed {
    pub(crate) async fn new(client: &Client, ns: &str) -> Result<Bed> {
        let dir = repo_root()
            .join("hack/.cluster/e2e")
            .join(format!("{ns}-agent"));
        let token = bootstrap_token_file(client, &dir).await?;
        let ca = dir.join("hub-ca.crt");
        std::fs::write(
            &ca,
            secret_value(client, "edgefleet-hub-ca", "ca.crt").await?,
        )?;
        Ok(Bed {
            ns: ns.to_string(),
            dir,
            token,
            ca,
        })
    }

    /// Flags of a first start: bootstrap with the token, the hub checked against its CA.
    pub(crate) fn bootstrap_flags(&self) -> Vec<String> {
        vec![
            format!("--token-file={}", self.token.display()),
            format!("--hub-ca={}", self.ca.display()),
        ]
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::env::var("EDGEFLEET_E2E_KEEP").as_deref() == Ok("1") {
            return;
        }
        // Drop cannot await: kubectl, synchronously, as TestNamespace does.
        let kubectl = |args: &[&str]| {
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .args(args)
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let prefix = format!("{}-", self.ns);
        let nodes: Vec<String> = kubectl(&["get", "nodes", "-o", "name"])
            .lines()
            .filter_map(|l| l.strip_prefix("node/"))
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        if !nodes.is_empty() {
            for what in [
                vec!["delete", "node"],
                vec!["delete", "lease", "-n", "kube-node-lease"],
            ] {
                let mut args = what;
                args.extend(["--ignore-not-found", "--wait=false"]);
                args.extend(nodes.iter().map(String::as_str));
                kubectl(&args);
            }
        }
        for sync in kubectl(&["get", "objectsyncs", "-n", &self.ns, "-o", "name"]).lines() {
            kubectl(&[
                "patch",
                "-n",
                &self.ns,
                sync,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A real `edge-agent run`; killed when dropped, its log printed if the test failed.
pub(crate) struct EdgeAgent {
    child: Option<Child>,
    log: PathBuf,
    /// The local API (also /metrics).
    api: String,
}

impl EdgeAgent {
    /// `edge-agent run` for `node`, its data in the bed, a short back-off cap so reconnects are
    /// quick; `args` name the hubs (and the bootstrap flags on a first start).
    pub(crate) fn run(
        bed: &Bed,
        node: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let api = format!("127.0.0.1:{}", free_port()?);
        let log = repo_root()
            .join("hack/.cluster/logs")
            .join(format!("e2e-{node}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new(binary("edge-agent")?);
        command
            .env("RUST_LOG", "info,edgefleet_edge_agent=debug")
            .env_remove("EDGEFLEET_HUB")
            .args(["--log-format=text", "run"])
            .arg(format!("--node-name={node}"))
            .arg(format!("--data-dir={}", bed.dir.join(node).display()))
            .arg(format!("--listen={api}"))
            .arg("--backoff-cap-seconds=2")
            .args(args)
            .envs(env.iter().copied())
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null());
        let child = command.spawn().context("starting edge-agent")?;
        Ok(EdgeAgent {
            child: Some(child),
            log,
            api,
        })
    }

    /// SIGKILL: the node loses power.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status once the process ended on its own.
    pub(crate) fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// `GET path` on the local API: (status, JSON body or null).
    fn get(&self, path: &str) -> Result<(u16, Value)> {
        let (status, body) = http_get(&self.api, path)?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    pub(crate) fn metric(&self, name: &str) -> Result<f64> {
        let name = format!("edgefleet_agent_{name}");
        metrics(&self.api, &name)?
            .get(&name)
            .copied()
            .with_context(|| format!("no {name}"))
    }

    pub(crate) async fn wait_metric(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        wait_for(what, Duration::from_secs(60), || async {
            let v = self.metric(name)?;
            Ok(ok(v).then_some(v))
        })
        .await
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EdgeAgent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) async fn wait_ready(client: &Client, node: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(
        &format!("node {node} Ready"),
        Duration::from_secs(60),
        || async { Ok(nodes.get_opt(node).await?.filter(is_ready).map(|_| ())) },
    )
    .await
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_default()
}

/// 1–4: bootstrap with the token and register a Ready Node; a ConfigMap through an ObjectSync,
/// updates (latest wins, acked RV = live RV); hub and agent down, the agent restarted without
/// the token serves it offline; the hub back, an edge delete.
#[tokio::test]
async fn agent_bootstraps_syncs_serves_offline_and_deletes() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "agent-life").await.unwrap();
    let mut hub = HubProcess::start(&ns.name, &[]).await.unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let node = node_name(&ns, "edge");

    // 1. Bootstrap, register, Ready; the identity files are the owner's only.
    let mut first_start = hub_flags(&[&hub]);
    first_start.extend(bed.bootstrap_flags());
    let mut agent = EdgeAgent::run(&bed, &node, &first_start, &[]).unwrap();
    wait_ready(&client, &node).await.unwrap();
    #[cfg(unix)]
    {
        let data = bed.dir.join(&node);
        for file in ["node.key", "node.crt", "ca.crt", "store.db"] {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&data), 0o700, "data dir");
    }
    assert_eq!(agent.metric("bootstraps_total").unwrap(), 1.0);
    assert_eq!(agent.metric("sessions_up").unwrap(), 1.0);

    // 2. A ConfigMap through an ObjectSync; updates arrive, the latest wins.
    let cm = configmap(&ns, "toll-config", "1").await.unwrap();
    let uid = cm.uid().unwrap();
    let sync = sync_name(&node, &uid);
    object_sync(&ns, &node, "ConfigMap", "toll-config", &uid)
        .await
        .unwrap();
    let path = format!("/api/v1/namespaces/{}/configmaps/toll-config", ns.name);
    let served = |want_rv: String| {
        let (agent, ns, path, sync) = (&agent, &ns, &path, &sync);
        async move {
            wait_for(
                &format!("the edge to hold, and the sync to ack, RV {want_rv}"),
                Duration::from_secs(30),
                || async {
                    let (code, body) = agent.get(path)?;
                    let held = body["metadata"]["resourceVersion"].as_str() == Some(&want_rv);
                    let acked = acked(ns, sync).await?.as_deref() == Some(want_rv.as_str());
                    Ok((code == 200 && held && acked).then_some(body))
                },
            )
            .await
        }
    };
    let body = served(cm.resource_version().unwrap()).await.unwrap();
    assert_eq!(body["data"]["v"], "1");
    assert_eq!(body["metadata"]["uid"], uid.as_str());
    update_configmap(&ns, "toll-config", "2").await.unwrap();
    let rv3 = update_configmap(&ns, "toll-config", "3").await.unwrap();
    let body = served(rv3.clone()).await.unwrap();
    assert_eq!(body["data"]["v"], "3");
    let live = ns.api::<ConfigMap>().get("toll-config").await.unwrap();
    assert_eq!(live.resource_version(), Some(rv3), "acked RV = live RV");

    // 3. Hub and agent down; the agent restarted without the token serves from its store.
    hub.op.kill();
    agent.kill();
    let agent = EdgeAgent::run(&bed, &node, &hub_flags(&[&hub]), &[]).unwrap();
    let (_, body) = wait_for(
        "the offline agent to serve",
        Duration::from_secs(20),
        || async { Ok(agent.get(&path).ok().filter(|(c, _)| *c == 200)) },
    )
    .await
    .unwrap();
    assert_eq!(body["data"]["v"], "3");
    let (code, list) = agent
        .get(&format!("/api/v1/namespaces/{}/configmaps", ns.name))
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["apiVersion"], "v1");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["metadata"]["name"], "toll-config");
    let (code, status) = agent
        .get(&format!("/api/v1/namespaces/{}/secrets/nope", ns.name))
        .unwrap();
    assert_eq!(code, 404);
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);
    assert_eq!(status["details"]["name"], "nope");
    assert_eq!(agent.metric("sessions_up").unwrap(), 0.0);
    assert_eq!(
        agent.metric("bootstraps_total").unwrap(),
        0.0,
        "the stored certificate is reused"
    );

    // 4. The hub back on its address: the agent reconnects; an edge delete.
    hub.restart().await.unwrap();
    agent
        .wait_metric("sessions_up", "the agent to reconnect", |v| v == 1.0)
        .await
        .unwrap();
    ns.api::<ObjectSync>()
        .delete(&sync, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the ConfigMap deleted on the edge",
        Duration::from_secs(30),
        || async { Ok((agent.get(&path)?.0 == 404).then_some(())) },
    )
    .await
    .unwrap();
    wait_for("the sync to go", Duration::from_secs(30), || async {
        Ok(ns
            .api::<ObjectSync>()
            .get_opt(&sync)
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
    wait_ready(&client, &node).await.unwrap();
}

/// 5: over capacity the hub answers 503 + Retry-After; the refused agent keeps retrying, paced
/// by the hint (never a tight loop), and connects once the first agent is gone.
#[tokio::test]
async fn agent_waits_out_a_full_hub_with_back_off() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "agent-busy").await.unwrap();
    let hub = HubProcess::start(&ns.name, &["--max-sessions=1", "--retry-after-seconds=1"])
        .await
        .unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let mut flags = hub_flags(&[&hub]);
    flags.extend(bed.bootstrap_flags());
    let (a, b) = (node_name(&ns, "a"), node_name(&ns, "b"));
    let mut first = EdgeAgent::run(&bed, &a, &flags, &[]).unwrap();
    wait_ready(&client, &a).await.unwrap();
    let second = EdgeAgent::run(&bed, &b, &flags, &[]).unwrap();
    second
        .wait_metric("busy_refusals_total", "two 503 refusals", |v| v >= 2.0)
        .await
        .unwrap();
    // Retry-After is 1 s: each retry waits 1–2 s (the hint plus jitter).
    let before = second.metric("busy_refusals_total").unwrap();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = second.metric("busy_refusals_total").unwrap();
    let elapsed = window.elapsed().as_secs_f64();
    let refusals = after - before;
    assert!(
        refusals >= 1.0 && refusals <= elapsed + 1.0,
        "{refusals} refusals in {elapsed:.1} s"
    );
    assert!(second.metric("reconnects_total").unwrap() >= after);
    assert_eq!(second.metric("sessions_up").unwrap(), 0.0);
    assert_eq!(hub_sessions(&hub).await.unwrap(), 1.0);

    // Room again: the waiting agent gets in.
    first.kill();
    second
        .wait_metric("sessions_up", "the second agent to connect", |v| v == 1.0)
        .await
        .unwrap();
    wait_ready(&client, &b).await.unwrap();
}

/// 6: a hub stopped with SIGTERM closes its sessions with 4000 and a hint; the agent, given both
/// replicas (EDGEFLEET_HUB, comma-separated), comes back on the other one.
#[tokio::test]
async fn agent_moves_to_another_hub_replica_when_one_drains() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "agent-drain").await.unwrap();
    let mut hubs = Vec::new();
    for _ in 0..2 {
        let hub = HubProcess::start(&ns.name, &["--retry-after-seconds=1"])
            .await
            .unwrap();
        hubs.push(hub);
    }
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let node = node_name(&ns, "edge");
    let both = format!("{},{}", hubs[0].url(), hubs[1].url());
    let agent = EdgeAgent::run(
        &bed,
        &node,
        &bed.bootstrap_flags(),
        &[("EDGEFLEET_HUB", both.as_str())],
    )
    .unwrap();
    wait_ready(&client, &node).await.unwrap();
    let holder = wait_for(
        "one hub to hold the session",
        Duration::from_secs(30),
        || {
            let hubs = &hubs;
            async move {
                let counts = [hub_sessions(&hubs[0]).await?, hub_sessions(&hubs[1]).await?];
                Ok(match counts {
                    [1.0, 0.0] => Some(0),
                    [0.0, 1.0] => Some(1),
                    _ => None,
                })
            }
        },
    )
    .await
    .unwrap();
    let other = 1 - holder;

    hubs[holder].op.terminate().unwrap();
    agent
        .wait_metric("reconnect_hints_total", "close 4000 with a hint", |v| {
            v >= 1.0
        })
        .await
        .unwrap();
    agent
        .wait_metric("connects_total", "a second session", |v| v >= 2.0)
        .await
        .unwrap();
    assert_eq!(agent.metric("sessions_up").unwrap(), 1.0);
    assert_eq!(hub_sessions(&hubs[other]).await.unwrap(), 1.0);
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("session up") && l.contains(&format!("hub={}", hubs[other].addr))),
        "the agent names the replica it moved to"
    );
    wait_ready(&client, &node).await.unwrap();
}

/// 7: `simulate --nodes 100` against two hub replicas: every hollow node Ready, the sessions
/// split over both hubs, the admin server lists what was delivered.
#[tokio::test]
async fn agent_simulate_spreads_hollow_nodes_over_two_hubs() {
    const NODES: usize = 100;
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "agent-sim").await.unwrap();
    let mut hubs = Vec::new();
    for _ in 0..2 {
        hubs.push(HubProcess::start(&ns.name, &[]).await.unwrap());
    }
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let prefix = format!("{}-h-", ns.name);
    let names: Vec<String> = (0..NODES).map(|i| format!("{prefix}{i:05}")).collect();
    // Three hollow nodes need a ConfigMap.
    let cm = configmap(&ns, "fleet-config", "1").await.unwrap();
    let uid = cm.uid().unwrap();
    let rv = cm.resource_version().unwrap();
    for node in &names[..3] {
        object_sync(&ns, node, "ConfigMap", "fleet-config", &uid)
            .await
            .unwrap();
    }

    let mut args = vec![
        format!("--nodes={NODES}"),
        format!("--name-prefix={prefix}"),
        format!("--token-file={}", bed.token.display()),
        "--ramp-per-second=50".to_string(),
    ];
    args.extend(hub_flags(&[&hubs[0], &hubs[1]]));
    let sim = Simulator::start(&format!("{}-simulate", ns.name), &args).unwrap();

    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(
        &format!("{NODES} hollow nodes Ready"),
        Duration::from_secs(180),
        || async {
            let ready = nodes
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|n| n.name_any().starts_with(&prefix) && is_ready(n))
                .count();
            Ok((ready == NODES).then_some(()))
        },
    )
    .await
    .unwrap();
    let counts = [
        hub_sessions(&hubs[0]).await.unwrap(),
        hub_sessions(&hubs[1]).await.unwrap(),
    ];
    assert!(
        counts[0] > 0.0 && counts[1] > 0.0,
        "sessions per hub: {counts:?}"
    );
    assert_eq!(counts[0] + counts[1], NODES as f64, "{counts:?}");
    let sim_metrics = metrics(&sim.admin, "edgefleet_agent_sessions_up").unwrap();
    assert_eq!(
        sim_metrics.get("edgefleet_agent_sessions_up"),
        Some(&(NODES as f64))
    );
    let (_, agents) = http_get(&sim.admin, "/agents").unwrap();
    let agents: Vec<Value> = serde_json::from_str(&agents).unwrap();
    assert_eq!(agents.len(), NODES);
    assert!(agents.iter().all(|a| a["connected"] == true));

    // What was delivered, agent by agent.
    let want = vec![StoredObject {
        resource: format!("{}/configmap/fleet-config", ns.name),
        uid: uid.clone(),
        resource_version: rv.clone(),
    }];
    for node in &names[..3] {
        wait_for(
            &format!("{node} to hold the ConfigMap"),
            Duration::from_secs(30),
            || async { Ok((sim.objects(node)? == want).then_some(())) },
        )
        .await
        .unwrap();
        let sync = sync_name(node, &uid);
        wait_for(
            &format!("{sync} acked"),
            Duration::from_secs(30),
            || async {
                Ok((acked(&ns, &sync).await?.as_deref() == Some(rv.as_str())).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(sim.objects(&names[3]).unwrap(), Vec::new());
    let syncs = ns
        .api::<ObjectSync>()
        .list(&ListParams::default().labels(&format!("{NODE_LABEL}={}", names[0])))
        .await
        .unwrap();
    assert_eq!(syncs.items.len(), 1);
}

/// Field managers of a node's status and of its Lease: who writes its heartbeats.
async fn heartbeat_writers(client: &Client, node: &str) -> Result<Vec<String>> {
    let node_obj = Api::<Node>::all(client.clone()).get(node).await?;
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .get(node)
        .await?;
    let mut writers: Vec<String> = node_obj
        .managed_fields()
        .iter()
        .filter(|f| f.subresource.as_deref() == Some("status"))
        .chain(lease.managed_fields())
        .filter_map(|f| f.manager.clone())
        .collect();
    writers.sort();
    writers.dedup();
    Ok(writers)
}

fn ready_since(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.to_string())
}

/// 8: a hollow agent with `--node-status=false` on a node kwok already plays the kubelet of
/// (the demo's shape): it gets its objects, and the Node's status and Lease keep one writer,
/// kwok — the hub registers nothing and renews nothing, the Ready condition never moves.
#[tokio::test]
async fn agent_simulate_without_node_status_leaves_the_node_to_its_kubelet() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "agent-kubelet").await.unwrap();
    let hub = HubProcess::start(&ns.name, &[]).await.unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    // A kwok node (the annotation is what kwok manages; no edge or kwok-type label, so other
    // tests' DaemonSets and node counts leave it alone). Bed removes it with its Lease. It
    // carries the label of the bed's group join token: a Node outside the token's group would
    // wait for approval (issue 14).
    let prefix = format!("{}-k", ns.name);
    let node = format!("{prefix}0007");
    let nodes: Api<Node> = Api::all(client.clone());
    let manifest: Node = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": node,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"edgefleet.io/e2e-group": "e2e"},
        },
    }))
    .unwrap();
    nodes
        .create(&kube::api::PostParams::default(), &manifest)
        .await
        .unwrap();
    wait_ready(&client, &node).await.unwrap();
    wait_for(
        "kwok to write the node's Lease",
        Duration::from_secs(60),
        || async { Ok(heartbeat_writers(&client, &node).await.ok()) },
    )
    .await
    .unwrap();
    let before = ready_since(&nodes.get(&node).await.unwrap());
    assert_eq!(
        heartbeat_writers(&client, &node).await.unwrap(),
        ["kwok"],
        "kwok is the kubelet"
    );
    let cm = configmap(&ns, "station-config", "1").await.unwrap();
    let (uid, rv) = (cm.uid().unwrap(), cm.resource_version().unwrap());
    object_sync(&ns, &node, "ConfigMap", "station-config", &uid)
        .await
        .unwrap();

    let mut args = vec![
        "--nodes=1".to_string(),
        "--start-index=7".to_string(),
        format!("--name-prefix={prefix}"),
        "--name-width=4".to_string(),
        "--node-status=false".to_string(),
    ];
    args.extend(bed.bootstrap_flags());
    args.extend(hub_flags(&[&hub]));
    let sim = Simulator::start(&format!("{}-simulate", ns.name), &args).unwrap();
    let sync = sync_name(&node, &uid);
    wait_for(
        "the agent to hold and ack the ConfigMap",
        Duration::from_secs(60),
        || async {
            let held = sim.objects(&node)?.iter().any(|o| o.resource_version == rv);
            let acked = acked(&ns, &sync).await?.as_deref() == Some(rv.as_str());
            Ok((held && acked).then_some(()))
        },
    )
    .await
    .unwrap();
    // A session's registration and status come first on its wire, before any ACK: had the
    // agent sent them, the hub would have written the Node and its Lease by now.
    let writers = heartbeat_writers(&client, &node).await.unwrap();
    assert_eq!(writers, ["kwok"], "one heartbeat writer");
    let after = nodes.get(&node).await.unwrap();
    assert!(is_ready(&after));
    assert_eq!(
        ready_since(&after),
        before,
        "the Ready condition never moved"
    );
    let hub_metrics = metrics(
        &hub.op.metrics_addr().await.unwrap().to_string(),
        "edgefleet_hub_edge_requests_total",
    )
    .unwrap();
    assert!(
        !hub_metrics
            .keys()
            .any(|k| k.contains("register") || k.contains("nodestatus")),
        "the agent sent node status: {hub_metrics:?}"
    );
}
