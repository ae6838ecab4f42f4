//! Kubernetes-shaped status conditions (`metav1.Condition`): set, find, test.
//!
//! Pure functions on a `Vec<Condition>`; the caller passes `now`, so tests pin time.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition's status: `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// Sets condition `type_`, adding it if missing. Returns whether anything changed, so a caller
/// can skip a status write that would change nothing.
///
/// `lastTransitionTime` moves to `now` only when the status changes (or the condition is new):
/// it tells when the condition last flipped, not when it was last written. Reason, message and
/// observedGeneration are always replaced.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: impl Into<ConditionStatus>,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = status.into().as_str();
    let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) else {
        conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation,
            last_transition_time: Time(now),
        });
        return true;
    };
    let unchanged = existing.status == status
        && existing.reason == reason
        && existing.message == message
        && existing.observed_generation == observed_generation;
    if unchanged {
        return false;
    }
    if existing.status != status {
        existing.status = status.to_owned();
        existing.last_transition_time = Time(now);
    }
    reason.clone_into(&mut existing.reason);
    message.clone_into(&mut existing.message);
    existing.observed_generation = observed_generation;
    true
}

/// The condition of type `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is present with status `True` (missing or `Unknown` is not true).
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn cond(type_: &str, status: &str, reason: &str, gen_: i64, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: Some(gen_),
            last_transition_time: Time(t(at)),
        }
    }

    /// One row: conditions before, the call (type, status, reason, generation), and the result.
    struct Case {
        name: &'static str,
        before: Vec<Condition>,
        set: (&'static str, ConditionStatus, &'static str, i64),
        changed: bool,
        after: Vec<Condition>,
    }

    #[test]
    fn set_condition_table() {
        use ConditionStatus::{False, True, Unknown};
        let cases = [
            Case {
                name: "added when missing, transition time = now",
                before: vec![],
                set: ("Ready", True, "Synced", 1),
                changed: true,
                after: vec![cond("Ready", "True", "Synced", 1, 100)],
            },
            Case {
                name: "same status: transition time kept, reason and generation replaced",
                before: vec![cond("Ready", "True", "Synced", 1, 5)],
                set: ("Ready", True, "StillSynced", 2),
                changed: true,
                after: vec![cond("Ready", "True", "StillSynced", 2, 5)],
            },
            Case {
                name: "status flips: transition time = now",
                before: vec![cond("Ready", "True", "Synced", 1, 5)],
                set: ("Ready", False, "Drifted", 1),
                changed: true,
                after: vec![cond("Ready", "False", "Drifted", 1, 100)],
            },
            Case {
                name: "True to Unknown is a transition",
                before: vec![cond("Online", "True", "Seen", 3, 5)],
                set: ("Online", Unknown, "Stale", 3),
                changed: true,
                after: vec![cond("Online", "Unknown", "Stale", 3, 100)],
            },
            Case {
                name: "identical: nothing changes",
                before: vec![cond("Ready", "True", "Synced", 1, 5)],
                set: ("Ready", True, "Synced", 1),
                changed: false,
                after: vec![cond("Ready", "True", "Synced", 1, 5)],
            },
            Case {
                name: "other types untouched, order kept, new appended",
                before: vec![
                    cond("Valid", "True", "Ok", 1, 5),
                    cond("Ready", "False", "Waiting", 1, 6),
                ],
                set: ("Synced", True, "Done", 1),
                changed: true,
                after: vec![
                    cond("Valid", "True", "Ok", 1, 5),
                    cond("Ready", "False", "Waiting", 1, 6),
                    cond("Synced", "True", "Done", 1, 100),
                ],
            },
        ];
        for case in cases {
            let (type_, status, reason, generation) = case.set;
            let message = format!("{reason} message");
            let mut conds = case.before;
            let changed = set_condition(
                &mut conds,
                type_,
                status,
                reason,
                &message,
                Some(generation),
                t(100),
            );
            assert_eq!(changed, case.changed, "{}", case.name);
            assert_eq!(conds, case.after, "{}", case.name);
        }
    }

    #[test]
    fn message_only_change_keeps_transition_time() {
        let mut conds = vec![cond("Ready", "True", "Synced", 1, 5)];
        assert!(set_condition(
            &mut conds,
            "Ready",
            true,
            "Synced",
            "new text",
            Some(1),
            t(9)
        ));
        assert_eq!(conds[0].message, "new text");
        assert_eq!(conds[0].last_transition_time, Time(t(5)));
    }

    #[test]
    fn find_and_is_true() {
        let conds = vec![
            cond("Valid", "True", "Ok", 1, 0),
            cond("Ready", "False", "Waiting", 1, 0),
            cond("Online", "Unknown", "Stale", 1, 0),
        ];
        for (type_, want_found, want_true) in [
            ("Valid", true, true),
            ("Ready", true, false),
            ("Online", true, false),
            ("Missing", false, false),
        ] {
            assert_eq!(
                find_condition(&conds, type_).is_some(),
                want_found,
                "{type_}"
            );
            assert_eq!(is_true(&conds, type_), want_true, "{type_}");
        }
        assert_eq!(find_condition(&conds, "Ready").unwrap().reason, "Waiting");
    }

    #[test]
    fn status_spellings() {
        assert_eq!(ConditionStatus::from(true).as_str(), "True");
        assert_eq!(ConditionStatus::from(false).as_str(), "False");
        assert_eq!(ConditionStatus::Unknown.as_str(), "Unknown");
    }
}
