//! Deleting host veths after DEL has answered. The kernel needs about 19 ms to delete a veth (mostly
//! waiting for RCU grace periods), which would otherwise be most of every DEL and, under the network
//! lock, would cap how many containers can come and go per second.
//!
//! The rule that makes this safe: DEL removes the allocation but holds its address back
//! ([`HeldBack`]), and the deleter frees it only once its veth is gone, so an address is never
//! handed out while its old interface exists. An ADD that needs the same veth name (a container
//! restarted right after its DEL) waits for that veth to be gone. Veths queued while a batch runs go
//! into the next batch, which the kernel unregisters together for about the cost of one.
//!
//! A crash with deletions queued leaves veths that no allocation owns; the start-up reconcile removes
//! them before anything is served.

use crate::ipam::HeldBack;
use crate::netlink::Netlink;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub(crate) struct Deleter<N> {
    nl: Arc<N>,
    held: Arc<HeldBack>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Veths waiting for the next batch.
    queue: Vec<String>,
    /// Whether a task is working through the queue.
    running: bool,
    /// Every veth queued or in the batch being deleted; the channel turns `true` once it is gone.
    pending: HashMap<String, watch::Sender<bool>>,
}

impl<N: Netlink> Deleter<N> {
    pub(crate) fn new(nl: Arc<N>, held: Arc<HeldBack>) -> Self {
        Deleter {
            nl,
            held,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Held only for bookkeeping, never across an await.
        self.state.lock().expect("deleter state poisoned")
    }

    /// Queues `veth` for deletion. Must be called inside the tokio runtime.
    pub(crate) fn delete_later(self: &Arc<Self>, veth: String) {
        let mut st = self.state();
        if st.pending.contains_key(&veth) {
            return;
        }
        st.pending.insert(veth.clone(), watch::channel(false).0);
        st.queue.push(veth);
        if !st.running {
            st.running = true;
            tokio::spawn(self.clone().run());
        }
    }

    /// Waits (at most `budget`) until `veth` is no longer queued or being deleted; `false` on timeout.
    pub(crate) async fn wait_gone(&self, veth: &str, budget: Duration) -> bool {
        let rx = self.state().pending.get(veth).map(|tx| tx.subscribe());
        let Some(mut rx) = rx else { return true };
        let gone = tokio::time::timeout(budget, rx.wait_for(|gone| *gone)).await;
        gone.is_ok()
    }

    /// Number of veths queued or being deleted.
    pub(crate) fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Waits (at most `budget`) until nothing is queued, so a daemon that stops leaves no veth behind.
    pub(crate) async fn drain(&self, budget: Duration) {
        let until = tokio::time::Instant::now() + budget;
        while self.pending() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let batch = {
                let mut st = self.state();
                if st.queue.is_empty() {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.queue)
            };
            let failed = self.nl.delete_links(&batch).await;
            for (veth, e) in &failed {
                // Its address stays held back; the sweep removes the link (no allocation owns it)
                // and frees the address then.
                tracing::warn!(host_veth = %veth, error = %e, "could not delete a veth after DEL; the sweep will retry");
            }
            for veth in &batch {
                if !failed.iter().any(|(v, _)| v == veth) {
                    self.held.veth_gone(veth);
                }
            }
            let mut st = self.state();
            for veth in &batch {
                if let Some(tx) = st.pending.remove(veth) {
                    let _ = tx.send(true);
                }
            }
        }
    }
}
