//! Leader election on a `coordination.k8s.io` Lease, and running controllers only while leading.
//!
//! [`LeaderElector`] drives a [`kube_lease_manager::LeaseManager`] (which acquires and renews the
//! Lease with server-side apply) and adds what an operator needs around it: an "am I leader"
//! watch channel, the `leader` gauge, a check that each renewal really landed, retries, and a
//! fast handover: the leader releases the Lease on shutdown, and followers watch it, so a
//! successor takes it within a round trip instead of after `duration`.
//!
//! RBAC: `get`, `create`, `patch` on `coordination.k8s.io` `leases` in the Lease's namespace,
//! plus `list` and `watch` for the fast handover (without them election still works, slower).
//!
//! # Guarantee, and its limit
//!
//! A leader confirms every renewal by reading the Lease back: from `grace/4` after the renewal
//! is due it reads the Lease (every `grace/8`, each read bounded by the time left) until it sees
//! itself as holder with a newer `renewTime` still valid for more than `grace/2`. A slow API
//! server therefore costs nothing as long as one read lands in those `3/4 × grace` (a single
//! read slower than `grace/4` used to end the lead on a loaded test bed). Otherwise it steps
//! down (publishes `false`, so [`run_while_leader`] drops the controller) at the latest
//! `grace/4` before the Lease expires, which is the earliest another replica may take it. So a
//! leader cut off from the API server, or whose renewal hangs, stops acting within the grace
//! period and ahead of its successor.
//!
//! The limit: this assumes replica clocks agree within `grace/4` (the Lease carries wall-clock
//! times), a request already sent when the controller is dropped may still land, and a Lease
//! deleted or edited by hand is noticed at the next check (up to `duration - grace/2` later).
//! Brief overlap is therefore possible in rare cases, which is why every edgefleet action is
//! idempotent and written with server-side apply: two leaders for a moment converge on the same
//! state rather than corrupt it.

mod elector;
mod lease;
mod run;
#[cfg(test)]
mod slow_api_tests;

use std::time::Duration;

use crate::{Error, Result};

pub use elector::LeaderElector;
pub use run::run_while_leader;

/// Lease duration and grace, in whole seconds (the Lease API's unit), checked: `0 < grace <
/// duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    duration: u64,
    grace: u64,
}

impl LeaseTiming {
    /// `duration`: how long the Lease stays valid after a renewal. `grace`: the leader renews
    /// this long before expiry.
    ///
    /// # Errors
    /// [`Error::LeaseTiming`] unless `0 < grace < duration` (and duration fits the Lease's i32).
    pub fn new(duration: u64, grace: u64) -> Result<Self> {
        if grace == 0 || grace >= duration || duration > i32::MAX as u64 {
            return Err(Error::LeaseTiming { duration, grace });
        }
        Ok(Self { duration, grace })
    }

    /// How long the Lease stays valid after a renewal.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    /// How long before expiry the leader renews.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timing_is_checked() {
        for (duration, grace, ok) in [
            (15, 5, true),
            (2, 1, true),
            (5, 5, false),
            (5, 6, false),
            (5, 0, false),
            (0, 0, false),
            (u64::from(u32::MAX), 5, false),
        ] {
            let t = LeaseTiming::new(duration, grace);
            assert_eq!(t.is_ok(), ok, "{duration}/{grace}");
        }
        let t = LeaseTiming::new(15, 5).unwrap();
        assert_eq!(
            (t.duration(), t.grace()),
            (Duration::from_secs(15), Duration::from_secs(5))
        );
    }
}
