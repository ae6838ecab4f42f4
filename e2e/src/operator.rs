//! Runs an operator binary the way the chart would: as the chart's own ServiceAccount (its
//! token, its RBAC — a missing permission fails the test), with leader election on, watching
//! one test namespace. The process can be killed at any moment to test restart safety.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tokio::sync::OnceCell;

use crate::{kubeconfig_path, repo_root, run};

/// Namespace and release the chart is installed as in e2e.
pub const SYSTEM_NAMESPACE: &str = "edgefleet-system";
pub const RELEASE: &str = "edgefleet";

static CHART: OnceCell<()> = OnceCell::const_new();

/// Installs (or upgrades) the operator chart once per test process: ServiceAccounts and RBAC.
/// Operator Deployments are scaled to zero: the operators run as local processes instead,
/// since the simulated nodes cannot run containers.
pub async fn install_chart() -> Result<()> {
    CHART
        .get_or_try_init(|| async {
            run(
                "helm",
                &[
                    "upgrade",
                    "--install",
                    RELEASE,
                    "charts/edgefleet",
                    "--namespace",
                    SYSTEM_NAMESPACE,
                    "--create-namespace",
                    "--set",
                    "operators.rollout.replicas=0",
                    "--set",
                    "operators.hub.replicas=0",
                    "--set",
                    "operators.objectsync.replicas=0",
                    "--set",
                    "operators.device.enabled=true",
                    "--set",
                    "operators.device.replicas=0",
                    "--set",
                    "operators.balancer.replicas=0",
                    "--wait",
                    "--timeout",
                    "60s",
                ],
                None,
            )
            .map(|_| ())
        })
        .await
        .map(|_| ())
}

/// Where cargo put the workspace's binaries.
pub fn binary(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build -p {name}`, which `make e2e` does)",
            path.display()
        );
    }
    Ok(path)
}

/// A kubeconfig that authenticates as `serviceaccount` of the chart, with a fresh token.
pub fn serviceaccount_kubeconfig(serviceaccount: &str, file: &str) -> Result<PathBuf> {
    let token = run(
        "kubectl",
        &[
            "create",
            "token",
            serviceaccount,
            "-n",
            SYSTEM_NAMESPACE,
            "--duration=2h",
        ],
        None,
    )?;
    let admin = std::fs::read_to_string(kubeconfig_path())?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin)?;
    let users = config
        .get_mut("users")
        .and_then(|u| u.as_sequence_mut())
        .context("admin kubeconfig has no users")?;
    for user in users.iter_mut() {
        user["user"] = serde_yaml::to_value(serde_json::json!({"token": token.trim()}))?;
    }
    let dir = repo_root().join("hack/.cluster/e2e");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// A running operator process.
pub struct Operator {
    name: String,
    watch_namespace: String,
    child: Option<Child>,
    log: PathBuf,
    kubeconfig: PathBuf,
    starts: u32,
    extra_args: Vec<String>,
    /// Tells apart instances of one component in one namespace ("" for the first kind).
    tag: String,
    /// `--watch-namespace` when it is not just `watch_namespace` ([`Operator::start_as`]).
    watch_list: Option<String>,
    /// Extra environment of the next starts ([`Operator::set_env`]).
    env: std::collections::BTreeMap<String, String>,
}

static INSTANCES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Operator {
    /// Starts `edgefleet-<component>` as the chart's ServiceAccount for it, watching
    /// `namespace` only, with its Lease in the system namespace.
    pub async fn start(component: &str, namespace: &str) -> Result<Self> {
        Self::start_with_args(component, namespace, &[]).await
    }

    /// [`Operator::start`] with flags of the operator's own (e.g. the hub's `--listen`).
    /// `--identity` is made unique per instance: two instances of one component may run in one
    /// namespace (two hub replicas).
    pub async fn start_with_args(
        component: &str,
        namespace: &str,
        extra_args: &[String],
    ) -> Result<Self> {
        Self::start_tagged(component, namespace, extra_args, !extra_args.is_empty()).await
    }

    /// One of several replicas of `component` over one namespace, on one Lease: each gets an
    /// identity of its own, as each pod of the chart's Deployment would.
    pub async fn start_replica(component: &str, namespace: &str) -> Result<Self> {
        Self::start_tagged(component, namespace, &[], true).await
    }

    /// [`Operator::start_with_args`] as another ServiceAccount of [`SYSTEM_NAMESPACE`] (e.g. one
    /// of a namespaced-mode rendering of the chart, whose RBAC the test applied), watching
    /// `watch` (one namespace or a comma-separated list). Its Lease and log are named after
    /// `watch`'s first namespace.
    pub async fn start_as(
        component: &str,
        serviceaccount: &str,
        watch: &str,
        extra_args: &[String],
    ) -> Result<Self> {
        install_chart().await?;
        let first = watch.split(',').next().unwrap_or(watch);
        let mut op = Self::prepare(component, serviceaccount, first, extra_args, true)?;
        op.watch_list = Some(watch.to_owned());
        op.spawn()?;
        Ok(op)
    }

    async fn start_tagged(
        component: &str,
        namespace: &str,
        extra_args: &[String],
        tagged: bool,
    ) -> Result<Self> {
        install_chart().await?;
        let mut op = Self::prepare(
            component,
            &format!("{RELEASE}-{component}"),
            namespace,
            extra_args,
            tagged,
        )?;
        op.spawn()?;
        Ok(op)
    }

    fn prepare(
        component: &str,
        serviceaccount: &str,
        namespace: &str,
        extra_args: &[String],
        tagged: bool,
    ) -> Result<Self> {
        let tag = if tagged {
            format!(
                "-i{}",
                INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
        } else {
            String::new()
        };
        let name = format!("edgefleet-{component}");
        let kubeconfig = serviceaccount_kubeconfig(
            serviceaccount,
            &format!("{namespace}-{component}{tag}.kubeconfig"),
        )?;
        let log = repo_root()
            .join("hack/.cluster/logs")
            .join(format!("e2e-{namespace}-{component}{tag}.log"));
        let op = Self {
            name,
            watch_namespace: namespace.to_string(),
            child: None,
            log,
            kubeconfig,
            starts: 0,
            extra_args: extra_args.to_vec(),
            tag,
            watch_list: None,
            env: std::collections::BTreeMap::new(),
        };
        Ok(op)
    }

    /// This process's identity: its name in the Lease and in its events' `reportingInstance`.
    pub fn identity(&self) -> String {
        format!(
            "{}-{}{}-{}",
            self.name, self.watch_namespace, self.tag, self.starts
        )
    }

    /// The name of the Lease this operator elects its leader on (in [`SYSTEM_NAMESPACE`]).
    pub fn lease_name(&self) -> String {
        format!("{}-{}", self.name, self.watch_namespace)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.starts += 1;
        let child = Command::new(binary(&self.name)?)
            .env("KUBECONFIG", &self.kubeconfig)
            .envs(&self.env)
            .env(
                "RUST_LOG",
                "info,edgefleet_rollout=debug,edgefleet_hub=debug,edgefleet_objectsync=debug,edgefleet_device=debug",
            )
            .args(self.extra_args.iter())
            .args(self.fast_lease())
            .args([
                "--metrics-addr=127.0.0.1:0",
                "--log-format=text",
                "--leader-elect=true",
                &format!("--leader-election-namespace={SYSTEM_NAMESPACE}"),
                &format!("--leader-election-id={}", self.lease_name()),
                &format!(
                    "--watch-namespace={}",
                    self.watch_list.as_deref().unwrap_or(&self.watch_namespace)
                ),
                &format!("--identity={}", self.identity()),
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// A 4 s Lease (2 s grace), so failover tests are quick, unless the test passes its own
    /// `--lease-*-seconds` (a test on a loaded bed wants the chart's 15/5).
    fn fast_lease(&self) -> Vec<&'static str> {
        let given = |flag: &str| self.extra_args.iter().any(|a| a.starts_with(flag));
        let mut args = Vec::new();
        if !given("--lease-duration-seconds") {
            args.push("--lease-duration-seconds=4");
        }
        if !given("--lease-grace-seconds") {
            args.push("--lease-grace-seconds=2");
        }
        args
    }

    /// Sets (or with `None` removes) an environment variable of the process from its next
    /// start on (e.g. a test-only stall point).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.env.insert(key.to_string(), v.to_string()),
            None => self.env.remove(key),
        };
    }

    /// SIGKILL: the process dies mid-whatever, as in a node crash or OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as the kubelet stops a pod: the process shuts down on its own (bounded wait,
    /// then SIGKILL).
    pub fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while sent.as_ref().is_ok_and(|s| s.success()) && std::time::Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("{} did not stop on SIGTERM ({sent:?})", self.name)
    }

    /// Kills the process and starts a new one (a new identity, as a new pod would have).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// The address its `/metrics` listens on (a free port, logged at start), once it is up.
    pub async fn metrics_addr(&self) -> Result<std::net::SocketAddr> {
        crate::wait_for(
            &format!("{} to serve /metrics", self.name),
            std::time::Duration::from_secs(60),
            || async {
                Ok(self
                    .log()
                    .lines()
                    .rev()
                    .filter(|l| l.contains("serving /metrics"))
                    .find_map(|l| l.split("addr=").nth(1))
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse().ok()))
            },
        )
        .await
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- last lines of {} ({}) ----",
                self.name,
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
