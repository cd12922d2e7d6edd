//! A [`Netlink`] that records what it is asked and keeps links in memory, for driving the engine
//! without root: the daemon's unit tests use it, and other crates' tests with the feature `fake`.

use super::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Records what was asked and keeps links in memory; `fail_on` makes one operation fail.
#[derive(Default)]
pub struct FakeNetlink {
    pub ops: Mutex<Vec<String>>,
    /// Shared, so an engine's start-up reconcile can read the names (see `engine::testing`).
    pub links: Arc<Mutex<HashMap<String, LinkState>>>,
    pub fail_on: Mutex<HashSet<&'static str>>,
    /// Like `fail_on`, for the next call of the operation only.
    pub fail_once: Mutex<HashSet<&'static str>>,
}

impl FakeNetlink {
    fn record(&self, op: &'static str, detail: String) -> Result<(), NetlinkError> {
        self.ops.lock().unwrap().push(format!("{op} {detail}"));
        if self.fail_on.lock().unwrap().contains(op) || self.fail_once.lock().unwrap().remove(op) {
            return Err(NetlinkError::Gone(format!("injected failure in {op}")));
        }
        Ok(())
    }
    pub fn ops(&self) -> Vec<String> {
        self.ops.lock().unwrap().clone()
    }
    pub fn has_link(&self, name: &str) -> bool {
        self.links.lock().unwrap().contains_key(name)
    }
    pub fn remove_link(&self, name: &str) {
        self.links.lock().unwrap().remove(name);
    }
    pub fn master_of(&self, name: &str) -> Option<u32> {
        self.links.lock().unwrap().get(name).and_then(|l| l.master)
    }
    pub fn add_link(&self, name: &str, master: Option<u32>) -> LinkState {
        let mut links = self.links.lock().unwrap();
        let index = links.values().map(|l| l.index).max().unwrap_or(9) + 1;
        let state = LinkState {
            index,
            mac: vec![2, 0, 0, 0, 0, links.len() as u8],
            master,
            up: true,
            kind: None,
            peer: None,
        };
        links.insert(name.to_string(), state.clone());
        state
    }
}

impl Netlink for FakeNetlink {
    /// The namespace's path.
    type Container = String;
    async fn links(&self) -> Result<Vec<(String, LinkState)>, NetlinkError> {
        self.record("links", String::new())?;
        Ok(self
            .links
            .lock()
            .unwrap()
            .iter()
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect())
    }
    async fn enslave(&self, name: &str, bridge: u32, _: bool) -> Result<(), NetlinkError> {
        self.record("enslave", format!("{name} {bridge}"))?;
        if let Some(l) = self.links.lock().unwrap().get_mut(name) {
            l.master = Some(bridge);
        }
        Ok(())
    }
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<LinkState, NetlinkError> {
        self.record("ensure_bridge", spec.name.clone())?;
        if let Some(l) = self.links.lock().unwrap().get(&spec.name) {
            return Ok(l.clone());
        }
        Ok(self.add_link(&spec.name, None))
    }
    async fn ensure_sub_bridge(&self, spec: &SubBridgeSpec) -> Result<LinkState, NetlinkError> {
        self.record("ensure_sub_bridge", spec.name.clone())?;
        let existing = self.links.lock().unwrap().get(&spec.name).cloned();
        let sub = match existing {
            Some(l) => l,
            None => self.add_link(&spec.name, None),
        };
        if !self.has_link(&spec.trunk) {
            self.add_link(&spec.trunk, Some(spec.root_index));
            self.add_link(&spec.trunk_peer, Some(sub.index));
        }
        let mut links = self.links.lock().unwrap();
        for (end, master) in [
            (&spec.trunk, spec.root_index),
            (&spec.trunk_peer, sub.index),
        ] {
            if let Some(l) = links.get_mut(end) {
                l.master = Some(master);
            }
        }
        Ok(sub)
    }
    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        self.record("create_veth", spec.host.clone())?;
        if self.has_link(&spec.host) {
            return Err(NetlinkError::Io {
                op: format!("creating {}", spec.host),
                source: std::io::Error::from_raw_os_error(nix::libc::EEXIST),
            });
        }
        self.add_link(&spec.host, Some(spec.bridge_index));
        Ok(())
    }
    async fn activate_port(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        self.record("activate_port", spec.host.clone())
    }
    async fn open_container(&self, netns: &Netns) -> Result<String, NetlinkError> {
        self.record("open_container", netns.path.clone())?;
        Ok(netns.path.clone())
    }
    async fn configure_container(
        &self,
        _: &String,
        spec: &ContainerSpec,
    ) -> Result<LinkState, NetlinkError> {
        let first = spec.address.map(|a| a.to_string());
        let address = first.or(spec.address6.map(|a| a.to_string()));
        self.record("configure_container", address.unwrap_or_default())?;
        Ok(LinkState {
            index: 2,
            mac: vec![2, 1, 1, 1, 1, 1],
            master: None,
            up: true,
            kind: None,
            peer: None,
        })
    }
    async fn park_container_end(
        &self,
        _: &Netns,
        ifname: &str,
        host_veth: &str,
        address: Option<Ipv4Network>,
    ) -> Result<bool, NetlinkError> {
        let address = address.map(|a| a.to_string()).unwrap_or_default();
        self.record(
            "park_container_end",
            format!("{ifname} {address} {host_veth}"),
        )?;
        Ok(self.has_link(host_veth))
    }
    async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.record("delete_link", name.to_string())?;
        Ok(self.links.lock().unwrap().remove(name).is_some())
    }
    async fn link(&self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        Ok(self.links.lock().unwrap().get(name).cloned())
    }
    async fn addresses(&self, _: u32) -> Result<Vec<Ipv4Network>, NetlinkError> {
        Ok(vec!["10.87.1.1/24".parse().unwrap()])
    }
    async fn inspect_container(
        &self,
        _: &Netns,
        _: &str,
        _: bool,
    ) -> Result<Option<ContainerView>, NetlinkError> {
        Ok(None)
    }
}
