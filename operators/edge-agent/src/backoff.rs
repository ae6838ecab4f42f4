//! Reconnect back-off: full-jitter exponential (AWS's "full jitter"), honouring the hub's hint.
//!
//! After a network recovery 100,000 agents must not come back at once: each waits a uniformly
//! random time in `[0, min(cap, base · 2^attempt)]`. A hub that names a time (HTTP 503
//! `Retry-After`, close code 4000 `reconnect-after=N`) is obeyed: the agent waits at least that
//! long, plus a random share of it, so a released batch spreads over `[N, 2N]` instead of
//! returning as one wave at exactly `N`.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait without jitter: `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before the next attempt, given the hub's hint if it sent one; counts the attempt.
    pub fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let delay = match hint {
            Some(hint) => {
                let hint = hint.min(self.cap.saturating_mul(10));
                hint + uniform(hint.min(self.cap))
            }
            None => uniform(self.ceiling()),
        };
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// A session that held long enough starts the next back-off from the beginning.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// Uniform in `[0, max]`, millisecond grain.
fn uniform(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_the_growing_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        for attempt in 0..20u32 {
            let ceiling = b.ceiling();
            let expected = Duration::from_millis(500)
                .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .min(Duration::from_secs(60));
            assert_eq!(ceiling, expected, "attempt {attempt}");
            let d = b.next_delay(None);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let delays: Vec<_> = (0..2000).map(|_| b.next_delay(None)).collect();
        let low = delays
            .iter()
            .filter(|d| **d < Duration::from_secs(15))
            .count();
        let high = delays
            .iter()
            .filter(|d| **d > Duration::from_secs(45))
            .count();
        // Uniform: about a quarter each; far from a single wave.
        assert!(low > 300 && high > 300, "low {low} high {high}");
    }

    #[test]
    fn the_hubs_hint_is_honoured_and_spread() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let hint = Duration::from_secs(12);
        let delays: Vec<_> = (0..1000).map(|_| b.next_delay(Some(hint))).collect();
        assert!(delays.iter().all(|d| *d >= hint && *d <= hint * 2));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(18)));
        // An absurd hint is bounded.
        let d = b.next_delay(Some(Duration::from_secs(u64::MAX / 4)));
        assert!(d <= Duration::from_secs(660));
    }

    #[test]
    fn reset_starts_over_and_attempts_never_overflow() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        for _ in 0..100 {
            b.next_delay(None);
        }
        assert_eq!(b.attempt(), 100);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }
}
