//! Compatibility: a snapshot's recorded node facts against this node, checked before anything
//! but the manifest is fetched.

use podsnap_store::Manifest;
use tracing::warn;

use super::{snapshot_id, Engine};
use crate::error::{DaemonError, Result};

/// The verdict of a compatibility check.
#[derive(Clone, Debug, Default)]
pub struct Compat {
    pub missing_features: Vec<String>,
    pub snapshot_cache_line: u32,
    pub node_cache_line: u32,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Compat {
    pub fn compatible(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Engine {
    /// Compares a snapshot's recorded node facts with this node.
    pub async fn compat_of(&self, m: &Manifest) -> Compat {
        let mut c = Compat::default();
        match (&m.source.cpu, self.host_cpu.as_ref()) {
            (Some(saved), Ok(host)) => {
                c.snapshot_cache_line = saved.cache_line_size;
                c.node_cache_line = host.cache_line_size;
                if let Err(inc) = podsnap_cpu::check(saved, host) {
                    c.missing_features = inc.missing.clone();
                    c.problems.push(inc.to_string());
                }
            }
            (Some(_), Err(e)) => c
                .problems
                .push(format!("cannot read this node's CPU feature set: {e}")),
            (None, _) => c.warnings.push(
                "the snapshot records no CPU feature set; compatibility cannot be checked".into(),
            ),
        }
        if let (Some(theirs), Ok(info)) = (&m.source.runsc_version, self.runtime.info().await) {
            if let Some(reason) = info.policy().can_restore_image_of(theirs).reason() {
                c.problems.push(reason.to_string());
            }
        }
        if m.source.rootfs_overlay.is_none()
            && !m.source.node_name.is_empty()
            && m.source.node_name != self.cfg.node_name
        {
            c.warnings.push(format!(
                "the container's filesystem writes stayed on node {} (no rootfs overlay); a restore here will not see them",
                m.source.node_name
            ));
        }
        c
    }

    pub async fn check_compatibility(&self, snapshot: &str) -> Result<(Manifest, Compat)> {
        let id = snapshot_id(snapshot)?;
        let m = self.store.manifest(&id).await?;
        let c = self.compat_of(&m).await;
        Ok((m, c))
    }

    /// Fails with the list of reasons when the snapshot cannot run here; nothing is fetched
    /// but the manifest.
    pub(super) async fn require_compatible(&self, m: &Manifest) -> Result<Compat> {
        let c = self.compat_of(m).await;
        for w in &c.warnings {
            warn!(snapshot = %m.id, "{w}");
        }
        if !c.compatible() {
            let reason = if c.missing_features.is_empty() {
                "other"
            } else {
                "cpu_features"
            };
            self.metrics.refusal(reason);
            return Err(DaemonError::Incompatible(format!(
                "snapshot {} cannot be restored on node {}: {}",
                m.id,
                self.cfg.node_name,
                c.problems.join("; ")
            )));
        }
        Ok(c)
    }
}
