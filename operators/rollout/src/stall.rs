//! Test-only: stall the operator at a named step, so an end-to-end test can kill it exactly
//! there. Read once at start from `EDGEFLEET_ROLLOUT_TEST_STALL=<step>:<seconds>` (e.g.
//! `released:40`: after an ended job gave its workloads back, before it records so). Unset in
//! every real deployment (the chart never sets it); a value not understood is ignored, loudly.
//!
//! Steps: `released` — see [`crate::reconcile`]'s end of a job.

use std::time::Duration;

/// The environment variable (test-only).
pub const STALL_ENV: &str = "EDGEFLEET_ROLLOUT_TEST_STALL";

/// Where to stall, and for how long.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stall(Option<(String, Duration)>);

impl Stall {
    pub fn from_env() -> Self {
        let Ok(value) = std::env::var(STALL_ENV) else {
            return Self::default();
        };
        let parsed = Self::parse(&value);
        if parsed.0.is_none() {
            tracing::warn!(%value, "{STALL_ENV} not understood (<step>:<seconds>); ignored");
        } else {
            tracing::warn!(%value, "{STALL_ENV} set: test-only stalls are on");
        }
        parsed
    }

    fn parse(value: &str) -> Self {
        let parsed = value
            .split_once(':')
            .and_then(|(step, secs)| Some((step.to_string(), secs.parse::<u64>().ok()?)));
        Self(parsed.map(|(step, secs)| (step, Duration::from_secs(secs))))
    }

    /// Sleeps here if told to stall at `step`.
    pub async fn at(&self, step: &str) {
        if let Some((at, how_long)) = &self.0
            && at == step
        {
            tracing::warn!(step, seconds = how_long.as_secs(), "test stall");
            tokio::time::sleep(*how_long).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_step_and_seconds_or_nothing() {
        assert_eq!(
            Stall::parse("released:40"),
            Stall(Some(("released".into(), Duration::from_secs(40))))
        );
        assert_eq!(Stall::parse("released"), Stall::default());
        assert_eq!(Stall::parse("released:soon"), Stall::default());
    }
}
