//! A real Prometheus (Debian's package: `hack/prometheus install`) scraping operator processes
//! of the e2e harness, evaluating the chart's rules, queried over its HTTP API.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{repo_root, wait_for};

/// The port Prometheus listens on: `EDGEFLEET_PROMETHEUS_PORT`, default 29090.
pub fn port() -> u16 {
    std::env::var("EDGEFLEET_PROMETHEUS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(29090)
}

/// A running Prometheus; killed and its data removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second (job `edgefleet`, `honor_labels` as
    /// the chart's PodMonitor), with `rules` (a rules file) evaluated every second.
    pub async fn start(name: &str, targets: &[SocketAddr], rules: &str) -> Result<Self> {
        let dir = repo_root().join("hack/.cluster/prometheus").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("rules.yaml"), rules)?;
        // The config comes from the generator the demo uses too (hack/prometheus config).
        let generated = Command::new(repo_root().join("hack/prometheus"))
            .args(["config", "--interval=1s", "--rules=rules.yaml"])
            .args(targets.iter().map(ToString::to_string))
            .stderr(Stdio::inherit())
            .output()
            .context("running hack/prometheus config")?;
        if !generated.status.success() {
            bail!("hack/prometheus config failed: {}", generated.status);
        }
        let config = String::from_utf8(generated.stdout)?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", port()).parse()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .current_dir(&dir)
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=data",
                &format!("--web.listen-address={addr}"),
                "--log.level=warn",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting prometheus (install it with `hack/prometheus install`)")?;
        let p = Self { child, dir, addr };
        wait_for(
            "Prometheus to be ready",
            Duration::from_secs(60),
            || async { Ok(p.get("/-/ready").await.ok().map(|_| ())) },
        )
        .await?;
        Ok(p)
    }

    /// GET `path` → body (HTTP/1.0, so the body ends with the connection).
    async fn get(&self, path: &str) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.addr).await?;
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).as_bytes())
            .await?;
        let mut out = String::new();
        conn.read_to_string(&mut out).await?;
        let (head, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {head}: {body}");
        }
        Ok(body.to_string())
    }

    /// An API call: `data` of `/api/v1/<path>`.
    pub async fn api(&self, path: &str) -> Result<serde_json::Value> {
        let body: serde_json::Value =
            serde_json::from_str(&self.get(&format!("/api/v1/{path}")).await?)?;
        if body["status"] != "success" {
            bail!("{path}: {body}");
        }
        Ok(body["data"].clone())
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let data = self.api(&format!("query?query={}", encode(promql))).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Prometheus' own log (for failure reports).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
