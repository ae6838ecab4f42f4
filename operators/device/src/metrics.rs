//! `edgefleet_device_*` gauges and counters besides the kit's reconcile metrics.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The device operator's own metrics.
#[derive(Clone)]
pub struct DeviceMetrics {
    /// Devices by validity (`valid` = true/false) and `Online` status (True/False/Unknown).
    pub devices: IntGaugeVec,
    /// Devices by the state their edge last reported (`online`, `offline`, `unhealthy`,
    /// `unknown`), from the index.
    pub devices_by_state: IntGaugeVec,
    /// Tracked properties (those with a desired value) by sync state.
    pub properties: IntGaugeVec,
    /// Warning events published, by reason (one per change of a Device's problem).
    pub warnings: IntCounterVec,
    /// Devices re-delivered because their model changed.
    pub redeliveries: IntCounter,
}

impl DeviceMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            devices: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_device_devices",
                    "Devices by validity and Online condition status.",
                ),
                &["valid", "online"],
            )?,
            devices_by_state: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_device_devices_by_state",
                    "Devices by the state their mapper last reported (ok counts as online).",
                ),
                &["state"],
            )?,
            properties: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_device_properties",
                    "Device properties with a desired value, by sync state.",
                ),
                &["state"],
            )?,
            warnings: IntCounterVec::new(
                Opts::new(
                    "edgefleet_device_warnings_total",
                    "Warning events published about Devices and DeviceModels, by reason.",
                ),
                &["reason"],
            )?,
            redeliveries: IntCounter::new(
                "edgefleet_device_redeliveries_total",
                "Devices re-delivered to their node because their DeviceModel changed.",
            )?,
        };
        registry.register(Box::new(m.devices.clone()))?;
        registry.register(Box::new(m.devices_by_state.clone()))?;
        registry.register(Box::new(m.properties.clone()))?;
        registry.register(Box::new(m.warnings.clone()))?;
        registry.register(Box::new(m.redeliveries.clone()))?;
        Ok(m)
    }

    pub fn names(&self) -> Vec<String> {
        edgefleet_kit::names_of(&[
            &self.devices,
            &self.devices_by_state,
            &self.properties,
            &self.warnings,
            &self.redeliveries,
        ])
    }
}
