//! The write loop of the API-server capacity benchmarks (`sim-lease-load`, `sim-device-load`):
//! W concurrent writers, each over its own share of the objects, for a fixed time; writes/s
//! and latency quantiles. Not a timed test: the binaries print what they measured.

use std::future::Future;
use std::time::{Duration, Instant};

/// As the hub's writers: a write that has not finished by then failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Figures {
    pub writes: usize,
    pub errors: usize,
    /// Of the successful writes, sorted.
    pub latencies: Vec<Duration>,
}

impl Figures {
    /// `seconds` measured: one table row (writers, writes/s, p50, p99, errors).
    pub fn row(&self, writers: usize, seconds: u64) -> String {
        format!(
            "{:>8} {:>10.0} {:>9.3} {:>9.3} {:>7}",
            writers,
            self.writes as f64 / seconds.max(1) as f64,
            quantile(&self.latencies, 0.5),
            quantile(&self.latencies, 0.99),
            self.errors
        )
    }
}

/// The header of [`Figures::row`], with what was written.
pub fn header(what: &str) -> String {
    format!(
        "{:>8} {:>10} {:>9} {:>9} {:>7}  ({what})",
        "writers", "writes/s", "p50 s", "p99 s", "errors"
    )
}

/// Runs `writers` loops for `seconds`. Writer `w` is made by `make(w)` and called again and
/// again with its write count so far; it answers whether the write succeeded. A write that
/// takes over [`WRITE_TIMEOUT`] counts as an error.
pub async fn measure<M, W, F>(writers: usize, seconds: u64, make: M) -> Figures
where
    M: Fn(usize) -> W,
    W: FnMut(usize) -> F + Send + 'static,
    F: Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks = (0..writers.max(1)).map(|w| {
        let mut write = make(w);
        tokio::spawn(async move {
            let mut figures = Figures::default();
            let mut n = 0;
            while Instant::now() < deadline {
                let started = Instant::now();
                match tokio::time::timeout(WRITE_TIMEOUT, write(n)).await {
                    Ok(true) => {
                        figures.writes += 1;
                        figures.latencies.push(started.elapsed());
                    }
                    _ => figures.errors += 1,
                }
                n += 1;
            }
            figures
        })
    });
    let mut all = Figures::default();
    for done in futures::future::join_all(tasks).await {
        let Ok(f) = done else { continue };
        all.writes += f.writes;
        all.errors += f.errors;
        all.latencies.extend(f.latencies);
    }
    all.latencies.sort();
    all
}

/// The `q` quantile of sorted durations, in seconds (NaN when empty).
pub fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), 0.051);
        assert_eq!(quantile(&d, 0.99), 0.099);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
