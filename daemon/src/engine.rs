//! Where a CNI request turns into kernel work and an address: ADD, DEL, CHECK, GC and STATUS over a
//! [`Netlink`] and a [`Store`]. State changes are serialised per network; a failed ADD undoes what it
//! did. Errors carry the CNI code the runtime will see ([`Error::code`]). The work the daemon does
//! without a request (reconcile at start, the periodic sweep, spooled DELs) is in [`reconcile`].
//! Each verb has a file of its own under `engine/` (`add.rs`, `del.rs`, `check.rs`, `gc.rs`,
//! `status.rs`); this one dispatches and holds what they share.
//!
//! Locking: every request holds the gate ([`Engine::gate`]) shared, then the lock of its attachment
//! (network + container + interface) for its whole duration, and its network's lock only while it
//! reads and changes the network's allocations (choosing an address and recording it; removing a
//! record and holding its address back). The kernel work and the durable write run after the
//! network's lock is released, so requests for different containers overlap there; concurrent
//! durable writes share one flush (see `SledStore`). Reconcile, the sweep and GC hold the gate
//! exclusively, so they never see an ADD half way. They take it only when no request holds it
//! (polled, never queued ahead of requests), so a stuck request delays only them. Each wait is
//! bounded by the request's deadline and [`LOCK_WAIT`]; a request that cannot get its turn fails
//! with code 11 ("try again").
//!
//! Crash safety: ADD records the allocation before its kernel work (flushing while that work runs)
//! and replies only once both are done; a failed ADD removes the veth, then the record. DEL removes
//! the record and holds the address back ([`ipam::held`]) until the [`deleter`] has deleted the veth, sets the
//! container end aside (down, without its address, renamed) while the removal is made durable, and
//! replies after both. So a
//! SIGKILL at any point leaves either an `fn-*` link nobody owns (removed by reconcile before the
//! next request is served) or an allocation whose veth exists (kept, released by a later DEL) or
//! whose veth is gone (released by reconcile): never an address that is live in a container and
//! free in the store.

use crate::bridges;
use crate::config::{ConfigError, ConfigKind, NetConf};
pub use crate::error::Error;
use crate::events::{EventKind, Events};
use crate::firewall::{Firewall, NftCommand, Subnets, DEFAULT_FLAT_RANGE};
use crate::ipam::{self, AllocKey, Allocation, HeldBack, IpamError, Store};
use crate::netlink::{random_mac, BridgeSpec, ContainerSpec, LinkState, Netlink, Netns, VethSpec};
use crate::result::{CniResult, Interface, IpConfig, RouteOut};
use crate::routes::Routes;
use flatnet_proto::cni;
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod add;
mod check;
mod del;
mod deleter;
mod gc;
mod locks;
pub mod reconcile;
mod status;
#[cfg(any(test, feature = "fake"))]
pub mod testing;

use crate::host::{enable_forwarding, enable_forwarding6, unix_now};
use crate::veth::{is_flatnet_veth, veth_name, veth_name_salted, NAME_SALTS};
use locks::{KeyGuard, KeyLocks};

/// The longest a request waits for its turn (the gate, its attachment's lock, its network's lock)
/// before it is answered with code 11. A request holds its network for well under a millisecond and
/// its attachment for a few, so this is only reached when something is stuck.
pub const LOCK_WAIT: Duration = Duration::from_secs(20);

/// How long STATUS waits for the state database to make a write durable before it says the daemon
/// cannot serve (a flush normally takes milliseconds).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Time kept back from a request's deadline, so the "busy" answer reaches the client before the
/// client gives up by itself.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// The CNI commands, as the wire defines them once for the shim and the daemon.
pub use flatnet_proto::v1::Command;

/// One CNI invocation as the shim forwarded it, whichever front end (CNI or netavark) it came
/// through: the one request shape the engine sees.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub config: Vec<u8>,
    /// When the caller stops waiting for the answer (from gRPC's `grpc-timeout`), if it said.
    pub deadline: Option<Instant>,
}

/// What a request that succeeded did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Done {
    /// The CNI result to print, rendered for the configuration's `cniVersion`: ADD's; `None` for
    /// DEL, CHECK, GC and STATUS, which print nothing.
    pub result: Option<String>,
    /// The addresses the request was about: those ADD gave, DEL released, CHECK found in place
    /// (for the log line; see [`Allocation::address_text`]).
    pub address: String,
}

impl Done {
    fn with_address(address: String) -> Done {
        Done {
            result: None,
            address,
        }
    }

    /// The result parsed, for tests; `null` when there is none.
    #[cfg(any(test, feature = "fake"))]
    pub fn json(&self) -> serde_json::Value {
        self.result.as_deref().map_or(serde_json::Value::Null, |r| {
            serde_json::from_str(r).expect("the engine renders valid JSON")
        })
    }
}

/// How long an ADD waits for the deletion of a previous veth of the same name.
const KERNEL_WAIT: Duration = Duration::from_secs(10);

/// How long a request may still wait for its turn: [`LOCK_WAIT`], or less when its deadline is
/// nearer.
fn wait_budget(deadline: Option<Instant>) -> Duration {
    deadline
        .map(|d| {
            d.saturating_duration_since(Instant::now())
                .saturating_sub(DEADLINE_MARGIN)
        })
        .unwrap_or(LOCK_WAIT)
        .min(LOCK_WAIT)
}

/// The parameters of `conf` that reconcile needs to rebuild the network's bridge.
fn network_record(conf: &NetConf) -> ipam::NetworkRecord {
    ipam::NetworkRecord {
        name: conf.name.clone(),
        bridge: conf.bridge.clone(),
        v4: conf.ipam.v4.as_ref().map(|v4| ipam::NetworkRecord4 {
            subnet: v4.subnet.network(),
            prefix: v4.subnet.prefix(),
            gateway: v4.gateway,
            range: Some((v4.range_start, v4.range_end)),
        }),
        is_gateway: conf.is_gateway,
        mtu: conf.mtu,
        hairpin: conf.hairpin_mode,
        ip_masq: conf.ip_masq,
        v6: conf.ipam.v6.as_ref().map(|v6| ipam::NetworkRecord6 {
            subnet: v6.subnet.network(),
            prefix: v6.subnet.prefix(),
            gateway: v6.gateway,
            range: (v6.range_start, v6.range_end),
        }),
    }
}

/// The subnets of `conf` the NAT table is about.
fn nat_subnets(conf: &NetConf) -> Subnets {
    Subnets {
        v4: conf.ipam.v4.as_ref().map(|v4| v4.subnet),
        v6: conf.ipam.v6.as_ref().map(|v6| v6.subnet),
    }
}

/// Which of its network's bridges (see [`crate::bridges`]) an interface with these addresses is on.
fn slot_of(conf: &NetConf, address: Option<Ipv4Addr>, address6: Option<Ipv6Addr>) -> u32 {
    bridges::slot(
        conf.ipam.v4.as_ref().map(|v4| v4.subnet).zip(address),
        conf.ipam.v6.as_ref().map(|v6| v6.subnet).zip(address6),
    )
}

/// The bridge a network uses, with its gateway addresses when the bridge is the gateway.
fn bridge_spec(record: &ipam::NetworkRecord) -> BridgeSpec {
    let gateway = record
        .v4
        .as_ref()
        .and_then(|v4| Ipv4Network::new(v4.gateway, v4.prefix).ok());
    let gateway6 = record
        .v6
        .as_ref()
        .and_then(|v6| Ipv6Network::new(v6.gateway, v6.prefix).ok());
    BridgeSpec {
        name: record.bridge.clone(),
        mtu: record.mtu,
        gateway: gateway.filter(|_| record.is_gateway),
        gateway6: gateway6.filter(|_| record.is_gateway),
    }
}

#[derive(Debug, Clone)]
struct BridgeCache {
    state: LinkState,
    gateway: Option<Ipv4Network>,
    gateway6: Option<Ipv6Network>,
}

/// The daemon's domain: attaches, detaches and checks containers.
pub struct Engine<N, S> {
    nl: Arc<N>,
    store: S,
    boot_id: String,
    /// Requests hold it shared; reconcile, the sweep and GC exclusively (see the module comment).
    gate: tokio::sync::RwLock<()>,
    /// One lock per network: held while a request reads and changes the network's allocations.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One lock per attachment (network, container, interface) in flight: held for a whole ADD,
    /// DEL or CHECK, so two requests for one attachment never overlap, while requests for different
    /// containers do their kernel work and durable writes side by side.
    attachments: KeyLocks,
    /// Held while a bridge is created or checked, so two requests never create one twice.
    bridge_setup: tokio::sync::Mutex<()>,
    bridges: std::sync::Mutex<HashMap<String, BridgeCache>>,
    /// The sub-bridges made sure of (see [`crate::bridges`]), by name: the index of the network's
    /// bridge their trunk was put on, and what they are.
    sub_bridges: std::sync::Mutex<HashMap<String, (u32, LinkState)>>,
    /// Allocations whose veth the last periodic sweep found missing but were still in their grace
    /// (see [`reconcile`]). Only touched with the gate held exclusively.
    suspects: std::sync::Mutex<HashSet<AllocKey>>,
    /// Addresses without a record that may still be live in a container (DEL's, until the deleter
    /// has deleted the veth; a failed ADD's whose undo could not): see [`ipam::held`].
    held: Arc<HeldBack>,
    /// Networks whose subnet passed [`Engine::check_overlap`], so the check (which reads other
    /// networks' allocations) runs only when a network is new or its subnet changed.
    admitted: std::sync::Mutex<HashMap<String, Subnets>>,
    /// Deletes host veths after DEL has answered (see [`deleter`]).
    deleter: Arc<deleter::Deleter<N>>,
    /// Committed allocation changes, for `Inspect.Watch`.
    events: Events,
    /// What the HTTP gateway routes to (see [`crate::routes`]).
    routes: Arc<Routes>,
    /// The outbound NAT table of the networks with `ipMasq`.
    firewall: Arc<Firewall>,
    /// The names of the links in the daemon's namespace, for the start-up reconcile:
    /// [`host::link_names`](crate::host::link_names) unless a test gives another.
    link_names: LinkNames,
}

/// Where the start-up reconcile reads the names of the daemon's links (see [`Engine::link_names`]).
pub type LinkNames = Arc<dyn Fn() -> std::io::Result<HashSet<String>> + Send + Sync>;

impl<N: Netlink, S: Store> Engine<N, S> {
    pub fn new(nl: N, store: S, boot_id: String) -> Self {
        let nl = Arc::new(nl);
        let held: Arc<HeldBack> = Default::default();
        let deleter = Arc::new(deleter::Deleter::new(nl.clone(), held.clone()));
        Engine {
            nl,
            store,
            boot_id,
            gate: Default::default(),
            locks: Default::default(),
            attachments: Default::default(),
            bridge_setup: Default::default(),
            bridges: Default::default(),
            sub_bridges: Default::default(),
            suspects: Default::default(),
            held,
            deleter,
            admitted: Default::default(),
            events: Default::default(),
            routes: Default::default(),
            firewall: Arc::new(Firewall::new(
                Arc::new(NftCommand),
                DEFAULT_FLAT_RANGE
                    .parse()
                    .expect("the default flat range is valid"),
            )),
            link_names: Arc::new(crate::host::link_names),
        }
    }

    /// The engine, reading its links' names at start from `source` instead of `/proc`.
    pub fn with_link_names(mut self, source: LinkNames) -> Self {
        self.link_names = source;
        self
    }

    /// The engine, writing its NAT table through `firewall`.
    pub fn with_firewall(mut self, firewall: Firewall) -> Self {
        self.firewall = Arc::new(firewall);
        self
    }

    /// The outbound NAT table.
    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    /// Starts writing the NAT table for every remembered network with `ipMasq` (at start-up, so
    /// containers that were running keep their egress), in the background: whatever needs the
    /// table after this returns waits for that write (see [`Firewall::load_in_background`]).
    pub async fn restore_firewall(
        &self,
    ) -> Result<tokio::task::JoinHandle<Result<(), crate::firewall::FirewallError>>, Error> {
        let networks = self.store.networks()?;
        let masq = networks.into_iter().filter(|n| n.ip_masq).filter_map(|n| {
            let subnets = Subnets {
                v4: n.v4.as_ref().and_then(ipam::NetworkRecord4::subnet),
                v6: n.v6.as_ref().and_then(ipam::NetworkRecord6::subnet),
            };
            (!subnets.is_empty()).then_some((n.name, subnets))
        });
        Ok(self.firewall.load_in_background(masq.collect()).await)
    }

    /// The kernel side the engine works through.
    pub fn netlink(&self) -> &N {
        &self.nl
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Probes the routes' ports (see [`Routes::probing`]): what flatnetd does; an engine on a
    /// fake kernel does not.
    pub fn with_route_probes(mut self) -> Self {
        self.routes = Arc::new(Routes::probing());
        self
    }

    /// The route table, fed by committed allocations.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// An allocation whose record is gone: its routes go and its release is announced.
    fn released(&self, alloc: &Allocation) {
        self.routes.withdraw(&alloc.key());
        self.events.announce(EventKind::Released, alloc);
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Waits (at most `budget`) until every veth queued by DEL is deleted; for a clean shutdown.
    pub async fn drain_deletions(&self, budget: Duration) {
        self.deleter.drain(budget).await;
    }

    /// Host veths queued for deletion after DEL (see [`deleter`]).
    pub fn pending_deletions(&self) -> usize {
        self.deleter.pending()
    }

    /// The boot this daemon records in new allocations.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Runs one request.
    pub async fn exec(&self, req: &Request) -> Result<Done, Error> {
        let conf = NetConf::parse(&req.config)?;
        let min = req.command.min_version();
        if !cni::version_at_least(&conf.cni_version, min) {
            return Err(Error::IncompatibleVersion(format!(
                "{} needs cniVersion {min} or later; the configuration says {}",
                req.command.cni_name(),
                conf.cni_version
            )));
        }
        if req.command == Command::Gc {
            return self.gc(&conf, req.deadline).await.map(|()| Done::default());
        }
        let budget = wait_budget(req.deadline);
        let _gate = tokio::time::timeout(budget, self.gate.read())
            .await
            .map_err(|_| Self::busy("the daemon", "a reconcile pass", budget))?;
        match req.command {
            Command::Add => self.add(&conf, req).await,
            Command::Del => self.del(&conf, req).await.map(Done::with_address),
            Command::Check => self.check(&conf, req).await.map(Done::with_address),
            Command::Status => self.status(&conf).await.map(|()| Done::default()),
            Command::Gc => unreachable!("GC returned above"),
            Command::Unspecified => Err(Error::UnknownCommand(
                "the request names no CNI command: expected ADD, DEL, CHECK, GC or STATUS".into(),
            )),
        }
    }

    /// The gate held exclusively, waited for at most `budget`. It is polled rather than queued
    /// for: a queued writer makes every new request wait behind it, so one request stuck in the
    /// kernel would stall all the others for as long as the writer waits. Under a storm of
    /// requests this may not get its turn; the sweep then skips a pass, GC answers "busy".
    async fn gate_exclusive(
        &self,
        budget: Duration,
    ) -> Option<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let until = Instant::now() + budget;
        loop {
            if let Ok(guard) = self.gate.try_write() {
                return Some(guard);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn busy(what: &str, holder: &str, waited: Duration) -> Error {
        Error::Busy(format!(
            "{what} is busy: {holder} did not finish within {:.1} s; try again",
            waited.as_secs_f64()
        ))
    }

    /// The network's lock, waited for no longer than the request's budget.
    async fn lock(
        &self,
        network: &str,
        deadline: Option<Instant>,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, Error> {
        let lock = {
            // Held only to look up or insert the per-network lock, never across an await.
            let mut locks = self.locks.lock().expect("lock table poisoned");
            locks.entry(network.to_string()).or_default().clone()
        };
        let budget = wait_budget(deadline);
        tokio::time::timeout(budget, lock.lock_owned())
            .await
            .map_err(|_| {
                Self::busy(
                    &format!("network {network}"),
                    "another request on it",
                    budget,
                )
            })
    }

    /// The attachment's lock (see [`Engine::attachments`]), waited for no longer than the request's
    /// budget.
    async fn attachment_lock(
        &self,
        key: &AllocKey,
        deadline: Option<Instant>,
    ) -> Result<KeyGuard<'_>, Error> {
        let budget = wait_budget(deadline);
        tokio::time::timeout(budget, self.attachments.lock(key.clone()))
            .await
            .map_err(|_| {
                Self::busy(
                    &format!(
                        "{} of container {} on network {}",
                        key.ifname, key.container_id, key.network
                    ),
                    "another request for it",
                    budget,
                )
            })
    }

    /// Refuses a new network whose subnet overlaps one that another network holds addresses in: the
    /// two would hand out the same addresses, and the host could route to only one of them.
    fn check_overlap(&self, conf: &NetConf) -> Result<(), Error> {
        let ours = conf.ipam.v4.as_ref().map(|v4| v4.subnet);
        let ours6 = conf.ipam.v6.as_ref().map(|v6| v6.subnet);
        if self
            .admitted
            .lock()
            .expect("admitted poisoned")
            .get(&conf.name)
            == Some(&nat_subnets(conf))
        {
            return Ok(());
        }
        for other in self.store.networks()? {
            if other.name == conf.name {
                continue;
            }
            let theirs = other.v4.as_ref().and_then(ipam::NetworkRecord4::subnet);
            let overlap = ours.zip(theirs).and_then(|(o, t)| {
                (t.contains(o.network()) || o.contains(t.network()))
                    .then(|| (o.to_string(), t.to_string()))
            });
            let theirs6 = other.v6.as_ref().and_then(ipam::NetworkRecord6::subnet);
            let overlap6 = ours6.zip(theirs6).and_then(|(o, t)| {
                (t.contains(o.network()) || o.contains(t.network()))
                    .then(|| (o.to_string(), t.to_string()))
            });
            if let Some((mine, theirs)) = overlap.or(overlap6) {
                if !self.store.list(Some(&other.name))?.is_empty() {
                    return Err(Error::Config(ConfigError {
                        kind: ConfigKind::Invalid,
                        msg: format!(
                            "subnet {mine} of network {} overlaps subnet {theirs} of network {}, which holds addresses: give each network a subnet of its own",
                            conf.name, other.name
                        ),
                    }));
                }
            }
        }
        // Admitting this network may make an earlier admission stale (it may overlap a network that
        // held no addresses then): every other network is checked again on its next ADD.
        let mut admitted = self.admitted.lock().expect("admitted poisoned");
        admitted.clear();
        admitted.insert(conf.name.clone(), nat_subnets(conf));
        Ok(())
    }

    fn key(conf: &NetConf, req: &Request) -> Result<AllocKey, Error> {
        cni::validate_container_id(&req.container_id).map_err(|e| Error::Environment(e.0))?;
        cni::validate_ifname("CNI_IFNAME", &req.ifname).map_err(|e| Error::Environment(e.0))?;
        Ok(AllocKey {
            network: conf.name.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        })
    }

    /// The network's bridge, from the cache unless `refresh` or the gateway changed.
    async fn bridge(&self, conf: &NetConf, refresh: bool) -> Result<LinkState, Error> {
        let spec = bridge_spec(&network_record(conf));
        if !refresh {
            let cache = self.bridges.lock().expect("bridge cache poisoned");
            let same = |c: &&BridgeCache| c.gateway == spec.gateway && c.gateway6 == spec.gateway6;
            if let Some(c) = cache.get(&spec.name).filter(same) {
                return Ok(c.state.clone());
            }
        }
        self.ensure_bridge(spec).await
    }

    /// The bridge of `conf`'s network that the host veth of a container in `slot` goes on (see
    /// [`crate::bridges`]): `root` (the network's bridge) for slot 0, else the slot's sub-bridge,
    /// made sure of (with its trunk on `root`) unless cached for this `root` and not `refresh`.
    async fn port_bridge(
        &self,
        conf: &NetConf,
        root: &LinkState,
        slot: u32,
        refresh: bool,
    ) -> Result<LinkState, Error> {
        if slot == 0 {
            return Ok(root.clone());
        }
        let spec = bridges::sub_bridge(&conf.bridge, slot, conf.mtu, root.index);
        if !refresh {
            let cache = self.sub_bridges.lock().expect("sub-bridge cache poisoned");
            if let Some((_, state)) = cache.get(&spec.name).filter(|(r, _)| *r == root.index) {
                return Ok(state.clone());
            }
        }
        self.ensure_sub_bridge(spec).await
    }

    /// Makes sure a sub-bridge and its trunk are there and caches what the sub-bridge is.
    async fn ensure_sub_bridge(
        &self,
        spec: crate::netlink::SubBridgeSpec,
    ) -> Result<LinkState, Error> {
        let _setup = self.bridge_setup.lock().await;
        let state = self.nl.ensure_sub_bridge(&spec).await?;
        self.sub_bridges
            .lock()
            .expect("sub-bridge cache poisoned")
            .insert(spec.name, (spec.root_index, state.clone()));
        Ok(state)
    }

    /// Makes sure the bridge exists, is up and holds its gateway address, and caches what it is.
    async fn ensure_bridge(&self, spec: BridgeSpec) -> Result<LinkState, Error> {
        let _setup = self.bridge_setup.lock().await;
        let state = self.nl.ensure_bridge(&spec).await?;
        if spec.gateway.is_some() {
            enable_forwarding();
        }
        if spec.gateway6.is_some() {
            enable_forwarding6();
        }
        self.bridges.lock().expect("bridge cache poisoned").insert(
            spec.name,
            BridgeCache {
                state: state.clone(),
                gateway: spec.gateway,
                gateway6: spec.gateway6,
            },
        );
        Ok(state)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::testing::{conf, engine, req};
    use crate::ipam::{MemStore, StoreError};
    use crate::netlink::fake::FakeNetlink;
    use flatnet_proto::cni::Code;
    use serde_json::{json, Value};

    #[tokio::test]
    async fn add_records_and_del_releases() {
        let e = engine();
        let out: Value = e
            .exec(&req(Command::Add, "c1", conf()))
            .await
            .unwrap()
            .json();
        assert_eq!(out["ips"][0]["address"], "10.87.1.10/24");
        assert_eq!(out["interfaces"][1]["name"], veth_name("c1", "eth0"));
        let stored = e.store().list(None).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].container_name.as_deref(), Some("c1"));
        assert_eq!(stored[0].boot_id, "boot");

        e.exec(&req(Command::Del, "c1", conf())).await.unwrap();
        assert!(e.store().list(None).unwrap().is_empty());
        // The veth goes after the reply and its address is held until then: an ADD asking for the
        // address at once waits for the old veth to be gone, then gets it.
        let mut again = req(Command::Add, "c9", conf());
        again.args = "IP=10.87.1.10".into();
        e.exec(&again).await.unwrap();
        let ops = e.nl.ops();
        let deleted = ops
            .iter()
            .position(|o| *o == format!("delete_link {}", veth_name("c1", "eth0")));
        let created = ops
            .iter()
            .rposition(|o| *o == format!("create_veth {}", veth_name("c9", "eth0")));
        assert!(
            deleted < created,
            "the address was handed out before its old veth was gone: {ops:?}"
        );
        assert!(!e.nl.has_link(&veth_name("c1", "eth0")));
        e.exec(&req(Command::Del, "c9", conf())).await.unwrap();
        // DEL again, and DEL of a container never added: both fine.
        e.exec(&req(Command::Del, "c1", conf())).await.unwrap();
        e.exec(&req(Command::Del, "never", conf())).await.unwrap();
    }

    #[tokio::test]
    async fn only_committed_changes_are_announced_each_once() {
        let e = engine();
        let mut rx = e.events().subscribe();
        e.nl.fail_on.lock().unwrap().insert("configure_container");
        e.exec(&req(Command::Add, "c1", conf())).await.unwrap_err();
        e.nl.fail_on.lock().unwrap().clear();
        e.exec(&req(Command::Add, "c1", conf())).await.unwrap();
        // The bridge went away behind the daemon's back: the next ADD recreates it and records
        // the allocation again with the new bridge's MAC, within the same ADD.
        e.nl.remove_link("flatnet-br0");
        e.nl.fail_once.lock().unwrap().insert("create_veth");
        let c2: Value = e
            .exec(&req(Command::Add, "c2", conf()))
            .await
            .unwrap()
            .json();
        // Changes nothing, announces nothing.
        e.exec(&req(Command::Add, "c2", conf())).await.unwrap();
        e.exec(&req(Command::Del, "c1", conf())).await.unwrap();
        e.exec(&req(Command::Del, "c1", conf())).await.unwrap();
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let got: Vec<(EventKind, String)> = events
            .iter()
            .map(|ev| (ev.kind, ev.allocation.container_id.clone()))
            .collect();
        let want = [
            (EventKind::Added, "c1"),
            (EventKind::Added, "c2"),
            (EventKind::Released, "c1"),
        ]
        .map(|(k, c)| (k, c.to_string()));
        assert_eq!(got, want);
        // The event carries what was committed: the allocation with the new bridge's MAC.
        assert_ne!(
            c2["interfaces"][0]["mac"],
            events[0].allocation.result.interfaces[0].mac
        );
        assert_eq!(
            events[1].allocation.result.interfaces[0].mac,
            c2["interfaces"][0]["mac"]
        );
    }

    #[tokio::test]
    async fn a_veth_name_that_is_another_containers_is_left_alone() {
        let e = engine();
        let mut conf = conf();
        conf["ipam"]["rangeEnd"] = "10.87.1.20".into();
        let conf = || conf.clone();
        e.exec(&req(Command::Add, "other", conf())).await.unwrap();
        // A hash collision: "other"'s veth has the name c1's would have.
        let taken = veth_name("c1", "eth0");
        let mut other = e.store().list(None).unwrap().remove(0);
        let link = e.nl.links.lock().unwrap().remove(&other.host_veth).unwrap();
        e.nl.links.lock().unwrap().insert(taken.clone(), link);
        other.host_veth = taken.clone();
        e.store().insert(&other).unwrap();

        let out: Value = e
            .exec(&req(Command::Add, "c1", conf()))
            .await
            .unwrap()
            .json();
        let used = veth_name_salted("c1", "eth0", 1);
        assert_ne!(used, taken);
        assert_eq!(out["interfaces"][1]["name"], used.as_str());
        let c1 = e
            .store()
            .get(&AllocKey {
                network: "flatnet".into(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
            })
            .unwrap()
            .unwrap();
        assert_eq!(c1.host_veth, used);
        assert!(e.nl.has_link(&used) && e.nl.has_link(&taken));
        assert!(!e.nl.ops().contains(&format!("delete_link {taken}")));

        // When every name is taken, ADD fails with 101 and still leaves the other veth alone.
        for salt in 1..=NAME_SALTS {
            e.nl.add_link(&veth_name_salted("c2", "eth0", salt), None);
            let mut squatter = other.clone();
            squatter.container_id = format!("squatter{salt}");
            squatter.address = Some(Ipv4Addr::new(10, 87, 2, salt));
            squatter.host_veth = veth_name_salted("c2", "eth0", salt);
            e.store().insert(&squatter).unwrap();
        }
        let mut c2 = other.clone();
        c2.container_id = "squatter0".into();
        c2.address = Some(Ipv4Addr::new(10, 87, 2, 100));
        c2.host_veth = veth_name("c2", "eth0");
        e.nl.add_link(&c2.host_veth, None);
        e.store().insert(&c2).unwrap();
        let before = e.store().list(None).unwrap().len();
        let err = e.exec(&req(Command::Add, "c2", conf())).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyAttached, "{err}");
        assert_eq!(e.store().list(None).unwrap().len(), before);
        assert!(e.nl.has_link(&c2.host_veth));
        assert!(!e.nl.ops().iter().any(|o| o.starts_with("delete_link")));
    }

    #[tokio::test]
    async fn repeated_add_returns_the_same_address() {
        let e = engine();
        let a = e.exec(&req(Command::Add, "c1", conf())).await.unwrap();
        let b = e.exec(&req(Command::Add, "c1", conf())).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(e.store().list(None).unwrap().len(), 1);
        let creates =
            e.nl.ops()
                .iter()
                .filter(|o| o.starts_with("create_veth"))
                .count();
        assert_eq!(creates, 1);
    }

    #[tokio::test]
    async fn failure_half_way_rolls_back() {
        // Each step after the pair exists: the namespace, the port, the container's end.
        for step in ["open_container", "activate_port", "configure_container"] {
            let e = engine();
            e.nl.fail_on.lock().unwrap().insert(step);
            let err = e.exec(&req(Command::Add, "c1", conf())).await.unwrap_err();
            assert_eq!(err.code(), Code::Kernel, "{step}");
            assert!(e.store().list(None).unwrap().is_empty(), "{step}");
            assert!(!e.nl.has_link(&veth_name("c1", "eth0")), "{step}");
            assert!(
                e.nl.ops()
                    .contains(&format!("delete_link {}", veth_name("c1", "eth0"))),
                "{step}: {:?}",
                e.nl.ops()
            );
        }
    }

    #[tokio::test]
    async fn an_address_whose_undo_failed_is_held_back() {
        let e = engine();
        e.nl.fail_on
            .lock()
            .unwrap()
            .extend(["configure_container", "delete_link"]);
        let err = e.exec(&req(Command::Add, "c1", conf())).await.unwrap_err();
        assert!(matches!(err, Error::RollbackFailed { .. }), "{err}");
        assert!(e.store().list(None).unwrap().is_empty());
        e.nl.fail_on.lock().unwrap().clear();
        // 10.87.1.10 may still be on c1's interface: the next container gets .11, then none is left.
        let out: Value = e
            .exec(&req(Command::Add, "c2", conf()))
            .await
            .unwrap()
            .json();
        assert_eq!(out["ips"][0]["address"], "10.87.1.11/24");
        let mut taken = req(Command::Add, "c3", conf());
        taken.args = "IP=10.87.1.10".into();
        assert_eq!(
            e.exec(&taken).await.unwrap_err().code(),
            Code::AddressUnavailable
        );
        // The runtime's DEL for the failed container removes the interface: the address is free
        // once the veth is gone.
        e.exec(&req(Command::Del, "c1", conf())).await.unwrap();
        e.drain_deletions(Duration::from_secs(2)).await;
        e.exec(&taken).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_nothing_and_leaves_nothing() {
        let e = Engine::new(FakeNetlink::default(), BrokenDisk::default(), "boot".into());
        let err = e.exec(&req(Command::Add, "c1", conf())).await.unwrap_err();
        assert_eq!(err.code(), Code::Io, "{err}");
        assert!(e.store().list(None).unwrap().is_empty());
        assert!(!e.nl.has_link(&veth_name("c1", "eth0")));
    }

    #[tokio::test]
    async fn exhaustion_and_taken_are_code_100_and_change_nothing() {
        let e = engine();
        e.exec(&req(Command::Add, "c1", conf())).await.unwrap();
        e.exec(&req(Command::Add, "c2", conf())).await.unwrap();
        let ops_before = e.nl.ops().len();
        let err = e.exec(&req(Command::Add, "c3", conf())).await.unwrap_err();
        assert_eq!(err.code(), Code::AddressUnavailable);
        let mut taken = req(Command::Add, "c4", conf());
        taken.args = "IP=10.87.1.10".into();
        assert_eq!(
            e.exec(&taken).await.unwrap_err().code(),
            Code::AddressUnavailable
        );
        assert_eq!(
            e.nl.ops().len(),
            ops_before,
            "no kernel work for a refused ADD"
        );
        assert_eq!(e.store().list(None).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_any_work() {
        let e = engine();
        let cases: Vec<(Request, Code)> = vec![
            (
                {
                    let mut r = req(Command::Add, "c1", conf());
                    r.args = "IP=10.87.9.9".into();
                    r
                },
                Code::InvalidEnvironment,
            ),
            (
                {
                    let mut r = req(Command::Add, "c1", conf());
                    r.args = "MAC=nope".into();
                    r
                },
                Code::InvalidEnvironment,
            ),
            (
                {
                    let mut r = req(Command::Add, "c1", conf());
                    r.netns = "/etc/hostname".into();
                    r
                },
                Code::InvalidEnvironment,
            ),
            (
                {
                    let mut r = req(Command::Add, "c1", conf());
                    r.netns = "/nonexistent".into();
                    r
                },
                Code::InvalidEnvironment,
            ),
            (
                {
                    let mut r = req(Command::Add, "c1", conf());
                    r.ifname = "a/b".into();
                    r
                },
                Code::InvalidEnvironment,
            ),
            (
                {
                    let mut r = req(Command::Add, "c1", conf());
                    r.container_id = "".into();
                    r
                },
                Code::InvalidEnvironment,
            ),
            (
                {
                    let mut r = req(Command::Add, "c1", conf());
                    r.config = b"{".to_vec();
                    r
                },
                Code::Decode,
            ),
            (
                req(
                    Command::Check,
                    "c1",
                    json!({"cniVersion": "0.3.1", "name": "n"}),
                ),
                Code::IncompatibleVersion,
            ),
            (
                req(
                    Command::Gc,
                    "c1",
                    json!({"cniVersion": "1.0.0", "name": "n"}),
                ),
                Code::IncompatibleVersion,
            ),
            (req(Command::Check, "c1", conf()), Code::InvalidConfig),
        ];
        for (r, code) in cases {
            let err = e.exec(&r).await.unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        assert!(e.nl.ops().is_empty(), "{:?}", e.nl.ops());
        assert!(e.store().list(None).unwrap().is_empty());
    }

    #[tokio::test]
    async fn gc_releases_what_is_not_valid() {
        let e = engine();
        e.exec(&req(Command::Add, "keep", conf())).await.unwrap();
        e.exec(&req(Command::Add, "drop", conf())).await.unwrap();
        let mut gc = conf();
        gc["cniVersion"] = json!("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
        e.exec(&req(Command::Gc, "", gc)).await.unwrap();
        let left = e.store().list(None).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].container_id, "keep");
        assert!(!e.nl.has_link(&veth_name("drop", "eth0")));
    }

    #[tokio::test]
    async fn status_reports_exhaustion() {
        let e = engine();
        let mut status = conf();
        status["cniVersion"] = json!("1.1.0");
        e.exec(&req(Command::Status, "", status.clone()))
            .await
            .unwrap();
        e.exec(&req(Command::Add, "c1", conf())).await.unwrap();
        e.exec(&req(Command::Add, "c2", conf())).await.unwrap();
        let err = e.exec(&req(Command::Status, "", status)).await.unwrap_err();
        assert_eq!(err.code(), Code::PluginNotAvailable);
    }

    #[tokio::test]
    async fn parallel_adds_never_share_an_address() {
        let e = Arc::new(engine());
        let wide =
            json!({"cniVersion": "1.0.0", "name": "flatnet", "ipam": {"subnet": "10.87.0.0/16"}});
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let e = e.clone();
                let r = req(Command::Add, &format!("c{i}"), wide.clone());
                tokio::spawn(async move { e.exec(&r).await.unwrap() })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for t in tasks {
            let v: Value = t.await.unwrap().json();
            assert!(seen.insert(v["ips"][0]["address"].as_str().unwrap().to_string()));
        }
    }

    #[tokio::test]
    async fn a_held_network_answers_busy_within_the_deadline() {
        let e = engine();
        let _held = e.lock("flatnet", None).await.unwrap();
        let mut add = req(Command::Add, "c1", conf());
        add.deadline = Some(Instant::now() + Duration::from_millis(1500));
        let started = Instant::now();
        let err = e.exec(&add).await.unwrap_err();
        assert_eq!(err.code(), Code::TryAgainLater, "{err}");
        assert!(err.to_string().contains("try again"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(e.store().list(None).unwrap().is_empty());
        // Another network is not held up.
        let mut other = conf();
        other["name"] = json!("other");
        other["ipam"]["subnet"] = json!("10.88.0.0/24");
        other["ipam"]["rangeStart"] = json!("10.88.0.10");
        other["ipam"]["rangeEnd"] = json!("10.88.0.20");
        e.exec(&req(Command::Add, "c2", other)).await.unwrap();
    }

    #[tokio::test]
    async fn add_remembers_the_network() {
        let e = engine();
        let mut c = conf();
        c["bridge"] = json!("br-test");
        c["mtu"] = json!(1400);
        c["hairpinMode"] = json!(true);
        e.exec(&req(Command::Add, "c1", c)).await.unwrap();
        let rec = e.store().network("flatnet").unwrap().expect("remembered");
        assert_eq!(
            rec,
            ipam::NetworkRecord {
                name: "flatnet".into(),
                bridge: "br-test".into(),
                v4: Some(ipam::NetworkRecord4 {
                    subnet: Ipv4Addr::new(10, 87, 1, 0),
                    prefix: 24,
                    gateway: Ipv4Addr::new(10, 87, 1, 1),
                    range: Some((Ipv4Addr::new(10, 87, 1, 10), Ipv4Addr::new(10, 87, 1, 11))),
                }),
                is_gateway: true,
                mtu: Some(1400),
                hairpin: true,
                ip_masq: false,
                v6: None,
            }
        );
    }

    #[tokio::test]
    async fn overlapping_subnet_of_a_busy_network_is_refused() {
        let e = engine();
        e.exec(&req(Command::Add, "c1", conf())).await.unwrap();
        let mut other = conf();
        other["name"] = json!("other");
        other["bridge"] = json!("br-other");
        let err = e
            .exec(&req(Command::Add, "c2", other.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidConfig, "{err}");
        assert!(err.to_string().contains("overlaps"), "{err}");
        // Once the first network holds nothing, the subnet is free to take.
        e.exec(&req(Command::Del, "c1", conf())).await.unwrap();
        e.exec(&req(Command::Add, "c2", other)).await.unwrap();
    }

    #[tokio::test]
    async fn gc_removes_orphan_links_on_its_bridge_only() {
        let e = engine();
        e.exec(&req(Command::Add, "keep", conf())).await.unwrap();
        let bridge = e.nl.links.lock().unwrap()["flatnet-br0"].index;
        e.nl.add_link("fn-0badc0de", Some(bridge));
        e.nl.add_link("fn-0000beef", None);
        e.nl.add_link("fn-user", Some(bridge));
        let mut gc = conf();
        gc["cniVersion"] = json!("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
        e.exec(&req(Command::Gc, "", gc)).await.unwrap();
        assert!(
            !e.nl.has_link("fn-0badc0de"),
            "orphan on the bridge survived GC"
        );
        assert!(
            e.nl.has_link("fn-0000beef"),
            "GC only looks at its own bridge"
        );
        assert!(e.nl.has_link("fn-user"), "not a name flatnet makes");
        assert!(e.nl.has_link(&veth_name("keep", "eth0")));
        assert_eq!(e.store().list(None).unwrap().len(), 1);
    }

    /// `container`'s ADD on a /16 network, asking for `ip`.
    fn add_16(container: &str, ip: &str) -> Request {
        let mut c = conf();
        c["ipam"] = json!({"subnet": "10.87.0.0/16"});
        let mut r = req(Command::Add, container, c);
        r.args = format!("IP={ip}");
        r
    }

    #[tokio::test]
    async fn a_large_network_puts_each_24_on_a_bridge_of_its_own() {
        let e = engine();
        for (c, ip) in [("a", "10.87.0.5"), ("b", "10.87.3.5"), ("c", "10.87.3.6")] {
            e.exec(&add_16(c, ip)).await.unwrap();
        }
        let links = e.nl.links.lock().unwrap().clone();
        let root = links["flatnet-br0"].index;
        let sub = bridges::sub_bridge("flatnet-br0", 3, None, root);
        let sub_index = links[&sub.name].index;
        assert_eq!(links[&veth_name("a", "eth0")].master, Some(root));
        for c in ["b", "c"] {
            assert_eq!(links[&veth_name(c, "eth0")].master, Some(sub_index), "{c}");
        }
        assert_eq!(links[&sub.trunk].master, Some(root));
        assert_eq!(links[&sub.trunk_peer].master, Some(sub_index));
        let ensured =
            e.nl.ops()
                .iter()
                .filter(|o| o.starts_with("ensure_sub_bridge"))
                .count();
        assert_eq!(ensured, 1, "made sure of once, then cached");

        // GC looks at the sub-bridges too.
        e.nl.add_link("fn-0badc0de", Some(sub_index));
        let mut gc = conf();
        gc["ipam"] = json!({"subnet": "10.87.0.0/16"});
        gc["cniVersion"] = json!("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([
            {"containerID": "a", "ifname": "eth0"},
            {"containerID": "b", "ifname": "eth0"},
            {"containerID": "c", "ifname": "eth0"}
        ]);
        e.exec(&req(Command::Gc, "", gc)).await.unwrap();
        assert!(
            !e.nl.has_link("fn-0badc0de"),
            "orphan on a sub-bridge survived GC"
        );
        assert_eq!(e.store().list(None).unwrap().len(), 3);

        // The sub-bridge was deleted behind the daemon's back: the next ADD in its block makes
        // it again, with its trunk, within the same ADD.
        e.nl.remove_link(&sub.name);
        e.nl.remove_link(&sub.trunk);
        e.nl.remove_link(&sub.trunk_peer);
        e.nl.fail_once.lock().unwrap().insert("create_veth");
        e.exec(&add_16("d", "10.87.3.7")).await.unwrap();
        let links = e.nl.links.lock().unwrap().clone();
        let again = links[&sub.name].index;
        assert_ne!(again, sub_index);
        assert_eq!(links[&veth_name("d", "eth0")].master, Some(again));
        assert_eq!(links[&sub.trunk].master, Some(root));
    }

    /// A store whose disk has failed: reads work, durable writes do not.
    #[derive(Default)]
    struct BrokenDisk(MemStore);

    impl Store for BrokenDisk {
        fn get(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
            self.0.get(key)
        }
        fn is_taken(&self, network: &str, ip: std::net::IpAddr) -> Result<bool, StoreError> {
            self.0.is_taken(network, ip)
        }
        fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError> {
            self.0.last_handed_out(network)
        }
        fn last_handed_out6(&self, network: &str) -> Result<Option<Ipv6Addr>, StoreError> {
            self.0.last_handed_out6(network)
        }
        fn insert(&self, alloc: &Allocation) -> Result<(), StoreError> {
            self.0.insert(alloc)
        }
        fn remove(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
            self.0.remove(key)
        }
        fn list(&self, network: Option<&str>) -> Result<Vec<Allocation>, StoreError> {
            self.0.list(network)
        }
        async fn flush(&self) -> Result<(), StoreError> {
            Err(StoreError::Db(sled::Error::Io(std::io::Error::other(
                "disk on fire",
            ))))
        }
        fn network(&self, name: &str) -> Result<Option<ipam::NetworkRecord>, StoreError> {
            self.0.network(name)
        }
        fn networks(&self) -> Result<Vec<ipam::NetworkRecord>, StoreError> {
            self.0.networks()
        }
        fn put_network(&self, record: &ipam::NetworkRecord) -> Result<bool, StoreError> {
            self.0.put_network(record)
        }
        async fn probe(&self) -> Result<(), StoreError> {
            self.flush().await
        }
    }

    #[tokio::test]
    async fn status_is_51_when_the_database_fails() {
        let e = Engine::new(FakeNetlink::default(), BrokenDisk::default(), "boot".into());
        let mut status = conf();
        status["cniVersion"] = json!("1.1.0");
        let err = e.exec(&req(Command::Status, "", status)).await.unwrap_err();
        assert_eq!(err.code(), Code::PluginNotAvailableLimited, "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        // And an ADD on that disk fails without leaving anything behind.
        let err = e.exec(&req(Command::Add, "c1", conf())).await.unwrap_err();
        assert_eq!(err.code(), Code::Io, "{err}");
        assert!(e.store().list(None).unwrap().is_empty());
        assert!(!e.nl.has_link(&veth_name("c1", "eth0")));
    }
}
