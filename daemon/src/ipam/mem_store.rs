//! An in-memory [`Store`].

use super::*;

/// An in-memory [`Store`] for tests of the logic above it.
#[derive(Default)]
pub struct MemStore {
    inner: std::sync::Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    allocs: std::collections::BTreeMap<AllocKey, Allocation>,
    last: std::collections::HashMap<String, Ipv4Addr>,
    last6: std::collections::HashMap<String, Ipv6Addr>,
    networks: std::collections::BTreeMap<String, NetworkRecord>,
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A panic while holding this lock already failed the test that used it.
        self.inner.lock().expect("MemStore lock poisoned")
    }
}

impl Store for MemStore {
    fn get(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
        Ok(self.lock().allocs.get(key).cloned())
    }

    fn is_taken(&self, network: &str, ip: IpAddr) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .allocs
            .values()
            .any(|a| a.network == network && a.addresses().any(|held| held == ip)))
    }

    fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError> {
        Ok(self.lock().last.get(network).copied())
    }

    fn last_handed_out6(&self, network: &str) -> Result<Option<Ipv6Addr>, StoreError> {
        Ok(self.lock().last6.get(network).copied())
    }

    fn insert(&self, alloc: &Allocation) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = alloc.key();
        for ip in alloc.addresses() {
            if let Some(other) = inner.allocs.values().find(|a| {
                a.network == alloc.network && a.addresses().any(|held| held == ip) && a.key() != key
            }) {
                return Err(StoreError::AddressHeld {
                    ip,
                    owner: other.container_id.clone(),
                });
            }
        }
        if let Some(ip) = alloc.address {
            inner.last.insert(alloc.network.clone(), ip);
        }
        if let Some((ip6, _)) = alloc.address6 {
            inner.last6.insert(alloc.network.clone(), ip6);
        }
        inner.allocs.insert(key, alloc.clone());
        Ok(())
    }

    fn remove(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
        Ok(self.lock().allocs.remove(key))
    }

    fn list(&self, network: Option<&str>) -> Result<Vec<Allocation>, StoreError> {
        Ok(self
            .lock()
            .allocs
            .values()
            .filter(|a| network.is_none_or(|n| a.network == n))
            .cloned()
            .collect())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn network(&self, name: &str) -> Result<Option<NetworkRecord>, StoreError> {
        Ok(self.lock().networks.get(name).cloned())
    }

    fn networks(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        Ok(self.lock().networks.values().cloned().collect())
    }

    fn put_network(&self, record: &NetworkRecord) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.networks.get(&record.name) == Some(record) {
            return Ok(false);
        }
        inner.networks.insert(record.name.clone(), record.clone());
        Ok(true)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
