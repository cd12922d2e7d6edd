//! Allocation events (an address added or released) for `Inspect.Watch`: [`EventStore`] wraps the
//! real [`Store`] and announces every change that succeeded, so the engine and reconcile need no
//! hooks of their own and no change can be missed, whoever makes it (ADD, DEL, GC, the sweep).

use crate::ipam::{AllocKey, Allocation, NetworkRecord, Store, StoreError};
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// How many events a watcher may fall behind before it is told it missed some.
pub const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Released,
}

/// One change of the allocation record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub allocation: Allocation,
    /// Milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
}

/// A [`Store`] that broadcasts an [`Event`] after each successful `insert`, and after each
/// `remove` that removed something. Sending never blocks and never fails the write: with no
/// watcher the event is dropped.
///
/// Every `Store` method is delegated, including those with a default body: a method added to the
/// trait must be delegated here too, or the wrapper would answer with the default.
pub struct EventStore<S> {
    inner: S,
    events: broadcast::Sender<Event>,
}

impl<S: Store> EventStore<S> {
    pub fn new(inner: S) -> Self {
        EventStore {
            inner,
            events: broadcast::channel(BACKLOG).0,
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn announce(&self, kind: EventKind, allocation: Allocation) {
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        // Err only means nobody is watching.
        let _ = self.events.send(Event {
            kind,
            allocation,
            time_unix_ms,
        });
    }
}

impl<S: Store> Store for EventStore<S> {
    fn get(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
        self.inner.get(key)
    }

    fn is_taken(&self, network: &str, ip: Ipv4Addr) -> Result<bool, StoreError> {
        self.inner.is_taken(network, ip)
    }

    fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError> {
        self.inner.last_handed_out(network)
    }

    fn insert(&self, alloc: &Allocation) -> Result<(), StoreError> {
        self.inner.insert(alloc)?;
        if self.events.receiver_count() > 0 {
            self.announce(EventKind::Added, alloc.clone());
        }
        Ok(())
    }

    fn remove(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
        let removed = self.inner.remove(key)?;
        if let Some(alloc) = &removed {
            if self.events.receiver_count() > 0 {
                self.announce(EventKind::Released, alloc.clone());
            }
        }
        Ok(removed)
    }

    fn list(&self, network: Option<&str>) -> Result<Vec<Allocation>, StoreError> {
        self.inner.list(network)
    }

    fn summaries(&self) -> Result<Vec<crate::ipam::AllocSummary>, StoreError> {
        self.inner.summaries()
    }

    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.flush()
    }

    fn network(&self, name: &str) -> Result<Option<NetworkRecord>, StoreError> {
        self.inner.network(name)
    }

    fn networks(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        self.inner.networks()
    }

    fn put_network(&self, record: &NetworkRecord) -> Result<bool, StoreError> {
        self.inner.put_network(record)
    }

    fn probe(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.probe()
    }

    fn repair_index(&self, allocs: &[crate::ipam::AllocSummary]) -> Result<usize, StoreError> {
        self.inner.repair_index(allocs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::MemStore;

    fn alloc(container: &str, last: u8) -> Allocation {
        let mut a = crate::ipam::tests::alloc(container, Ipv4Addr::new(10, 87, 1, last));
        a.container_name = Some(format!("{container}-name"));
        a
    }

    #[test]
    fn announces_successful_changes_only() {
        let store = EventStore::new(MemStore::default());
        // Nobody watching: writes work and nothing is kept.
        store.insert(&alloc("early", 9)).unwrap();
        let mut rx = store.subscribe();

        store.insert(&alloc("a", 2)).unwrap();
        // The address is held: refused, so no event.
        assert!(store.insert(&alloc("b", 2)).is_err());
        assert!(store.remove(&alloc("a", 2).key()).unwrap().is_some());
        // Already gone: nothing removed, no event.
        assert!(store.remove(&alloc("a", 2).key()).unwrap().is_none());

        let first = rx.try_recv().unwrap();
        assert_eq!(first.kind, EventKind::Added);
        assert_eq!(first.allocation.container_id, "a");
        assert!(first.time_unix_ms > 0);
        let second = rx.try_recv().unwrap();
        assert_eq!(second.kind, EventKind::Released);
        assert_eq!(second.allocation.address, Ipv4Addr::new(10, 87, 1, 2));
        assert!(rx.try_recv().is_err(), "no further events");
        // Reads go through to the wrapped store.
        assert_eq!(store.list(None).unwrap().len(), 1);
        assert!(store.is_taken("n", Ipv4Addr::new(10, 87, 1, 9)).unwrap());
    }
}
