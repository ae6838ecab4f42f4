//! Every sample under config/samples applies to the real API server, and a KubeEdge v1.22
//! Device and DeviceModel apply unchanged and read back field for field.

use edgefleet_e2e::{TestNamespace, apply_manifest, client, documents, install_crds, repo_root};

#[tokio::test]
async fn every_sample_applies() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "samples").await.unwrap();
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("config/samples"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected a sample per kind, found {files:?}"
    );
    for file in &files {
        let stored = apply_manifest(&client, file, Some(&ns.name)).await.unwrap();
        assert!(!stored.is_empty(), "{} holds no object", file.display());
    }
}

#[tokio::test]
async fn kubeedge_v1_22_devices_apply_unchanged() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "kubeedge").await.unwrap();
    for file in ["devicemodel.yaml", "device.yaml"] {
        let path = repo_root().join("e2e/testdata/kubeedge").join(file);
        let yaml = std::fs::read_to_string(&path).unwrap();
        let sent = documents(&yaml).unwrap();
        let stored = apply_manifest(&client, &path, Some(&ns.name))
            .await
            .unwrap();
        for (sent, stored) in sent.iter().zip(&stored) {
            // Nothing the KubeEdge manifest says may be pruned or rewritten by our schema.
            let stored = serde_json::to_value(stored).unwrap();
            assert_contains(&sent["spec"], &stored["spec"], &format!("{file}: spec"));
        }
    }
}

/// Every field of `sent` is in `stored` with the same value (the server may add defaults).
fn assert_contains(sent: &serde_json::Value, stored: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (sent, stored) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let there = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} was dropped by the API server"));
                assert_contains(v, there, &format!("{at}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: list length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_contains(x, y, &format!("{at}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{at} changed"),
    }
}
