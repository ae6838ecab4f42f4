//! `rollout status|pause|resume|approve|abort|rollback`.

use std::io::IsTerminal;
use std::time::Duration;

use edgefleet_api::rollout::{RolloutJob, RolloutJobStatus, RolloutPhase};
use edgefleet_kit::conditions::find_condition;
use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::cli::{Output, RolloutCommand, StatusArgs};
use crate::error::{Error, Result};
use crate::kube_ctx::Ctx;
use crate::table::{age, bar, human_duration, percent, render};
use crate::{FIELD_MANAGER, exit, out, serialize};

const RESOURCE: &str = "rolloutjobs.edgefleet.io";
const SINGULAR: &str = "rolloutjob";
const BAR_WIDTH: usize = 30;

pub async fn run(ctx: &Ctx, cmd: RolloutCommand) -> Result<u8> {
    match cmd {
        RolloutCommand::Status(args) if args.watch => watch(ctx, &args).await,
        RolloutCommand::Status(args) => {
            let job = get(ctx, &args.job).await?;
            match args.output {
                Output::Table => out(&render_status(&job, Timestamp::now()))?,
                format => out(&serialize(&job, format)?)?,
            }
            Ok(exit::OK)
        }
        RolloutCommand::Pause(a) => {
            let job = get(ctx, &a.job).await?;
            patch(ctx, &job, json!({"spec": {"paused": true}}), "paused").await
        }
        RolloutCommand::Resume(a) => {
            let job = get(ctx, &a.job).await?;
            patch(ctx, &job, resume_patch(&job), "resumed").await
        }
        RolloutCommand::Approve(a) => {
            let job = get(ctx, &a.job).await?;
            let batch = match a.batch {
                Some(b) => b,
                None => job.status.as_ref().map_or(0, |s| s.current_batch),
            };
            if !(1..=100).contains(&batch) {
                return Err(Error::Usage(format!(
                    "no batch to approve (current batch {batch}); pass --batch N with N from 1 to 100"
                )));
            }
            let verb = format!("approved past batch {batch}");
            patch(ctx, &job, json!({"spec": {"approvedBatch": batch}}), &verb).await
        }
        RolloutCommand::Abort(a) => {
            let job = get(ctx, &a.job).await?;
            patch(ctx, &job, json!({"spec": {"abort": true}}), "aborting").await
        }
        RolloutCommand::Rollback(a) => {
            let job = get(ctx, &a.job).await?;
            patch(
                ctx,
                &job,
                json!({"spec": {"rollback": true}}),
                "rolling back",
            )
            .await
        }
    }
}

async fn get(ctx: &Ctx, name: &str) -> Result<RolloutJob> {
    let api: Api<RolloutJob> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    api.get(name).await.map_err(|e| {
        ctx.request("get", RESOURCE, SINGULAR, Some(name), Some(&ctx.namespace))
            .error(e)
    })
}

async fn patch(ctx: &Ctx, job: &RolloutJob, body: Value, done: &str) -> Result<u8> {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let phase = phase_of(job);
    if is_terminal(phase) {
        eprintln!(
            "note: rolloutjob \"{name}\" is already {phase:?}; the operator will not act on this"
        );
    }
    let api: Api<RolloutJob> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(&body))
        .await
        .map_err(|e| {
            ctx.request(
                "patch",
                RESOURCE,
                SINGULAR,
                Some(name),
                Some(&ctx.namespace),
            )
            .error(e)
        })?;
    out(&format!("rolloutjob.edgefleet.io/{name} {done}\n"))?;
    Ok(exit::OK)
}

/// `spec.paused: false`, plus `spec.approvedBatch` when the job waits at a step pause that
/// only a person releases (`pause: {}` after the current batch, not yet approved).
pub fn resume_patch(job: &RolloutJob) -> Value {
    let mut spec = json!({"paused": false});
    let current = job.status.as_ref().map_or(0, |s| s.current_batch);
    let waits_for_person = current >= 1
        && job
            .spec
            .batches
            .steps
            .as_ref()
            .and_then(|steps| steps.get(usize::try_from(current - 1).ok()?))
            .and_then(|step| step.pause.as_ref())
            .is_some_and(|p| p.seconds.is_none());
    if waits_for_person && job.spec.approved_batch.unwrap_or(0) < current {
        spec["approvedBatch"] = json!(current);
    }
    json!({ "spec": spec })
}

/// Phases after which the job does nothing more.
pub fn is_terminal(phase: RolloutPhase) -> bool {
    matches!(
        phase,
        RolloutPhase::Completed
            | RolloutPhase::Aborted
            | RolloutPhase::RolledBack
            | RolloutPhase::Failed
    )
}

/// The exit code of `status -w` once the job is terminal.
pub fn exit_code(phase: RolloutPhase) -> u8 {
    match phase {
        RolloutPhase::Completed => exit::OK,
        _ => exit::ROLLOUT_UNSUCCESSFUL,
    }
}

fn phase_of(job: &RolloutJob) -> RolloutPhase {
    job.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn ts(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<Timestamp> {
    t.map(|t| t.0)
}

/// The full view: header, progress bar, per-batch table, recent failures.
pub fn render_status(job: &RolloutJob, now: Timestamp) -> String {
    let empty = RolloutJobStatus::default();
    let s = job.status.as_ref().unwrap_or(&empty);
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    let c = &s.counts;
    let mut o = String::new();
    o.push_str(&format!(
        "rolloutjob {ns}/{name}: {:?}, batch {}/{}\n",
        s.phase, s.current_batch, s.total_batches
    ));
    o.push_str(&format!(
        "  image      {}  ({:?} {})\n",
        job.spec.image,
        job.spec.target.kind,
        selector_text(&job.spec.target.selector)
    ));
    o.push_str(&format!(
        "  progress   {} {:>3}%  updated {}/{}\n",
        bar(c.updated, c.targets, BAR_WIDTH),
        percent(c.updated, c.targets),
        c.updated,
        c.targets
    ));
    o.push_str(&format!(
        "  targets    {}  pre-pulled {}  updated {}  ready {}  failed {}  skipped {}\n",
        c.targets, c.pre_pulled, c.updated, c.ready, c.failed, c.skipped
    ));
    let started = ts(s.start_time.as_ref());
    if let Some(start) = started {
        let end = ts(s.completion_time.as_ref()).unwrap_or(now);
        o.push_str(&format!(
            "  elapsed    {}\n",
            human_duration(end.duration_since(start))
        ));
    }
    if let Some(m) = s.message.as_deref().filter(|m| !m.is_empty()) {
        o.push_str(&format!("  message    {m}\n"));
    }
    if s.behind > 0 {
        let why = find_condition(&s.conditions, "NodesBehind")
            .filter(|c| c.status == "True")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        o.push_str(&format!("  behind     {}: {why}\n", s.behind));
    }
    if s.phase == RolloutPhase::Paused
        && let Some(p) = find_condition(&s.conditions, "Paused").filter(|c| c.status == "True")
    {
        let hint = if p.reason == "StepPause" || p.reason == "SpecPaused" {
            format!("  (kubectl edgefleet rollout resume {name})")
        } else {
            String::new()
        };
        o.push_str(&format!("  paused     {}: {}{hint}\n", p.reason, p.message));
    }
    let generation = job.metadata.generation.unwrap_or(0);
    if s.observed_generation.is_some_and(|g| g < generation) {
        o.push_str(&format!(
            "  note       the operator has not acted on generation {generation} yet (observed {})\n",
            s.observed_generation.unwrap_or(0)
        ));
    }
    if !s.batches.is_empty() {
        o.push('\n');
        let rows: Vec<Vec<String>> = s
            .batches
            .iter()
            .map(|b| {
                let start = ts(b.start_time.as_ref());
                let duration = match (start, ts(b.finish_time.as_ref())) {
                    (Some(a), Some(z)) => human_duration(z.duration_since(a)),
                    (Some(a), None) => {
                        format!("{} (running)", human_duration(now.duration_since(a)))
                    }
                    _ => "-".into(),
                };
                vec![
                    b.index.to_string(),
                    b.group.clone().unwrap_or_else(|| "-".into()),
                    b.phase.clone(),
                    b.counts.targets.to_string(),
                    b.counts.pre_pulled.to_string(),
                    b.counts.updated.to_string(),
                    b.counts.ready.to_string(),
                    b.counts.failed.to_string(),
                    b.counts.skipped.to_string(),
                    duration,
                ]
            })
            .collect();
        o.push_str(&render(
            &[
                "BATCH", "GROUP", "PHASE", "TARGETS", "PULLED", "UPDATED", "READY", "FAILED",
                "SKIPPED", "DURATION",
            ],
            &rows,
        ));
    }
    if !s.recent_failures.is_empty() {
        o.push_str("\nrecent failures (newest last):\n");
        let rows: Vec<Vec<String>> = s
            .recent_failures
            .iter()
            .map(|f| {
                vec![
                    f.node.clone(),
                    f.workload.clone(),
                    f.reason.clone(),
                    age(ts(f.time.as_ref()), now),
                    f.message.clone(),
                ]
            })
            .collect();
        o.push_str(&render(
            &["NODE", "WORKLOAD", "REASON", "AGE", "MESSAGE"],
            &rows,
        ));
    }
    o
}

/// One line per change, for logs and pipes (no cursor movement).
pub fn render_line(job: &RolloutJob) -> String {
    let empty = RolloutJobStatus::default();
    let s = job.status.as_ref().unwrap_or(&empty);
    let c = &s.counts;
    let mut line = format!(
        "{:<12} batch {}/{}  updated {}/{} ({}%)  pre-pulled {}  failed {}  skipped {}",
        format!("{:?}", s.phase),
        s.current_batch,
        s.total_batches,
        c.updated,
        c.targets,
        percent(c.updated, c.targets),
        c.pre_pulled,
        c.failed,
        c.skipped
    );
    if let Some(m) = s.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str("  ");
        line.push_str(m);
    }
    line
}

fn selector_text(sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(format!("{} {} ({values})", e.key, e.operator));
    }
    parts.join(",")
}

/// `status -w`: redraws (terminal) or prints a line per change until the job is terminal.
async fn watch(ctx: &Ctx, args: &StatusArgs) -> Result<u8> {
    // A plain GET first: a missing job or missing access is reported at once and clearly.
    let first = get(ctx, &args.job).await?;
    let tty = std::io::stdout().is_terminal() && args.output == Output::Table;
    let started = std::time::Instant::now();
    let mut view = View::new(tty, args.output);
    view.show(&first, started)?;
    if is_terminal(phase_of(&first)) {
        view.finish(&first)?;
        return Ok(exit_code(phase_of(&first)));
    }

    let api: Api<RolloutJob> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", args.job));
    let mut events = watcher(api, config).boxed();
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = first;
    let mut consecutive_errors = 0u32;
    loop {
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = timeout => return Err(Error::Timeout(args.timeout.unwrap_or(0))),
            _ = tick.tick(), if tty => view.show(&last, started)?,
            event = events.next() => match event {
                None => return Err(Error::Connect { server: ctx.server.clone(), detail: "the watch ended".into() }),
                Some(Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                    consecutive_errors = 0;
                    view.show(&job, started)?;
                    if is_terminal(phase_of(&job)) {
                        view.finish(&job)?;
                        return Ok(exit_code(phase_of(&job)));
                    }
                    last = job;
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    return Err(Error::Deleted {
                        resource: SINGULAR.into(),
                        name: args.job.clone(),
                        namespace: Some(ctx.namespace.clone()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // The watcher re-lists on its own; a lasting error (no access) ends the
                    // watch with the same message a GET would give.
                    consecutive_errors += 1;
                    let api_error = match e {
                        watcher::Error::InitialListFailed(k) | watcher::Error::WatchStartFailed(k) | watcher::Error::WatchFailed(k) => Some(k),
                        _ => None,
                    };
                    if let Some(k) = api_error
                        && (consecutive_errors >= 5 || matches!(&k, kube::Error::Api(s) if s.code == 403 || s.code == 401))
                    {
                        return Err(ctx.request("watch", RESOURCE, SINGULAR, Some(&args.job), Some(&ctx.namespace)).error(k));
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(consecutive_errors.min(10)))).await;
                }
            }
        }
    }
}

/// What `-w` has printed so far.
struct View {
    tty: bool,
    output: Output,
    /// Lines of the block drawn last (terminal: moved up over and redrawn).
    drawn: usize,
    /// The last line printed (pipe: printed again only when it changed).
    last_line: String,
    last_version: String,
}

impl View {
    fn new(tty: bool, output: Output) -> Self {
        Self {
            tty,
            output,
            drawn: 0,
            last_line: String::new(),
            last_version: String::new(),
        }
    }

    fn show(&mut self, job: &RolloutJob, started: std::time::Instant) -> Result<()> {
        match self.output {
            Output::Json | Output::Yaml => {
                let version = job.metadata.resource_version.clone().unwrap_or_default();
                if version != self.last_version {
                    self.last_version = version;
                    let text = match self.output {
                        Output::Json => serde_json::to_string(job)
                            .map(|s| s + "\n")
                            .map_err(|e| Error::Output(e.to_string()))?,
                        _ => format!("---\n{}", serialize(job, Output::Yaml)?),
                    };
                    out(&text)?;
                }
            }
            Output::Table if self.tty => {
                let text = render_status(job, Timestamp::now());
                let mut frame = String::new();
                if self.drawn > 0 {
                    // Up over the last block, clear to the end of the screen.
                    frame.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
                }
                frame.push_str(&text);
                self.drawn = text.lines().count();
                out(&frame)?;
            }
            Output::Table => {
                let line = render_line(job);
                if line != self.last_line {
                    out(&format!("{:>5}s  {line}\n", started.elapsed().as_secs()))?;
                    self.last_line = line;
                }
            }
        }
        Ok(())
    }

    /// A pipe gets the full view once at the end, after its progress lines.
    fn finish(&mut self, job: &RolloutJob) -> Result<()> {
        if !self.tty && self.output == Output::Table {
            out(&format!("\n{}", render_status(job, Timestamp::now())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(s.parse().unwrap())
    }

    fn fixture() -> RolloutJob {
        serde_json::from_value(json!({
            "apiVersion": "edgefleet.io/v1alpha1", "kind": "RolloutJob",
            "metadata": {"name": "toll-2", "namespace": "tolls", "generation": 2},
            "spec": {
                "target": {"kind": "DaemonSet", "selector": {"matchLabels": {"app": "toll"}}},
                "image": "registry.example/toll:2",
                "batches": {"steps": [{"size": 10, "pause": {}}, {"size": "100%"}]}
            },
            "status": {
                "observedGeneration": 2, "phase": "Paused", "progress": "1/2",
                "currentBatch": 1, "totalBatches": 2,
                "counts": {"targets": 40, "prePulled": 10, "updated": 10, "ready": 10, "failed": 1, "skipped": 0},
                "message": "step pause after batch 1",
                "startTime": "2026-01-01T00:00:00Z",
                "batches": [{"index": 1, "group": "st-01", "phase": "Completed",
                    "counts": {"targets": 11, "prePulled": 10, "updated": 10, "ready": 10, "failed": 1, "skipped": 0},
                    "startTime": "2026-01-01T00:00:00Z", "finishTime": "2026-01-01T00:00:14Z"}],
                "recentFailures": [{"node": "edge-7", "workload": "DaemonSet/toll", "reason": "PullFailed",
                    "message": "ErrImagePull", "time": "2026-01-01T00:00:10Z"}],
                "conditions": [{"type": "Paused", "status": "True", "reason": "StepPause",
                    "message": "step pause after batch 1: set spec.approvedBatch to 1 to go on",
                    "lastTransitionTime": "2026-01-01T00:00:14Z"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn status_view_has_bar_batches_and_failures() {
        let now = "2026-01-01T00:01:00Z".parse().unwrap();
        let text = render_status(&fixture(), now);
        assert!(
            text.starts_with("rolloutjob tolls/toll-2: Paused, batch 1/2\n"),
            "{text}"
        );
        assert!(
            text.contains("  progress   [=======>                      ]  25%  updated 10/40\n"),
            "{text}"
        );
        assert!(
            text.contains("pre-pulled 10  updated 10  ready 10  failed 1  skipped 0"),
            "{text}"
        );
        assert!(text.contains("elapsed    1m\n"), "{text}");
        assert!(text.contains("paused     StepPause: step pause after batch 1: set spec.approvedBatch to 1 to go on  (kubectl edgefleet rollout resume toll-2)"), "{text}");
        assert!(text.contains("BATCH   GROUP   PHASE       TARGETS   PULLED   UPDATED   READY   FAILED   SKIPPED   DURATION\n1       st-01   Completed   11        10       10        10      1        0         14s\n"), "{text}");
        assert!(
            text.contains("edge-7   DaemonSet/toll   PullFailed   50s   ErrImagePull"),
            "{text}"
        );
        assert!(!text.contains("note"), "{text}");
        assert!(!text.contains("behind"), "{text}");
    }

    #[test]
    fn status_view_says_what_is_left_behind_and_how_to_finish() {
        let mut job = fixture();
        let s = job.status.as_mut().unwrap();
        s.phase = RolloutPhase::Completed;
        s.behind = 1;
        s.conditions = serde_json::from_value(json!([{"type": "NodesBehind", "status": "True",
            "reason": "Held", "message": "1 targets not on their template image (DaemonSet/toll on edge-7): held, the DaemonSet stays OnDelete",
            "lastTransitionTime": "2026-01-01T00:00:14Z"}]))
        .unwrap();
        let text = render_status(&job, "2026-01-01T00:01:00Z".parse().unwrap());
        assert!(
            text.contains("  behind     1: 1 targets not on their template image (DaemonSet/toll on edge-7): held, the DaemonSet stays OnDelete\n"),
            "{text}"
        );
    }

    #[test]
    fn status_view_flags_a_lagging_operator_and_a_running_batch() {
        let mut job = fixture();
        job.metadata.generation = Some(3);
        if let Some(s) = job.status.as_mut() {
            s.batches[0].finish_time = None;
            s.batches[0].start_time = Some(t("2026-01-01T00:00:30Z"));
        }
        let text = render_status(&job, "2026-01-01T00:01:00Z".parse().unwrap());
        assert!(
            text.contains("has not acted on generation 3 yet (observed 2)"),
            "{text}"
        );
        assert!(text.contains("30s (running)"), "{text}");
    }

    #[test]
    fn status_view_without_status() {
        let mut job = fixture();
        job.status = None;
        let text = render_status(&job, Timestamp::now());
        assert!(
            text.starts_with("rolloutjob tolls/toll-2: Pending, batch 0/0\n"),
            "{text}"
        );
        assert!(!text.contains("BATCH"), "{text}");
    }

    #[test]
    fn one_line_per_change() {
        assert_eq!(
            render_line(&fixture()),
            "Paused       batch 1/2  updated 10/40 (25%)  pre-pulled 10  failed 1  skipped 0  step pause after batch 1"
        );
    }

    #[test]
    fn resume_approves_a_manual_step_pause_once() {
        let mut job = fixture();
        assert_eq!(
            resume_patch(&job),
            json!({"spec": {"paused": false, "approvedBatch": 1}})
        );
        job.spec.approved_batch = Some(1);
        assert_eq!(resume_patch(&job), json!({"spec": {"paused": false}}));
        // A timed pause needs no approval.
        job.spec.approved_batch = None;
        if let Some(steps) = job.spec.batches.steps.as_mut() {
            steps[0].pause = Some(edgefleet_api::rollout::StepPause { seconds: Some(5) });
        }
        assert_eq!(resume_patch(&job), json!({"spec": {"paused": false}}));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(RolloutPhase::Completed), 0);
        for p in [
            RolloutPhase::Failed,
            RolloutPhase::Aborted,
            RolloutPhase::RolledBack,
        ] {
            assert!(is_terminal(p));
            assert_eq!(exit_code(p), 3);
        }
        assert!(!is_terminal(RolloutPhase::Paused));
    }
}
