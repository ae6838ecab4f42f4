//! `sim-image-cache`: the per-node image cache that kwok does not simulate.
//!
//! kwok plays the kubelet of the test bed's edge nodes and makes every pod pay the simulated
//! pull time (hack/kwok/pod-stages.yaml.tmpl). A real node pulls an image once; later pods with
//! that image start at once. This process adds that, from outside kwok:
//!
//! - it watches the pods bound to simulated nodes (all namespaces) and remembers which images
//!   each node has: those of containers there that reported a non-empty `imageID`;
//! - a pod bound to a node that has *all* its images (containers and init containers) is
//!   annotated `edgefleet.io/sim-pull-seconds: "0"` at once (merge patch), and kwok starts it
//!   at once; a DaemonSet pod is decided as soon as it is created, from the node its affinity
//!   pins it to, so the annotation is usually there before the scheduler binds it;
//! - any other pod is left alone and pays the pull. If the missing images reach its node
//!   meanwhile (another pod pulled them: containerd shares a pull in progress), it starts then.
//!
//! The cache starts from what the pods show when it starts, and lives as long as the process.
//! Not simulated: image garbage collection, `imagePullPolicy: Always` re-checking the registry.
//!
//! `RUST_LOG=debug` (or `--log-filter debug`) logs one line per decision.

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The kwok stages' per-pod pull time (hack/kwok/pod-stages.yaml.tmpl).
const PULL_SECONDS_ANNOTATION: &str = "edgefleet.io/sim-pull-seconds";
const FIELD_MANAGER: &str = "sim-image-cache";

/// The test bed's per-node image cache: pods whose images are already on their node start at
/// once (annotation edgefleet.io/sim-pull-seconds: "0"); the others pay kwok's pull time.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Kubeconfig file. Default: $KUBECONFIG, then ~/.kube/config, then in-cluster.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// Label selector of the simulated nodes (hack/cluster labels them type=kwok).
    #[arg(long, default_value = "type=kwok")]
    node_selector: String,

    /// Most annotation patches in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,

    /// Seconds between summary lines at info level (0: none).
    #[arg(long, default_value_t = 30)]
    summary_seconds: u64,

    /// Log filter (tracing env-filter syntax); `debug` logs one line per decision.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_filter: String,
}

/// A pod to annotate so that kwok starts it at once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Start {
    namespace: String,
    name: String,
    uid: String,
}

/// A bound pod, as the cache needs it.
#[derive(Debug)]
struct PodView {
    start: Start,
    node: String,
    /// Every image the pod needs (containers and init containers).
    images: BTreeSet<String>,
    /// Images its containers have on the node (non-empty `imageID`).
    pulled: BTreeSet<String>,
    /// Every container has its image, or the pod is over: nothing left to decide.
    settled: bool,
    /// Already told to skip its pull (by us, or by whoever created it).
    told: bool,
}

impl PodView {
    fn of(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        // A DaemonSet pod is decided as soon as it is created, from the node its affinity pins
        // it to: its cache is known before the scheduler binds it, as a kubelet knows its own
        // images, which keeps this process's watch-and-patch hop off the swap's path.
        let node = edgefleet_kit::pods::intended_node(spec).filter(|n| !n.is_empty())?;
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers);
        let image_of: HashMap<&str, &str> = containers
            .filter_map(|c| Some((c.name.as_str(), c.image.as_deref()?)))
            .collect();
        let images: BTreeSet<String> = image_of.values().map(|i| (*i).to_string()).collect();
        let status = pod.status.as_ref();
        let statuses = status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .chain(&s.container_statuses)
            })
            .flatten();
        let mut pulled = BTreeSet::new();
        let mut with_image = 0;
        for cs in statuses.filter(|cs| !cs.image_id.is_empty()) {
            with_image += 1;
            // The spec's reference, as the next pod will name it (the status may normalise it).
            let image = image_of.get(cs.name.as_str()).copied().unwrap_or(&cs.image);
            pulled.insert(image.to_string());
        }
        let over = pod.metadata.deletion_timestamp.is_some()
            || matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
        Some(Self {
            start: Start {
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
                uid: pod.uid().unwrap_or_default(),
            },
            node,
            settled: over || (with_image > 0 && with_image >= image_of.len()),
            told: pod
                .annotations()
                .get(PULL_SECONDS_ANNOTATION)
                .map(String::as_str)
                == Some("0"),
            images,
            pulled,
        })
    }
}

/// Counters for the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Stats {
    /// Pods started at once when bound: every image was there.
    cached: u64,
    /// Pods that had to pull, then started early because another pod brought the image.
    joined: u64,
    /// Pods left to pay the pull when bound.
    pulling: u64,
}

/// What is on each node, and which pods wait for what. Pure: no I/O, so it is unit-tested.
#[derive(Debug, Default)]
struct ImageCache {
    /// Images on each node.
    images: HashMap<String, HashSet<String>>,
    /// Pods still pulling, by node: uid → (pod, the images it needs).
    waiting: HashMap<String, HashMap<String, (Start, BTreeSet<String>)>>,
    /// Pods already told to start at once (uids), until they are settled or gone.
    told: HashSet<String>,
    stats: Stats,
}

impl ImageCache {
    /// Takes in one pod's state; returns the pods to start at once now (this one, or pods on
    /// its node that were waiting for an image it just brought).
    fn observe(&mut self, pod: &PodView) -> Vec<Start> {
        let uid = &pod.start.uid;
        if pod.settled {
            // Forgotten first: its own images must not wake it.
            self.forget(&pod.node, uid);
            return self.learn(&pod.node, &pod.pulled);
        }
        let mut starts = self.learn(&pod.node, &pod.pulled);
        if pod.told || self.told.contains(uid) || self.is_waiting(&pod.node, uid) {
            return starts;
        }
        let on_node = self.images.get(&pod.node);
        let missing: Vec<&String> = pod
            .images
            .iter()
            .filter(|i| !on_node.is_some_and(|have| have.contains(*i)))
            .collect();
        if missing.is_empty() {
            tracing::debug!(pod = %key(&pod.start), node = %pod.node, "all images on the node: starts at once");
            self.stats.cached += 1;
            self.told.insert(uid.clone());
            starts.push(pod.start.clone());
        } else {
            tracing::debug!(pod = %key(&pod.start), node = %pod.node, ?missing, "pays the pull");
            self.stats.pulling += 1;
            self.waiting
                .entry(pod.node.clone())
                .or_default()
                .insert(uid.clone(), (pod.start.clone(), pod.images.clone()));
        }
        starts
    }

    /// Records images now on `node`; returns the waiting pods there that have all theirs now.
    fn learn(&mut self, node: &str, pulled: &BTreeSet<String>) -> Vec<Start> {
        let have = self.images.entry(node.to_string()).or_default();
        let mut grew = false;
        for image in pulled {
            if have.insert(image.clone()) {
                tracing::debug!(node, image = %image, "image now on the node");
                grew = true;
            }
        }
        let Some(waiting) = self.waiting.get_mut(node).filter(|_| grew) else {
            return Vec::new();
        };
        let ready: Vec<String> = waiting
            .iter()
            .filter(|(_, (_, images))| images.iter().all(|i| have.contains(i)))
            .map(|(uid, _)| uid.clone())
            .collect();
        let mut starts = Vec::new();
        for uid in ready {
            if let Some((start, _)) = waiting.remove(&uid) {
                tracing::debug!(pod = %key(&start), node, "its images arrived (pulled by another pod): starts now");
                self.stats.joined += 1;
                self.told.insert(uid);
                starts.push(start);
            }
        }
        if waiting.is_empty() {
            self.waiting.remove(node);
        }
        starts
    }

    fn is_waiting(&self, node: &str, uid: &str) -> bool {
        self.waiting.get(node).is_some_and(|w| w.contains_key(uid))
    }

    /// The pod is settled or gone: nothing more to decide for it.
    fn forget(&mut self, node: &str, uid: &str) {
        self.told.remove(uid);
        if let Some(waiting) = self.waiting.get_mut(node) {
            waiting.remove(uid);
            if waiting.is_empty() {
                self.waiting.remove(node);
            }
        }
    }

    /// The watch restarted: pods are listed again (what the nodes have is kept).
    fn relisting(&mut self) {
        self.waiting.clear();
        self.told.clear();
    }

    fn summary(&self) -> (usize, usize, usize) {
        let images = self.images.values().map(HashSet::len).sum();
        let waiting = self.waiting.values().map(HashMap::len).sum();
        (self.images.len(), images, waiting)
    }
}

fn key(start: &Start) -> String {
    format!("{}/{}", start.namespace, start.name)
}

/// Annotates the pod so kwok starts it at once. The uid in the patch makes it apply to that pod
/// only, not to a namesake created since.
async fn start_now(client: Client, start: Start) {
    let api: Api<Pod> = Api::namespaced(client, &start.namespace);
    let patch = serde_json::json!({
        "metadata": {"uid": start.uid, "annotations": {PULL_SECONDS_ANNOTATION: "0"}}
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api.patch(&start.name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => {
            tracing::debug!(pod = %key(&start), reason = %e.reason, "pod gone or replaced: not annotated");
        }
        Err(e) => tracing::warn!(pod = %key(&start), error = %e, "could not annotate pod"),
    }
}

async fn client(cli: &Cli) -> Result<Client> {
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => Config::infer()
            .await
            .context("no kubeconfig: pass --kubeconfig or set KUBECONFIG")?,
    };
    Ok(Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log_filter)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let client = client(&cli).await?;

    // The simulated nodes: names only.
    let (nodes, writer) = reflector::store::<PartialObjectMeta<Node>>();
    let node_watch = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default().labels(&cli.node_selector),
    )
    .default_backoff()
    .reflect(writer)
    .for_each(|event| {
        if let Err(e) = event {
            tracing::warn!(error = %e, "node watch failed; retrying");
        }
        futures::future::ready(())
    });
    let node_task = tokio::spawn(node_watch);
    tokio::time::timeout(Duration::from_secs(60), nodes.wait_until_ready())
        .await
        .context("timed out after 60s listing nodes")?
        .context("node watch ended")?;
    tracing::info!(
        nodes = nodes.state().len(),
        selector = %cli.node_selector,
        "watching pods bound to simulated nodes"
    );

    let result = run(&cli, client, &nodes).await;
    node_task.abort();
    result
}

async fn run(cli: &Cli, client: Client, nodes: &Store<PartialObjectMeta<Node>>) -> Result<()> {
    // Every pod: bound ones, and DaemonSet pods pinned to a node before they are bound.
    let pods =
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff();
    let mut pods = std::pin::pin!(pods);
    let mut cache = ImageCache::default();
    let patches = Arc::new(Semaphore::new(usize::from(cli.concurrency)));
    let mut summary = tokio::time::interval(Duration::from_secs(cli.summary_seconds.max(1)));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let simulated = |node: &str| nodes.get(&ObjectRef::new(node)).is_some();
    let mut last_summary = None;

    loop {
        let event = tokio::select! {
            event = pods.next() => event,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = summary.tick(), if cli.summary_seconds > 0 => {
                let now = (cache.summary(), cache.stats);
                if last_summary != Some(now) {
                    let ((nodes, images, waiting), s) = now;
                    tracing::info!(nodes, images, waiting, started_at_once = s.cached,
                        started_when_image_arrived = s.joined, paid_pull = s.pulling, "cache");
                    last_summary = Some(now);
                }
                continue;
            }
        };
        let starts = match event {
            None => bail!("pod watch ended"),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                cache.relisting();
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                tracing::info!("pods listed; following changes");
                continue;
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some(view) = PodView::of(&pod) {
                    cache.forget(&view.node, &view.start.uid);
                }
                continue;
            }
            Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                match PodView::of(&pod) {
                    Some(view) if simulated(&view.node) => cache.observe(&view),
                    _ => continue,
                }
            }
        };
        for start in starts {
            // Waiting for a permit holds the watch: back-pressure instead of a growing queue.
            let permit = patches.clone().acquire_owned().await?;
            let client = client.clone();
            tokio::spawn(async move {
                start_now(client, start).await;
                drop(permit);
            });
        }
    }
    tracing::info!("stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, image: &str, image_id: Option<&str>) -> PodView {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": image}]},
            "status": {"phase": "Pending"}
        });
        if let Some(id) = image_id {
            p["status"] = json!({"phase": "Running", "containerStatuses": [{
                "name": "c", "image": image, "imageID": id, "ready": true, "restartCount": 0
            }]});
        }
        PodView::of(&serde_json::from_value(p).unwrap()).unwrap()
    }

    /// A DaemonSet pod as created, before the scheduler binds it.
    fn pinned(name: &str, node: &str, image: &str) -> Option<PodView> {
        let p = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": image}],
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                        {"nodeSelectorTerms": [{"matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}},
            "status": {"phase": "Pending"}
        });
        PodView::of(&serde_json::from_value(p).unwrap())
    }

    #[test]
    fn a_daemonset_pod_is_decided_before_it_is_bound_and_once() {
        let mut cache = ImageCache::default();
        cache.observe(&pod("old", "n1", "app:2", Some("app@sha256:2")));
        let created = pinned("new", "n1", "app:2").expect("pinned to n1");
        assert_eq!(created.node, "n1");
        assert_eq!(names(&cache.observe(&created)), ["new"]);
        // Bound a moment later: already told, not annotated twice.
        assert!(cache.observe(&pod("new", "n1", "app:2", None)).is_empty());
        // Not pinned at all: left until it is bound.
        let free: Pod = serde_json::from_value(json!({
            "metadata": {"name": "free", "namespace": "ns", "uid": "uid-free"},
            "spec": {"containers": [{"name": "c", "image": "app:2"}]},
        }))
        .unwrap();
        assert!(PodView::of(&free).is_none());
    }

    fn names(starts: &[Start]) -> Vec<&str> {
        starts.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_pod_starts_at_once_only_where_its_image_was_pulled() {
        let mut cache = ImageCache::default();
        assert!(cache.observe(&pod("pp", "n1", "app:2", None)).is_empty());
        assert!(
            cache
                .observe(&pod("pp", "n1", "app:2", Some("app@sha256:2")))
                .is_empty(),
            "the puller itself started on its own"
        );
        assert_eq!(
            names(&cache.observe(&pod("new", "n1", "app:2", None))),
            ["new"]
        );
        assert!(
            cache.observe(&pod("new", "n1", "app:2", None)).is_empty(),
            "told once"
        );
        assert!(
            cache.observe(&pod("other", "n2", "app:2", None)).is_empty(),
            "another node pays the pull"
        );
        assert_eq!(
            cache.stats,
            Stats {
                cached: 1,
                joined: 0,
                pulling: 2
            }
        );
    }

    #[test]
    fn a_waiting_pod_starts_when_another_brings_its_image() {
        let mut cache = ImageCache::default();
        assert!(cache.observe(&pod("a", "n1", "app:2", None)).is_empty());
        assert!(cache.observe(&pod("b", "n1", "app:2", None)).is_empty());
        let starts = cache.observe(&pod("a", "n1", "app:2", Some("app@sha256:2")));
        assert_eq!(names(&starts), ["b"]);
        assert_eq!(cache.summary(), (1, 1, 0));
    }

    #[test]
    fn every_image_must_be_there_and_failed_pulls_teach_nothing() {
        let mut cache = ImageCache::default();
        cache.observe(&pod("a", "n1", "app:2", Some("app@sha256:2")));
        let both: Pod = serde_json::from_value(json!({
            "metadata": {"name": "both", "namespace": "ns", "uid": "uid-both"},
            "spec": {"nodeName": "n1",
                     "initContainers": [{"name": "init", "image": "init:1"}],
                     "containers": [{"name": "c", "image": "app:2"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "init", "image": "init:1",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull"}}}]}
        }))
        .unwrap();
        assert!(cache.observe(&PodView::of(&both).unwrap()).is_empty());
        assert_eq!(cache.summary(), (1, 1, 1));
    }

    #[test]
    fn settled_and_annotated_pods_are_left_alone() {
        let mut cache = ImageCache::default();
        cache.observe(&pod("a", "n1", "app:2", Some("app@sha256:2")));
        let mut told = pod("b", "n1", "app:2", None);
        told.told = true;
        assert!(cache.observe(&told).is_empty());
        let unbound: Pod = serde_json::from_value(json!({
            "metadata": {"name": "u", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "image": "app:2"}]}
        }))
        .unwrap();
        assert!(PodView::of(&unbound).is_none());
        // A deleted waiting pod is forgotten.
        cache.observe(&pod("c", "n2", "app:2", None));
        cache.forget("n2", "uid-c");
        assert_eq!(cache.summary().2, 0);
    }
}
