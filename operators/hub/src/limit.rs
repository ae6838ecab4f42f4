//! Token buckets per key (source address, node name) for the bootstrap endpoint: a guesser gets
//! a handful of tries a minute, not thousands a second. Bounded: when the map is full, buckets
//! that have refilled are dropped first, and if none has, the new key is refused (fail closed).
//! A bucket can be taken from up front ([`Limiter::try_take`]) or only looked at up front and
//! charged after a failure ([`Limiter::allows`] + [`Limiter::charge`]): a thousand gantries
//! behind one NAT enrol at once, a guesser behind it still gets a handful of failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::hub::lock;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// `burst` tries at once, then one every `every`, per key; at most `max_keys` keys tracked.
#[derive(Debug)]
pub struct Limiter {
    burst: f64,
    per_second: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(burst: u32, every: Duration, max_keys: usize) -> Limiter {
        Limiter {
            burst: f64::from(burst.max(1)),
            per_second: 1.0 / every.as_secs_f64().max(0.001),
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one try for `key` at `now`; `false` when its bucket is empty.
    pub fn try_take(&self, key: &str, now: Instant) -> bool {
        let mut map = lock(&self.buckets);
        if !map.contains_key(key) && map.len() >= self.max_keys {
            let (burst, rate) = (self.burst, self.per_second);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= self.max_keys {
                return false;
            }
        }
        let bucket = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Limiter {
    /// Whether `key` has a try left at `now`, without taking it.
    pub fn allows(&self, key: &str, now: Instant) -> bool {
        let map = lock(&self.buckets);
        match map.get(key) {
            None => map.len() < self.max_keys || self.has_refilled(&map, now),
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + elapsed * self.per_second >= 1.0
            }
        }
    }

    fn has_refilled(&self, map: &HashMap<String, Bucket>, now: Instant) -> bool {
        map.values().any(|b| {
            b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_second >= self.burst
        })
    }

    /// Takes one try for `key` (after a failure), whether or not one was left.
    pub fn charge(&self, key: &str, now: Instant) {
        let _ = self.try_take(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_stay_bounded() {
        let l = Limiter::new(3, Duration::from_secs(10), 2);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.try_take("a", t0));
        }
        assert!(!l.try_take("a", t0), "burst spent");
        assert!(l.try_take("b", t0), "another key has its own bucket");
        assert!(
            !l.try_take("c", t0),
            "map full of live buckets: fail closed"
        );
        let later = t0 + Duration::from_secs(10);
        assert!(l.try_take("a", later), "one try back after the interval");
        assert!(!l.try_take("a", later));
        let much_later = t0 + Duration::from_secs(100);
        assert!(l.try_take("c", much_later), "refilled buckets make room");
    }

    #[test]
    fn looking_does_not_take_charging_does() {
        let l = Limiter::new(2, Duration::from_secs(10), 10);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.allows("a", t0), "looking is free");
        }
        l.charge("a", t0);
        assert!(l.allows("a", t0));
        l.charge("a", t0);
        assert!(!l.allows("a", t0), "two failures spent the burst");
        assert!(l.allows("a", t0 + Duration::from_secs(10)));
    }
}
