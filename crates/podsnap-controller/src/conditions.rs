//! Status conditions, set in one place.
//!
//! [`set`] puts one condition into a status's list by type and leaves the others alone;
//! `lastTransitionTime` moves only when the condition's status changes and
//! `observedGeneration` is the generation the reconciler acted on. It says whether anything
//! changed, so a reconciler writes the status only then. The write itself
//! ([`crate::api::Cluster`]'s status patches) sends the whole list with the
//! `resourceVersion` it was computed from: a concurrent change makes it a conflict, which is
//! retried on the object as it is now, never a lost condition.

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::Condition;
use crate::model::now_rfc3339;

/// A condition of `type_` with a status, a reason and a message (times are [`set`]'s).
pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now_rfc3339(),
        observed_generation: None,
    }
}

/// Sets `c` in `conditions` by type for the object's `generation`; whether anything changed.
pub fn set(conditions: &mut Vec<Condition>, mut c: Condition, generation: Option<i64>) -> bool {
    c.observed_generation = generation;
    match conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(old) => {
            let same = old.status == c.status
                && old.reason == c.reason
                && old.message == c.message
                && old.observed_generation == c.observed_generation;
            if same {
                return false;
            }
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
            }
            *old = c;
        }
        None => conditions.push(c),
    }
    true
}

/// The condition of `type_`, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A pod condition by the same rule as [`set`]: `None` when the pod already says this (no
/// write needed), otherwise the condition to write, with the transition time kept when only
/// the reason or message changed. Pod conditions are merged by type on the server (strategic
/// merge), so writing this one keeps the kubelet's.
pub fn pod_condition(
    existing: &[PodCondition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Option<PodCondition> {
    let status = if status { "True" } else { "False" };
    let old = existing.iter().find(|c| c.type_ == type_);
    if let Some(o) = old {
        if o.status == status
            && o.reason.as_deref() == Some(reason)
            && o.message.as_deref() == Some(message)
        {
            return None;
        }
    }
    let time = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => Some(Time(k8s_openapi::jiff::Timestamp::now())),
    };
    Some(PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: time,
        last_probe_time: None,
        observed_generation: generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_a_condition_keeps_the_others_and_its_transition_time_while_status_holds() {
        let mut cs = vec![new("Other", true, "Fine", "kept")];
        assert!(set(&mut cs, new("Ready", false, "Uploading", "a"), Some(1)));
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].message, "kept");
        cs[1].last_transition_time = "2026-01-01T00:00:00Z".into();
        // Same status, new message: written, time kept.
        assert!(set(&mut cs, new("Ready", false, "Uploading", "b"), Some(1)));
        assert_eq!(cs[1].message, "b");
        assert_eq!(cs[1].last_transition_time, "2026-01-01T00:00:00Z");
        // Nothing new: no write.
        assert!(!set(
            &mut cs,
            new("Ready", false, "Uploading", "b"),
            Some(1)
        ));
        // A new generation is news.
        assert!(set(&mut cs, new("Ready", false, "Uploading", "b"), Some(2)));
        assert_eq!(cs[1].observed_generation, Some(2));
        // A status change moves the time.
        assert!(set(&mut cs, new("Ready", true, "Stored", "b"), Some(2)));
        assert_ne!(cs[1].last_transition_time, "2026-01-01T00:00:00Z");
        assert_eq!(get(&cs, "Other").unwrap().message, "kept");
    }

    #[test]
    fn a_pod_condition_is_written_only_when_it_says_something_new() {
        let first = pod_condition(&[], "PodRestored", false, "Restoring", "m", Some(1)).unwrap();
        let t = first.last_transition_time.clone();
        assert!(t.is_some());
        assert!(pod_condition(
            std::slice::from_ref(&first),
            "PodRestored",
            false,
            "Restoring",
            "m",
            Some(1)
        )
        .is_none());
        let other = pod_condition(
            std::slice::from_ref(&first),
            "PodRestored",
            false,
            "RestoreFailed",
            "why",
            Some(1),
        )
        .unwrap();
        assert_eq!(other.last_transition_time, t, "same status keeps the time");
        assert_eq!(other.observed_generation, Some(1));
    }
}
