//! A record of every pod change in a namespace, with the time the test saw it: the evidence
//! for "pulled before swapped" and "swapped exactly once".

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What one observation of a pod says.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub deleting: bool,
    pub running: bool,
    pub ready: bool,
}

/// Records pod changes until dropped.
pub struct PodLog {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodLog {
    pub fn start(client: &Client, namespace: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                // A pod removed at once (no grace period) shows only as a Delete event: it is
                // recorded as deleting too.
                let (pod, gone) = match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
                    Ok(watcher::Event::Delete(pod)) => (pod, true),
                    _ => continue,
                };
                let status = pod.status.clone().unwrap_or_default();
                let ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let seen = Seen {
                    at: Instant::now(),
                    name: pod.name_any(),
                    uid: pod.uid().unwrap_or_default(),
                    node: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default(),
                    labels: pod.labels().clone(),
                    image: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default(),
                    deleting: gone || pod.metadata.deletion_timestamp.is_some(),
                    running: status.phase.as_deref() == Some("Running"),
                    ready,
                };
                if let Ok(mut v) = sink.lock() {
                    v.push(seen);
                }
            }
        });
        Self { seen, task }
    }

    pub fn events(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for PodLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
