//! The envelope decoder against hostile input: 1,000,000+ random and mutated frames. None may
//! panic, none may decode into something much larger than the frame (no unbounded allocation
//! from a small input), and a frame over the limit is refused before it is parsed.

use edgefleet_channel::envelope::{GROUP_RESOURCE, MAX_FRAME_BYTES, SOURCE_EDGE};
use edgefleet_channel::{Message, Operation, Resource, ResourceType};
use proptest::prelude::*;

/// Valid frames of every kind the edge sends, the seeds of the mutations.
fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    for op in [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Query,
        Operation::Response,
        Operation::Error,
        Operation::Keepalive,
    ] {
        for t in ResourceType::ALL {
            let mut m = Message::new(
                SOURCE_EDGE,
                GROUP_RESOURCE,
                op,
                &Resource::new("ns", t, "name-1"),
            )
            .with_resource_version("12345")
            .with_content(serde_json::json!({"data": {"k": "v"}, "n": [1, 2.5, null, true]}));
            m.header.parent_id = "parent-1".into();
            out.push(m.to_frame());
        }
    }
    out
}

/// A small deterministic generator: the mutations of one proptest case.
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

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "1e999",
    "-0",
    "\\u0000",
    "\\ud800",
    "\"msg_id\"",
    "\"operation\"",
    "\"resource\"",
    "\"content\"",
    "\"header\"",
    "\"route\"",
    "\"parent_msg_id\"",
    "\"resourceversion\"",
    "../",
    "/",
    "é",
    "\u{0}",
    "\u{10ffff}",
];

/// One mutation of `frame`: byte flips, insertions of JSON tokens, deletions, splices of
/// another seed, repetition, truncation.
fn mutate(rng: &mut Rng, frame: &str, seeds: &[String]) -> String {
    let mut b = frame.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            2 => {
                let end = (at + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            3 => {
                let other = seeds[rng.below(seeds.len())].as_bytes();
                let from = rng.below(other.len());
                let to = (from + rng.below(64)).min(other.len());
                b.splice(at..at, other[from..to].iter().copied());
            }
            4 => {
                let end = (at + rng.below(32)).min(b.len());
                let piece = b[at..end].to_vec();
                for _ in 0..rng.below(64) {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            5 => b.truncate(at),
            _ => {
                let i = rng.below(b.len() + 1);
                b.insert(i.min(b.len()), u8::try_from(rng.below(256)).unwrap_or(0));
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// What every frame must satisfy, whatever it is.
fn check(frame: &str) {
    match Message::parse(frame) {
        Ok(m) => {
            // Decoded size follows the input: no amplification.
            let again = m.to_frame();
            assert!(
                again.len() <= 2 * frame.len() + 1024,
                "{} bytes decoded into {}",
                frame.len(),
                again.len()
            );
            let _ = m.operation();
            if let Ok(r) = m.resource() {
                assert!(r.name.len() <= frame.len());
            }
            let _ = m.ack("edgecontroller", "1").to_frame();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

const FRAMES_PER_CASE: usize = 1_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    /// 600 cases × 1,000 mutated frames.
    #[test]
    fn mutated_frames_never_panic_or_amplify(seed in any::<u64>()) {
        let seeds = seeds();
        let mut rng = Rng(seed | 1);
        let mut frame = seeds[rng.below(seeds.len())].clone();
        for i in 0..FRAMES_PER_CASE {
            if i % 50 == 0 {
                frame = seeds[rng.below(seeds.len())].clone();
            }
            frame = mutate(&mut rng, &frame, &seeds);
            if frame.len() > 64 * 1024 {
                frame.truncate(64 * 1024);
                while !frame.is_char_boundary(frame.len()) {
                    frame.pop();
                }
            }
            check(&frame);
        }
    }

    /// 400 cases × 1,000 frames of random text and random JSON-looking token soup.
    #[test]
    fn random_frames_never_panic(seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        for _ in 0..FRAMES_PER_CASE {
            let mut s = String::new();
            for _ in 0..rng.below(40) {
                if rng.below(2) == 0 {
                    s.push_str(TOKENS[rng.below(TOKENS.len())]);
                } else {
                    s.push(char::from_u32(u32::try_from(rng.below(0x2FF)).unwrap_or(32)).unwrap_or('x'));
                }
            }
            check(&s);
        }
    }

    /// Arbitrary strings straight from proptest (its own shrinking on failure).
    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,512}") {
        check(&s);
    }
}

#[test]
fn a_frame_over_the_limit_is_refused_unparsed() {
    let huge = format!(
        "{{\"header\":{{\"msg_id\":\"{}\"}}}}",
        "x".repeat(MAX_FRAME_BYTES)
    );
    assert!(Message::parse(&huge).is_err());
}
