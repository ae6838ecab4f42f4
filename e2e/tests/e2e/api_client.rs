//! The operators' API client (operators/kit `client_with_layer`) against the real API server:
//! HTTP/2, so requests and watches in flight together share one TLS connection instead of one
//! connection each (what made a hub with 2,000 sessions open 2,688 connections).

use std::collections::HashSet;
use std::time::Duration;

use edgefleet_e2e::{TestNamespace, kubeconfig_path};
use edgefleet_kit::client::{CountRequestsLayer, client_with_layer};
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::client::Body;

/// The kit's client for the test bed, counting into a registry of its own.
async fn kit_client() -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let layer =
        CountRequestsLayer::register(&prometheus::Registry::new(), "edgefleet_e2e").unwrap();
    client_with_layer(config, &layer).unwrap()
}

/// This process's established TCP connections to `port` (its sockets in /proc/self/fd matched
/// against /proc/net/tcp{,6}).
fn connections_to(port: u16) -> usize {
    let mine: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            // state 01: ESTABLISHED; field 9: the inode.
            if u16::from_str_radix(remote_port, 16).unwrap() == port
                && f[3] == "01"
                && mine.contains(f[9])
            {
                n += 1;
            }
        }
    }
    n
}

fn api_server_port() -> u16 {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig_path()).unwrap();
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone()
        .unwrap();
    server
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn requests_and_watches_in_flight_together_share_one_http2_connection() {
    // Other tests of this binary run beside this one with clients of their own: the figure is
    // the growth over the test, and HTTP/1.1 would grow it by ~200 (one connection per request
    // in flight, kept idle in the pool for 90 s).
    let before = connections_to(api_server_port());
    let client = kit_client().await;
    let ns = TestNamespace::new(&client, "apiclient").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    // The API server answers in HTTP/2.
    let response = client
        .send(http::Request::get("/version").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);

    // Three watches stay open while 200 requests go at once.
    let mut watches = Vec::new();
    for _ in 0..3 {
        watches.push(
            cms.watch(&WatchParams::default().timeout(60), "0")
                .await
                .unwrap()
                .boxed(),
        );
    }
    let creates = (0..200).map(|i| {
        let cms = cms.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}
            }))
            .unwrap();
            cms.create(&PostParams::default(), &cm).await
        }
    });
    for created in future::join_all(creates).await {
        created.unwrap();
    }
    let listed = cms.list(&ListParams::default()).await.unwrap().items;
    let ours = listed
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("cm-"))
        })
        .count();
    assert_eq!(ours, 200);
    // Every watch saw every create, over the same connection.
    for watch in &mut watches {
        let mut seen = 0;
        while seen < 200 {
            match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
                Ok(Some(Ok(WatchEvent::Added(c))))
                    if c.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("cm-")) =>
                {
                    seen += 1
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("the watch ended after {seen} of 200 creates: {other:?}"),
            }
        }
    }
    let grown = connections_to(api_server_port()).saturating_sub(before);
    assert!(
        grown <= 5,
        "200 requests and 3 watches in flight should share one HTTP/2 connection; the process \
         holds {grown} more connections to the API server than before"
    );
}
