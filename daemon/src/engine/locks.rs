//! Locks by attachment key (network + container + interface), for the engine.

use crate::ipam::AllocKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Async locks by key, created on first use and dropped when nobody holds or waits for them (so
/// the table does not grow with every container ever seen).
#[derive(Default)]
pub(super) struct KeyLocks {
    table: std::sync::Mutex<HashMap<AllocKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    pub(super) async fn lock(&self, key: AllocKey) -> KeyGuard<'_> {
        let lock = {
            // Held only to look up or insert, never across an await.
            let mut table = self.table.lock().expect("key lock table poisoned");
            table.entry(key.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        KeyGuard {
            locks: self,
            key,
            guard: Some(guard),
        }
    }
}

/// Holds one key of a [`KeyLocks`]; removes the key's lock when it was the last one using it.
pub(super) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: AllocKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut table = self.locks.table.lock().expect("key lock table poisoned");
        // Only the table's own reference left: nobody holds or waits for this key.
        if table
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            table.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One attachment's requests wait for each other; other attachments do not; the table
    /// forgets a key once nobody holds or waits for it.
    #[tokio::test]
    async fn attachment_locks_serialise_one_attachment_only() {
        let locks = KeyLocks::default();
        let key = |c: &str| AllocKey {
            network: "n".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        };
        let a = locks.lock(key("a")).await;
        let again = tokio::time::timeout(Duration::from_millis(50), locks.lock(key("a"))).await;
        assert!(again.is_err(), "a second lock of the same key must wait");
        let b = tokio::time::timeout(Duration::from_millis(50), locks.lock(key("b"))).await;
        assert!(b.is_ok(), "another key must not wait");
        drop(b);
        assert_eq!(locks.table.lock().unwrap().len(), 1, "only a is held");
        drop(a);
        assert!(locks.table.lock().unwrap().is_empty());
        let _a = tokio::time::timeout(Duration::from_millis(50), locks.lock(key("a")))
            .await
            .expect("free again after it was released");
    }
}
