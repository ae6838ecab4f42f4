//! Device reports, edge → cloud: twin and state reports into `Device.status`, coalesced and
//! ordered (the contract is `edgefleet_channel::device`).
//!
//! | step | module | does |
//! |---|---|---|
//! | accept | [`accept`] | parse, check the device is bound to the session's node, put on the board |
//! | hold | [`board`] | one entry per device, newest per property, bounded (pure) |
//! | merge | [`merge`] | what changed against the stored status, the apply body (pure) |
//! | write | [`flush`] | every flush interval: read, merge, apply (`edgefleet-hub`), answer |
//! | deliver | [`delivery`] | cloud → edge: a Device is resent on spec changes only, not on status writes |
//!
//! Guarantee: an "OK" is sent only once the report's values are in the API (or were older or
//! unchanged), so a replica killed between a report and its write loses nothing the edge
//! believes delivered: the edge resends what was not answered. Limit: a resend after the hub
//! restarted is ordered against the stored `metadata.version`/`timestamp`, so an edge whose
//! store was wiped (versions back to 0) reports older-looking values until its clock passes
//! the stored timestamp.

pub mod accept;
pub mod board;
pub mod delivery;
pub mod flush;
pub mod merge;
pub mod metrics;

use std::sync::Mutex;
use std::time::Duration;

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
            answer_timeout: Duration::from_secs(30),
        }
    }
}

/// The replica's device report state: the board and its settings.
#[derive(Debug)]
pub struct Devices {
    pub settings: Settings,
    pub board: Mutex<Board>,
    /// Wakes the flusher early when the board fills past half.
    pub wake: Notify,
}

impl Devices {
    pub fn new(settings: Settings) -> Self {
        Devices {
            board: Mutex::new(Board::new(settings.pending_max)),
            settings,
            wake: Notify::new(),
        }
    }
}

/// Reports waiting for an answer, per session, beyond which one is answered "busy".
pub const MAX_WAITING_PER_SESSION: usize = 512;
