//! The session handler's frame path against hostile input: 1,000,000+ random and mutated frames
//! of one node go through what the session does with a frame (parse, classify against the
//! node's identity, ACK lookup in its queue). None may panic, none may act for another node, and
//! an ACK naming another session's message id (or a mangled one) acks nothing here.

use std::time::Instant;

use edgefleet_channel::envelope::{GROUP_RESOURCE, SOURCE_EDGE};
use edgefleet_channel::{Message, Operation, Resource, ResourceType};
use edgefleet_hub::edge::{Incoming, classify};
use edgefleet_hub::queue::{NodeQueue, Op};
use proptest::prelude::*;

const NODE: &str = "edge-a";

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

/// Frames a node sends: ACKs of real message ids, status, twins, queries, keepalives.
fn seeds(ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let cases = [
        (Operation::Response, ResourceType::ConfigMap, "ns"),
        (Operation::Error, ResourceType::Pod, "ns"),
        (Operation::Update, ResourceType::NodeStatus, ""),
        (Operation::Insert, ResourceType::Node, ""),
        // An edge writing a Device object: refused (its reports go by `device/<ns>/<name>/...`).
        (Operation::Update, ResourceType::Device, "ns"),
        (Operation::Query, ResourceType::Secret, "ns"),
        (Operation::Keepalive, ResourceType::Node, ""),
    ];
    for (i, (op, t, ns)) in cases.into_iter().enumerate() {
        let name = if ns.is_empty() { NODE } else { "obj" };
        let mut m = Message::new(SOURCE_EDGE, GROUP_RESOURCE, op, &Resource::new(ns, t, name))
            .with_resource_version("77")
            .with_content(
                serde_json::json!({"twins": [{"propertyName": "t", "reported": {"value": "1"}}]}),
            );
        m.header.parent_id = ids[i % ids.len()].clone();
        out.push(m.to_frame());
    }
    out
}

fn mutate(rng: &mut Rng, frame: &str, seeds: &[String]) -> String {
    let mut b = frame.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(12)).min(b.len());
                b.drain(at..end);
            }
            2 => {
                let other = seeds[rng.below(seeds.len())].as_bytes();
                let from = rng.below(other.len());
                let to = (from + rng.below(48)).min(other.len());
                b.splice(at..at, other[from..to].iter().copied());
            }
            3 => {
                let t: &[u8] = [
                    &b"edge-b"[..],
                    b"../",
                    b"\"",
                    b"{}",
                    b"null",
                    b"/node/edge-b",
                ][rng.below(6)];
                b.splice(at..at, t.iter().copied());
            }
            4 => b.truncate(at),
            _ => b.insert(at.min(b.len()), u8::try_from(rng.below(256)).unwrap_or(0)),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A node's queue with `n` messages in flight; their ids.
fn queue_in_flight(n: usize, prefix: &str) -> (NodeQueue<u32>, Vec<String>) {
    let mut q = NodeQueue::new(n, prefix);
    let now = Instant::now();
    for i in 0..n {
        q.push(&format!("uid-{i}"), Op::Insert, "1", 0, now);
    }
    let ids = q.poll(now, n).send.into_iter().map(|o| o.msg_id).collect();
    (q, ids)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// 1,000 cases × 1,000 frames.
    #[test]
    fn hostile_frames_act_only_for_their_node(seed in any::<u64>()) {
        let (mut a, a_ids) = queue_in_flight(8, "aaaa");
        let (_, b_ids) = queue_in_flight(8, "bbbb");
        let mut all_ids = a_ids.clone();
        all_ids.extend(b_ids.iter().cloned());
        let seeds = seeds(&all_ids);
        let mut rng = Rng(seed | 1);
        let mut frame = seeds[rng.below(seeds.len())].clone();
        for i in 0..1_000 {
            if i % 40 == 0 {
                frame = seeds[rng.below(seeds.len())].clone();
            }
            frame = mutate(&mut rng, &frame, &seeds);
            frame.truncate(frame.len().min(16 * 1024));
            while !frame.is_char_boundary(frame.len()) {
                frame.pop();
            }
            let Ok(msg) = Message::parse(&frame) else { continue };
            match classify(NODE, &msg) {
                Ok(Incoming::Ack { parent, .. }) => {
                    // B's ids, and mangled ids, mean nothing to A's queue.
                    if a.ack(&parent).is_some() {
                        prop_assert!(a_ids.contains(&parent), "acked by {parent}");
                    }
                }
                Ok(Incoming::RegisterNode | Incoming::NodeStatus) => {
                    let r = msg.resource().unwrap();
                    prop_assert_eq!(r.name.as_str(), NODE, "a node writes only itself");
                }
                Ok(Incoming::Query(r)) => prop_assert!(r.type_.kind().is_some()),
                // Parsed strictly; whether the device is the node's own is checked on the API.
                Ok(Incoming::Device(route)) => {
                    prop_assert_eq!(route.to_string(), msg.route.resource.clone());
                }
                Ok(Incoming::Keepalive) | Err(_) => {}
            }
        }
        prop_assert!(a.depth() <= 8);
    }
}
