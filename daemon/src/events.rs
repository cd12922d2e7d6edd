//! Allocation events (an address added or released) for `Inspect.Watch`. The engine announces a
//! change only once it is committed: an ADD when it answers success, a release when the allocation
//! is gone from the daemon's state (DEL, GC, the sweep, reconcile). A write that a failed ADD undoes,
//! or a record rewritten within one ADD, is never announced: what a watcher sees is what
//! `ListAllocations` shows before and after, each change once.

use crate::ipam::Allocation;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// How many events a watcher may fall behind before it is told it missed some.
pub const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Released,
}

/// One committed change of the allocations.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub allocation: Allocation,
    /// Milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
}

/// Where the engine announces committed changes. Sending never blocks and never fails a request:
/// with nobody watching, an event is dropped.
pub struct Events {
    sender: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Events {
    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    pub fn announce(&self, kind: EventKind, allocation: &Allocation) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        // Err only means the last watcher left meanwhile.
        let _ = self.sender.send(Event {
            kind,
            allocation: allocation.clone(),
            time_unix_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn watchers_get_what_is_announced_after_they_subscribe() {
        let events = Events::default();
        let a = crate::ipam::tests::alloc("a", Ipv4Addr::new(10, 87, 1, 2));
        // Nobody watching: dropped.
        events.announce(EventKind::Added, &a);
        let mut rx = events.subscribe();
        events.announce(EventKind::Released, &a);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.kind, EventKind::Released);
        assert_eq!(got.allocation, a);
        assert!(got.time_unix_ms > 0);
        assert!(rx.try_recv().is_err(), "no further events");
    }
}
