//! `sync status NODE`: the node's ObjectSyncs and ClusterObjectSyncs (found by the
//! `edgefleet.io/node` label), each compared with the live object's resourceVersion.
//!
//! Live versions are read as metadata only, grouped by kind and namespace: a few objects are
//! fetched one by one, more are listed once (a node's Pods through `spec.nodeName`).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use edgefleet_api::objectsync::{
    ClusterObjectSync, NODE_LABEL, ObjectSync, ObjectSyncStatus, compare_resource_versions,
};
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::{ApiResource, Scope};
use serde::Serialize;

use crate::cli::{Output, SyncArgs};
use crate::error::{Error, Result};
use crate::kube_ctx::Ctx;
use crate::table::{age, render};
use crate::{exit, out, serialize};

/// Up to this many objects of one kind in one namespace are fetched one by one; more are listed.
const GET_ONE_BY_ONE: usize = 3;

/// Where one object stands on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum SyncState {
    /// The node acknowledged the live resourceVersion.
    Delivered,
    /// The node has an older version or none, within the resend window.
    Pending,
    /// Trailing for longer than the resend window: the node is offline or delivery is stuck.
    Stale,
    /// The object (or the sync) is being deleted: the edge delete is not acknowledged yet.
    Deleting,
    /// The versions cannot be ordered, or the live object could not be read.
    Unknown,
}

/// The live object as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    Present { rv: String, deleting: bool },
    Gone,
    Unreadable,
}

/// Classifies one sync (pure). `since` is when the current version had its last chance: the
/// latest of the sync's creation and the hub's last send.
pub fn classify(
    acked: Option<&str>,
    live: &Live,
    sync_deleting: bool,
    since: Option<Timestamp>,
    now: Timestamp,
    stale_after: SignedDuration,
) -> SyncState {
    let rv = match live {
        _ if sync_deleting => return SyncState::Deleting,
        Live::Gone | Live::Present { deleting: true, .. } => return SyncState::Deleting,
        Live::Unreadable => return SyncState::Unknown,
        Live::Present { rv, .. } => rv,
    };
    let trailing = match acked.filter(|a| !a.is_empty() && *a != "0") {
        None => true,
        Some(a) => match compare_resource_versions(a, rv) {
            Some(Ordering::Less) => true,
            Some(_) => false,
            None if a == rv => false,
            None => return SyncState::Unknown,
        },
    };
    if !trailing {
        SyncState::Delivered
    } else if since.is_some_and(|s| s + stale_after <= now) {
        SyncState::Stale
    } else {
        SyncState::Pending
    }
}

/// One row of the view.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub sync: String,
    pub acked_resource_version: Option<String>,
    pub live_resource_version: Option<String>,
    pub state: SyncState,
    pub attempts: i64,
    pub last_attempt_time: Option<Timestamp>,
}

/// Counts per state.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub node: String,
    pub objects: usize,
    pub delivered: usize,
    pub pending: usize,
    pub stale: usize,
    pub deleting: usize,
    pub unknown: usize,
}

pub fn summarize(node: &str, rows: &[Row]) -> Summary {
    let mut s = Summary {
        node: node.into(),
        objects: rows.len(),
        ..Default::default()
    };
    for r in rows {
        *match r.state {
            SyncState::Delivered => &mut s.delivered,
            SyncState::Pending => &mut s.pending,
            SyncState::Stale => &mut s.stale,
            SyncState::Deleting => &mut s.deleting,
            SyncState::Unknown => &mut s.unknown,
        } += 1;
    }
    s
}

/// The table and the summary line (pure).
pub fn render_view(summary: &Summary, rows: &[Row], warnings: &[String], now: Timestamp) -> String {
    let mut o = String::new();
    if !rows.is_empty() {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    if r.namespace.is_empty() {
                        "-".into()
                    } else {
                        r.namespace.clone()
                    },
                    r.kind.clone(),
                    r.name.clone(),
                    format!("{:?}", r.state).to_lowercase(),
                    r.acked_resource_version
                        .clone()
                        .unwrap_or_else(|| "-".into()),
                    r.live_resource_version
                        .clone()
                        .unwrap_or_else(|| "-".into()),
                    r.attempts.to_string(),
                    age(r.last_attempt_time, now),
                ]
            })
            .collect();
        o.push_str(&render(
            &[
                "NAMESPACE",
                "KIND",
                "NAME",
                "STATE",
                "ACKED-RV",
                "LIVE-RV",
                "ATTEMPTS",
                "LAST-ATTEMPT",
            ],
            &cells,
        ));
        o.push('\n');
    }
    for w in warnings {
        o.push_str(&format!("warning: {w}\n"));
    }
    let mut line = format!(
        "node {}: {} objects, {} delivered, {} pending, {} stale, {} deleting",
        summary.node,
        summary.objects,
        summary.delivered,
        summary.pending,
        summary.stale,
        summary.deleting
    );
    if summary.unknown > 0 {
        line.push_str(&format!(", {} unknown", summary.unknown));
    }
    if summary.objects == 0 {
        line.push_str(&format!(
            " (no ObjectSync labelled {NODE_LABEL}={})",
            summary.node
        ));
    }
    o.push_str(&line);
    o.push('\n');
    o
}

/// One sync as read, before its live object is known.
struct Entry {
    namespace: Option<String>,
    api_version: String,
    kind: String,
    name: String,
    sync: String,
    deleting: bool,
    created: Option<Timestamp>,
    status: ObjectSyncStatus,
}

/// apiVersion for a sync that does not say (KubeEdge's older syncs).
fn default_api_version(kind: &str) -> &'static str {
    match kind {
        "Device" | "DeviceModel" => "devices.kubeedge.io/v1beta1",
        _ => "v1",
    }
}

pub async fn run(ctx: &Ctx, args: SyncArgs) -> Result<u8> {
    let node = args.node.as_str();
    let lp = ListParams::default().labels(&format!("{NODE_LABEL}={node}"));
    let scope = ctx.scope();
    let syncs: Api<ObjectSync> = match scope {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let list_err = |resource: &'static str| {
        move |e| {
            ctx.request("list", resource, resource, None, scope)
                .error(e)
        }
    };
    let mut entries = Vec::new();
    for s in syncs
        .list(&lp)
        .await
        .map_err(list_err("objectsyncs.reliablesyncs.kubeedge.io"))?
    {
        entries.push(Entry {
            namespace: s.metadata.namespace.clone(),
            api_version: s
                .spec
                .object_api_version
                .clone()
                .unwrap_or_else(|| default_api_version(&s.spec.object_kind).into()),
            kind: s.spec.object_kind.clone(),
            name: s.spec.object_name.clone(),
            sync: s.metadata.name.clone().unwrap_or_default(),
            deleting: s.metadata.deletion_timestamp.is_some(),
            created: s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            status: s.status.unwrap_or_default(),
        });
    }
    // Cluster-scoped syncs belong to no namespace: shown only without -n.
    if scope.is_none() {
        let cluster: Api<ClusterObjectSync> = Api::all(ctx.client.clone());
        for s in cluster
            .list(&lp)
            .await
            .map_err(list_err("clusterobjectsyncs.reliablesyncs.kubeedge.io"))?
        {
            entries.push(Entry {
                namespace: None,
                api_version: s
                    .spec
                    .object_api_version
                    .clone()
                    .unwrap_or_else(|| default_api_version(&s.spec.object_kind).into()),
                kind: s.spec.object_kind.clone(),
                name: s.spec.object_name.clone(),
                sync: s.metadata.name.clone().unwrap_or_default(),
                deleting: s.metadata.deletion_timestamp.is_some(),
                created: s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                status: s.status.unwrap_or_default(),
            });
        }
    }

    let (live, warnings) = live_versions(ctx, node, &entries).await;
    let now = Timestamp::now();
    let stale_after = SignedDuration::from_secs(args.stale_after_seconds.max(1));
    let mut rows: Vec<Row> = entries
        .iter()
        .map(|e| {
            let key = (
                e.api_version.clone(),
                e.kind.clone(),
                e.namespace.clone(),
                e.name.clone(),
            );
            let l = live.get(&key).cloned().unwrap_or(Live::Unreadable);
            let last_attempt = e.status.last_attempt_time.as_ref().map(|t| t.0);
            let since = [e.created, last_attempt].into_iter().flatten().max();
            let state = classify(
                e.status.object_resource_version.as_deref(),
                &l,
                e.deleting,
                since,
                now,
                stale_after,
            );
            Row {
                namespace: e.namespace.clone().unwrap_or_default(),
                kind: e.kind.clone(),
                name: e.name.clone(),
                sync: e.sync.clone(),
                acked_resource_version: e.status.object_resource_version.clone(),
                live_resource_version: match l {
                    Live::Present { rv, .. } => Some(rv),
                    _ => None,
                },
                state,
                attempts: e.status.attempts.unwrap_or(0),
                last_attempt_time: last_attempt,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    let summary = summarize(node, &rows);
    if args.pending {
        rows.retain(|r| r.state != SyncState::Delivered);
    }
    match args.output {
        Output::Table => out(&render_view(&summary, &rows, &warnings, now))?,
        format => {
            #[derive(Serialize)]
            struct Doc<'a> {
                summary: &'a Summary,
                objects: &'a [Row],
                warnings: &'a [String],
            }
            out(&serialize(
                &Doc {
                    summary: &summary,
                    objects: &rows,
                    warnings: &warnings,
                },
                format,
            )?)?;
        }
    }
    Ok(exit::OK)
}

type Key = (String, String, Option<String>, String);

/// The live resourceVersion of every entry's object, read as metadata, grouped by kind and
/// namespace. A kind that cannot be resolved or read leaves its objects `Unreadable` and a
/// warning; it does not fail the whole view.
async fn live_versions(
    ctx: &Ctx,
    node: &str,
    entries: &[Entry],
) -> (BTreeMap<Key, Live>, Vec<String>) {
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<&str>> = BTreeMap::new();
    for e in entries {
        groups
            .entry((e.api_version.clone(), e.kind.clone(), e.namespace.clone()))
            .or_default()
            .push(&e.name);
    }
    let mut resolved: BTreeMap<(String, String), Option<(ApiResource, Scope)>> = BTreeMap::new();
    let mut live = BTreeMap::new();
    let mut warnings = Vec::new();
    for ((api_version, kind, namespace), names) in groups {
        let type_key = (api_version.clone(), kind.clone());
        if !resolved.contains_key(&type_key) {
            let (group, version) = match api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), api_version.clone()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, &kind);
            let found = match kube::discovery::pinned_kind(&ctx.client, &gvk).await {
                Ok((ar, caps)) => Some((ar, caps.scope)),
                Err(e) => {
                    warnings.push(format!("cannot resolve {kind} ({api_version}): {e}"));
                    None
                }
            };
            resolved.insert(type_key.clone(), found);
        }
        let Some(Some((ar, scope))) = resolved.get(&type_key) else {
            continue;
        };
        let api: Api<DynamicObject> = match (scope, namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(ctx.client.clone(), ns, ar),
            _ => Api::all_with(ctx.client.clone(), ar),
        };
        let key = |name: &str| {
            (
                api_version.clone(),
                kind.clone(),
                namespace.clone(),
                name.to_string(),
            )
        };
        let read_err = |verb: &str, e: kube::Error| {
            let what = if ar.group.is_empty() {
                ar.plural.clone()
            } else {
                format!("{}.{}", ar.plural, ar.group)
            };
            let err: Error = ctx
                .request(verb, &what, &ar.kind, None, namespace.as_deref())
                .error(e);
            format!("live {kind} versions unknown: {err}")
        };
        if names.len() <= GET_ONE_BY_ONE {
            for name in names {
                match api.get_metadata_opt(name).await {
                    Ok(Some(m)) => {
                        live.insert(
                            key(name),
                            Live::Present {
                                rv: m.metadata.resource_version.unwrap_or_default(),
                                deleting: m.metadata.deletion_timestamp.is_some(),
                            },
                        );
                    }
                    Ok(None) => {
                        live.insert(key(name), Live::Gone);
                    }
                    Err(e) => warnings.push(read_err("get", e)),
                }
            }
        } else {
            let lp = if ar.kind == "Pod" && ar.group.is_empty() {
                ListParams::default().fields(&format!("spec.nodeName={node}"))
            } else {
                ListParams::default()
            };
            match api.list_metadata(&lp).await {
                Ok(list) => {
                    let found: BTreeMap<String, Live> = list
                        .items
                        .into_iter()
                        .filter_map(|m| {
                            let live = Live::Present {
                                rv: m.metadata.resource_version.clone().unwrap_or_default(),
                                deleting: m.metadata.deletion_timestamp.is_some(),
                            };
                            Some((m.metadata.name?, live))
                        })
                        .collect();
                    for name in names {
                        live.insert(key(name), found.get(name).cloned().unwrap_or(Live::Gone));
                    }
                }
                Err(e) => warnings.push(read_err("list", e)),
            }
        }
    }
    (live, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }
    fn present(rv: &str) -> Live {
        Live::Present {
            rv: rv.into(),
            deleting: false,
        }
    }

    #[test]
    fn classification() {
        let w = SignedDuration::from_secs(30);
        let c = |acked: Option<&str>, live: &Live, del: bool, since: i64| {
            classify(acked, live, del, Some(t(since)), t(100), w)
        };
        assert_eq!(
            c(Some("12"), &present("12"), false, 0),
            SyncState::Delivered
        );
        // The cache may lag the ACK: a newer acked version is delivered too.
        assert_eq!(
            c(Some("13"), &present("12"), false, 0),
            SyncState::Delivered
        );
        assert_eq!(c(Some("11"), &present("12"), false, 90), SyncState::Pending);
        assert_eq!(c(Some("11"), &present("12"), false, 70), SyncState::Stale);
        assert_eq!(c(None, &present("12"), false, 90), SyncState::Pending);
        assert_eq!(c(Some("0"), &present("12"), false, 0), SyncState::Stale);
        assert_eq!(c(Some("12"), &present("12"), true, 0), SyncState::Deleting);
        assert_eq!(c(Some("12"), &Live::Gone, false, 0), SyncState::Deleting);
        assert_eq!(
            c(
                Some("12"),
                &Live::Present {
                    rv: "12".into(),
                    deleting: true
                },
                false,
                0
            ),
            SyncState::Deleting
        );
        assert_eq!(
            c(Some("12"), &Live::Unreadable, false, 0),
            SyncState::Unknown
        );
        assert_eq!(c(Some("abc"), &present("12"), false, 0), SyncState::Unknown);
        assert_eq!(
            c(Some("abc"), &present("abc"), false, 0),
            SyncState::Delivered
        );
        assert_eq!(
            classify(None, &present("1"), false, None, t(100), w),
            SyncState::Pending
        );
    }

    fn row(kind: &str, name: &str, state: SyncState) -> Row {
        Row {
            namespace: "tolls".into(),
            kind: kind.into(),
            name: name.into(),
            sync: format!("edge-1.{name}"),
            acked_resource_version: Some("5".into()),
            live_resource_version: Some("7".into()),
            state,
            attempts: 2,
            last_attempt_time: Some(t(40)),
        }
    }

    #[test]
    fn view_and_summary() {
        let rows = vec![
            row("ConfigMap", "cfg", SyncState::Delivered),
            row("Pod", "agent", SyncState::Pending),
            row("Secret", "pull", SyncState::Stale),
        ];
        let s = summarize("edge-1", &rows);
        assert_eq!(
            (s.objects, s.delivered, s.pending, s.stale, s.deleting),
            (3, 1, 1, 1, 0)
        );
        let text = render_view(&s, &rows, &[], t(100));
        assert!(text.starts_with("NAMESPACE   KIND        NAME    STATE       ACKED-RV   LIVE-RV   ATTEMPTS   LAST-ATTEMPT\n"), "{text}");
        assert!(
            text.contains(
                "tolls       Pod         agent   pending     5          7         2          1m\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("node edge-1: 3 objects, 1 delivered, 1 pending, 1 stale, 0 deleting\n"),
            "{text}"
        );
        let none = render_view(&summarize("edge-9", &[]), &[], &["x".into()], t(0));
        assert_eq!(
            none,
            "warning: x\nnode edge-9: 0 objects, 0 delivered, 0 pending, 0 stale, 0 deleting (no ObjectSync labelled edgefleet.io/node=edge-9)\n"
        );
    }
}
