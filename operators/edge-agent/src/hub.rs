//! Where the hub is: `wss://host:port`, `https://host:port` or `host:port` (default port 10000,
//! KubeEdge cloudhub's WebSocket port).
//!
//! Production puts an L4 load balancer in front of the hub replicas (one address); some sites
//! list the replicas instead (`--hub a:1,b:2`). [`Hubs`] is that list and [`HubCursor`] an
//! agent's walk over it: each attempt picks a hub at random, and an attempt that follows a
//! failure (refused, busy, lost, told to reconnect) picks another one than the last.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::ServerName;

pub const DEFAULT_PORT: u16 = 10000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubAddr {
    pub host: String,
    pub port: u16,
}

impl HubAddr {
    /// `host:port` for the HTTP Host header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone()).map_err(|e| format!("{}: {e}", self.host))
    }

    /// The session URL of `node`.
    pub fn events_url(&self, project_id: &str, node: &str) -> String {
        format!(
            "wss://{}{}",
            self.authority(),
            edgefleet_channel::session::events_path(project_id, node)
        )
    }
}

impl fmt::Display for HubAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

impl FromStr for HubAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = ["wss://", "https://"]
            .iter()
            .find_map(|scheme| s.strip_prefix(scheme))
            .unwrap_or(s);
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("hub address {s:?}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("hub address {s:?} has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("hub address {s:?}: bad port {p:?}"))?,
            None => DEFAULT_PORT,
        };
        Ok(HubAddr {
            host: host.to_string(),
            port,
        })
    }
}

/// The hubs an agent may reach: never empty. Cheap to clone (thousands of hollow agents share
/// one list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hubs(Arc<[HubAddr]>);

impl Hubs {
    pub fn new(hubs: Vec<HubAddr>) -> Result<Hubs, String> {
        if hubs.is_empty() {
            return Err("no hub address given".into());
        }
        Ok(Hubs(hubs.into()))
    }

    pub fn as_slice(&self) -> &[HubAddr] {
        &self.0
    }

    /// A fresh walk over the list, for one agent's attempts.
    pub fn cursor(&self) -> HubCursor {
        HubCursor {
            hubs: self.clone(),
            last: None,
        }
    }
}

impl From<HubAddr> for Hubs {
    fn from(hub: HubAddr) -> Hubs {
        Hubs(Arc::from([hub]))
    }
}

impl fmt::Display for Hubs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, hub) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{hub}")?;
        }
        Ok(())
    }
}

/// One agent's choice of hub, attempt after attempt.
#[derive(Clone, Debug)]
pub struct HubCursor {
    hubs: Hubs,
    last: Option<usize>,
}

impl HubCursor {
    /// The hub of the next attempt: any one at random for the first, then a random one other
    /// than the previous (every later attempt follows a failure or an ended session). With a
    /// single hub, always that one.
    pub fn next_hub(&mut self) -> &HubAddr {
        let n = self.hubs.0.len();
        let index = match self.last {
            Some(last) if n > 1 => (last + 1 + fastrand::usize(0..n - 1)) % n,
            _ => fastrand::usize(0..n),
        };
        self.last = Some(index);
        &self.hubs.0[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_spellings() {
        let want = HubAddr {
            host: "hub.example".into(),
            port: 443,
        };
        for s in [
            "wss://hub.example:443",
            "https://hub.example:443/",
            "hub.example:443",
        ] {
            assert_eq!(s.parse::<HubAddr>().unwrap(), want, "{s}");
        }
        assert_eq!("10.0.0.1".parse::<HubAddr>().unwrap().port, DEFAULT_PORT);
        let v6: HubAddr = "wss://[::1]:10000".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(), "[::1]:10000");
        assert!("wss://:80".parse::<HubAddr>().is_err());
        assert!("hub:http".parse::<HubAddr>().is_err());
        assert_eq!(
            "127.0.0.1:1"
                .parse::<HubAddr>()
                .unwrap()
                .events_url("p", "edge-1"),
            "wss://127.0.0.1:1/p/edge-1/events"
        );
    }

    fn hubs(list: &[&str]) -> Hubs {
        Hubs::new(list.iter().map(|s| s.parse().unwrap()).collect()).unwrap()
    }

    #[test]
    fn every_hub_gets_used_and_a_retry_moves_on() {
        let hubs = hubs(&["a:1", "b:2", "c:3"]);
        // First attempts of many agents: spread over the whole list.
        let mut first = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..3000 {
            *first
                .entry(hubs.cursor().next_hub().to_string())
                .or_default() += 1;
        }
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.values().all(|n| *n > 800), "{first:?}");
        // One agent's retries: never the hub that just failed, and every hub in time.
        let mut cursor = hubs.cursor();
        let mut previous = cursor.next_hub().clone();
        let mut seen = std::collections::BTreeSet::from([previous.to_string()]);
        for _ in 0..200 {
            let next = cursor.next_hub().clone();
            assert_ne!(next, previous);
            seen.insert(next.to_string());
            previous = next;
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn a_single_hub_is_always_the_one() {
        let hubs = hubs(&["wss://hub:443"]);
        let mut cursor = hubs.cursor();
        for _ in 0..10 {
            assert_eq!(cursor.next_hub().authority(), "hub:443");
        }
        assert_eq!(
            Hubs::from(HubAddr {
                host: "h".into(),
                port: 1
            })
            .to_string(),
            "h:1"
        );
        assert!(Hubs::new(Vec::new()).is_err());
    }
}
