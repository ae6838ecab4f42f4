//! Decide (pure): which load reports count, what each hub should hold, who releases how many.
//!
//! ```text
//!   reports ──► count? (fresh, pod exists, Ready, same UID, capacity > 0)
//!                 │
//!   fewer than 2 ─┼─► Wait(TooFewHubs)
//!   Deployment rolling out ─► Wait(RollingOut)
//!   an order not done and not expired ─► Wait(OrderInFlight)
//!   within the observation period of the last order ─► Wait(Observing)
//!   every hub ≤ expected × (1 + tolerance) ─► Balanced
//!   the total moved more than tolerance/2 since the last round ─► Wait(Settling)
//!   otherwise ─► Release: each hub over the bound releases (connections − expected),
//!                capped by maxReleasePerRound, and keeps `expected`
//! ```
//!
//! Hysteresis against oscillation (Pulsar PIP-364): only a hub *over the tolerance* is acted on,
//! and it is asked to come down to `expected`, not below, so the recipients' gain never pushes
//! them over the bound in turn. `expected` is rounded up, so the sum of what donors keep is never
//! below the fair share and no hub is pushed below it.
//!
//! Settling: right after a hub dies its agents are still reconnecting (back-off), so the total
//! is short and so is `expected`; a round then would leave the donors below the share they will
//! owe once the rest is back (the e2e saw donors ordered down to 67 of a final 99). So no order
//! while the counted total moved by more than half the tolerance since the previous round (the
//! total the status recorded): the expected share moves by the same fraction.

use std::collections::BTreeMap;

use edgefleet_api::balancer::ReleaseOrder;
use jiff::Timestamp;

/// One hub's load report as read from its ConfigMap.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Report {
    /// The ConfigMap's name.
    pub configmap: String,
    /// The hub pod's name (`replica`).
    pub replica: String,
    pub pod_uid: Option<String>,
    pub connections: i64,
    pub capacity: i64,
    /// When the hub wrote it; `None` when missing or unparseable.
    pub written: Option<Timestamp>,
    pub order: Option<ReleaseOrder>,
    pub started: Option<String>,
    pub done: Option<String>,
}

/// A hub pod the selector picks.
#[derive(Clone, Debug, PartialEq)]
pub struct HubPod {
    pub uid: String,
    pub ready: bool,
}

/// The spec's numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub tolerance_percent: i64,
    pub observation_seconds: i64,
    pub max_release_per_round: Option<i64>,
    pub stale_after_seconds: i64,
}

/// Everything a round decides on.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub reports: Vec<Report>,
    /// Selected hub pods by name.
    pub pods: BTreeMap<String, HubPod>,
    /// Why the hubs' Deployment is not settled (rolling out), if it is not.
    pub rolling: Option<String>,
    /// The counted total of the previous round (the HubBalancer's status), if any.
    pub previous_total: Option<i64>,
}

/// Why a report does not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ignored {
    Stale { age_seconds: i64 },
    NoTimestamp,
    NoPod,
    NotReady,
    NoUid,
    OtherPod { report_uid: String, pod_uid: String },
    NoCapacity,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ignored::Stale { age_seconds } => write!(f, "report {age_seconds} s old"),
            Ignored::NoTimestamp => f.write_str("report has no timestamp"),
            Ignored::NoPod => f.write_str("no selected pod of that name"),
            Ignored::NotReady => f.write_str("pod not Ready"),
            Ignored::NoUid => f.write_str("report names no pod UID"),
            Ignored::OtherPod {
                report_uid,
                pod_uid,
            } => {
                write!(f, "report from pod {report_uid}, pod is now {pod_uid}")
            }
            Ignored::NoCapacity => f.write_str("capacity 0"),
        }
    }
}

/// One hub as this round sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Hub {
    pub replica: String,
    pub configmap: String,
    pub pod_uid: String,
    pub connections: i64,
    pub capacity: i64,
    /// Connections it should hold (0 for an ignored report).
    pub expected: i64,
    /// Sessions of an order still in flight (not done, not expired).
    pub in_flight: i64,
    pub ignored: Option<Ignored>,
}

/// An order to write this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub replica: String,
    pub configmap: String,
    pub pod_uid: String,
    pub release: i64,
    pub keep: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    TooFewHubs {
        counted: usize,
    },
    RollingOut(String),
    OrderInFlight {
        replica: String,
    },
    Observing {
        until: Timestamp,
        balanced: bool,
    },
    Balanced,
    /// Sessions are still arriving or leaving: the total moved from `from` to `to`.
    Settling {
        from: i64,
        to: i64,
    },
    Release(Vec<Release>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub hubs: Vec<Hub>,
    pub total: i64,
    pub decision: Decision,
    /// The latest order issued to any of these hubs.
    pub last_order: Option<Timestamp>,
}

impl Plan {
    pub fn counted(&self) -> impl Iterator<Item = &Hub> {
        self.hubs.iter().filter(|h| h.ignored.is_none())
    }

    /// Within tolerance by the numbers (whatever the decision).
    pub fn balanced(&self, settings: &Settings) -> bool {
        self.counted()
            .all(|h| !over(h.connections, h.expected, settings.tolerance_percent))
    }
}

/// The total moved by more than half the tolerance since `previous` (pure, integers).
pub fn unsettled(previous: i64, total: i64, tolerance_percent: i64) -> bool {
    i128::from((total - previous).abs()) * 200
        > i128::from(previous.max(0)) * i128::from(tolerance_percent.max(1))
}

/// `connections > expected × (1 + tolerance)`, in integers.
pub fn over(connections: i64, expected: i64, tolerance_percent: i64) -> bool {
    i128::from(connections) * 100 > i128::from(expected) * i128::from(100 + tolerance_percent)
}

fn order_time(o: &ReleaseOrder) -> Option<Timestamp> {
    o.issued_at.parse().ok()
}

/// Why `r` does not count, if it does not.
fn ignored(
    r: &Report,
    pods: &BTreeMap<String, HubPod>,
    s: &Settings,
    now: Timestamp,
) -> Option<Ignored> {
    let Some(written) = r.written else {
        return Some(Ignored::NoTimestamp);
    };
    let age_seconds = now.duration_since(written).as_secs();
    if age_seconds > s.stale_after_seconds {
        return Some(Ignored::Stale { age_seconds });
    }
    let Some(pod) = pods.get(&r.replica) else {
        return Some(Ignored::NoPod);
    };
    let Some(uid) = &r.pod_uid else {
        return Some(Ignored::NoUid);
    };
    if *uid != pod.uid {
        return Some(Ignored::OtherPod {
            report_uid: uid.clone(),
            pod_uid: pod.uid.clone(),
        });
    }
    if !pod.ready {
        return Some(Ignored::NotReady);
    }
    if r.capacity <= 0 {
        return Some(Ignored::NoCapacity);
    }
    None
}

/// An order counts as in flight while the hub has not marked it done and it has not expired
/// (the hub never acts on an order past `issuedAt + observation`).
fn in_flight(r: &Report, s: &Settings, now: Timestamp) -> i64 {
    let Some(o) = &r.order else { return 0 };
    if r.done.as_deref() == Some(o.id.as_str()) || r.pod_uid.as_deref() != Some(&o.pod_uid) {
        return 0;
    }
    match order_time(o) {
        Some(t) if now.as_second() < t.as_second() + s.observation_seconds => o.release,
        _ => 0,
    }
}

/// The round's plan.
pub fn plan(obs: &Observed, s: &Settings, now: Timestamp) -> Plan {
    let mut hubs: Vec<Hub> = obs
        .reports
        .iter()
        .map(|r| Hub {
            replica: r.replica.clone(),
            configmap: r.configmap.clone(),
            pod_uid: r.pod_uid.clone().unwrap_or_default(),
            connections: r.connections,
            capacity: r.capacity,
            expected: 0,
            in_flight: in_flight(r, s, now),
            ignored: ignored(r, &obs.pods, s, now),
        })
        .collect();
    hubs.sort_by(|a, b| a.replica.cmp(&b.replica));
    let total: i64 = hubs
        .iter()
        .filter(|h| h.ignored.is_none())
        .map(|h| h.connections)
        .sum();
    let capacity: i64 = hubs
        .iter()
        .filter(|h| h.ignored.is_none())
        .map(|h| h.capacity)
        .sum();
    for h in hubs.iter_mut().filter(|h| h.ignored.is_none()) {
        // ceil(total × capacity / Σ capacity), in i128 so no product overflows.
        let num = i128::from(total) * i128::from(h.capacity);
        let den = i128::from(capacity.max(1));
        h.expected = i64::try_from((num + den - 1) / den).unwrap_or(i64::MAX);
    }
    let last_order = obs
        .reports
        .iter()
        .filter_map(|r| r.order.as_ref().and_then(order_time))
        .max();
    let mut plan = Plan {
        hubs,
        total,
        decision: Decision::Balanced,
        last_order,
    };
    let counted = plan.counted().count();
    let balanced = plan.balanced(s);
    plan.decision = if counted < 2 {
        Decision::TooFewHubs { counted }
    } else if let Some(why) = &obs.rolling {
        Decision::RollingOut(why.clone())
    } else if let Some(h) = plan.hubs.iter().find(|h| h.in_flight > 0) {
        Decision::OrderInFlight {
            replica: h.replica.clone(),
        }
    } else if let Some(until) = last_order
        .map(|t| t.as_second() + s.observation_seconds)
        .filter(|until| now.as_second() < *until)
        .and_then(|until| Timestamp::from_second(until).ok())
    {
        Decision::Observing { until, balanced }
    } else if balanced {
        Decision::Balanced
    } else if let Some(from) = obs
        .previous_total
        .filter(|p| unsettled(*p, total, s.tolerance_percent))
    {
        Decision::Settling { from, to: total }
    } else {
        Decision::Release(
            plan.counted()
                .filter(|h| over(h.connections, h.expected, s.tolerance_percent))
                .map(|h| Release {
                    replica: h.replica.clone(),
                    configmap: h.configmap.clone(),
                    pod_uid: h.pod_uid.clone(),
                    release: s
                        .max_release_per_round
                        .map_or(h.connections - h.expected, |cap| {
                            (h.connections - h.expected).min(cap)
                        }),
                    keep: h.expected,
                })
                .collect(),
        )
    };
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn settings() -> Settings {
        Settings {
            tolerance_percent: 10,
            observation_seconds: 60,
            max_release_per_round: None,
            stale_after_seconds: 30,
        }
    }

    fn at(secs_ago: i64) -> Timestamp {
        Timestamp::from_second(NOW - secs_ago).unwrap()
    }

    fn report(name: &str, connections: i64, capacity: i64) -> Report {
        Report {
            configmap: format!("edgefleet-hub-load-{name}"),
            replica: name.into(),
            pod_uid: Some(format!("uid-{name}")),
            connections,
            capacity,
            written: Some(at(2)),
            ..Default::default()
        }
    }

    fn observed(reports: Vec<Report>) -> Observed {
        let pods = reports
            .iter()
            .map(|r| {
                (
                    r.replica.clone(),
                    HubPod {
                        uid: format!("uid-{}", r.replica),
                        ready: true,
                    },
                )
            })
            .collect();
        Observed {
            reports,
            pods,
            rolling: None,
            previous_total: None,
        }
    }

    #[test]
    fn unsettled_when_the_total_moved_more_than_half_the_tolerance() {
        // (previous, total, tolerance %) → unsettled
        let cases = [
            ((300, 300, 10), false),
            ((300, 314, 10), false), // 4.7 %
            ((300, 316, 10), true),  // 5.3 %
            ((300, 284, 10), true),  // leaving counts too
            ((201, 300, 10), true),  // a dead hub's agents coming back
            ((0, 0, 10), false),
            ((0, 5, 10), true),
            ((1000, 1004, 0), false), // tolerance 0 reads as 1 %: 0.4 % holds
        ];
        for ((previous, total, tolerance), want) in cases {
            assert_eq!(
                unsettled(previous, total, tolerance),
                want,
                "{previous} → {total} at {tolerance}%"
            );
        }
    }

    #[test]
    fn no_order_while_a_dead_hubs_sessions_are_still_coming_back() {
        // The e2e's case: 101/100/0 counted while 99 agents still reconnect.
        let mut obs = observed(vec![
            report("a", 101, 1000),
            report("b", 100, 1000),
            report("c", 0, 1000),
        ]);
        obs.previous_total = Some(170);
        let p = plan(&obs, &settings(), at(0));
        assert_eq!(p.decision, Decision::Settling { from: 170, to: 201 });
        // Once the total holds, the round releases.
        obs.previous_total = Some(200);
        let p = plan(&obs, &settings(), at(0));
        assert!(
            matches!(p.decision, Decision::Release(_)),
            "{:?}",
            p.decision
        );
        // Balanced wins over settling: nothing to order either way.
        let mut obs = observed(vec![report("a", 100, 1000), report("b", 100, 1000)]);
        obs.previous_total = Some(100);
        assert_eq!(plan(&obs, &settings(), at(0)).decision, Decision::Balanced);
    }

    fn order(id: &str, hub: &str, release: i64, secs_ago: i64) -> ReleaseOrder {
        ReleaseOrder {
            id: id.into(),
            pod_uid: format!("uid-{hub}"),
            release,
            keep: 0,
            issued_at: at(secs_ago).to_string(),
            expires_at: at(secs_ago - 60).to_string(),
        }
    }

    fn releases(p: &Plan) -> Vec<(String, i64, i64)> {
        match &p.decision {
            Decision::Release(r) => r
                .iter()
                .map(|r| (r.replica.clone(), r.release, r.keep))
                .collect(),
            other => panic!("expected releases, got {other:?}"),
        }
    }

    #[test]
    fn releases_exactly_the_excess_of_hubs_over_tolerance() {
        // (reports (name, connections, capacity), max per round, expected releases)
        type Case = (
            &'static [(&'static str, i64, i64)],
            Option<i64>,
            &'static [(&'static str, i64, i64)],
        );
        let cases: &[Case] = &[
            // One hub restarted: the survivors hold everything.
            (
                &[("a", 1500, 100), ("b", 1500, 100), ("c", 0, 100)],
                None,
                &[("a", 500, 1000), ("b", 500, 1000)],
            ),
            // Capped per round.
            (
                &[("a", 1500, 100), ("b", 1500, 100), ("c", 0, 100)],
                Some(200),
                &[("a", 200, 1000), ("b", 200, 1000)],
            ),
            // Weighted by capacity: b may hold twice as many as a.
            (
                &[("a", 900, 100), ("b", 900, 200)],
                None,
                &[("a", 300, 600)],
            ),
            // Rounding: 10 over 3 hubs → expected 4 each (ceil), never below.
            (
                &[("a", 10, 1), ("b", 0, 1), ("c", 0, 1)],
                None,
                &[("a", 6, 4)],
            ),
        ];
        for (reports, cap, want) in cases {
            let obs = observed(reports.iter().map(|(n, c, k)| report(n, *c, *k)).collect());
            let s = Settings {
                max_release_per_round: *cap,
                ..settings()
            };
            let p = plan(&obs, &s, at(0));
            let want: Vec<_> = want
                .iter()
                .map(|(n, r, k)| ((*n).to_string(), *r, *k))
                .collect();
            assert_eq!(releases(&p), want, "{reports:?}");
            for r in releases(&p) {
                let hub = p.hubs.iter().find(|h| h.replica == r.0).unwrap();
                assert!(
                    hub.connections - r.1 >= hub.expected,
                    "never below expected"
                );
            }
        }
    }

    #[test]
    fn within_tolerance_is_left_alone() {
        // 1100 vs expected 1000 is exactly +10 %: not over.
        for (a, b, balanced) in [(1100, 900, true), (1000, 1000, true), (1101, 899, false)] {
            let p = plan(
                &observed(vec![report("a", a, 1), report("b", b, 1)]),
                &settings(),
                at(0),
            );
            assert_eq!(
                p.decision == Decision::Balanced,
                balanced,
                "{a}/{b}: {:?}",
                p.decision
            );
        }
    }

    #[test]
    fn no_oscillation_after_a_release_lands() {
        // After a release to expected, with the released sessions spread over the others,
        // nothing is over: the next round orders nothing.
        let p = plan(
            &observed(vec![
                report("a", 1000, 1),
                report("b", 1000, 1),
                report("c", 1000, 1),
            ]),
            &settings(),
            at(0),
        );
        assert_eq!(p.decision, Decision::Balanced);
        // Agents landing unevenly within tolerance are left alone too.
        let p = plan(
            &observed(vec![
                report("a", 1000, 1),
                report("b", 1000, 1),
                report("c", 1090, 1),
            ]),
            &settings(),
            at(0),
        );
        assert_eq!(p.decision, Decision::Balanced);
    }

    #[test]
    fn reports_that_do_not_count() {
        let mut stale = report("a", 3000, 1);
        stale.written = Some(at(31));
        let mut untimed = report("a", 3000, 1);
        untimed.written = None;
        let mut replaced = report("a", 3000, 1);
        replaced.pod_uid = Some("uid-old".into());
        let mut no_uid = report("a", 3000, 1);
        no_uid.pod_uid = None;
        // (the report, a pod replacing the default one, why the report is ignored)
        type Case = (Report, Option<(String, HubPod)>, Ignored);
        let cases: Vec<Case> = vec![
            (stale, None, Ignored::Stale { age_seconds: 31 }),
            (untimed, None, Ignored::NoTimestamp),
            (
                replaced,
                None,
                Ignored::OtherPod {
                    report_uid: "uid-old".into(),
                    pod_uid: "uid-a".into(),
                },
            ),
            (no_uid, None, Ignored::NoUid),
            (
                report("a", 3000, 1),
                Some((
                    "a".into(),
                    HubPod {
                        uid: "uid-a".into(),
                        ready: false,
                    },
                )),
                Ignored::NotReady,
            ),
            (report("a", 3000, 0), None, Ignored::NoCapacity),
        ];
        for (bad, pod, why) in cases {
            let mut obs = observed(vec![bad, report("b", 0, 1), report("c", 0, 1)]);
            if let Some((n, p)) = pod {
                obs.pods.insert(n, p);
            }
            let p = plan(&obs, &settings(), at(0));
            assert_eq!(p.hubs[0].ignored, Some(why));
            assert_eq!(p.total, 0);
            assert_eq!(
                p.decision,
                Decision::Balanced,
                "an ignored hub's load is not acted on"
            );
        }
        // A report without a pod at all (missing pod) is ignored; one fresh hub left: nothing.
        let mut obs = observed(vec![report("a", 3000, 1), report("b", 0, 1)]);
        obs.pods.remove("b");
        let p = plan(&obs, &settings(), at(0));
        assert_eq!(p.hubs[1].ignored, Some(Ignored::NoPod));
        assert_eq!(p.decision, Decision::TooFewHubs { counted: 1 });
    }

    #[test]
    fn waits_for_rollouts_orders_and_observation() {
        let skewed = || vec![report("a", 3000, 1), report("b", 0, 1), report("c", 0, 1)];
        // Rolling out: nothing.
        let mut obs = observed(skewed());
        obs.rolling = Some("updated 1/3".into());
        assert_eq!(
            plan(&obs, &settings(), at(0)).decision,
            Decision::RollingOut("updated 1/3".into())
        );

        // An order not done and not expired: in flight, nothing new.
        let mut reports = skewed();
        reports[0].order = Some(order("o1", "a", 2000, 10));
        let p = plan(&observed(reports.clone()), &settings(), at(0));
        assert_eq!(
            p.decision,
            Decision::OrderInFlight {
                replica: "a".into()
            }
        );
        assert_eq!(p.hubs[0].in_flight, 2000);

        // Done but within the observation period: observing.
        reports[0].done = Some("o1".into());
        let p = plan(&observed(reports.clone()), &settings(), at(0));
        assert_eq!(
            p.decision,
            Decision::Observing {
                until: at(-50),
                balanced: false
            }
        );

        // After the period: a new round.
        reports[0].order = Some(order("o1", "a", 2000, 61));
        assert!(matches!(
            plan(&observed(reports.clone()), &settings(), at(0)).decision,
            Decision::Release(_)
        ));

        // An order for the pod's predecessor is not in flight (but still starts the period).
        reports[0].done = None;
        reports[0].order = Some(ReleaseOrder {
            pod_uid: "uid-old".into(),
            ..order("o2", "a", 5, 10)
        });
        assert!(matches!(
            plan(&observed(reports.clone()), &settings(), at(0)).decision,
            Decision::Observing { .. }
        ));

        // An order never marked done expires with the period (the hub stops acting on it then).
        reports[0].order = Some(order("o3", "a", 5, 61));
        assert!(matches!(
            plan(&observed(reports), &settings(), at(0)).decision,
            Decision::Release(_)
        ));
    }

    #[test]
    fn too_few_hubs() {
        let p = plan(&observed(vec![report("a", 3000, 1)]), &settings(), at(0));
        assert_eq!(p.decision, Decision::TooFewHubs { counted: 1 });
        let p = plan(&observed(vec![]), &settings(), at(0));
        assert_eq!(p.decision, Decision::TooFewHubs { counted: 0 });
    }
}
