//! How a session is opened, kept and closed: the same numbers on both ends.

use std::time::Duration;

/// KubeEdge's default project id (`project_id` header, first path segment).
pub const DEFAULT_PROJECT_ID: &str = "e632aba927ea4ac2b575ec1603d56f10";
/// Request header naming the node; must equal the certificate's CN and the path's node name.
pub const HEADER_NODE_ID: &str = "node_id";
pub const HEADER_PROJECT_ID: &str = "project_id";

/// The edge pings this often (KubeEdge: 15 s).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// The hub drops a session it has heard nothing from for this long (3 keepalives).
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// The hub resends an unacknowledged message after this long (KubeEdge: 5 s)...
pub const RESEND_AFTER: Duration = Duration::from_secs(5);
/// ...up to this many sends in all, then leaves it to the objectsync operator's resync.
pub const MAX_SENDS: u32 = 5;

/// WebSocket close code the hub uses to move a session elsewhere (balancer release order,
/// drain on shutdown); the reason carries the back-off hint, see [`reconnect_reason`].
pub const CLOSE_RECONNECT: u16 = 4000;
/// Close code for a session replaced by a newer one from the same node.
pub const CLOSE_REPLACED: u16 = 4001;
/// Close code for a peer that broke the protocol (the reason says how).
pub const CLOSE_PROTOCOL: u16 = 4002;

/// The session URL path for a node.
pub fn events_path(project_id: &str, node_name: &str) -> String {
    format!("/{project_id}/{node_name}/events")
}

/// `(project_id, node_name)` from a session URL path, `None` when it is not one.
pub fn parse_events_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (project, rest) = rest.split_once('/')?;
    let node = rest.strip_suffix("/events")?;
    (!project.is_empty() && crate::resource::is_valid_name(node)).then_some((project, node))
}

/// The close reason carrying a reconnect hint.
pub fn reconnect_reason(after: Duration) -> String {
    format!("reconnect-after={}", after.as_secs())
}

/// The hint from a close reason (or a `Retry-After` value given as plain seconds).
pub fn parse_reconnect_hint(reason: &str) -> Option<Duration> {
    let secs = reason.strip_prefix("reconnect-after=").unwrap_or(reason);
    secs.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_refuse_junk() {
        let path = events_path(DEFAULT_PROJECT_ID, "edge-7");
        assert_eq!(
            parse_events_path(&path),
            Some((DEFAULT_PROJECT_ID, "edge-7"))
        );
        assert_eq!(parse_events_path("/p/../events"), None);
        assert_eq!(parse_events_path("/p/Edge/events"), None);
        assert_eq!(parse_events_path("/p/edge-7/other"), None);
        assert_eq!(parse_events_path("//edge-7/events"), None);
    }

    #[test]
    fn reconnect_hints() {
        let reason = reconnect_reason(Duration::from_secs(12));
        assert_eq!(parse_reconnect_hint(&reason), Some(Duration::from_secs(12)));
        assert_eq!(parse_reconnect_hint("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_reconnect_hint("soon"), None);
    }
}
