//! Per-sandbox locks: one operation at a time per sandbox, many sandboxes at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A held sandbox lock.
pub(crate) type Guard = OwnedMutexGuard<()>;

#[derive(Default)]
pub(crate) struct Locks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    /// Waits for the lock of `key` (see [`Locks::key`]).
    pub(crate) async fn lock(&self, key: &str) -> Guard {
        let m = {
            let mut g = self.map.lock().expect("locks");
            g.retain(|_, v| Arc::strong_count(v) > 1);
            g.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// The key of container `id` under runsc root `root`.
    pub(crate) fn key(root: &Path, id: &str) -> String {
        format!("{}\0{id}", root.display())
    }

    /// Waits for the lock of container `id` under runsc root `root`.
    pub(crate) async fn lock_container(&self, root: &Path, id: &str) -> Guard {
        self.lock(&Self::key(root, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn locks_serialize_one_key_and_not_two() {
        let locks = Arc::new(Locks::default());
        let g1 = locks.lock("a").await;
        // Another key is free.
        let g2 = tokio::time::timeout(Duration::from_millis(100), locks.lock("b")).await;
        assert!(g2.is_ok());
        // The same key waits.
        let again = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(again.is_err());
        drop(g1);
        let again = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn one_container_id_under_two_roots_is_two_locks() {
        let locks = Locks::default();
        let _a = locks.lock_container(Path::new("/run/a"), "c1").await;
        let b = tokio::time::timeout(
            Duration::from_millis(100),
            locks.lock_container(Path::new("/run/b"), "c1"),
        )
        .await;
        assert!(b.is_ok());
    }
}
