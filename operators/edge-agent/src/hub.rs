//! Where the hub is: `wss://host:port`, `https://host:port` or `host:port` (default port 10000,
//! KubeEdge cloudhub's WebSocket port).

use std::fmt;
use std::str::FromStr;

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
}
