//! The decisions, pure: from one node's state, desired set and syncs to the actions that make
//! its syncs right, and when to look at the node again.

use std::cmp::Ordering;
use std::time::Duration;

use edgefleet_api::objectsync::{compare_resource_versions, sync_name};
use jiff::{SignedDuration, Timestamp};

use crate::index::{Desired, Live, NodeState, SyncEntry};
use crate::refs::Kind;

/// The ObjectSync contract's names, defined once in the api crate (the hub uses the same).
pub use edgefleet_api::objectsync::{FINALIZER, OBJECT_UID_LABEL, RESYNC_ANNOTATION};
/// Label values are at most 63 characters; a longer node name is read from the sync's name.
pub const MAX_LABEL_VALUE: usize = 63;

/// Resync timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// How long a sync may trail before the hub is asked to re-queue it.
    pub resend: Duration,
    /// The longest wait between two asks for a sync the hub does not act on (an offline
    /// node): the wait doubles from `resend` up to this.
    pub max_backoff: Duration,
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Server-side apply of a new sync: spec, labels, finalizer.
    Create {
        namespace: String,
        name: String,
        node: String,
        uid: String,
        kind: Kind,
        object_name: String,
    },
    /// Server-side apply of labels and finalizer onto a sync this operator did not create
    /// (KubeEdge's), leaving its spec as it is.
    Adopt {
        namespace: String,
        name: String,
        node: String,
        uid: String,
    },
    /// Delete; the finalizer keeps it until the hub has the edge delete the object.
    Delete { namespace: String, name: String },
    /// The node is gone: drop this operator's finalizer (no edge will ACK) and delete.
    Release {
        namespace: String,
        name: String,
        finalizers: Vec<String>,
        delete: bool,
    },
    /// Set the resync annotation to `at`.
    Resync {
        namespace: String,
        name: String,
        at: Timestamp,
    },
}

/// What one node needs done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When to look at the node again (the next sync to come due for a resync).
    pub recheck_at: Option<Timestamp>,
    /// Syncs whose acked and live versions cannot be ordered (reported, never resynced).
    pub unordered: Vec<String>,
}

/// Whether the node has the live version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Acked the live version (or a later one: the cache lags the hub's ACK).
    Acked,
    /// Acked nothing yet, or an older version.
    Trailing,
    /// The versions are not plain numbers and differ: no order can be told, so none is
    /// guessed (KubeEdge's SyncController panics here).
    Unordered,
}

/// Compares the acked version with the live one; empty and `"0"` mean nothing acked.
pub fn freshness(acked: Option<&str>, live: &str) -> Freshness {
    let Some(acked) = acked.filter(|a| !a.is_empty() && *a != "0") else {
        return Freshness::Trailing;
    };
    match compare_resource_versions(acked, live) {
        Some(Ordering::Less) => Freshness::Trailing,
        Some(_) => Freshness::Acked,
        None if acked == live => Freshness::Acked,
        None => Freshness::Unordered,
    }
}

/// [`freshness`] of one sync against its live object: a Device whose acked content version
/// is the live one is delivered, whatever its status writes did to the resourceVersion.
pub fn freshness_of(sync: &SyncEntry, live: &Live) -> Freshness {
    if live.content.is_some() && sync.acked_content == live.content {
        return Freshness::Acked;
    }
    freshness(sync.acked.as_deref(), &live.rv)
}

/// Since when a trailing sync has had its chance: the latest of its creation, the hub's last
/// send (`lastAttemptTime`) and the live version's first sighting.
pub fn trailing_since(sync: &SyncEntry, live: &Live) -> Timestamp {
    [sync.created, sync.last_attempt, Some(live.changed)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(live.changed)
}

/// A trailing sync is stale once it has trailed a whole resend window since
/// [`trailing_since`] (what `edgefleet_objectsync_stale_syncs` counts).
pub fn is_stale(sync: &SyncEntry, live: &Live, now: Timestamp, window: Window) -> bool {
    add(trailing_since(sync, live), signed(window.resend)) <= now
}

/// When a trailing sync comes due for a resync. The window runs from the latest of: the
/// sync's creation, the hub's last send (`lastAttemptTime`), the live version's first
/// sighting. If the operator already asked after that and the hub has not sent since (the
/// node is offline), the next ask waits as long again as the last one did (doubling), up to
/// `max_backoff`: one write per sync per window at most, far fewer for offline nodes.
pub fn resync_due(sync: &SyncEntry, live: &Live, window: Window) -> Timestamp {
    let base = trailing_since(sync, live);
    let resend = signed(window.resend);
    match sync.resync_requested {
        Some(asked) if asked > base => {
            let waited = asked.duration_since(base);
            let wait = waited.clamp(resend, signed(window.max_backoff).max(resend));
            add(asked, wait)
        }
        _ => add(base, resend),
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// The actions that make `node`'s syncs match `desired`, given how the node stands.
pub fn plan(
    node: &str,
    state: NodeState,
    desired: &[Desired],
    syncs: &[SyncEntry],
    now: Timestamp,
    window: Window,
) -> Plan {
    let mut plan = Plan::default();
    if state == NodeState::Gone {
        for s in syncs {
            let ours = s.finalizers.iter().any(|f| f == FINALIZER);
            if ours || !s.deleting {
                plan.actions.push(Action::Release {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    finalizers: s.finalizers.clone(),
                    delete: !s.deleting,
                });
            }
        }
        return plan;
    }

    let wanted: std::collections::HashMap<(&str, String), &Desired> = desired
        .iter()
        .map(|d| ((d.namespace.as_str(), sync_name(node, &d.live.uid)), d))
        .collect();
    let existing: std::collections::HashMap<(&str, &str), &SyncEntry> = syncs
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();

    for d in desired {
        let name = sync_name(node, &d.live.uid);
        match existing.get(&(d.namespace.as_str(), name.as_str())) {
            None => plan.actions.push(Action::Create {
                namespace: d.namespace.clone(),
                name,
                node: node.to_owned(),
                uid: d.live.uid.clone(),
                kind: d.kind,
                object_name: d.name.clone(),
            }),
            // Still being deleted from the edge (needed again meanwhile): created anew once
            // gone; its removal affects the node.
            Some(s) if s.deleting => {}
            Some(s) => {
                if !s.adopted {
                    plan.actions.push(Action::Adopt {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                        node: node.to_owned(),
                        uid: d.live.uid.clone(),
                    });
                }
                match freshness_of(s, &d.live) {
                    Freshness::Acked => {}
                    Freshness::Unordered => plan.unordered.push(s.name.clone()),
                    Freshness::Trailing => {
                        let due = resync_due(s, &d.live, window);
                        if due <= now {
                            plan.actions.push(Action::Resync {
                                namespace: s.namespace.clone(),
                                name: s.name.clone(),
                                at: now,
                            });
                            // Looked at again once the next ask could come due.
                            let next = SyncEntry {
                                resync_requested: Some(now),
                                ..(*s).clone()
                            };
                            plan.recheck(resync_due(&next, &d.live, window));
                        } else {
                            plan.recheck(due);
                        }
                    }
                }
            }
        }
    }

    for s in syncs {
        let needed = wanted.contains_key(&(s.namespace.as_str(), s.name.clone()));
        // Syncs of kinds this operator does not deliver are someone else's.
        if !needed && !s.deleting && s.kind.is_some() {
            plan.actions.push(Action::Delete {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            });
        }
    }
    plan
}

impl Plan {
    fn recheck(&mut self, at: Timestamp) {
        self.recheck_at = Some(self.recheck_at.map_or(at, |t| t.min(at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Window = Window {
        resend: Duration::from_secs(30),
        max_backoff: Duration::from_secs(600),
    };

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn live(uid: &str, rv: &str) -> Live {
        Live {
            uid: uid.into(),
            rv: rv.into(),
            content: None,
            changed: t(0),
        }
    }

    fn desired(kind: Kind, name: &str, uid: &str, rv: &str) -> Desired {
        Desired {
            namespace: "ns".into(),
            kind,
            name: name.into(),
            live: live(uid, rv),
        }
    }

    fn sync(node: &str, uid: &str, acked: Option<&str>) -> SyncEntry {
        SyncEntry {
            namespace: "ns".into(),
            name: sync_name(node, uid),
            node: node.into(),
            uid: uid.into(),
            kind: Some(Kind::Pod),
            object_name: "p".into(),
            acked: acked.map(Into::into),
            acked_content: None,
            last_attempt: None,
            created: Some(t(0)),
            resync_requested: None,
            deleting: false,
            finalizers: vec![FINALIZER.into()],
            adopted: true,
        }
    }

    #[test]
    fn freshness_never_guesses_an_order() {
        use Freshness::*;
        for (acked, live, want) in [
            (None, "5", Trailing),
            (Some(""), "5", Trailing),
            (Some("0"), "5", Trailing),
            (Some("4"), "5", Trailing),
            (Some("5"), "5", Acked),
            (Some("6"), "5", Acked), // the cache lags the ACK
            (Some("9"), "10", Trailing),
            (Some("opaque-a"), "opaque-a", Acked),
            (Some("opaque-a"), "opaque-b", Unordered),
            (Some("-1"), "5", Unordered),
            (Some("5"), "", Unordered),
            (Some("99999999999999999999999"), "5", Unordered),
            (Some(" 5"), "5", Unordered),
        ] {
            assert_eq!(freshness(acked, live), want, "{acked:?} vs {live:?}");
        }
    }

    /// A Device's status writes move its resourceVersion past the acked one; its acked content
    /// version still says the node holds it (no resync asked, no write).
    #[test]
    fn a_device_is_fresh_while_its_content_version_is_the_acked_one() {
        use Freshness::*;
        let device = |rv: &str, content: Option<&str>| Live {
            content: content.map(Into::into),
            ..live("u1", rv)
        };
        let acked = |rv: &str, content: Option<&str>| SyncEntry {
            acked_content: content.map(Into::into),
            ..sync("a", "u1", Some(rv))
        };
        // (case, sync, live, freshness)
        let cases = [
            (
                "status writes only",
                acked("5", Some("2-aa")),
                device("9", Some("2-aa")),
                Acked,
            ),
            (
                "spec changed since",
                acked("5", Some("2-aa")),
                device("9", Some("3-aa")),
                Trailing,
            ),
            (
                "annotation changed since",
                acked("5", Some("2-aa")),
                device("9", Some("2-bb")),
                Trailing,
            ),
            (
                "acked before content versions",
                acked("5", None),
                device("9", Some("2-aa")),
                Trailing,
            ),
            (
                "acked before content versions, same rv",
                acked("9", None),
                device("9", Some("2-aa")),
                Acked,
            ),
            (
                "other kinds go by version",
                acked("5", Some("2-aa")),
                device("9", None),
                Trailing,
            ),
        ];
        for (case, s, l, want) in cases {
            assert_eq!(freshness_of(&s, &l), want, "{case}");
        }
    }

    #[test]
    fn missing_syncs_are_created_unneeded_ones_deleted() {
        let want = [
            desired(Kind::Pod, "p", "u1", "1"),
            desired(Kind::ConfigMap, "cm", "u2", "1"),
        ];
        let have = [
            sync("a", "u1", Some("1")),
            sync("a", "gone", Some("1")),
            SyncEntry {
                deleting: true,
                ..sync("a", "going", Some("1"))
            },
            SyncEntry {
                kind: None,
                ..sync("a", "foreign", Some("1"))
            },
        ];
        let p = plan("a", NodeState::Edge, &want, &have, t(1), WINDOW);
        assert_eq!(
            p.actions,
            [
                Action::Create {
                    namespace: "ns".into(),
                    name: "a.u2".into(),
                    node: "a".into(),
                    uid: "u2".into(),
                    kind: Kind::ConfigMap,
                    object_name: "cm".into(),
                },
                Action::Delete {
                    namespace: "ns".into(),
                    name: "a.gone".into()
                },
            ]
        );
        assert_eq!(p.recheck_at, None);
        // Converged: nothing to do.
        let have = [sync("a", "u1", Some("1")), sync("a", "u2", Some("1"))];
        let p = plan("a", NodeState::Edge, &want, &have, t(1), WINDOW);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_sync_still_being_deleted_is_not_recreated_yet() {
        let want = [desired(Kind::Pod, "p", "u1", "1")];
        let have = [SyncEntry {
            deleting: true,
            ..sync("a", "u1", None)
        }];
        let p = plan("a", NodeState::Edge, &want, &have, t(100), WINDOW);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn kubeedge_syncs_are_adopted() {
        let want = [desired(Kind::Pod, "p", "u1", "1")];
        let have = [SyncEntry {
            adopted: false,
            finalizers: vec![],
            ..sync("a", "u1", Some("1"))
        }];
        let p = plan("a", NodeState::Edge, &want, &have, t(1), WINDOW);
        assert_eq!(
            p.actions,
            [Action::Adopt {
                namespace: "ns".into(),
                name: "a.u1".into(),
                node: "a".into(),
                uid: "u1".into()
            }]
        );
    }

    #[test]
    fn a_gone_node_releases_everything_a_non_edge_node_deletes() {
        let have = [
            sync("a", "u1", Some("1")),
            SyncEntry {
                deleting: true,
                ..sync("a", "u2", None)
            },
            SyncEntry {
                deleting: true,
                finalizers: vec!["other".into()],
                ..sync("a", "u3", None)
            },
            SyncEntry {
                kind: None,
                finalizers: vec![],
                ..sync("a", "u4", None)
            },
        ];
        let p = plan("a", NodeState::Gone, &[], &have, t(1), WINDOW);
        let released: Vec<_> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Release { name, delete, .. } => (name.as_str(), *delete),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(released, [("a.u1", true), ("a.u2", false), ("a.u4", true)]);

        let p = plan("a", NodeState::NotEdge, &[], &have, t(1), WINDOW);
        assert_eq!(
            p.actions,
            [Action::Delete {
                namespace: "ns".into(),
                name: "a.u1".into()
            }]
        );
    }

    #[test]
    fn trailing_syncs_are_resynced_after_the_window_and_backed_off() {
        let want = [desired(Kind::Pod, "p", "u1", "7")];
        let trailing = sync("a", "u1", Some("5"));
        // Within the window: no ask, a recheck when it ends.
        let p = plan(
            "a",
            NodeState::Edge,
            &want,
            std::slice::from_ref(&trailing),
            t(10),
            WINDOW,
        );
        assert!(p.actions.is_empty());
        assert_eq!(p.recheck_at, Some(t(30)));
        // Past it: ask, and recheck a window later.
        let p = plan(
            "a",
            NodeState::Edge,
            &want,
            std::slice::from_ref(&trailing),
            t(31),
            WINDOW,
        );
        assert_eq!(
            p.actions,
            [Action::Resync {
                namespace: "ns".into(),
                name: "a.u1".into(),
                at: t(31)
            }]
        );
        assert_eq!(p.recheck_at, Some(t(62)));
        // The hub did not send since (offline node): the wait doubles.
        let asked = SyncEntry {
            resync_requested: Some(t(31)),
            ..trailing.clone()
        };
        assert_eq!(resync_due(&asked, &want[0].live, WINDOW), t(62));
        let asked = SyncEntry {
            resync_requested: Some(t(62)),
            ..trailing.clone()
        };
        assert_eq!(resync_due(&asked, &want[0].live, WINDOW), t(124));
        let asked = SyncEntry {
            resync_requested: Some(t(10_000)),
            ..trailing.clone()
        };
        assert_eq!(resync_due(&asked, &want[0].live, WINDOW), t(10_600));
        // The hub sent after the ask: the window runs from the send.
        let sent = SyncEntry {
            resync_requested: Some(t(62)),
            last_attempt: Some(t(70)),
            ..trailing.clone()
        };
        assert_eq!(resync_due(&sent, &want[0].live, WINDOW), t(100));
        // A fresh change of the object restarts the window.
        let changed = Live {
            changed: t(200),
            ..want[0].live.clone()
        };
        assert_eq!(resync_due(&trailing, &changed, WINDOW), t(230));
    }

    #[test]
    fn unordered_versions_are_reported_not_resynced() {
        let want = [desired(Kind::Pod, "p", "u1", "v2")];
        let have = [sync("a", "u1", Some("v1"))];
        let p = plan("a", NodeState::Edge, &want, &have, t(1000), WINDOW);
        assert!(p.actions.is_empty());
        assert_eq!(p.unordered, ["a.u1"]);
    }
}
