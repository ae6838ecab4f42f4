//! The balancer's test bed, as in production: a hub Deployment of three replicas (kwok pods,
//! each run as an `edgefleet-hub` process by `sim-hub-kubelet`, which also makes the pod's
//! Ready follow the process's `/readyz`), HAProxy in front of them (leastconn, health checks
//! on `/readyz`), hollow agents that know only HAProxy's address, and the balancer as the
//! chart's ServiceAccount. A monitor samples the load reports, the orders in them and the
//! hollow nodes' Ready condition every half second, so each scenario is judged on what
//! happened all along, not on one look at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgefleet_api::balancer::{LOAD_REPORT_LABEL, ReleaseOrder, report_keys};
use edgefleet_e2e::edge::{Simulator, bootstrap_token_file, free_port};
use edgefleet_e2e::operator::{
    Operator, RELEASE, SYSTEM_NAMESPACE, binary, serviceaccount_kubeconfig,
};
use edgefleet_e2e::{kubeconfig_path, repo_root, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

pub const HUBS: usize = 3;
/// Hollow agents: 3,000 (issue 13), `EDGEFLEET_E2E_BALANCER_AGENTS` to change it. A tenth of
/// them send node status (their Nodes must never go NotReady), the rest are the load.
pub fn total() -> usize {
    std::env::var("EDGEFLEET_E2E_BALANCER_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000)
        .max(30)
}
/// Enrolments a second the fleets start at (`EDGEFLEET_E2E_BALANCER_RAMP`, default 20): each is
/// a CSR the hub approves and signs, several API calls; faster than the API server takes them,
/// agents time out after 30 s and retry, and it only gets slower.
fn ramp() -> usize {
    std::env::var("EDGEFLEET_E2E_BALANCER_RAMP")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20usize)
        .max(2)
}

/// A bounded wait for the whole fleet to enrol and connect.
pub fn ramp_time() -> Duration {
    Duration::from_secs(120 + 4 * (total() / ramp()) as u64)
}
/// The HubBalancer's observation period. The hubs release over 2 s drain + 4 s window and
/// hint 2–6 s reconnects, reports every second: a round is over well inside it.
pub const PERIOD: u64 = 20;
pub const TOLERANCE: i64 = 10;

/// One hub's report as sampled.
#[derive(Clone, Debug)]
pub struct Load {
    pub connections: i64,
    pub order: Option<ReleaseOrder>,
    pub done: Option<String>,
}

/// One look at the hubs: the reports of the Deployment's current pods.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub hubs: BTreeMap<String, Load>,
}

impl Sample {
    pub fn total(&self) -> i64 {
        self.hubs.values().map(|l| l.connections).sum()
    }

    /// An even share, rounded up (the balancer's `expected` for equal capacities).
    pub fn expected(&self) -> i64 {
        let n = i64::try_from(self.hubs.len().max(1)).unwrap_or(1);
        (self.total() + n - 1) / n
    }

    /// Every hub within tolerance of an even share, all of them reporting.
    pub fn balanced(&self) -> bool {
        let e = self.expected();
        self.hubs.len() == HUBS
            && self
                .hubs
                .values()
                .all(|l| l.connections * 100 <= e * (100 + TOLERANCE))
    }

    /// What must move for every hub to hold its even share: Σ max(0, connections − expected).
    pub fn minimum_release(&self) -> i64 {
        let e = self.expected();
        self.hubs.values().map(|l| (l.connections - e).max(0)).sum()
    }

    pub fn orders_in_flight(&self) -> bool {
        self.hubs.values().any(|l| {
            l.order
                .as_ref()
                .is_some_and(|o| l.done.as_ref() != Some(&o.id))
        })
    }

    pub fn describe(&self) -> String {
        self.hubs
            .iter()
            .map(|(h, l)| format!("{h}={}", l.connections))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the monitor saw.
#[derive(Default)]
pub struct Seen {
    pub samples: Vec<Sample>,
    /// Every order by id: the order, its hub, when it was first seen.
    pub orders: BTreeMap<String, (ReleaseOrder, String, Instant)>,
    /// Hollow nodes (with status) seen not Ready after they had been Ready: (node, when).
    pub not_ready: Vec<(String, Instant)>,
    ready_once: std::collections::BTreeSet<String>,
}

impl Seen {
    pub fn last(&self) -> Option<&Sample> {
        self.samples.last()
    }

    /// Orders first seen after `t`, in the order they were seen.
    pub fn orders_after(&self, t: Instant) -> Vec<(ReleaseOrder, String, Instant)> {
        let mut v: Vec<_> = self
            .orders
            .values()
            .filter(|(_, _, at)| *at > t)
            .cloned()
            .collect();
        v.sort_by_key(|(_, _, at)| *at);
        v
    }
}

pub struct Bed {
    pub client: Client,
    /// Unique per run: names in the system namespace carry it.
    pub tag: String,
    pub app: String,
    pub deployment: String,
    pub balancer_name: String,
    pub dir: PathBuf,
    pub seen: Arc<Mutex<Seen>>,
    pub balancer: Operator,
    kubelet: Option<Child>,
    haproxy_instance: String,
    monitor: Option<tokio::task::JoinHandle<()>>,
    _fleet: Simulator,
    _status_fleet: Simulator,
}

pub fn lock(seen: &Arc<Mutex<Seen>>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn hub_args(watch_namespace: &str) -> Vec<String> {
    [
        "--log-format=text".to_string(),
        format!("--watch-namespace={watch_namespace}"),
        "--report-seconds=1".into(),
        "--lease-renew-seconds=2".into(),
        "--bootstrap-burst=100000".into(),
        "--release-drain-seconds=2".into(),
        "--release-window-seconds=4".into(),
        "--retry-after-seconds=4".into(),
    ]
    .into_iter()
    .map(|a| format!("--hub-arg={a}"))
    .collect()
}

impl Bed {
    /// Pods of the hub Deployment (run by the harness), by name.
    pub async fn pods(&self) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        Ok(api
            .list(&ListParams::default().labels(&format!("app={},run=process", self.app)))
            .await?
            .items)
    }

    pub async fn up(client: &Client, watch_namespace: &str) -> Result<Bed> {
        edgefleet_e2e::operator::install_chart().await?;
        let tag = watch_namespace
            .rsplit('-')
            .next()
            .unwrap_or("x")
            .to_string();
        let app = format!("e2e-hub-{tag}");
        let deployment = format!("e2e-hubs-{tag}");
        let dir = repo_root().join(format!("hack/.cluster/e2e/balancer-{tag}"));
        std::fs::create_dir_all(&dir)?;

        // The hub Deployment: kwok pods; rolling one at a time, as the three LB slots allow.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": deployment, "labels": {"app": app}},
            "spec": {
                "replicas": HUBS,
                "selector": {"matchLabels": {"app": app, "run": "process"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": {"app": app, "run": "process"},
                                 "annotations": {"edgefleet.io/sim-pull-seconds": "0"}},
                    "spec": {
                        "nodeSelector": {"type": "kwok"},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "hub", "image": "edgefleet/hub:e2e"}]
                    }
                }
            }
        }))?;
        deployments.create(&PostParams::default(), &d).await?;

        // The harness: plays the hub pods' kubelet (process + readiness probe).
        let slots: Vec<(u16, u16)> = (0..HUBS)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let hub_kubeconfig = serviceaccount_kubeconfig(
            &format!("{RELEASE}-hub"),
            &format!("balancer-{tag}-hub.kubeconfig"),
        )?;
        let log = std::fs::File::create(dir.join("sim-hub-kubelet.log"))?;
        let kubelet = Command::new(env!("CARGO_BIN_EXE_sim-hub-kubelet"))
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info")
            .args(["--namespace", SYSTEM_NAMESPACE])
            .arg(format!("--selector=app={app},run=process"))
            .arg(format!("--hub={}", binary("edgefleet-hub")?.display()))
            .arg(format!("--hub-kubeconfig={}", hub_kubeconfig.display()))
            .arg(format!("--dir={}", dir.display()))
            .args(slots.iter().map(|(e, m)| format!("--slot={e}:{m}")))
            // The kubelet's first crash back-off: the dead hub's agents find the others first.
            .arg("--restart-delay-ms=10000")
            // As the chart's readiness probe (failureThreshold 2): one /readyz slower than its
            // 1 s timeout on a loaded machine is not a hub out of rotation (HAProxy's fall is 2
            // too); a flapping Ready would make the balancer drop a hub for a round.
            .arg("--failure-threshold=2")
            .args(hub_args(watch_namespace))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sim-hub-kubelet")?;

        // HAProxy in front of the slots, its own instance.
        let lb = free_port()?;
        let haproxy_instance = format!("e2e-{tag}");
        let mut args = vec!["start".to_string(), lb.to_string()];
        args.extend(slots.iter().map(|(e, m)| format!("{e}:{m}")));
        let out = Command::new(repo_root().join("hack/haproxy"))
            .args(&args)
            .env("EDGEFLEET_HAPROXY_INSTANCE", &haproxy_instance)
            .output()?;
        if !out.status.success() {
            bail!(
                "hack/haproxy start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // The chart's Lease timing (15 s, renewed 5 s ahead), not the harness's 4/2: with
        // 3,000 agents enrolling and the suite beside it the API server answers a Lease read
        // in seconds, and a 4 s Lease cannot survive that (the balancer lost its lead
        // mid-scenario).
        let balancer = Operator::start_with_args(
            "balancer",
            SYSTEM_NAMESPACE,
            &[
                "--interval-seconds=2".to_string(),
                "--lease-duration-seconds=15".to_string(),
                "--lease-grace-seconds=5".to_string(),
            ],
        )
        .await?;
        let balancer_name = format!("e2e-{tag}");
        edgefleet_e2e::apply_object(
            client,
            &serde_json::json!({
                "apiVersion": "edgefleet.io/v1alpha1", "kind": "HubBalancer",
                "metadata": {"name": balancer_name, "namespace": SYSTEM_NAMESPACE},
                "spec": {"hubSelector": {"matchLabels": {"app": app}},
                         "tolerancePercent": TOLERANCE, "observationPeriodSeconds": PERIOD,
                         "reportStaleAfterSeconds": 10}
            }),
            Some(SYSTEM_NAMESPACE),
        )
        .await?;

        Bed::pods_ready(client, &app).await?;
        let token = bootstrap_token_file(client, &dir).await?;
        let hub = format!("--hub=wss://127.0.0.1:{lb}");
        let token = format!("--token-file={}", token.display());
        let fleet = Simulator::start(
            &format!("balancer-{tag}-fleet"),
            &[
                format!("--nodes={}", total() - total() / 10),
                format!("--name-prefix=bal-{tag}-"),
                hub.clone(),
                token.clone(),
                format!("--ramp-per-second={}", ramp() - ramp() / 10),
                "--node-status=false".into(),
            ],
        )?;
        let status_fleet = Simulator::start(
            &format!("balancer-{tag}-status-fleet"),
            &[
                format!("--nodes={}", total() / 10),
                format!("--name-prefix=bals-{tag}-"),
                hub,
                token,
                format!("--ramp-per-second={}", (ramp() / 10).max(1)),
            ],
        )?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut bed = Bed {
            client: client.clone(),
            tag,
            app,
            deployment,
            balancer_name,
            dir,
            seen: seen.clone(),
            balancer,
            kubelet: Some(kubelet),
            haproxy_instance,
            monitor: None,
            _fleet: fleet,
            _status_fleet: status_fleet,
        };
        bed.monitor = Some(tokio::spawn(monitor(
            client.clone(),
            bed.app.clone(),
            bed.deployment.clone(),
            format!("bals-{}-", bed.tag),
            seen,
        )));
        Ok(bed)
    }

    async fn pods_ready(client: &Client, app: &str) -> Result<Vec<String>> {
        let api: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        wait_for(
            "3 hub pods Ready (their processes pass /readyz)",
            Duration::from_secs(180),
            || async {
                let pods = api
                    .list(&ListParams::default().labels(&format!("app={app},run=process")))
                    .await?
                    .items;
                let ready: Vec<String> = pods
                    .iter()
                    .filter(|p| pod_ready(p))
                    .map(ResourceExt::name_any)
                    .collect();
                Ok((ready.len() == HUBS).then_some(ready))
            },
        )
        .await
    }

    /// SIGKILL the hub process of `pod` (the harness starts it again, as a kubelet would).
    pub fn kill_hub(&self, pod: &str) -> Result<()> {
        let pid = std::fs::read_to_string(self.dir.join(format!("{pod}.pid")))
            .with_context(|| format!("pid of {pod}'s hub"))?;
        let status = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
        if !status.success() {
            bail!("kill -KILL {pid}: {status}");
        }
        Ok(())
    }

    /// Waits for a sample that satisfies `f`; returns it.
    pub async fn sample_where(
        &self,
        what: &str,
        timeout: Duration,
        after: Instant,
        f: impl Fn(&Sample) -> bool,
    ) -> Result<Sample> {
        let seen = self.seen.clone();
        wait_for(what, timeout, || {
            let s = lock(&seen).last().filter(|s| s.at > after && f(s)).cloned();
            async move { Ok(s) }
        })
        .await
        .with_context(|| {
            format!(
                "last sample: {}",
                lock(&self.seen)
                    .last()
                    .map(Sample::describe)
                    .unwrap_or_default()
            )
        })
    }
}

pub fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Every half second: the reports of the Deployment's current pods, the orders in every report,
/// the hollow status nodes' Ready.
async fn monitor(
    client: Client,
    app: String,
    deployment: String,
    node_prefix: String,
    seen: Arc<Mutex<Seen>>,
) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let mut round = 0u64;
    loop {
        round += 1;
        let now = Instant::now();
        let reports = cms
            .list(&ListParams::default().labels(&format!("{LOAD_REPORT_LABEL}=hub")))
            .await;
        let current = pods
            .list(&ListParams::default().labels(&format!("app={app},run=process")))
            .await;
        if let (Ok(reports), Ok(current)) = (reports, current) {
            let names: Vec<String> = current.items.iter().map(ResourceExt::name_any).collect();
            let mut hubs = BTreeMap::new();
            let mut s = lock(&seen);
            for cm in &reports.items {
                let data = cm.data.clone().unwrap_or_default();
                let replica = data.get(report_keys::REPLICA).cloned().unwrap_or_default();
                let order: Option<ReleaseOrder> = data
                    .get(report_keys::RELEASE_ORDER)
                    .and_then(|o| serde_json::from_str(o).ok());
                if let Some(o) = &order
                    && replica.starts_with(&deployment)
                {
                    s.orders
                        .entry(o.id.clone())
                        .or_insert_with(|| (o.clone(), replica.clone(), now));
                }
                if names.contains(&replica) {
                    hubs.insert(
                        replica,
                        Load {
                            connections: data
                                .get(report_keys::CONNECTIONS)
                                .and_then(|c| c.parse().ok())
                                .unwrap_or(0),
                            order,
                            done: data.get(report_keys::RELEASE_DONE).cloned(),
                        },
                    );
                }
            }
            s.samples.push(Sample { at: now, hubs });
        }
        if round.is_multiple_of(2)
            && let Ok(list) = nodes.list(&ListParams::default()).await
        {
            let mut s = lock(&seen);
            for n in list
                .items
                .iter()
                .filter(|n| n.name_any().starts_with(&node_prefix))
            {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|st| st.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let name = n.name_any();
                if ready {
                    s.ready_once.insert(name);
                } else if s.ready_once.contains(&name) {
                    s.not_ready.push((name, now));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(m) = self.monitor.take() {
            m.abort();
        }
        self.balancer.kill();
        if let Some(mut k) = self.kubelet.take() {
            // SIGTERM: it stops its hubs (SIGTERM each), then exits.
            let _ = Command::new("kill")
                .args(["-TERM", &k.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !matches!(k.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = k.kill();
            let _ = k.wait();
        }
        let _ = Command::new(repo_root().join("hack/haproxy"))
            .arg("stop")
            .env("EDGEFLEET_HAPROXY_INSTANCE", &self.haproxy_instance)
            .status();
        // The objects in the system namespace, and the hollow status nodes the hubs registered.
        let ns = SYSTEM_NAMESPACE;
        let run = |args: &[&str]| {
            let _ = Command::new("kubectl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        run(&[
            "delete",
            "-n",
            ns,
            "deployment",
            &self.deployment,
            "--wait=false",
        ]);
        run(&[
            "delete",
            "-n",
            ns,
            "hubbalancer",
            &self.balancer_name,
            "--wait=false",
        ]);
        run(&[
            "delete",
            "-n",
            ns,
            "pod",
            "-l",
            &format!("app={}", self.app),
            "--wait=false",
        ]);
        run(&[
            "delete",
            "-n",
            ns,
            "configmap",
            "-l",
            &format!("edgefleet.io/e2e-balancer={}", self.tag),
            "--wait=false",
        ]);
        let prefix = format!("edgefleet-hub-load-e2e-hubs-{}", self.tag);
        if let Ok(out) = Command::new("kubectl")
            .args(["get", "cm", "-n", ns, "-o", "name"])
            .output()
        {
            for cm in String::from_utf8_lossy(&out.stdout).lines() {
                if cm.trim_start_matches("configmap/").starts_with(&prefix) {
                    run(&["delete", "-n", ns, cm, "--wait=false"]);
                }
            }
        }
        if let Ok(out) = Command::new("kubectl")
            .args(["get", "nodes", "-o", "name"])
            .output()
        {
            let mine: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|n| n.starts_with(&format!("node/bals-{}-", self.tag)))
                .map(str::to_string)
                .collect();
            if !mine.is_empty() {
                let mut args = vec!["delete", "--wait=false"];
                args.extend(mine.iter().map(String::as_str));
                run(&args);
            }
        }
    }
}
