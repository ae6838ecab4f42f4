//! What GitOps tools (Argo CD, Flux) and CI rely on: every documented values combination
//! (charts/edgefleet/ci/*.yaml) and every province overlay (config/gitops/provinces/*) renders,
//! renders the same twice, is accepted by the API server, and a second server-side apply of it
//! changes nothing, so a GitOps tool never sees drift. The Argo CD and Flux objects point at
//! the charts as they are. And the image ships what the chart runs (hack/release-check).
//!
//! Not tested here: Argo CD and Flux themselves (no controllers, no CRDs of theirs in the test
//! bed); their objects are parsed and cross-checked against the charts instead.

use edgefleet_e2e::{TestNamespace, client, documents, repo_root, run};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FIELD_MANAGER: &str = "e2e-gitops";

fn chart_version(chart: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(chart).join("Chart.yaml")).unwrap();
    let chart: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    chart["version"].as_str().unwrap().to_owned()
}

fn files_in(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    files.sort();
    files
}

fn provinces() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo_root().join("config/gitops/provinces"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    assert!(out.len() >= 2, "example provinces: {out:?}");
    out
}

fn template(release: &str, namespace: &str, values: &Path) -> String {
    run(
        "helm",
        &[
            "template",
            release,
            "charts/edgefleet",
            "--namespace",
            namespace,
            "-f",
            values.to_str().unwrap(),
        ],
        None,
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", values.display()))
}

/// Server-side applies `manifest` as a GitOps tool would.
fn apply(manifest: &str) {
    run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            &format!("--field-manager={FIELD_MANAGER}"),
            "-f",
            "-",
        ],
        Some(manifest),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Per object of `manifest`: its resourceVersion where only the applier writes it (no status),
/// its generation (bumped by spec changes only) and what our field manager owns, with its time.
fn fingerprint(manifest: &str) -> BTreeMap<String, String> {
    let out = run("kubectl", &["get", "-f", "-", "-o", "json"], Some(manifest))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let list: Value = serde_json::from_str(&out).unwrap();
    let items = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![list]);
    items
        .iter()
        .map(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            let meta = &o["metadata"];
            let key = format!("{kind} {}/{}", meta["namespace"], meta["name"]);
            let ours: Vec<&Value> = meta["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["manager"] == FIELD_MANAGER)
                .collect();
            let rv = if o.get("status").is_some() {
                Value::Null
            } else {
                meta["resourceVersion"].clone()
            };
            let value = serde_json::json!({
                "resourceVersion": rv,
                "generation": meta["generation"],
                "ours": ours,
            });
            (key, value.to_string())
        })
        .collect()
}

/// Deletes what a test applied when dropped: cluster-scoped objects (ClusterRoles) would
/// outlive the test namespace otherwise.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run(
            "kubectl",
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&self.0),
        );
    }
}

/// Renders twice (identical), applies, applies again: nothing changes.
async fn assert_no_drift(what: &str, render: impl Fn() -> String) {
    let first = render();
    assert_eq!(first, render(), "{what}: two renderings differ");
    assert!(first.contains("kind: Deployment"), "{what}: {first}");
    let _cleanup = Cleanup(first.clone());
    apply(&first);
    // Let the controllers write what they write on creation (status), then compare.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let before = fingerprint(&first);
    assert!(before.len() >= 10, "{what}: fingerprinted {before:?}");
    apply(&render());
    let after = fingerprint(&first);
    for (key, was) in &before {
        assert_eq!(
            Some(was),
            after.get(key),
            "{what}: the second apply changed {key}"
        );
    }
    assert_eq!(before.len(), after.len(), "{what}");
}

#[test]
fn templates_have_no_random_time_or_cluster_dependent_functions() {
    for chart in ["charts/edgefleet", "charts/edgefleet-crds"] {
        for file in files_in(&format!("{chart}/templates"), "yaml")
            .into_iter()
            .chain(files_in(&format!("{chart}/templates"), "tpl"))
        {
            let text = std::fs::read_to_string(&file).unwrap();
            for f in [
                "randAlpha",
                "randNumeric",
                "randAscii",
                "randBytes",
                "uuidv4",
                "now",
                "genCA",
                "genPrivateKey",
                "genSelfSignedCert",
                "genSignedCert",
                "lookup",
            ] {
                let used = text
                    .split("{{")
                    .skip(1)
                    .filter_map(|t| t.split("}}").next())
                    .any(|action| {
                        action
                            .split(|c: char| !c.is_ascii_alphanumeric())
                            .any(|word| word == f)
                    });
                assert!(!used, "{}: uses {f}", file.display());
            }
        }
    }
}

#[tokio::test]
async fn every_ci_values_file_lints_renders_and_passes_server_side_dry_run() {
    let client = client().await.unwrap();
    edgefleet_e2e::install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "ci-values").await.unwrap();
    let files = files_in("charts/edgefleet/ci", "yaml");
    assert!(files.len() >= 4, "{files:?}");
    for values in &files {
        let v = values.to_str().unwrap();
        let lint = run(
            "helm",
            &["lint", "--strict", "charts/edgefleet", "-f", v],
            None,
        )
        .unwrap_or_else(|e| panic!("{v}: {e:#}"));
        assert!(lint.contains("0 chart(s) failed"), "{v}: {lint}");
        let rendered = template("ci", &ns.name, values);
        assert_eq!(
            rendered,
            template("ci", &ns.name, values),
            "{v}: not deterministic"
        );
        assert!(!documents(&rendered).unwrap().is_empty(), "{v}");
        run(
            "kubectl",
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                "--field-manager=e2e-dry-run",
                "-f",
                "-",
            ],
            Some(&rendered),
        )
        .unwrap_or_else(|e| panic!("{v}: {e:#}"));
    }
    // Leader election off with two replicas would mean two writers: refused by name.
    let err = run(
        "helm",
        &[
            "template",
            "x",
            "charts/edgefleet",
            "--set",
            "leaderElection.enabled=false",
        ],
        None,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("needs leaderElection.enabled=true"),
        "{err:#}"
    );
}

#[tokio::test]
async fn default_rendering_applies_twice_without_drift() {
    let client = client().await.unwrap();
    edgefleet_e2e::install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "drift").await.unwrap();
    let defaults = repo_root().join("charts/edgefleet/ci/defaults-values.yaml");
    assert_no_drift("defaults", || template(&ns.name, &ns.name, &defaults)).await;
    let crds = || {
        run(
            "helm",
            &["template", "edgefleet-crds", "charts/edgefleet-crds"],
            None,
        )
        .unwrap()
    };
    assert_eq!(crds(), crds(), "CRD chart: two renderings differ");
}

#[tokio::test]
async fn province_overlays_point_at_the_charts_and_apply_without_drift() {
    let client = client().await.unwrap();
    edgefleet_e2e::install_crds(&client).await.unwrap();
    let (operators, crds) = (
        chart_version("charts/edgefleet"),
        chart_version("charts/edgefleet-crds"),
    );
    for province in provinces() {
        let dir = format!("config/gitops/provinces/{province}");
        let kustomize =
            || run("kubectl", &["kustomize", &dir], None).unwrap_or_else(|e| panic!("{e:#}"));
        let flux = kustomize();
        assert_eq!(flux, kustomize(), "{province}: kustomize renders differ");
        let docs = documents(&flux).unwrap();
        let by_kind = |kind: &str, name: &str| -> Value {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{province}: no {kind} {name} in {flux}"))
        };

        // Flux: the source, both releases at the charts' versions, the province's values.
        let repo = by_kind("HelmRepository", "edgefleet");
        assert_eq!(repo["apiVersion"], "source.toolkit.fluxcd.io/v1");
        assert_eq!(repo["spec"]["type"], "oci");
        for (release, chart, version) in [
            ("edgefleet-crds", "edgefleet-crds", &crds),
            ("edgefleet", "edgefleet", &operators),
        ] {
            let hr = by_kind("HelmRelease", release);
            assert_eq!(hr["apiVersion"], "helm.toolkit.fluxcd.io/v2");
            let spec = &hr["spec"]["chart"]["spec"];
            assert_eq!(spec["chart"], chart, "{province}");
            assert_eq!(
                spec["version"].as_str(),
                Some(version.as_str()),
                "{province} {release}"
            );
            assert_eq!(spec["sourceRef"]["kind"], "HelmRepository");
            assert_eq!(spec["sourceRef"]["name"], "edgefleet");
            assert_eq!(
                hr["metadata"]["labels"]["edgefleet.io/province"],
                province.as_str()
            );
        }
        let hr = by_kind("HelmRelease", "edgefleet");
        assert_eq!(hr["spec"]["dependsOn"][0]["name"], "edgefleet-crds");
        let from = &hr["spec"]["valuesFrom"][0];
        let cm = by_kind("ConfigMap", from["name"].as_str().unwrap());
        let values = cm["data"][from["valuesKey"].as_str().unwrap()]
            .as_str()
            .unwrap()
            .to_owned();
        let file = repo_root().join(&dir).join("values.yaml");
        assert_eq!(
            values,
            std::fs::read_to_string(&file).unwrap(),
            "{province}"
        );

        // Argo CD: the same charts and versions, the same values file.
        let argo_text = std::fs::read_to_string(
            repo_root().join(format!("config/gitops/argocd/{province}.yaml")),
        )
        .unwrap();
        let apps = documents(&argo_text).unwrap();
        let app = |name: String| -> Value {
            apps.iter()
                .find(|a| a["metadata"]["name"] == name.as_str())
                .cloned()
                .unwrap_or_else(|| panic!("no Application {name}"))
        };
        let crd_app = app(format!("edgefleet-crds-{province}"));
        assert_eq!(crd_app["apiVersion"], "argoproj.io/v1alpha1");
        assert_eq!(crd_app["kind"], "Application");
        assert_eq!(crd_app["spec"]["source"]["chart"], "edgefleet-crds");
        assert_eq!(
            crd_app["spec"]["source"]["targetRevision"].as_str(),
            Some(crds.as_str())
        );
        assert_eq!(crd_app["spec"]["syncPolicy"]["automated"]["prune"], false);
        assert!(
            crd_app["metadata"]["finalizers"].is_null(),
            "CRDs never cascade-deleted"
        );
        let op_app = app(format!("edgefleet-{province}"));
        let sources = op_app["spec"]["sources"].as_array().unwrap();
        let chart_source = sources.iter().find(|s| s["chart"] == "edgefleet").unwrap();
        assert_eq!(
            chart_source["targetRevision"].as_str(),
            Some(operators.as_str())
        );
        assert_eq!(
            chart_source["repoURL"],
            crd_app["spec"]["source"]["repoURL"]
        );
        let value_files = chart_source["helm"]["valueFiles"].as_array().unwrap();
        let values_ref = sources.iter().find_map(|s| s["ref"].as_str()).unwrap();
        assert_eq!(
            value_files[0].as_str().unwrap(),
            format!("${values_ref}/{dir}/values.yaml"),
            "{province}: Argo CD reads another values file than Flux"
        );

        // What both tools then render and apply, as helm-controller and Argo CD would.
        let ns = TestNamespace::new(&client, &format!("gitops-{province}"))
            .await
            .unwrap();
        let values_file = repo_root()
            .join("hack/.cluster/e2e")
            .join(format!("{province}-values.yaml"));
        std::fs::create_dir_all(values_file.parent().unwrap()).unwrap();
        std::fs::write(&values_file, &values).unwrap();
        let rendered = template(&ns.name, &ns.name, &values_file);
        // The province's values show in the rendering.
        let docs = documents(&rendered).unwrap();
        let hub = docs
            .iter()
            .find(|d| {
                d["kind"] == "Deployment"
                    && d["metadata"]["name"].as_str().unwrap().ends_with("-hub")
            })
            .unwrap();
        let province_values: serde_yaml::Value = serde_yaml::from_str(&values).unwrap();
        assert_eq!(
            hub["spec"]["replicas"].as_u64(),
            province_values["operators"]["hub"]["replicas"].as_u64(),
            "{province}"
        );
        let hub_args = hub["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        for san in province_values["operators"]["hub"]["extraTlsSans"]
            .as_sequence()
            .unwrap()
        {
            assert!(
                hub_args.contains(san.as_str().unwrap()),
                "{province}: {hub_args}"
            );
        }
        assert_no_drift(&province, || template(&ns.name, &ns.name, &values_file)).await;
    }
}

#[test]
fn image_ships_every_binary_the_chart_runs() {
    // The cheap half of `make release-check` (no release build).
    let out = run("hack/release-check", &["--no-build"], None).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("all shipped"), "{out}");
}
