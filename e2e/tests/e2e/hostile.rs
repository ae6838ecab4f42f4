//! Hostile input against the real hub process: thousands of random and mutated frames from one
//! node's sessions, slow-loris and oversized handshakes. Each is closed within a bound, the hub
//! keeps running, and another node's session goes on receiving its deliveries.

use std::time::{Duration, Instant};

use edgefleet_channel::envelope::{GROUP_RESOURCE, SOURCE_EDGE};
use edgefleet_channel::{Message, Operation, Resource, ResourceType};
use edgefleet_e2e::{TestNamespace, client, install_crds};
use kube::ResourceExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hub::{
    Edge, Got, Hub, cleanup_nodes, configmap, node_name, object_sync, token_of, update_configmap,
};

/// The hub's bound on a TLS + HTTP handshake (server.rs) plus slack for a loaded machine.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(15 + 20);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

fn mutated(rng: &mut Rng, node: &str) -> String {
    let ops = [
        Operation::Response,
        Operation::Update,
        Operation::Insert,
        Operation::Query,
        Operation::Keepalive,
        Operation::Delete,
    ];
    let types = [
        ResourceType::NodeStatus,
        ResourceType::Node,
        ResourceType::ConfigMap,
        ResourceType::Secret,
        ResourceType::Device,
    ];
    let mut m = Message::new(
        SOURCE_EDGE,
        GROUP_RESOURCE,
        ops[rng.below(ops.len())],
        &Resource::new("", types[rng.below(types.len())], node),
    );
    m.header.parent_id = format!("p-{}", rng.next());
    let mut b = m.to_frame().into_bytes();
    for _ in 0..rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(4) {
            0 if at < b.len() => b[at] ^= 1 << rng.below(8),
            1 => b.truncate(at),
            2 => {
                b.splice(at..at, br#""edge-other/../x"{}[]"#.iter().copied());
            }
            _ => b.insert(at.min(b.len()), u8::try_from(rng.below(256)).unwrap_or(0)),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Waits until the peer closes `tcp` (read returns 0 or fails), sending one byte a second
/// while it is open (a slow-loris client never finishing its handshake). The time it took.
async fn closed_within(mut tcp: TcpStream, drip: bool, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < bound {
        if drip && tcp.write_all(&[0x16]).await.is_err() {
            return Some(started.elapsed());
        }
        let read = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test]
async fn hub_survives_hostile_frames_and_handshakes() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "hostile").await.unwrap();
    let hub = Hub::start(&ns.name, &[]).await.unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let (a, b) = (node_name(&ns, "a"), node_name(&ns, "b"));
    let id_a = edge.bootstrap(&a, &token).await.unwrap();
    let id_b = edge.bootstrap(&b, &token).await.unwrap();
    let mut sa = edge.connect(&id_a, &a).await.unwrap();

    let cm = configmap(&ns, "victim", "1").await.unwrap();
    object_sync(&ns, &a, "ConfigMap", "victim", &cm.uid().unwrap())
        .await
        .unwrap();
    let resource = format!("{}/configmap/victim", ns.name);
    let first = sa.expect(&resource, Duration::from_secs(30)).await.unwrap();
    sa.ack(&first).await.unwrap();

    // Slow-loris and oversized handshakes, all at once, while B floods.
    let mut handshakes = Vec::new();
    for _ in 0..20 {
        let tcp = TcpStream::connect(hub.addr).await.unwrap();
        handshakes.push(tokio::spawn(closed_within(tcp, true, HANDSHAKE_BOUND)));
    }
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(hub.addr).await.unwrap();
        handshakes.push(tokio::spawn(async move {
            // 4 MiB of garbage in place of a ClientHello.
            let junk = vec![0x16u8; 4 << 20];
            let _ = tokio::time::timeout(Duration::from_secs(20), tcp.write_all(&junk)).await;
            closed_within(tcp, false, HANDSHAKE_BOUND).await
        }));
    }
    for _ in 0..5 {
        let mut tls = edge.tls_stream(None).await.unwrap();
        handshakes.push(tokio::spawn(async move {
            // An HTTP request whose headers never end: 1 MiB of one header.
            let head = format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Junk: {}",
                "a".repeat(1 << 20)
            );
            let _ =
                tokio::time::timeout(Duration::from_secs(20), tls.write_all(head.as_bytes())).await;
            let started = Instant::now();
            let mut buf = [0u8; 1024];
            while started.elapsed() < HANDSHAKE_BOUND {
                // An error status is an answer too; the close follows.
                let read = tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await;
                if let Ok(Ok(0) | Err(_)) = read {
                    return Some(started.elapsed());
                }
            }
            None
        }));
    }

    // B: 3,000 random and mutated frames over as many sessions as it takes (a malformed frame
    // closes a session; B reconnects).
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sent = 0;
    let mut sessions = 0;
    // Reconnects are retried, but not for ever: a hub that stops taking B fails the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while sent < 3_000 {
        let Ok(mut sb) = edge.connect(&id_b, &b).await else {
            assert!(
                std::time::Instant::now() < deadline,
                "B could not reconnect within 300 s ({sent} frames sent)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        sessions += 1;
        for _ in 0..200 {
            sent += 1;
            if sb.send_raw(&mutated(&mut rng, &b)).await.is_err() {
                break;
            }
        }
        // Drain what came back until it goes quiet or closes.
        while let Some(Got::Msg(_)) = sb.next(Duration::from_millis(200)).await {}
    }
    eprintln!("{sent} hostile frames over {sessions} sessions");

    for h in handshakes {
        let took = h.await.unwrap();
        assert!(
            took.is_some(),
            "a hostile handshake was still open after {HANDSHAKE_BOUND:?}"
        );
    }

    // A's session was never touched: it gets the next version.
    let rv = update_configmap(&ns, "victim", "2").await.unwrap();
    let next = sa.expect(&resource, Duration::from_secs(30)).await.unwrap();
    assert_eq!(next.header.resource_version, rv);
    sa.ack(&next).await.unwrap();
    cleanup_nodes(&client, &[a, b]).await;
}
