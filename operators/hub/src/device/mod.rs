//! Device reports, edge → cloud: twin and state reports into `Device.status`, coalesced and
//! ordered (the contract is `edgefleet_channel::device`).
//!
//! | step | module | does |
//! |---|---|---|
//! | accept | [`accept`] | parse, check the device is bound to the session's node, classify against [`base`] (a value change, a refresh, nothing), put on the board |
//! | hold | [`board`] | one entry per device, newest per property, bounded (pure) |
//! | merge | [`merge`] | what changed against the stored status, the apply body (pure) |
//! | write | [`flush`] | every flush interval, within a write budget: merge into the cached Device, apply (`edgefleet-hub`), answer |
//! | deliver | [`delivery`] | cloud → edge: a Device is resent on spec changes only, not on status writes |
//!
//! Guarantee: an "OK" is sent only once the report's values are in the API (or were older or
//! unchanged), so a replica killed between a report and its write loses nothing the edge
//! believes delivered: the edge resends what was not answered. Limit: a resend after the hub
//! restarted is ordered against the stored `metadata.version`/`timestamp`, so an edge whose
//! store was wiped (versions back to 0) reports older-looking values until its clock passes
//! the stored timestamp.

pub mod accept;
pub mod base;
pub mod board;
pub mod delivery;
pub mod flush;
pub mod merge;
pub mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgefleet_api::devices::Device;

use tokio::sync::Notify;

pub use board::{Board, DeviceKey};
pub use metrics::DeviceMetrics;

/// Settings of the device report path (hub flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// At most one status write per device per this interval.
    pub flush_interval: Duration,
    /// Devices with reports waiting, at most.
    pub pending_max: usize,
    /// An unchanged value is written again when its stored time is older than this.
    pub refresh: Duration,
    /// Device status writes in flight.
    pub writers: usize,
    /// Device status writes started per second, at most (the API server's share for device
    /// status, beside node Leases): a backlog waits on the board, its reports coalescing.
    pub writes_per_second: u32,
    /// A report not answered within this is answered "busy" (the edge resends it).
    pub answer_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            flush_interval: Duration::from_secs(1),
            pending_max: 100_000,
            refresh: Duration::from_secs(60),
            writers: 16,
            writes_per_second: 100,
            answer_timeout: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// [`Settings::refresh`] in milliseconds, as report and stored times are kept.
    pub fn refresh_ms(&self) -> i64 {
        i64::try_from(self.refresh.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The replica's device report state: the board and its settings.
#[derive(Debug)]
pub struct Devices {
    pub settings: Settings,
    pub board: Mutex<Board>,
    /// Wakes the flusher early when the board fills past half.
    pub wake: Notify,
    /// The answer to the last status write of each device, kept until the watch cache holds
    /// that version (or [`WRITTEN_KEPT`]): the next write merges into it without a read.
    pub written: Mutex<HashMap<DeviceKey, (Instant, Arc<Device>)>>,
    /// Reads of a Device the object cache does not hold yet (a report's binding check): at most
    /// [`DEVICE_READS_IN_FLIGHT`] at once; a report that waits longer than
    /// [`accept::READ_WAIT`] for its turn is answered busy.
    pub reads: tokio::sync::Semaphore,
}

/// A replica with a cold cache (just started, its fetcher behind) once turned every report into
/// a read: 7,130 connections to kube-apiserver (the client's pool opens one per concurrent
/// request) and "Too many open files" at 1,020 sessions (README, `hack/bench/devices`).
pub const DEVICE_READS_IN_FLIGHT: usize = 16;

/// Refreshes that may wait: this many seconds of the whole write budget. More would only wait
/// longer than the devices take to report again (their next report brings them back).
pub const REFRESH_QUEUED_SECONDS: usize = 30;

/// How long the answer to a status write stands in for a watch cache that lags behind it.
pub const WRITTEN_KEPT: Duration = Duration::from_secs(30);

impl Devices {
    pub fn new(settings: Settings) -> Self {
        Devices {
            board: Mutex::new(Board::new(
                settings.pending_max,
                usize::try_from(settings.writes_per_second)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(REFRESH_QUEUED_SECONDS),
            )),
            settings,
            wake: Notify::new(),
            written: Mutex::new(HashMap::new()),
            reads: tokio::sync::Semaphore::new(DEVICE_READS_IN_FLIGHT),
        }
    }
}

/// Reports waiting for an answer, per session, beyond which one is answered "busy".
pub const MAX_WAITING_PER_SESSION: usize = 512;
