//! Leader election on a `coordination.k8s.io/v1` Lease: one controller reconciles at a time
//! (every replica serves the webhook, which keeps no state). A replica takes the Lease when
//! it is free or its holder has not renewed it for `leaseDurationSeconds`, renews it every
//! third of that, and exits when it cannot renew in time (the Deployment restarts it as a
//! follower). Writes carry the resourceVersion read, so two replicas never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::Error;

pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn now_micro() -> String {
    let now = time::OffsetDateTime::now_utc();
    let micros = now.microsecond();
    let base = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // 2026-12-03T11:00:00Z -> 2026-12-03T11:00:00.123456Z (MicroTime's format)
    format!("{}.{micros:06}Z", base.trim_end_matches('Z'))
}

/// Whether a lease held by someone else has expired at `now` (pure).
pub fn expired(renew: Option<&str>, duration_s: i64, now: time::OffsetDateTime) -> bool {
    let Some(r) = renew else { return true };
    match time::OffsetDateTime::parse(r, &time::format_description::well_known::Rfc3339) {
        Ok(t) => now - t > time::Duration::seconds(duration_s),
        Err(_) => true,
    }
}

impl Election {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Election {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// One attempt: `Ok(true)` when this replica holds the lease afterwards.
    pub async fn try_acquire(&self) -> Result<bool, Error> {
        let secs = self.duration.as_secs().max(1) as i64;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let l: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": secs,
                         "acquireTime": now_micro(), "renewTime": now_micro(), "leaseTransitions": 0}
            }))
            .map_err(|e| Error::Invalid(e.to_string()))?;
            return match self.api.create(&PostParams::default(), &l).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let v = serde_json::to_value(&lease).unwrap_or(Value::Null);
        let holder = v["spec"]["holderIdentity"].as_str().unwrap_or("");
        let renew = v["spec"]["renewTime"].as_str();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() && !expired(renew, secs, time::OffsetDateTime::now_utc()) {
            return Ok(false);
        }
        let mut spec = json!({"holderIdentity": self.identity, "leaseDurationSeconds": secs, "renewTime": now_micro()});
        if !mine {
            spec["acquireTime"] = json!(now_micro());
            spec["leaseTransitions"] =
                json!(v["spec"]["leaseTransitions"].as_i64().unwrap_or(0) + 1);
        }
        let patch =
            json!({"metadata": {"resourceVersion": lease.metadata.resource_version}, "spec": spec});
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews until it fails for a whole lease duration; then returns (the caller exits).
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "lost the lease to another replica");
                    return;
                }
                Err(e) => warn!(error = %e, "renewing the lease"),
            }
            if last_ok.elapsed() > self.duration {
                warn!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_after_their_duration() {
        let now = time::OffsetDateTime::now_utc();
        let fmt = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        assert!(!expired(
            Some(&fmt(now - time::Duration::seconds(5))),
            15,
            now
        ));
        assert!(expired(
            Some(&fmt(now - time::Duration::seconds(20))),
            15,
            now
        ));
        assert!(expired(None, 15, now));
        assert!(expired(Some("garbage"), 15, now));
        assert!(now_micro().ends_with('Z') && now_micro().contains('.'));
        assert!(time::OffsetDateTime::parse(
            &now_micro(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
    }
}
