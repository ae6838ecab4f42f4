//! Fixtures for the end-to-end tests, which run against the real local control plane that
//! `hack/cluster up` starts (etcd, kube-apiserver, controller-manager, scheduler, kwok).
//!
//! - [`client`]: an admin client from `KUBECONFIG`, or `hack/.cluster/kubeconfig`.
//! - [`TestNamespace`]: a temporary namespace per test, deleted when dropped unless
//!   `EDGEFLEET_E2E_KEEP=1`; when the test panicked, the namespace's objects are dumped first.
//! - [`wait_for`]: every wait is bounded and says what it waited for.
//! - [`apply_manifest`]: server-side apply of any YAML document, through discovery.

pub mod edge;
pub mod mapper;
pub mod operator;
pub mod podlog;
pub mod prometheus;
pub mod writeload;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Client, Config};
use serde::Deserialize;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Label on a node a test has taken offline on purpose: other tests leave it out of checks
/// that every node is Ready.
pub const DISTURBED_LABEL: &str = "edgefleet.io/e2e-disturbed";

/// Field manager the tests apply with.
pub const FIELD_MANAGER: &str = "edgefleet-e2e";

/// The repository root (the e2e crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The test bed's kubeconfig: `$KUBECONFIG`, else `hack/.cluster/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("hack/.cluster/kubeconfig"),
    }
}

/// An admin client for the test bed.
pub async fn client() -> Result<Client> {
    let path = kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).with_context(|| {
        format!(
            "reading {}: is the test bed up? run `hack/cluster up`",
            path.display()
        )
    })?;
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

/// Marks `node` NotReady (`Ready=Unknown`, reason `NodeStatusUnknown`) as the node-lifecycle
/// controller does when the node's Lease looks stale.
pub async fn mark_node_unknown(
    nodes: &Api<k8s_openapi::api::core::v1::Node>,
    node: &str,
    message: &str,
) -> Result<()> {
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
        "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now
    }]}});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(status))
        .await?;
    Ok(())
}

/// Polls `check` every 250 ms until it returns `Some`, for at most `timeout`.
/// The error names what was awaited and the last state seen.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            let detail = last_err
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{detail}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace that lives as long as one test.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    /// Creates `e2e-<prefix>-<unique>`.
    pub async fn new(client: &Client, prefix: &str) -> Result<Self> {
        let unique = format!(
            "{:x}{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("e2e-{prefix}-{unique}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"edgefleet.io/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// A namespaced API for a built-in or typed resource.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await, so the dump and the delete go through kubectl, synchronously.
        let kubeconfig = kubeconfig_path();
        if std::thread::panicking() {
            eprintln!("---- objects in namespace {} (test failed) ----", self.name);
            let _ = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args([
                    "get",
                    "all,events,configmaps,rolloutjobs,hubbalancers,devices,devicemodels,objectsyncs",
                    "-o",
                    "yaml",
                    "-n",
                    &self.name,
                ])
                .status();
        }
        if std::env::var("EDGEFLEET_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!("EDGEFLEET_E2E_KEEP=1: keeping namespace {}", self.name);
            return;
        }
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// Finds the API resource for a GVK through discovery.
pub async fn resolve(
    client: &Client,
    gvk: &GroupVersionKind,
) -> Result<(ApiResource, ApiCapabilities)> {
    let discovery = Discovery::new(client.clone())
        .filter(&[gvk.group.as_str()])
        .run()
        .await?;
    discovery
        .resolve_gvk(gvk)
        .ok_or_else(|| anyhow!("the API server does not serve {gvk:?}"))
}

/// Splits a YAML stream into its non-empty documents.
pub fn documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The API for one object, namespaced into `namespace` when its kind is namespaced.
pub async fn dynamic_api(
    client: &Client,
    object: &DynamicObject,
    namespace: Option<&str>,
) -> Result<Api<DynamicObject>> {
    let types = object
        .types
        .as_ref()
        .ok_or_else(|| anyhow!("object has no apiVersion/kind"))?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (resource, caps) = resolve(client, &gvk).await?;
    Ok(match (caps.scope, namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    })
}

/// Server-side applies one object (namespaced kinds into `namespace`) and returns what the
/// API server stored.
pub async fn apply_object(
    client: &Client,
    value: &serde_json::Value,
    namespace: Option<&str>,
) -> Result<DynamicObject> {
    let object: DynamicObject = serde_json::from_value(value.clone())?;
    let name = object
        .metadata
        .name
        .clone()
        .ok_or_else(|| anyhow!("object has no metadata.name"))?;
    let api = dynamic_api(client, &object, namespace).await?;
    let stored = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(value),
        )
        .await
        .with_context(|| format!("applying {name}"))?;
    Ok(stored)
}

/// Server-side applies every document of a YAML file.
pub async fn apply_manifest(
    client: &Client,
    path: &Path,
    namespace: Option<&str>,
) -> Result<Vec<DynamicObject>> {
    let yaml =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in documents(&yaml)? {
        out.push(
            apply_object(client, &doc, namespace)
                .await
                .with_context(|| format!("in {}", path.display()))?,
        );
    }
    Ok(out)
}

/// Installs every CRD under `crds/` (idempotent) and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<Vec<String>> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let mut names = Vec::new();
    for crd in edgefleet_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("installing CRD {name}"))?;
        names.push(name);
    }
    for name in &names {
        wait_for(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            },
        )
        .await?;
    }
    Ok(names)
}

/// Runs a command from the repository root and returns its stdout; fails with its stderr.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(cmd)
        .args(args)
        .current_dir(repo_root())
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting {cmd} (is it on PATH? `eval \"$(hack/cluster env)\"`)")
        })?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
