//! `sim-hub-kubelet`: the kubelet of the test bed's hub pods.
//!
//! kwok plays the kubelet of the simulated nodes: it runs no container and keeps a Running pod
//! Ready forever. A hub pod in production has a readiness probe on `/readyz`, which the hub
//! fails while it starts and while it carries out a release order (it leaves the load
//! balancer's rotation); the balancer counts only Ready hubs. Without a probe the test bed lies
//! to the balancer (it once counted a hub HAProxy had out of rotation as a recipient and
//! released 1.87× the minimum). This process adds what kwok lacks, for the pods a selector
//! picks:
//!
//! - **containers**: a Running pod (kwok has "started" it) gets an `edgefleet-hub` process in a
//!   free slot (a fixed edge port and metrics port, the load balancer's backend), with the pod's
//!   name, namespace and UID (`POD_NAME`, `POD_NAMESPACE`, `POD_UID`, as the downward API gives);
//!   a process that exits is started again in its slot (`restartPolicy: Always`); a pod being
//!   deleted or gone gets SIGTERM (SIGKILL 15 s later) and frees its slot;
//! - **readiness probe**: every period, `GET /readyz` on the process's metrics port; the pod's
//!   `Ready` and `ContainersReady` conditions follow it (after `--failure-threshold`
//!   consecutive failures, as the kubelet's probe does; a pod without a process is not Ready).
//!   A condition someone else rewrote (kwok) is set back at the next probe.
//!
//! Each process's pid is written to `<dir>/<pod>.pid` (tests SIGKILL a hub through it) and its
//! log to `<dir>/hub-<pod>.log`. Not simulated: restart back-off, `restartCount`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Namespace of the hub pods.
    #[arg(long)]
    namespace: String,

    /// Label selector of the hub pods this kubelet runs.
    #[arg(long)]
    selector: String,

    /// A slot a hub process runs in, `EDGE_PORT:METRICS_PORT` on 127.0.0.1 (repeat: one per
    /// load-balancer backend).
    #[arg(long = "slot", required = true)]
    slots: Vec<String>,

    /// The `edgefleet-hub` binary.
    #[arg(long)]
    hub: PathBuf,

    /// Kubeconfig of the hub processes (e.g. the chart ServiceAccount's); default: inherited.
    #[arg(long)]
    hub_kubeconfig: Option<PathBuf>,

    /// An extra flag for every hub process (repeat), e.g. `--hub-arg=--report-seconds=1`.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    hub_args: Vec<String>,

    /// Where the hubs' logs and pid files go.
    #[arg(long)]
    dir: PathBuf,

    /// Readiness probe period, milliseconds.
    #[arg(long, default_value_t = 1000)]
    probe_period_ms: u64,

    /// Consecutive probe failures before the pod is NotReady.
    #[arg(long, default_value_t = 1)]
    failure_threshold: u32,

    /// A hub process that exited is started again after this, milliseconds.
    #[arg(long, default_value_t = 1000)]
    restart_delay_ms: u64,

    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_filter: String,
}

/// A slot: the ports a hub process listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    edge: u16,
    metrics: u16,
}

fn parse_slot(s: &str) -> Result<Slot> {
    let (edge, metrics) = s
        .split_once(':')
        .with_context(|| format!("slot {s:?}: want EDGE_PORT:METRICS_PORT"))?;
    Ok(Slot {
        edge: edge
            .parse()
            .with_context(|| format!("slot {s:?}: edge port"))?,
        metrics: metrics
            .parse()
            .with_context(|| format!("slot {s:?}: metrics port"))?,
    })
}

/// One pod's container as this kubelet runs it.
struct Container {
    uid: String,
    slot: usize,
    child: Option<Child>,
    /// When the process was seen gone (restart after the delay).
    exited: Option<Instant>,
    failures: u32,
    ready: bool,
}

/// The probe's verdict after one more result (pure): ready at once on success, not ready after
/// `threshold` consecutive failures.
fn probed(ready: bool, failures: u32, ok: bool, threshold: u32) -> (bool, u32) {
    if ok {
        (true, 0)
    } else {
        let failures = failures.saturating_add(1);
        (ready && failures < threshold.max(1), failures)
    }
}

/// `GET /readyz` → 200, within a second.
fn readyz(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(conn, "GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match conn.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    std::str::from_utf8(&head[..got]).is_ok_and(|h| h.split_whitespace().nth(1) == Some("200"))
}

fn pod_ready(pod: &Pod) -> Option<bool> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True")
}

fn running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

impl Cli {
    fn spawn(&self, pod: &str, uid: &str, slot: Slot) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("hub-{pod}.log")))?;
        let mut cmd = Command::new(&self.hub);
        cmd.env("POD_NAME", pod)
            .env("POD_NAMESPACE", &self.namespace)
            .env("POD_UID", uid)
            .arg(format!("--listen=127.0.0.1:{}", slot.edge))
            .arg(format!("--metrics-addr=127.0.0.1:{}", slot.metrics))
            .args(&self.hub_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(k) = &self.hub_kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.hub.display()))?;
        std::fs::write(self.dir.join(format!("{pod}.pid")), child.id().to_string())?;
        tracing::info!(pod, edge = slot.edge, pid = child.id(), "hub started");
        Ok(child)
    }
}

/// SIGTERM now, SIGKILL after a grace period, reaped in the background (join the handle to
/// wait until the hub is gone).
fn stop(mut child: Child, pod: &str) -> std::thread::JoinHandle<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let pod = pod.to_string();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                tracing::info!(pod, "hub stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        tracing::warn!(pod, "hub killed after the grace period");
    })
}

async fn set_ready(api: &Api<Pod>, pod: &str, ready: bool) -> Result<()> {
    let now = jiff::Timestamp::now().to_string();
    let (status, reason) = if ready {
        ("True", serde_json::Value::Null)
    } else {
        ("False", serde_json::Value::from("ContainersNotReady"))
    };
    let condition = |type_: &str| {
        serde_json::json!({"type": type_, "status": status, "reason": reason,
            "lastProbeTime": null, "lastTransitionTime": now})
    };
    let patch = serde_json::json!({"status": {"conditions": [condition("Ready"), condition("ContainersReady")]}});
    api.patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    tracing::info!(pod, ready, "pod readiness");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log_filter)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let slots: Vec<Slot> = cli
        .slots
        .iter()
        .map(|s| parse_slot(s))
        .collect::<Result<_>>()?;
    if slots.is_empty() {
        bail!("no --slot given");
    }
    std::fs::create_dir_all(&cli.dir)?;
    let client = Client::try_default().await?;
    let api: Api<Pod> = Api::namespaced(client, &cli.namespace);
    let period = Duration::from_millis(cli.probe_period_ms.max(100));
    let mut containers: BTreeMap<String, Container> = BTreeMap::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = Box::pin(tokio::signal::ctrl_c());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => break,
            _ = term.recv() => break,
        }
        let pods = match api.list(&ListParams::default().labels(&cli.selector)).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing hub pods");
                continue;
            }
        };
        let live: BTreeMap<String, &Pod> = pods
            .iter()
            .filter(|p| running(p))
            .map(|p| (p.name_any(), p))
            .collect();
        // Pods deleted, being deleted or replaced: stop their process, free the slot.
        let gone: Vec<String> = containers
            .iter()
            .filter(|(name, c)| {
                live.get(*name)
                    .is_none_or(|p| p.uid().as_deref() != Some(&c.uid))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(c) = containers.remove(&name) {
                let _ = std::fs::remove_file(cli.dir.join(format!("{name}.pid")));
                if let Some(child) = c.child {
                    // Reaped in the background while the loop goes on.
                    drop(stop(child, &name));
                }
            }
        }
        for (name, pod) in &live {
            if !containers.contains_key(name) {
                let used: Vec<usize> = containers.values().map(|c| c.slot).collect();
                let Some(slot) = (0..slots.len()).find(|i| !used.contains(i)) else {
                    tracing::warn!(pod = %name, "no free slot: the pod runs no hub (not Ready)");
                    if pod_ready(pod) != Some(false)
                        && let Err(e) = set_ready(&api, name, false).await
                    {
                        tracing::warn!(pod = %name, error = %e, "patching readiness");
                    }
                    continue;
                };
                let uid = pod.uid().unwrap_or_default();
                containers.insert(
                    name.clone(),
                    Container {
                        uid,
                        slot,
                        child: None,
                        exited: Some(Instant::now() - Duration::from_millis(cli.restart_delay_ms)),
                        failures: 0,
                        ready: false,
                    },
                );
            }
            let Some(c) = containers.get_mut(name) else {
                continue;
            };
            if let Some(child) = c.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                tracing::warn!(pod = %name, %status, "hub exited; starting it again");
                c.child = None;
                c.exited = Some(Instant::now());
            }
            if c.child.is_none()
                && c.exited
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(cli.restart_delay_ms))
            {
                match cli.spawn(name, &c.uid, slots[c.slot]) {
                    Ok(child) => {
                        c.child = Some(child);
                        c.exited = None;
                    }
                    Err(e) => tracing::warn!(pod = %name, error = %e, "starting the hub"),
                }
            }
            let ok = c.child.is_some() && readyz(slots[c.slot].metrics);
            (c.ready, c.failures) = probed(c.ready, c.failures, ok, cli.failure_threshold);
            if pod_ready(pod) != Some(c.ready)
                && let Err(e) = set_ready(&api, name, c.ready).await
            {
                tracing::warn!(pod = %name, error = %e, "patching readiness");
            }
        }
    }
    let stoppers: Vec<_> = containers
        .into_iter()
        .filter_map(|(name, c)| c.child.map(|child| stop(child, &name)))
        .collect();
    // Exit only once every hub is gone (each within its grace period): none is orphaned.
    for s in stoppers {
        let _ = s.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_flips_like_the_kubelets() {
        // (ready, failures, ok, threshold) → (ready, failures)
        let cases = [
            ((false, 0, true, 2), (true, 0)),
            ((true, 0, false, 2), (true, 1)),
            ((true, 1, false, 2), (false, 2)),
            ((false, 2, false, 2), (false, 3)),
            ((true, 0, false, 1), (false, 1)),
            ((true, 0, false, 0), (false, 1)),
            ((true, 1, true, 2), (true, 0)),
        ];
        for ((ready, failures, ok, threshold), want) in cases {
            assert_eq!(
                probed(ready, failures, ok, threshold),
                want,
                "{ready} {failures} {ok} {threshold}"
            );
        }
    }

    #[test]
    fn slots_parse_or_say_why() {
        assert_eq!(
            parse_slot("22101:22102").unwrap(),
            Slot {
                edge: 22101,
                metrics: 22102
            }
        );
        assert!(
            parse_slot("22101")
                .unwrap_err()
                .to_string()
                .contains("EDGE_PORT:METRICS_PORT")
        );
    }
}
