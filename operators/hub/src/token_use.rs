//! Which nodes a join token bootstrapped, noted on its Secret (`edgefleet.io/used-by`, the last
//! few) — best effort, for a person asking "who used this token?". One merge patch per token at
//! a time however many nodes enrol at once: while a patch is in flight the nodes that enrol
//! after it wait in `pending`, and the enrolment that finds no patch in flight starts a writer
//! task that writes them all (never in the enrolment's answer path: under a steady stream of
//! enrolments the writer may loop for a while). A fleet enrolling on one token no longer pays
//! one write per node on one etcd key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgefleet_channel::bootstrap::TOKEN_USED_BY_ANNOTATION;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};

use crate::lock;

/// Nodes kept in the annotation.
pub const KEEP: usize = 10;

#[derive(Debug, Default)]
pub struct TokenUse {
    tokens: Arc<Mutex<HashMap<String, Noted>>>,
}

#[derive(Debug, Default)]
struct Noted {
    /// What the annotation says (as last read or written).
    recent: Vec<String>,
    /// Enrolled since, not yet written.
    pending: Vec<String>,
    /// A patch for this token is in flight; its writer also writes `pending`.
    writing: bool,
}

/// The annotation's nodes.
pub fn used_by(secret: &Secret) -> Vec<String> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TOKEN_USED_BY_ANNOTATION))
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `recent` followed by `pending`, each node once, the last [`KEEP`].
pub fn merged(recent: &[String], pending: &[String]) -> Vec<String> {
    let mut all: Vec<String> = Vec::with_capacity(recent.len() + pending.len());
    for n in recent.iter().chain(pending) {
        all.retain(|x| x != n);
        all.push(n.clone());
    }
    let skip = all.len().saturating_sub(KEEP);
    all.split_off(skip)
}

impl TokenUse {
    /// Notes that `node` bootstrapped with the token of `secret`.
    pub fn note(&self, secrets: &Api<Secret>, secret: &Secret, node: &str) {
        let Some(name) = secret.metadata.name.clone() else {
            return;
        };
        {
            let mut tokens = lock(&self.tokens);
            let noted = tokens.entry(name.clone()).or_insert_with(|| Noted {
                recent: used_by(secret),
                ..Noted::default()
            });
            if noted.recent.iter().chain(&noted.pending).any(|n| n == node) {
                return;
            }
            noted.pending.push(node.to_string());
            if noted.writing {
                return;
            }
            noted.writing = true;
        }
        tokio::spawn(write(self.tokens.clone(), secrets.clone(), name));
    }
}

/// Writes the pending nodes of token Secret `name` until none are left.
async fn write(tokens: Arc<Mutex<HashMap<String, Noted>>>, secrets: Api<Secret>, name: String) {
    loop {
        let value = {
            let mut tokens = lock(&tokens);
            let Some(noted) = tokens.get_mut(&name) else {
                return;
            };
            if noted.pending.is_empty() {
                noted.writing = false;
                return;
            }
            noted.recent = merged(&noted.recent, &noted.pending);
            noted.pending.clear();
            noted.recent.join(",")
        };
        let patch =
            serde_json::json!({"metadata": {"annotations": {TOKEN_USED_BY_ANNOTATION: value}}});
        if let Err(e) = secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(error = %e, token = %name, "noting the token's use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn merged_keeps_each_node_once_and_the_newest_few() {
        let cases: Vec<(Vec<String>, Vec<String>, Vec<String>)> = vec![
            (v(&[]), v(&["a"]), v(&["a"])),
            (v(&["a", "b"]), v(&["c"]), v(&["a", "b", "c"])),
            // A node enrolling again moves to the end, not twice.
            (v(&["a", "b"]), v(&["a"]), v(&["b", "a"])),
            (
                (0..KEEP).map(|i| format!("n{i}")).collect(),
                v(&["x", "y"]),
                (2..KEEP)
                    .map(|i| format!("n{i}"))
                    .chain(["x".to_string(), "y".to_string()])
                    .collect(),
            ),
        ];
        for (recent, pending, want) in cases {
            assert_eq!(merged(&recent, &pending), want, "{recent:?} + {pending:?}");
        }
    }
}
