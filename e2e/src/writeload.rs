//! The write loop of the API-server capacity benchmarks (`sim-lease-load`, `sim-device-load`):
//! W concurrent writers, each over its own share of the objects, for a fixed time; writes/s
//! and latency quantiles. Not a timed test: the binaries print what they measured.

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Creates the benchmark's namespace unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Deletes the benchmark's namespace and what is in it (in the background).
pub async fn remove_namespace(client: &Client, name: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting namespace {name}"))?;
    Ok(())
}

/// Creates objects `0..count` (`make(i)`), 64 at a time; one that exists already is kept.
/// Prints how many there are and how long creating them took.
pub async fn ensure_objects<K, M>(api: &Api<K>, count: usize, make: M)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    M: Fn(usize) -> Option<K>,
{
    let started = Instant::now();
    let created = AtomicUsize::new(0);
    let make = &make;
    futures::stream::iter(0..count)
        .for_each_concurrent(64, |i| {
            let created = &created;
            async move {
                let Some(object) = make(i) else { return };
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => eprintln!("creating object {i}: {e}"),
                }
            }
        })
        .await;
    eprintln!(
        "{count} {} ready ({} created in {:.1} s)",
        K::plural(&()),
        created.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
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
