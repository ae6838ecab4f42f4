//! The agent's counters, shared by every session in the process (one for a real agent,
//! thousands in `simulate`), rendered in the Prometheus text format by hand: a handful of
//! atomics, no registry, no label sets per agent.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_up: AtomicI64,
    pub agents: AtomicI64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub busy_refusals: AtomicU64,
    pub reconnect_hints: AtomicU64,
    pub bootstraps: AtomicU64,
    pub renewals: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_acked: AtomicU64,
    pub messages_refused: AtomicU64,
    pub messages_stale: AtomicU64,
    pub messages_sent: AtomicU64,
    pub store_errors: AtomicU64,
    pub keepalives: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// The DMI side's counters, when it runs (`edge-agent run`).
    pub dmi: std::sync::OnceLock<std::sync::Arc<crate::dmi::DmiMetrics>>,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauges: [(&str, &str, &AtomicI64); 2] = [
            (
                "sessions_up",
                "Sessions to a hub currently open.",
                &self.sessions_up,
            ),
            ("agents", "Agents running in this process.", &self.agents),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP edgefleet_agent_{name} {help}\n# TYPE edgefleet_agent_{name} gauge\nedgefleet_agent_{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 16] = [
            ("connects_total", "Sessions opened.", &self.connects),
            (
                "reconnects_total",
                "Session attempts after a lost or failed session.",
                &self.reconnects,
            ),
            (
                "connect_failures_total",
                "Session attempts that failed before the upgrade.",
                &self.connect_failures,
            ),
            (
                "busy_refusals_total",
                "Session attempts the hub refused with 503 Retry-After.",
                &self.busy_refusals,
            ),
            (
                "reconnect_hints_total",
                "Sessions the hub ended with close 4000 and a reconnect hint (draining, rebalancing).",
                &self.reconnect_hints,
            ),
            (
                "bootstraps_total",
                "Certificates obtained with the bootstrap token.",
                &self.bootstraps,
            ),
            (
                "certificate_renewals_total",
                "Certificates renewed with the current certificate (no reconnect).",
                &self.renewals,
            ),
            (
                "messages_received_total",
                "Envelope frames received from the hub.",
                &self.messages_received,
            ),
            (
                "messages_acked_total",
                "Objects stored (or found current) and acknowledged.",
                &self.messages_acked,
            ),
            (
                "messages_refused_total",
                "Frames answered with an error.",
                &self.messages_refused,
            ),
            (
                "messages_stale_total",
                "Deliveries older than the stored version (ACKed, not applied).",
                &self.messages_stale,
            ),
            (
                "messages_sent_total",
                "Envelope frames sent to the hub (ACKs included).",
                &self.messages_sent,
            ),
            (
                "store_errors_total",
                "Store writes that failed (not ACKed).",
                &self.store_errors,
            ),
            (
                "keepalives_total",
                "WebSocket pings sent.",
                &self.keepalives,
            ),
            (
                "sent_bytes_total",
                "Bytes written to hub connections (TLS records included).",
                &self.bytes_sent,
            ),
            (
                "received_bytes_total",
                "Bytes read from hub connections (TLS records included).",
                &self.bytes_received,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP edgefleet_agent_{name} {help}\n# TYPE edgefleet_agent_{name} counter\nedgefleet_agent_{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        if let Some(dmi) = self.dmi.get() {
            out.push_str(&dmi.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        inc(&m.messages_acked);
        m.sessions_up.fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE edgefleet_agent_messages_acked_total counter\nedgefleet_agent_messages_acked_total 1\n"));
        assert!(text.contains("edgefleet_agent_sessions_up 3\n"));
    }
}
