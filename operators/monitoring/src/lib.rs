//! The dashboards (`config/dashboards/`) and alert rules (`config/prometheus/`, the chart's
//! copy in `charts/edgefleet/files/`) name metrics in PromQL; the operators export metrics.
//! This crate reads the queries, extracts the metric names they use and lists the names the
//! operators export, so a test fails when a dashboard or an alert names a metric that does not
//! exist (a typo, a rename) — the e2e test then asks a real Prometheus for each of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What went wrong reading the dashboards or rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every metric the edgefleet binaries export (histograms by their base name).
pub fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    names.extend(edgefleet_rollout::metric_names());
    names.extend(edgefleet_objectsync::metric_names());
    names.extend(edgefleet_hub::metric_names());
    names.extend(edgefleet_balancer::metric_names());
    names.extend(edgefleet_device::metric_names());
    names
}

/// Metrics that get a series only when something fails (a label vector whose children are
/// created by the first error): a healthy e2e run cannot make them return data, so the e2e
/// test only checks that they are exported (named by [`exported_metrics`]).
pub fn only_on_failure(name: &str) -> bool {
    name.ends_with("_reconcile_errors_total")
        || name == "edgefleet_hub_api_errors_total"
        || name == "edgefleet_objectsync_watch_errors_total"
}

/// PromQL words that are not metric names: operators, modifiers, and the aggregations (which
/// may be followed by `by (...)` rather than by their parenthesis).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
];

/// Modifiers followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects (Grafana `$variables` and `${...}` are not).
/// Identifiers followed by `(` are functions or aggregations; label matchers `{...}`, ranges
/// `[...]`, strings, numbers, durations and label lists after `by`, `on`, … are skipped.
pub fn metrics_in(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_to = |from: usize, close: char| -> usize {
        let mut j = from + 1;
        let mut quote: Option<char> = None;
        while j < chars.len() {
            let c = chars[j];
            match quote {
                Some(_) if c == '\\' => j += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == close => return j + 1,
                None => {}
            }
            j += 1;
        }
        j
    };
    let mut label_list_next = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string: skip to its closing quote.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '(' && label_list_next {
            label_list_next = false;
            i = skip_to(i, ')');
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_to(i, '}');
            } else {
                while i < chars.len() && is_part(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (5m, 1e3, 0x1f).
            while i < chars.len() && (is_part(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if LABEL_LISTS.contains(&word.as_str()) {
                label_list_next = true;
            } else if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The exported metric a selected name belongs to: itself, or a histogram's base name for its
/// `_bucket`, `_sum` and `_count` series. `None` when no operator exports it.
pub fn resolve(name: &str, exported: &BTreeSet<String>) -> Option<String> {
    if exported.contains(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        exported.contains(base).then(|| base.to_string())
    })
}

/// One PromQL query and where it comes from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub source: String,
    pub expr: String,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The JSON files of a directory, sorted.
pub fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every query of a Grafana dashboard: panel targets (rows' nested panels too) and template
/// variables (`label_values(selector, label)` reduced to its selector).
pub fn dashboard_queries(path: &Path) -> Result<Vec<Query>> {
    let text = read(path)?;
    let dash: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dash["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Query {
                    source: format!("{file}: panel {:?}", p["title"].as_str().unwrap_or("")),
                    expr: expr.to_string(),
                });
            }
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"].as_str().or_else(|| v["query"].as_str());
        if v["type"] != "query" {
            continue;
        }
        if let Some(q) = q {
            out.push(Query {
                source: format!("{file}: variable {:?}", v["name"].as_str().unwrap_or("")),
                expr: label_values_selector(q).to_string(),
            });
        }
    }
    Ok(out)
}

/// `label_values(sel, label)` → `sel`; `label_values(label)` → `""`; anything else as is.
fn label_values_selector(q: &str) -> &str {
    let Some(inner) = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    else {
        return q;
    };
    match inner.rsplit_once(',') {
        Some((sel, _label)) => sel.trim(),
        None => "",
    }
}

/// Every alert and recording rule expression of a Prometheus rules file.
pub fn rule_queries(path: &Path) -> Result<Vec<Query>> {
    let text = read(path)?;
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|source| Error::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .unwrap_or("");
            if let Some(expr) = rule["expr"].as_str() {
                out.push(Query {
                    source: format!("rule {name}"),
                    expr: expr.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// The repository's root (this crate lives in operators/monitoring).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every query of the shipped dashboards and alert rules.
pub fn shipped_queries() -> Result<Vec<Query>> {
    let root = repo_root();
    let mut out = Vec::new();
    for f in json_files(&root.join("config/dashboards"))? {
        out.extend(dashboard_queries(&f)?);
    }
    out.extend(rule_queries(
        &root.join("config/prometheus/edgefleet-rules.yaml"),
    )?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metric_names_are_found_and_everything_else_skipped() {
        for (expr, want) in [
            ("up", vec!["up"]),
            (
                r#"histogram_quantile(0.99, sum by (le, namespace) (rate(a_seconds_bucket{pod=~"$pod", x="b c"}[5m])))"#,
                vec!["a_seconds_bucket"],
            ),
            (
                "time() - max by (namespace, job) (a_ts) > 1800 and on (namespace, job) b{phase=~\"P|R\"} == 1",
                vec!["a_ts", "b"],
            ),
            (
                "sum(x offset 10m) < 0.7 * sum(y) unless ignoring(pod) z",
                vec!["x", "y", "z"],
            ),
            ("a / on (pod) group_left (node) b", vec!["a", "b"]),
            ("max without (pod) (m) + count by (x) (n)", vec!["m", "n"]),
            (
                "rate(c_total[$__rate_interval]) * 60 + ${var}",
                vec!["c_total"],
            ),
            ("sum(rate(d[1h:5m])) > 1e3 or vector(0)", vec!["d"]),
            ("", vec![]),
        ] {
            assert_eq!(metrics_in(expr), set(&want), "{expr}");
        }
    }

    #[test]
    fn histogram_series_resolve_to_their_base_name() {
        let exported = set(&["h_seconds", "c_total", "g_count"]);
        assert_eq!(
            resolve("h_seconds_bucket", &exported).as_deref(),
            Some("h_seconds")
        );
        assert_eq!(
            resolve("h_seconds_sum", &exported).as_deref(),
            Some("h_seconds")
        );
        assert_eq!(resolve("g_count", &exported).as_deref(), Some("g_count"));
        assert_eq!(resolve("c_total", &exported).as_deref(), Some("c_total"));
        assert_eq!(resolve("c_totl", &exported), None);
        assert_eq!(resolve("nope_bucket", &exported), None);
    }

    #[test]
    fn label_values_queries_reduce_to_their_selector() {
        assert_eq!(
            label_values_selector("label_values(m{a=\"b\"}, ns)"),
            "m{a=\"b\"}"
        );
        assert_eq!(label_values_selector("label_values(ns)"), "");
        assert_eq!(label_values_selector("query_result(m)"), "query_result(m)");
    }
}
