//! Kubernetes events: one recorder per controller.

use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};

/// Who reports: `reportingController` is the operator's name (e.g. `edgefleet-rollout`),
/// `reportingInstance` this replica's identity (its pod name), so `kubectl describe` tells which
/// replica acted.
pub fn reporter(operator: &str, instance: &str) -> Reporter {
    Reporter {
        controller: operator.to_owned(),
        instance: Some(instance.to_owned()),
    }
}

/// The event recorder for one controller. Build it once and share clones: clones share the
/// recorder's cache, which folds repeats of the same event into a series instead of new objects.
///
/// Publish `Warning` events for what a user must act on, `Normal` ones for milestones, never
/// for routine reconciles. RBAC: `create` and `patch` on `events.k8s.io` `events`.
pub fn recorder(client: Client, operator: &str, instance: &str) -> Recorder {
    Recorder::new(client, reporter(operator, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporter_names_operator_and_instance() {
        let r = reporter("edgefleet-rollout", "rollout-7c9f-abcde");
        assert_eq!(r.controller, "edgefleet-rollout");
        assert_eq!(r.instance.as_deref(), Some("rollout-7c9f-abcde"));
    }
}
