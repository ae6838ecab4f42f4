//! Flags every operator shares; each operator `#[command(flatten)]`s [`CommonArgs`] into its CLI.

use std::{
    hash::{BuildHasher, Hasher},
    net::SocketAddr,
};

use clap::builder::BoolishValueParser;

use crate::leader::LeaseTiming;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (a pod), human text when it is (a developer).
    Auto,
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable text.
    Text,
}

/// Shared operator flags. Every flag can also be set through its environment variable, so a Helm
/// chart configures operators with `env:` alone.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "EDGEFLEET_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "EDGEFLEET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,edgefleet_rollout=debug`.
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// Run the controllers only while holding the leader Lease (`--leader-elect=false` for a
    /// single replica or local development).
    #[arg(
        long,
        env = "EDGEFLEET_LEADER_ELECT",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
    )]
    pub leader_elect: bool,

    /// Namespace of the leader Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// Name of the leader Lease; each operator passes its own default to
    /// [`CommonArgs::lease_name`].
    #[arg(long, env = "EDGEFLEET_LEADER_ELECTION_ID")]
    pub leader_election_id: Option<String>,

    /// How long a leader's Lease stays valid without renewal.
    #[arg(long, env = "EDGEFLEET_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// The leader renews this long before its Lease expires; also the clock skew tolerated
    /// between replicas.
    #[arg(long, env = "EDGEFLEET_LEASE_GRACE_SECONDS", default_value_t = 5)]
    pub lease_grace_seconds: u64,

    /// Watch and act in these namespaces only, comma-separated (the chart's namespaced mode,
    /// or one test namespace); default: every namespace. Rollout, objectsync and the hub take a
    /// list ([`CommonArgs::watch_scopes`]), as does device; the balancer takes one namespace.
    #[arg(long, env = "EDGEFLEET_WATCH_NAMESPACE", value_parser = parse_namespaces)]
    pub watch_namespace: Option<String>,

    /// This replica's identity in the Lease and in events [default: hostname + random suffix].
    #[arg(long, env = "POD_NAME", default_value_t = default_identity(), hide_default_value = true)]
    pub identity: String,
}

impl CommonArgs {
    /// The Lease name: `--leader-election-id` when given, else the operator's `default`.
    pub fn lease_name<'a>(&'a self, default: &'a str) -> &'a str {
        self.leader_election_id.as_deref().unwrap_or(default)
    }

    /// What to watch: `[None]` (every namespace) or one `Some(namespace)` per listed namespace,
    /// each once, in the order given. A watch per entry: a namespaced install's RBAC grants
    /// nothing cluster-wide, so one cluster-wide watch filtered locally would be refused.
    pub fn watch_scopes(&self) -> Vec<Option<String>> {
        match &self.watch_namespace {
            None => vec![None],
            Some(list) => {
                let mut out: Vec<Option<String>> = Vec::new();
                for ns in list.split(',').map(str::trim) {
                    if !out.iter().any(|o| o.as_deref() == Some(ns)) {
                        out.push(Some(ns.to_owned()));
                    }
                }
                out
            }
        }
    }

    /// The Lease timings, checked.
    pub fn lease_timing(&self) -> crate::Result<LeaseTiming> {
        LeaseTiming::new(self.lease_duration_seconds, self.lease_grace_seconds)
    }
}

/// `--watch-namespace`: a comma-separated list of namespace names (DNS-1123 labels), none
/// empty. Refused at start with the offending name, so a typo in the chart's `watchNamespaces`
/// fails loudly instead of watching nothing.
fn parse_namespaces(value: &str) -> Result<String, String> {
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    for name in &names {
        let label = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label {
            return Err(format!(
                "{name:?} is not a namespace name (lowercase letters, digits and '-', at most 63, \
                 comma-separated, none empty)"
            ));
        }
    }
    Ok(names.join(","))
}

/// Hostname plus a random suffix: two processes on one host (or a restarted process whose old
/// Lease entry has not expired) never share an identity.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edgefleet".to_owned());
    format!("{host}-{}", random_suffix())
}

/// Eight hex digits from the per-process random keys of std's `RandomState`: random enough for an
/// identity suffix without a `rand` dependency.
fn random_suffix() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn parse(args: &[&str]) -> Result<CommonArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("op").chain(args.iter().copied())).map(|c| c.common)
    }

    /// Environment variables that would change the defaults; the default tests only run when the
    /// test process has none of them (the env test sets them in a child process instead).
    const ENV: &[&str] = &[
        "EDGEFLEET_METRICS_ADDR",
        "EDGEFLEET_LOG_FORMAT",
        "RUST_LOG",
        "EDGEFLEET_LEADER_ELECT",
        "POD_NAMESPACE",
        "EDGEFLEET_LEADER_ELECTION_ID",
        "EDGEFLEET_LEASE_DURATION_SECONDS",
        "EDGEFLEET_LEASE_GRACE_SECONDS",
        "EDGEFLEET_WATCH_NAMESPACE",
        "POD_NAME",
    ];

    fn env_is_clean() -> bool {
        ENV.iter().all(|v| std::env::var_os(v).is_none())
    }

    #[test]
    fn defaults() {
        if !env_is_clean() {
            eprintln!("skipped: operator environment variables are set");
            return;
        }
        let a = parse(&[]).unwrap();
        assert_eq!(a.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.log_format, LogFormat::Auto);
        assert_eq!(a.log_filter, "info");
        assert!(a.leader_elect);
        assert_eq!(a.leader_election_namespace, "default");
        assert_eq!(a.lease_name("edgefleet-rollout"), "edgefleet-rollout");
        assert_eq!((a.lease_duration_seconds, a.lease_grace_seconds), (15, 5));
        assert!(a.lease_timing().is_ok());
        // hostname-suffix: never empty, and different processes get different suffixes.
        assert!(a.identity.len() > 9, "{}", a.identity);
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--metrics-addr=127.0.0.1:9000",
            "--log-format=json",
            "--log-level=debug,kube=info",
            "--leader-elect=false",
            "--leader-election-namespace=edgefleet-system",
            "--leader-election-id=my-lease",
            "--lease-duration-seconds=4",
            "--lease-grace-seconds=1",
            "--identity=pod-0",
        ])
        .unwrap();
        assert_eq!(a.metrics_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.log_filter, "debug,kube=info");
        assert!(!a.leader_elect);
        assert_eq!(a.leader_election_namespace, "edgefleet-system");
        assert_eq!(a.lease_name("edgefleet-rollout"), "my-lease");
        assert_eq!((a.lease_duration_seconds, a.lease_grace_seconds), (4, 1));
        assert_eq!(a.identity, "pod-0");
    }

    #[test]
    fn watch_scopes() {
        let scopes = |args: &[&str]| parse(args).map(|a| a.watch_scopes());
        let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        if env_is_clean() {
            assert_eq!(scopes(&[]).unwrap(), vec![None], "default: cluster-wide");
        }
        for (args, want) in [
            (&["--watch-namespace=a"][..], some(&["a"])),
            (&["--watch-namespace=a,b"][..], some(&["a", "b"])),
            (
                &["--watch-namespace=team-1, team-2"][..],
                some(&["team-1", "team-2"]),
            ),
            (&["--watch-namespace=a,b,a"][..], some(&["a", "b"])),
        ] {
            assert_eq!(scopes(args).unwrap(), want, "{args:?}");
        }
        for bad in ["", "a,,b", "a,", "A", "a_b", "-a", "a-", "a b"] {
            let err = parse(&[&format!("--watch-namespace={bad}")]).unwrap_err();
            assert!(
                err.to_string().contains("is not a namespace name"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn leader_elect_forms() {
        for (args, want) in [
            (&["--leader-elect"][..], true),
            (&["--leader-elect=true"][..], true),
            (&["--leader-elect=no"][..], false),
            (&["--leader-elect=0"][..], false),
        ] {
            assert_eq!(parse(args).unwrap().leader_elect, want, "{args:?}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--metrics-addr=not-an-addr"]).is_err());
        assert!(parse(&["--log-format=yaml"]).is_err());
        assert!(parse(&["--lease-duration-seconds=-1"]).is_err());
        let a = parse(&["--lease-duration-seconds=5", "--lease-grace-seconds=5"]).unwrap();
        assert!(a.lease_timing().is_err());
    }

    /// Env vars are process-global (and `set_var` is unsafe), so this test re-runs itself in a
    /// child process with the variables set; the child does the parsing.
    #[test]
    fn env_overrides_defaults() {
        if std::env::var_os("EDGEFLEET_KIT_CLI_CHILD").is_some() {
            let a = parse(&[]).unwrap();
            assert_eq!(a.metrics_addr, "127.0.0.1:9100".parse().unwrap());
            assert_eq!(a.log_format, LogFormat::Text);
            assert_eq!(a.log_filter, "warn");
            assert!(!a.leader_elect);
            assert_eq!(a.leader_election_namespace, "ops");
            assert_eq!(a.lease_name("default-lease"), "env-lease");
            assert_eq!((a.lease_duration_seconds, a.lease_grace_seconds), (30, 10));
            assert_eq!(a.identity, "rollout-7c9f-abcde");
            // A flag beats its environment variable.
            assert_eq!(parse(&["--identity=flag"]).unwrap().identity, "flag");
            return;
        }
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cli::tests::env_overrides_defaults",
                "--nocapture",
            ])
            .env("EDGEFLEET_KIT_CLI_CHILD", "1")
            .env("EDGEFLEET_METRICS_ADDR", "127.0.0.1:9100")
            .env("EDGEFLEET_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .env("EDGEFLEET_LEADER_ELECT", "false")
            .env("POD_NAMESPACE", "ops")
            .env("EDGEFLEET_LEADER_ELECTION_ID", "env-lease")
            .env("EDGEFLEET_LEASE_DURATION_SECONDS", "30")
            .env("EDGEFLEET_LEASE_GRACE_SECONDS", "10")
            .env("POD_NAME", "rollout-7c9f-abcde")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "child test failed: {}\n{}{}",
            child.status,
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr),
        );
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" {
                assert!(arg.get_env().is_some(), "--{id} has no env var");
            }
        }
    }

    #[test]
    fn identities_differ_between_calls() {
        // Distinct RandomState keys per call keep two electors in one test process apart.
        assert_ne!(default_identity(), default_identity());
    }
}
