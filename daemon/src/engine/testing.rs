//! An engine on the fake netlink and the in-memory store, and requests as the gRPC edge makes
//! them: for tests (the crate's own, and others' with the feature `fake`).

use super::{Command, Engine, Request};
use crate::ipam::MemStore;
use crate::netlink::fake::FakeNetlink;
use serde_json::{json, Value};
use std::sync::Arc;

/// An engine on [`FakeNetlink`] and [`MemStore`], in boot `boot`, that finds its links' names at
/// start in the fake.
pub fn engine() -> Engine<FakeNetlink, MemStore> {
    let nl = FakeNetlink::default();
    let links = nl.links.clone();
    Engine::new(nl, MemStore::default(), "boot".into()).with_link_names(Arc::new(move || {
        Ok(links.lock().unwrap().keys().cloned().collect())
    }))
}

/// `command` for `container`'s `eth0` with the network configuration `conf`.
pub fn req(command: Command, container: &str, conf: Value) -> Request {
    Request {
        command,
        container_id: container.into(),
        // A real network namespace that needs no privilege to open.
        netns: "/proc/self/ns/net".into(),
        ifname: "eth0".into(),
        args: format!("IgnoreUnknown=1;K8S_POD_NAME={container}"),
        config: conf.to_string().into_bytes(),
        deadline: None,
    }
}

/// The network `flatnet`: 10.87.1.0/24 with only 10.87.1.10 and 10.87.1.11 to hand out.
pub fn conf() -> Value {
    json!({"cniVersion": "1.0.0", "name": "flatnet", "type": "flatnet",
           "ipam": {"subnet": "10.87.1.0/24", "rangeStart": "10.87.1.10", "rangeEnd": "10.87.1.11"}})
}
