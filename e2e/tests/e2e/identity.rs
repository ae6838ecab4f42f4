//! Edge identity against the real control plane and real hubs: scoped and expiring join
//! tokens, CSR API approval, one identity per node, revocation on every replica, the CA pin,
//! renewal without reconnect, bootstrap rate limits.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use edgefleet_channel::bootstrap::{PendingResponse, identity_record_name};
use edgefleet_e2e::edge::{HubProcess, Simulator, TokenScope, join_token, metrics};
use edgefleet_e2e::operator::{SYSTEM_NAMESPACE, binary};
use edgefleet_e2e::{TestNamespace, client, install_crds, kubeconfig_path, wait_for};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::agent::{Bed, EdgeAgent, hub_flags, wait_ready};
use crate::hub::{Edge, Got, Identity, cleanup_nodes, node_name};

/// Close code of a session whose identity was revoked or superseded.
const CLOSE_REVOKED: u16 = 4003;

fn key_and_csr(node: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key.serialize_pem(), csr)
}

/// A bootstrap with a fresh key: (status, body, the identity when issued).
async fn enrol(edge: &Edge, node: &str, token: &str) -> (u16, String, Option<Identity>) {
    let (key, csr) = key_and_csr(node);
    enrol_with(edge, node, token, &key, &csr).await
}

async fn enrol_with(
    edge: &Edge,
    node: &str,
    token: &str,
    key: &str,
    csr: &str,
) -> (u16, String, Option<Identity>) {
    let (status, body) = edge.bootstrap_raw(node, token, csr).await.unwrap();
    let id = (status == 200).then(|| {
        let resp: edgefleet_channel::bootstrap::BootstrapResponse =
            serde_json::from_str(&body).unwrap();
        Identity {
            cert: resp.certificate,
            key: key.to_string(),
        }
    });
    (status, body, id)
}

/// `edgefleet_hub_<name>` samples of a replica, by name plus labels.
async fn hub_metrics(hub: &HubProcess, name: &str) -> BTreeMap<String, f64> {
    let addr = hub.op.metrics_addr().await.unwrap().to_string();
    metrics(&addr, name).unwrap()
}

fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .context("running kubectl")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn plugin(args: &[&str]) -> Result<String> {
    let out = Command::new(binary("kubectl-edgefleet")?)
        .args(args)
        .args(["-n", SYSTEM_NAMESPACE])
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .context("running kubectl-edgefleet")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl edgefleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

async fn labelled_node(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

async fn forget(client: &Client, nodes: &[String]) {
    cleanup_nodes(client, nodes).await;
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    for n in nodes {
        let _ = records
            .delete(&identity_record_name(n), &DeleteParams::default())
            .await;
    }
}

/// A node token bootstraps its node only; an expired token is refused; a group token claims
/// a new name or a node of its group, and a node outside the group waits Pending for
/// `kubectl certificate approve`, visible as a CSR. Outcomes are counted.
#[tokio::test]
async fn identity_tokens_are_scoped_and_expire() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-scope").await.unwrap();
    let hub = HubProcess::start(&ns.name, &[]).await.unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let (a, b) = (node_name(&ns, "a"), node_name(&ns, "b"));
    let (inside, outside, fresh) = (
        node_name(&ns, "in"),
        node_name(&ns, "out"),
        node_name(&ns, "new"),
    );
    let station = "topology.edgefleet.io/station";
    labelled_node(&client, &inside, &[(station, &ns.name)]).await;
    labelled_node(&client, &outside, &[(station, "elsewhere")]).await;

    let for_a = join_token(&client, TokenScope::Node(a.clone()), 600)
        .await
        .unwrap();
    let (status, body, _) = enrol(&edge, &b, &for_a).await;
    assert_eq!(status, 403, "a token for {a} bootstraps {b}: {body}");
    assert!(body.contains(&a), "{body}");
    let (status, body, id_a) = enrol(&edge, &a, &for_a).await;
    assert_eq!(status, 200, "{body}");
    edge.connect(&id_a.unwrap(), &a)
        .await
        .unwrap()
        .alive()
        .await
        .unwrap();

    let expired = join_token(&client, TokenScope::Node(b.clone()), -1)
        .await
        .unwrap();
    let (status, body, _) = enrol(&edge, &b, &expired).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");

    // The group token as an admin makes it: printed once, CA pin included.
    let group = plugin(&[
        "token",
        "create",
        "--group",
        &format!("{station}={}", ns.name),
        "--ttl",
        "10m",
    ])
    .unwrap()
    .trim()
    .to_string();
    let (status, body, _) = enrol(&edge, &inside, &group).await;
    assert_eq!(status, 200, "a node of the group: {body}");
    let (status, body, _) = enrol(&edge, &fresh, &group).await;
    assert_eq!(status, 200, "a new name joins the group: {body}");
    let (status, body, _) = enrol(&edge, &outside, &group).await;
    assert_eq!(status, 202, "a node outside the group waits: {body}");
    let pending: PendingResponse = serde_json::from_str(&body).unwrap();
    let csr = Api::<CertificateSigningRequest>::all(client.clone())
        .get(&pending.csr_name)
        .await
        .unwrap();
    assert_eq!(csr.spec.signer_name, "edgefleet.io/edge-node");
    assert!(
        csr.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .is_empty(),
        "Pending: no condition yet"
    );

    let m = hub_metrics(&hub, "edgefleet_hub_bootstrap_total").await;
    for outcome in ["issued", "pending", "expired_token", "out_of_scope"] {
        let key = format!("edgefleet_hub_bootstrap_total{{outcome=\"{outcome}\"}}");
        assert!(m.get(&key).copied().unwrap_or(0.0) >= 1.0, "{key}: {m:?}");
    }
    // The hub notes a token's use after answering (one patch per token at a time): a's token's
    // row names a twice, in its scope and in its used-by column.
    let a_id = for_a.split('.').nth(1).unwrap().to_string();
    let listed = wait_for("used-by noted", Duration::from_secs(15), || async {
        let listed = plugin(&["token", "list"])?;
        let row = listed.lines().find(|l| l.starts_with(&a_id)).unwrap_or("");
        Ok(
            (row.contains(&format!("node {a}")) && row.matches(a.as_str()).count() >= 2)
                .then_some(listed),
        )
    })
    .await
    .unwrap();
    let group_id = group.split('.').nth(1).unwrap();
    let line = listed
        .lines()
        .find(|l| l.starts_with(group_id))
        .unwrap_or_default();
    assert!(
        line.contains(&fresh) && line.contains("group ") && line.contains(" in "),
        "{listed}"
    );
    plugin(&["token", "revoke", group_id]).unwrap();
    let late = node_name(&ns, "late");
    let (status, body, _) = enrol(&edge, &late, &group).await;
    assert_eq!(status, 401, "a revoked token: {body}");
    let _ = Api::<CertificateSigningRequest>::all(client.clone())
        .delete(&pending.csr_name, &DeleteParams::default())
        .await;
    forget(&client, &[a, b, inside, outside, fresh]).await;
}

/// A second key for a name with a live identity waits for `kubectl certificate approve`; the
/// first session is untouched meanwhile. Once approved, the new key is the node's one
/// identity: the old session is closed and the old certificate refused — the two never flap.
#[tokio::test]
async fn identity_second_key_waits_for_approval_and_never_flaps() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-second").await.unwrap();
    let hub = HubProcess::start(&ns.name, &[]).await.unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let a = node_name(&ns, "a");
    let token = join_token(&client, TokenScope::Node(a.clone()), 600)
        .await
        .unwrap();
    let (_, _, first) = enrol(&edge, &a, &token).await;
    let first = first.unwrap();
    let mut s1 = edge.connect(&first, &a).await.unwrap();

    let (key2, csr2) = key_and_csr(&a);
    let (status, body, _) = enrol_with(&edge, &a, &token, &key2, &csr2).await;
    assert_eq!(status, 202, "{body}");
    let pending: PendingResponse = serde_json::from_str(&body).unwrap();
    assert!(pending.reason.contains("live certificate"), "{body}");
    // Asked again (an agent's back-off): still pending, still the same CSR.
    let (status, body, _) = enrol_with(&edge, &a, &token, &key2, &csr2).await;
    assert_eq!(status, 202, "{body}");
    s1.alive().await.unwrap();
    let listed = kubectl(&["get", "csr", &pending.csr_name]).unwrap();
    assert!(listed.contains("Pending"), "{listed}");

    kubectl(&["certificate", "approve", &pending.csr_name]).unwrap();
    let (status, body, second) = enrol_with(&edge, &a, &token, &key2, &csr2).await;
    assert_eq!(status, 200, "approved: {body}");
    let second = second.unwrap();
    match s1.next(Duration::from_secs(15)).await {
        Some(Got::Closed(code)) => assert_eq!(code, Some(CLOSE_REVOKED)),
        other => panic!("the superseded session goes on: {other:?}"),
    }
    let refused = edge.connect_as(Some(&first), &a, &a).await.unwrap();
    assert_eq!(
        refused.map(|_| ()).unwrap_err().status,
        403,
        "old key refused"
    );
    let mut s2 = edge.connect(&second, &a).await.unwrap();
    s2.alive().await.unwrap();
    let listed = kubectl(&["get", "csr", &pending.csr_name]).unwrap();
    assert!(listed.contains("Approved,Issued"), "{listed}");
    let _ = Api::<CertificateSigningRequest>::all(client.clone())
        .delete(&pending.csr_name, &DeleteParams::default())
        .await;
    forget(&client, &[a]).await;
}

/// Two real agents with one name and different keys: the second waits for approval, the
/// first keeps its one session (no replacement, no reconnect) all along.
#[tokio::test]
async fn identity_two_agents_with_one_name_do_not_flap() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-twins").await.unwrap();
    let hub = HubProcess::start(&ns.name, &[]).await.unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let a = node_name(&ns, "a");
    let token = join_token(&client, TokenScope::Node(a.clone()), 600)
        .await
        .unwrap();
    let mut flags = hub_flags(&[&hub]);
    flags.push(format!("--token={token}"));
    let first = EdgeAgent::run(&bed, &a, &flags, &[]).unwrap();
    wait_ready(&client, &a).await.unwrap();
    first
        .wait_metric("connects_total", "the first agent connected", |v| v >= 1.0)
        .await
        .unwrap();
    // The twin: same name, its own data dir (its own key).
    let twin_name = format!("{a}-twin");
    let twin_dir = bed.dir.join(&twin_name);
    let mut twin = Command::new(binary("edge-agent").unwrap());
    let twin_log = std::fs::File::create(bed.dir.join("twin.log")).unwrap();
    let mut twin = twin
        .args(["--log-format=text", "run"])
        .arg(format!("--node-name={a}"))
        .arg(format!("--data-dir={}", twin_dir.display()))
        .arg("--listen=127.0.0.1:0")
        .arg("--backoff-cap-seconds=2")
        .args(&flags)
        .stdout(twin_log.try_clone().unwrap())
        .stderr(twin_log)
        .spawn()
        .unwrap();
    wait_for(
        "the twin asked three times",
        Duration::from_secs(60),
        || async {
            let m = hub_metrics(&hub, "edgefleet_hub_bootstrap_total").await;
            let pending = m
                .get("edgefleet_hub_bootstrap_total{outcome=\"pending\"}")
                .copied()
                .unwrap_or(0.0);
            Ok((pending >= 3.0).then_some(()))
        },
    )
    .await
    .unwrap();
    let _ = twin.kill();
    let _ = twin.wait();
    assert_eq!(
        first.metric("connects_total").unwrap(),
        1.0,
        "never reconnected"
    );
    let opened = hub_metrics(&hub, "edgefleet_hub_sessions_opened_total").await;
    assert_eq!(
        opened
            .get("edgefleet_hub_sessions_opened_total{outcome=\"replaced\"}")
            .copied()
            .unwrap_or(0.0),
        0.0,
        "no session replaced: {opened:?}"
    );
    assert!(
        !twin_dir.join("node.crt").exists(),
        "the twin got no certificate"
    );
    drop(first);
    forget(&client, &[a]).await;
}

/// `kubectl edgefleet node revoke`: the node's sessions on both replicas close within
/// seconds, its certificate is refused from then on, a fresh bootstrap needs approval, and
/// the state shows in `node list` and `kubectl get`.
#[tokio::test]
async fn identity_revoked_node_is_closed_on_both_replicas_and_refused() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-revoke").await.unwrap();
    let hub_a = HubProcess::start(&ns.name, &[]).await.unwrap();
    let hub_b = HubProcess::start(&ns.name, &[]).await.unwrap();
    let edge_a = Edge::new(&client, &hub_a).await.unwrap();
    let edge_b = Edge::new(&client, &hub_b).await.unwrap();
    let (a, other) = (node_name(&ns, "a"), node_name(&ns, "other"));
    let token = join_token(&client, TokenScope::Node(a.clone()), 600)
        .await
        .unwrap();
    let (_, _, id) = enrol(&edge_a, &a, &token).await;
    let id = id.unwrap();
    let group = join_token(
        &client,
        TokenScope::Group("edgefleet.io/e2e-group=e2e".into()),
        600,
    )
    .await
    .unwrap();
    let (_, _, id_other) = enrol(&edge_a, &other, &group).await;
    let mut s_other = edge_a.connect(&id_other.unwrap(), &other).await.unwrap();
    let mut on_a = edge_a.connect(&id, &a).await.unwrap();
    let mut on_b = edge_b.connect(&id, &a).await.unwrap();

    let t0 = std::time::Instant::now();
    plugin(&["node", "revoke", &a]).unwrap();
    for (replica, s) in [("a", &mut on_a), ("b", &mut on_b)] {
        match s.next(Duration::from_secs(10)).await {
            Some(Got::Closed(code)) => assert_eq!(code, Some(CLOSE_REVOKED), "replica {replica}"),
            other => panic!("replica {replica} kept the revoked session: {other:?}"),
        }
    }
    eprintln!(
        "revoked sessions closed on both replicas in {:?}",
        t0.elapsed()
    );
    for edge in [&edge_a, &edge_b] {
        let refused = edge.connect_as(Some(&id), &a, &a).await.unwrap();
        assert_eq!(refused.map(|_| ()).unwrap_err().status, 403);
    }
    s_other.alive().await.unwrap();
    let (status, body, _) = enrol(&edge_b, &a, &token).await;
    assert_eq!(
        status, 202,
        "a fresh bootstrap of a revoked name waits: {body}"
    );
    let pending: PendingResponse = serde_json::from_str(&body).unwrap();
    assert!(pending.reason.contains("revoked"), "{body}");

    let listed = plugin(&["node", "list"]).unwrap();
    let line = listed
        .lines()
        .find(|l| l.starts_with(&a))
        .unwrap_or_default();
    assert!(line.contains("revoked"), "{listed}");
    let got = kubectl(&[
        "get",
        "configmaps",
        "-n",
        SYSTEM_NAMESPACE,
        "-l",
        "edgefleet.io/node-identity",
        "-L",
        "edgefleet.io/identity-state",
    ])
    .unwrap();
    assert!(
        got.lines()
            .any(|l| l.contains(&identity_record_name(&a)) && l.contains("revoked")),
        "{got}"
    );
    let _ = Api::<CertificateSigningRequest>::all(client.clone())
        .delete(&pending.csr_name, &DeleteParams::default())
        .await;
    forget(&client, &[a, other]).await;
}

/// The join token pins the hub CA: an agent whose token pins another CA never sends its
/// token and gives up with a clear error, whatever hub answers.
#[tokio::test]
async fn identity_agent_refuses_a_hub_with_another_ca() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-pin").await.unwrap();
    let hub = HubProcess::start(&ns.name, &[]).await.unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let a = node_name(&ns, "a");
    let token = join_token(&client, TokenScope::Node(a.clone()), 600)
        .await
        .unwrap();
    // The same token with the pin of another CA: an impostor in the middle.
    let other_ca = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    };
    let wrong_pin = edgefleet_channel::bootstrap::ca_pin(&other_ca).unwrap();
    let (_, rest) = token.split_once('.').unwrap();
    let forged = format!("{wrong_pin}.{rest}");
    let before = hub_metrics(&hub, "edgefleet_hub_bootstrap_total").await;
    let mut flags = hub_flags(&[&hub]);
    flags.push(format!("--token={forged}"));
    let mut agent = EdgeAgent::run(&bed, &a, &flags, &[]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not give up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success());
    assert!(agent.log().contains("pins"), "{}", agent.log());
    let after = hub_metrics(&hub, "edgefleet_hub_bootstrap_total").await;
    assert_eq!(before, after, "the hub never saw the token");
    // The right pin works.
    let mut flags = hub_flags(&[&hub]);
    flags.push(format!("--token={token}"));
    let good = EdgeAgent::run(&bed, &a, &flags, &[]).unwrap();
    good.wait_metric("connects_total", "the agent connected", |v| v >= 1.0)
        .await
        .unwrap();
    drop(good);
    forget(&client, &[a]).await;
}

/// Short-lived certificates are renewed before expiry over the current certificate, stored,
/// and the running session is never dropped.
#[tokio::test]
async fn identity_agent_renews_before_expiry_without_reconnect() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-renew").await.unwrap();
    let hub = HubProcess::start(&ns.name, &["--node-cert-seconds=60"])
        .await
        .unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let a = node_name(&ns, "a");
    let token = join_token(&client, TokenScope::Node(a.clone()), 600)
        .await
        .unwrap();
    let mut flags = hub_flags(&[&hub]);
    flags.push(format!("--token={token}"));
    let agent = EdgeAgent::run(&bed, &a, &flags, &[]).unwrap();
    agent
        .wait_metric("connects_total", "the agent connected", |v| v >= 1.0)
        .await
        .unwrap();
    let cert_path = bed.dir.join(&a).join("node.crt");
    let first = std::fs::read_to_string(&cert_path).unwrap();
    // 60 s certificates: renewed 42–54 s into their life; twice within ~110 s.
    wait_for("two renewals", Duration::from_secs(150), || async {
        Ok((agent.metric("certificate_renewals_total")? >= 2.0).then_some(()))
    })
    .await
    .unwrap();
    let now = std::fs::read_to_string(&cert_path).unwrap();
    assert_ne!(first, now, "the stored certificate was replaced");
    assert_eq!(
        agent.metric("connects_total").unwrap(),
        1.0,
        "never reconnected"
    );
    let renewals = hub_metrics(&hub, "edgefleet_hub_certificate_renewals_total").await;
    assert!(
        renewals
            .get("edgefleet_hub_certificate_renewals_total{outcome=\"issued\"}")
            .copied()
            .unwrap_or(0.0)
            >= 2.0,
        "{renewals:?}"
    );
    drop(agent);
    forget(&client, &[a]).await;
}

/// Guessing tokens is slow: after a short burst, one source address gets 429.
#[tokio::test]
async fn identity_bootstrap_is_rate_limited() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-limit").await.unwrap();
    let hub = HubProcess::start(&ns.name, &["--bootstrap-burst=3"])
        .await
        .unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let guess = format!("abcdef.{:016}", i);
        let (status, _, _) = enrol(&edge, &node_name(&ns, &format!("g{i}")), &guess).await;
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let m = hub_metrics(&hub, "edgefleet_hub_bootstrap_total").await;
    assert_eq!(
        m.get("edgefleet_hub_bootstrap_total{outcome=\"rate_limited\"}")
            .copied(),
        Some(7.0),
        "{m:?}"
    );
}

/// A fleet enrolling at once queues at its agents, not in the API server: past the hub's
/// enrolment budget the hub answers 503 with a Retry-After, the agents come back then, and
/// every node gets its certificate and its session (unbounded, 20,000 first contacts timed
/// every API call out and almost none got in).
#[tokio::test]
async fn identity_a_fleet_enrolling_at_once_is_shed_and_every_node_gets_in() {
    const NODES: usize = 24;
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "id-herd").await.unwrap();
    let hub = HubProcess::start(
        &ns.name,
        &["--enrolments-in-flight=1", "--retry-after-seconds=1"],
    )
    .await
    .unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let mut args = vec![
        format!("--nodes={NODES}"),
        format!("--name-prefix={}-h-", ns.name),
        "--node-status=false".to_string(),
        "--ramp-per-second=1000".to_string(),
    ];
    args.extend(bed.bootstrap_flags());
    args.extend(hub_flags(&[&hub]));
    let _sim = Simulator::start(&format!("{}-simulate", ns.name), &args).unwrap();

    wait_for(
        &format!("{NODES} sessions on the hub"),
        Duration::from_secs(240),
        || async {
            let m = hub_metrics(&hub, "edgefleet_hub_sessions").await;
            Ok((m.get("edgefleet_hub_sessions").copied() == Some(NODES as f64)).then_some(()))
        },
    )
    .await
    .unwrap();
    let m = hub_metrics(&hub, "edgefleet_hub_bootstrap_total").await;
    let outcome = |o: &str| {
        m.get(&format!("edgefleet_hub_bootstrap_total{{outcome=\"{o}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(outcome("issued"), NODES as f64, "{m:?}");
    assert!(
        outcome("busy") > 0.0,
        "one at a time, the rest told to come back: {m:?}"
    );
    assert_eq!(outcome("error"), 0.0, "no API call timed out: {m:?}");
}
