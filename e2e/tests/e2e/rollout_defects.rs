//! Rollout defects found by users and by review (issues 9 and 10), each against the real
//! control plane: the status series a user watches, the workload lock under a race, the
//! interruption histogram against a pod watch, selectors that must never widen.

use edgefleet_api::rollout::{RolloutJob, RolloutPhase, TargetCounts};
use edgefleet_e2e::wait_for;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rollout::{NEW, STATION, bed, create_job, daemonset, wait_phase};

/// Every status of one RolloutJob the API server sent, in order (a watch, so no write is
/// missed between polls).
struct StatusLog {
    seen: Arc<Mutex<Vec<RolloutJob>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusLog {
    fn start(api: Api<RolloutJob>, name: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).applied_objects().boxed();
            while let Some(event) = events.next().await {
                if let Ok(job) = event {
                    sink.lock().unwrap().push(job);
                }
            }
        });
        Self { seen, task }
    }

    fn statuses(&self) -> Vec<edgefleet_api::rollout::RolloutJobStatus> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|j| j.status.clone())
            .collect()
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The figures that must never go backwards while a job runs forward.
fn figures(c: &TargetCounts) -> [(&'static str, i64); 5] {
    [
        ("prePulled", c.pre_pulled),
        ("updated", c.updated),
        ("ready", c.ready),
        ("failed", c.failed),
        ("skipped", c.skipped),
    ]
}

/// Issue 9: `kubectl edgefleet rollout status -w` showed `pre-pulled` 20, 10, 20; finished
/// batches READY 0; GROUP `-` although the job batches by station.
#[tokio::test]
async fn the_status_a_user_watches_only_moves_forward_and_names_each_batchs_station() {
    let bed = bed("status").await;
    // Three stations of ten nodes: three batches, each with swaps overlapping pulls.
    let mut nodes = 0;
    for (i, station) in ["station-0", "station-1", "station-2"].iter().enumerate() {
        let name = format!("toll-{i}");
        nodes += daemonset(&bed, &name, (STATION, station)).await;
        // One job per DaemonSet is the rule: label them all alike for one job.
        let api: Api<k8s_openapi::api::apps::v1::DaemonSet> = bed.ns.api();
        api.patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"labels": {"fleet": "toll"}}}),
            ),
        )
        .await
        .unwrap();
    }
    assert_eq!(nodes, 30);
    let api: Api<RolloutJob> = bed.ns.api();
    let log = StatusLog::start(api.clone(), "to-v2");
    create_job(
        &bed,
        "to-v2",
        "unused",
        NEW,
        serde_json::json!({
            "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"fleet": "toll"}}},
            "batches": {"size": 10, "groupBy": STATION},
            "prePull": {"parallelism": 10},
            "verify": {"readyTimeoutSeconds": 60, "minReadySeconds": 2},
        }),
    )
    .await;
    let done = wait_phase(&bed, "to-v2", RolloutPhase::Completed, 300).await;
    // The watch has delivered the last write once it has the terminal status.
    wait_for(
        "the watch to see the end",
        Duration::from_secs(30),
        || async {
            Ok(log
                .statuses()
                .last()
                .is_some_and(|s| s.phase == RolloutPhase::Completed)
                .then_some(()))
        },
    )
    .await
    .unwrap();
    let series = log.statuses();
    assert!(
        series.len() >= 6,
        "too few status writes seen: {}",
        series.len()
    );

    for pair in series.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        for ((name, before), (_, after)) in figures(&a.counts).iter().zip(figures(&b.counts)) {
            assert!(
                after >= *before,
                "job {name} went from {before} to {after}:\n{:#?}\n{:#?}",
                a.counts,
                b.counts
            );
        }
        for batch in &b.batches {
            if let Some(prev) = a.batches.iter().find(|p| p.index == batch.index) {
                for ((name, before), (_, after)) in
                    figures(&prev.counts).iter().zip(figures(&batch.counts))
                {
                    assert!(
                        after >= *before,
                        "batch {} {name} went from {before} to {after}",
                        batch.index
                    );
                }
            }
        }
    }

    let status = done.status.unwrap();
    assert_eq!(
        (
            status.counts.pre_pulled,
            status.counts.updated,
            status.counts.ready
        ),
        (30, 30, 30)
    );
    assert_eq!(status.batches.len(), 3, "{:#?}", status.batches);
    for (i, b) in status.batches.iter().enumerate() {
        assert_eq!(b.phase, "Completed", "{b:#?}");
        assert_eq!(
            b.group.as_deref(),
            Some(format!("station-{i}").as_str()),
            "batch {} names its station",
            b.index
        );
        assert_eq!(
            (
                b.counts.targets,
                b.counts.pre_pulled,
                b.counts.updated,
                b.counts.ready
            ),
            (10, 10, 10, 10),
            "a finished batch shows every member pulled, updated and Ready: {b:#?}"
        );
    }
}
