//! The shipped dashboards and alert rules name only metrics the operators export, and the
//! chart ships exactly the files under config/.

use std::collections::BTreeSet;

use edgefleet_monitoring::{
    exported_metrics, json_files, metrics_in, repo_root, resolve, shipped_queries,
};

#[test]
fn dashboards_and_rules_name_only_exported_metrics() {
    let exported = exported_metrics();
    let queries = shipped_queries().unwrap();
    assert!(
        queries.len() > 40,
        "too few queries found: {}",
        queries.len()
    );
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metrics_in(&q.expr);
        assert!(
            !names.is_empty() || q.expr.trim().is_empty(),
            "{}: no metric in {:?}",
            q.source,
            q.expr
        );
        for name in names {
            match resolve(&name, &exported) {
                Some(base) => {
                    used.insert(base);
                }
                None => unknown.push(format!("{}: {name}", q.source)),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics no operator exports:\n{}",
        unknown.join("\n")
    );
    // The alerts' own metrics are among them.
    for m in [
        "edgefleet_rollout_last_progress_timestamp_seconds",
        "edgefleet_rollout_failure_budget_breaches_total",
        "edgefleet_hub_load_report_last_write_timestamp_seconds",
        "edgefleet_rollout_leader",
        "edgefleet_device_devices",
        "edgefleet_hub_device_report_lag_seconds",
    ] {
        assert!(used.contains(m), "{m} is not used");
    }
}

#[test]
fn the_exported_lists_hold_every_family() {
    let exported = exported_metrics();
    for m in [
        "edgefleet_rollout_reconcile_total",
        "edgefleet_rollout_api_requests_total",
        "edgefleet_rollout_targets",
        "edgefleet_objectsync_syncs",
        "edgefleet_objectsync_leader",
        "edgefleet_hub_delivery_lag_seconds",
        "edgefleet_hub_api_requests_total",
        "edgefleet_device_devices",
        "edgefleet_hub_device_status_writes_total",
    ] {
        assert!(exported.contains(m), "{m} missing from {exported:?}");
    }
    assert!(
        !exported.contains("edgefleet_hub_leader"),
        "the hub does not elect a leader"
    );
}

#[test]
fn the_chart_ships_the_dashboards_and_rules_of_config() {
    let root = repo_root();
    let config = json_files(&root.join("config/dashboards")).unwrap();
    let chart = json_files(&root.join("charts/edgefleet/dashboards")).unwrap();
    let names = |files: &[std::path::PathBuf]| -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
            .collect()
    };
    assert_eq!(
        names(&config),
        names(&chart),
        "cp config/dashboards/*.json charts/edgefleet/dashboards/"
    );
    assert_eq!(config.len(), 3);
    for (a, b) in config.iter().zip(&chart) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{} differs from the chart's copy: cp config/dashboards/*.json charts/edgefleet/dashboards/",
            a.display()
        );
    }
    assert_eq!(
        std::fs::read(root.join("config/prometheus/edgefleet-rules.yaml")).unwrap(),
        std::fs::read(root.join("charts/edgefleet/files/prometheus-rules.yaml")).unwrap(),
        "cp config/prometheus/edgefleet-rules.yaml charts/edgefleet/files/prometheus-rules.yaml"
    );
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let root = repo_root();
    let text =
        std::fs::read_to_string(root.join("config/prometheus/edgefleet-rules.yaml")).unwrap();
    let runbooks = std::fs::read_to_string(root.join("docs/runbooks.md")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let a = &rule["annotations"];
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    a[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{alert}: no {key}"
                );
            }
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{alert}: no severity"
            );
            let anchor = a["runbook_url"]
                .as_str()
                .unwrap()
                .rsplit_once('#')
                .unwrap()
                .1;
            // GitHub's anchor for "## EdgefleetFoo" (and "### …") is its lower-cased text.
            let heading = runbooks
                .lines()
                .filter(|l| l.starts_with('#'))
                .any(|l| l.trim_start_matches('#').trim().to_lowercase() == anchor);
            assert!(
                heading,
                "{alert}: docs/runbooks.md has no heading for #{anchor}"
            );
        }
    }
    assert!(alerts >= 8, "{alerts} alerts");
}
