//! What flatnetd does without a request: reconcile at start, the same pass periodically while it
//! runs (Podman never sends GC), and applying spooled DELs (see `flatnet_proto::spool`).
//!
//! One pass, with the gate held exclusively (no request is half way through):
//! 1. The links of the daemon's namespace; no container namespace is entered, so a pass costs the
//!    same with 1 or 1000 containers apart from the links it removes. A periodic pass dumps them
//!    (name and bridge of each); the start-up pass reads only their names from /proc/self/net/dev,
//!    about ten times cheaper, which is most of the start-up time with 10,000 veths.
//! 2. Each allocation meets its [`fate`](crate::ipam::held::fate), the rule of when an address is
//!    free again: made in an earlier boot (`boot_id` differs), released, and its host veth deleted
//!    if a link of that name exists and no allocation of this boot uses it; host veth there, kept
//!    (the peer in the container lives and dies with it, so the veth is the container's interface
//!    as far as the host can see); host veth gone, released, after a grace in periodic passes (the
//!    allocation must be at least [`GRACE`] old or have been found missing by the previous pass
//!    too). The gate already guarantees that no ADD is between creating its veth and recording its
//!    allocation, so the grace is a second line of defence for what the gate cannot see (a link
//!    dump racing with something outside flatnetd that recreates the link, a clock that jumped);
//!    it costs at most one sweep interval. The start-up pass needs no grace: nothing is served
//!    yet, so nothing can be in flight. At start, the route table (memory only) is made from the
//!    allocations kept, from these same summaries.
//! 3. The bridge and gateway address of every network that keeps allocations is recreated from
//!    the remembered network parameters, with the sub-bridges its allocations use and their trunks
//!    (see [`crate::bridges`]), and kept veths that lost their bridge are put back on theirs.
//!    At start, without each link's bridge, that means every kept veth of a bridge that was gone;
//!    a veth taken off a bridge that still exists is put back by the first periodic pass.
//! 4. `fn-<8 hex>` links that no allocation owns are deleted (a crash between creating a veth and
//!    recording its allocation leaves one; deleting it also removes the container end and with it
//!    the address the container was about to use).
//!
//! Then every spooled DEL is applied; a file is deleted only after its DEL succeeded.

use super::{bridge_spec, Command, Engine, Error, NetConf, Request, Store};
use crate::bridges;
use crate::host::unix_now;
pub use crate::ipam::held::GRACE;
use crate::ipam::held::{fate, Facts, Fate};
use crate::ipam::{AllocSummary, NetworkRecord};
use crate::netlink::{LinkState, Netlink};
use crate::spool::Spool;
use crate::veth::is_flatnet_veth;
use flatnet_proto::cni::Code;
use flatnet_proto::spool::SpooledDel;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// Which of its network's bridges a kept allocation's veth belongs on (see [`crate::bridges`]).
fn slot_in(record: &NetworkRecord, a: &AllocSummary) -> u32 {
    bridges::slot(
        record.v4.as_ref().and_then(|v4| v4.subnet()).zip(a.address),
        record
            .v6
            .as_ref()
            .and_then(|v6| v6.subnet())
            .zip(a.address6.map(|(ip, _)| ip)),
    )
}

/// How long a periodic pass waits for a moment without requests in flight before it skips its turn.
pub const SWEEP_GATE_WAIT: Duration = Duration::from_secs(10);

/// Which pass this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// At start, before serving: nothing can be in flight, no grace.
    Startup,
    /// While serving, every `--sweep-interval` seconds.
    Periodic,
}

/// What a pass did, for the summary log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Allocations whose host veth exists.
    pub kept: usize,
    /// Allocations whose veth is missing but that are still in their grace.
    pub waiting: usize,
    /// Allocations released because they were made in an earlier boot.
    pub released_earlier_boot: usize,
    /// Allocations released because their host veth is gone.
    pub released_gone: usize,
    /// `fn-*` links deleted (orphans, and veths of earlier-boot allocations).
    pub links_removed: usize,
    /// Bridges made sure of.
    pub bridges: usize,
    /// Kept veths put back on their bridge.
    pub reattached: usize,
    /// Address index entries fixed at start (see `Store::repair_index`).
    pub index_repaired: usize,
    /// Spooled DELs applied, discarded as stale, moved aside as malformed, or left for later.
    pub spool_applied: usize,
    pub spool_discarded: usize,
    pub spool_rejected: usize,
    pub spool_failed: usize,
    /// What went wrong (the pass goes on after each).
    pub failures: Vec<String>,
}

impl Summary {
    pub fn released(&self) -> usize {
        self.released_earlier_boot + self.released_gone
    }

    fn changed_anything(&self) -> bool {
        self.released() > 0
            || self.links_removed > 0
            || self.reattached > 0
            || self.index_repaired > 0
            || self.spool_applied + self.spool_discarded + self.spool_rejected > 0
    }
}

/// What became of one spooled DEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolOutcome {
    /// The DEL ran.
    Applied,
    /// The allocation it names is newer than the DEL (the container was started again): dropped.
    Stale,
}

/// Codes that mean the spooled request itself is bad: retrying cannot help.
fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::IncompatibleVersion
            | Code::UnsupportedField
            | Code::UnknownContainer
            | Code::InvalidEnvironment
            | Code::Decode
            | Code::InvalidConfig
    )
}

/// A pass builds large short-lived tables (every link, every allocation); hand the memory back to
/// the system instead of keeping it as the daemon's resident size.
fn give_back_memory() {
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

impl<N: Netlink, S: Store> Engine<N, S> {
    /// One reconcile pass (see the module comment), then the spooled DELs in `spool`. Logs one
    /// summary line. Fails only when a periodic pass cannot get the gate in time.
    pub async fn sweep(&self, pass: Pass, spool: Option<&Spool>) -> Result<Summary, Error> {
        if pass == Pass::Periodic {
            let looked = self.look(spool).await;
            give_back_memory();
            match looked {
                Ok(Some(kept)) => {
                    tracing::debug!(kept, held_ms = 0.0, "sweep: nothing to do");
                    return Ok(Summary {
                        kept,
                        ..Summary::default()
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "sweep: looking first failed; a full pass follows")
                }
            }
        }
        let gate = match pass {
            Pass::Startup => self.gate.write().await,
            Pass::Periodic => self
                .gate_exclusive(SWEEP_GATE_WAIT)
                .await
                .ok_or_else(|| Self::busy("the sweep", "requests in flight", SWEEP_GATE_WAIT))?,
        };
        // While the gate is held, requests wait: how long the pass holds them back (a periodic
        // pass only polls for the gate, so none waits behind it before it has it).
        let held = std::time::Instant::now();
        let mut summary = Summary::default();
        if let Err(e) = self.reconcile_locked(pass, &mut summary).await {
            summary.failures.push(format!("reconcile: {e}"));
        }
        if let Some(spool) = spool {
            self.apply_spool_locked(spool, &mut summary).await;
        }
        drop(gate);
        let held_ms = held.elapsed().as_secs_f64() * 1e3;
        give_back_memory();
        let s = &summary;
        if pass == Pass::Startup || s.changed_anything() || !s.failures.is_empty() {
            tracing::info!(
                pass = ?pass,
                kept = s.kept,
                released = s.released(),
                released_earlier_boot = s.released_earlier_boot,
                released_gone = s.released_gone,
                waiting = s.waiting,
                links_removed = s.links_removed,
                reattached = s.reattached,
                index_repaired = s.index_repaired,
                spooled_dels_applied = s.spool_applied,
                spooled_dels_stale = s.spool_discarded,
                spooled_dels_rejected = s.spool_rejected,
                spooled_dels_pending = s.spool_failed,
                failures = ?s.failures,
                held_ms,
                "reconciled: kept {}, released {}, links removed {}",
                s.kept,
                s.released(),
                s.links_removed
            );
        } else {
            tracing::debug!(
                kept = s.kept,
                waiting = s.waiting,
                held_ms,
                "sweep: nothing to do"
            );
        }
        Ok(summary)
    }

    /// A periodic pass looks first, without the gate (requests go on meanwhile; listing 10,000
    /// links takes the kernel a few hundred ms): `Some(kept)` when the pass would change nothing,
    /// so no request need wait for it. It would when an allocation's fate is anything but kept, a
    /// kept veth is on no bridge, a network's bridge is missing, an `fn-*` link has no allocation,
    /// an address is held back for a veth that is gone, or a DEL is spooled; what it looked at may
    /// be stale by then, so the full pass under the gate reads everything again. The bridges it
    /// finds are made sure of here, as an ADD does (gateway address, up).
    async fn look(&self, spool: Option<&Spool>) -> Result<Option<usize>, Error> {
        if spool.is_some_and(|s| !s.is_empty()) {
            return Ok(None);
        }
        let links: HashMap<String, LinkState> = self.nl.links().await?.into_iter().collect();
        let allocs = self.store.summaries()?;
        let facts = Facts {
            boot_id: &self.boot_id,
            now_unix: unix_now(),
            grace: true,
        };
        let mut owned: HashSet<&str> = HashSet::with_capacity(allocs.len());
        let mut networks: BTreeMap<&str, Vec<&AllocSummary>> = BTreeMap::new();
        for a in &allocs {
            let on_bridge = links.get(&a.host_veth).is_some_and(|l| l.master.is_some());
            if fate(a, facts, on_bridge, false) != Fate::Keep {
                return Ok(None);
            }
            owned.insert(a.host_veth.as_str());
            networks.entry(a.network.as_str()).or_default().push(a);
        }
        let orphan = links
            .keys()
            .any(|name| is_flatnet_veth(name) && !owned.contains(name.as_str()));
        if orphan || !self.held.all(|veth| links.contains_key(veth)) {
            return Ok(None);
        }
        for (network, members) in networks {
            let Some(record) = self.store.network(network)? else {
                continue;
            };
            let Some(root) = links.get(&record.bridge) else {
                return Ok(None);
            };
            // Each sub-bridge in use, with its trunk on the network's bridge.
            let slots: BTreeSet<u32> = members.iter().map(|a| slot_in(&record, a)).collect();
            for slot in slots.into_iter().filter(|s| *s > 0) {
                let sub = bridges::sub_bridge(&record.bridge, slot, record.mtu, root.index);
                let Some(bridge) = links.get(&sub.name).filter(|b| b.up) else {
                    return Ok(None);
                };
                let on = |end: &str, master: u32| {
                    links
                        .get(end)
                        .is_some_and(|t| t.master == Some(master) && t.up)
                };
                if !on(&sub.trunk, root.index) || !on(&sub.trunk_peer, bridge.index) {
                    return Ok(None);
                }
            }
            self.ensure_bridge(bridge_spec(&record)).await?;
        }
        self.suspects.lock().expect("suspects poisoned").clear();
        Ok(Some(allocs.len()))
    }

    async fn reconcile_locked(&self, pass: Pass, s: &mut Summary) -> Result<(), Error> {
        let t0 = std::time::Instant::now();
        // At start only the names (see the module comment); a periodic pass sees each link's bridge.
        // The kernel lists them while this thread reads the database (joined: polled first, the
        // links' future hands its work to the kernel or a blocking thread before the read starts).
        let read_links = async {
            Ok::<_, Error>(match pass {
                Pass::Startup => {
                    let source = self.link_names.clone();
                    tokio::task::spawn_blocking(move || source())
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|names| names)
                        .map_err(|source| crate::netlink::NetlinkError::Io {
                            op: "reading the names of the links".into(),
                            source,
                        })?
                        .into_iter()
                        .map(|n| (n, None))
                        .collect::<HashMap<String, Option<LinkState>>>()
                }
                Pass::Periodic => self
                    .nl
                    .links()
                    .await?
                    .into_iter()
                    .map(|(n, l)| (n, Some(l)))
                    .collect(),
            })
        };
        let read_store = async {
            let allocs = self.store.summaries()?;
            let repaired = match pass {
                Pass::Startup => self.store.repair_index(&allocs)?,
                Pass::Periodic => 0,
            };
            Ok::<_, Error>((allocs, repaired, t0.elapsed()))
        };
        let (links, store) = futures::join!(read_links, read_store);
        let mut links = links?;
        let (allocs, repaired, t_store) = store?;
        s.index_repaired = repaired;
        tracing::debug!(?t_store, t_both = ?t0.elapsed(), links = links.len(), allocations = allocs.len(), "reconcile read its inputs");
        let facts = Facts {
            boot_id: &self.boot_id,
            now_unix: unix_now(),
            grace: pass == Pass::Periodic,
        };
        let previous = std::mem::take(&mut *self.suspects.lock().expect("suspects poisoned"));
        let mut suspects = HashSet::new();
        // Host veths an allocation of this boot still uses: never deleted on behalf of another.
        let live: HashSet<&str> = allocs
            .iter()
            .filter(|a| a.boot_id == self.boot_id && links.contains_key(&a.host_veth))
            .map(|a| a.host_veth.as_str())
            .collect();
        let mut owned: HashSet<String> = HashSet::new();
        let mut kept: Vec<&AllocSummary> = Vec::new();
        let mut released_any = false;

        for a in &allocs {
            let key = a.key();
            let veth_exists = links.contains_key(&a.host_veth);
            match fate(a, facts, veth_exists, previous.contains(&key)) {
                Fate::Keep => {
                    owned.insert(a.host_veth.clone());
                    kept.push(a);
                }
                Fate::Wait => {
                    owned.insert(a.host_veth.clone());
                    suspects.insert(key);
                    s.waiting += 1;
                }
                Fate::ReleaseEarlierBoot => {
                    if veth_exists && !live.contains(a.host_veth.as_str()) {
                        if let Err(e) = self.nl.delete_link(&a.host_veth).await {
                            s.failures.push(format!(
                                "removing {} (allocation of an earlier boot): {e}",
                                a.host_veth
                            ));
                            owned.insert(a.host_veth.clone());
                            continue;
                        }
                        links.remove(&a.host_veth);
                        s.links_removed += 1;
                    }
                    if let Some(gone) = self.store.remove(&key)? {
                        self.released(&gone);
                    }
                    released_any = true;
                    s.released_earlier_boot += 1;
                    tracing::info!(network = %a.network, container_id = %a.container_id, ifname = %a.ifname,
                        address = %a.address_text(), boot_id = %a.boot_id, "released an allocation of an earlier boot");
                }
                Fate::ReleaseGone => {
                    if let Some(gone) = self.store.remove(&key)? {
                        self.released(&gone);
                    }
                    released_any = true;
                    s.released_gone += 1;
                    tracing::info!(network = %a.network, container_id = %a.container_id, ifname = %a.ifname,
                        address = %a.address_text(), host_veth = %a.host_veth, "released an allocation whose interface is gone");
                }
            }
        }
        *self.suspects.lock().expect("suspects poisoned") = suspects;
        s.kept = kept.len();
        let t_fates = t0.elapsed();
        if pass == Pass::Startup {
            // The route table lives in memory only: at start it is made from the records kept,
            // before anything is served (so no DEL can be racing with it).
            self.routes.publish_summaries(kept.iter().copied());
        }

        // Bridges of the networks that keep allocations, and kept veths that lost theirs.
        let mut by_network: BTreeMap<&str, Vec<&AllocSummary>> = BTreeMap::new();
        for a in &kept {
            by_network.entry(a.network.as_str()).or_default().push(a);
        }
        for (network, members) in by_network {
            let record = match self.store.network(network) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    tracing::debug!(
                        network,
                        "no remembered parameters; the next ADD sets up its bridge"
                    );
                    continue;
                }
                Err(e) => {
                    s.failures.push(format!("network {network}: {e}"));
                    continue;
                }
            };
            let spec = bridge_spec(&record);
            // A bridge that is not there now is created below, with no port.
            let bridge_was_gone = !links.contains_key(&record.bridge);
            let bridge = match self.ensure_bridge(spec).await {
                Ok(b) => b,
                Err(e) => {
                    s.failures.push(format!(
                        "bridge {} of network {network}: {e}",
                        record.bridge
                    ));
                    continue;
                }
            };
            s.bridges += 1;
            // The sub-bridges in use (see `crate::bridges`), with whether each had to be made.
            let mut subs: HashMap<u32, Result<(LinkState, bool), ()>> = HashMap::new();
            for slot in members.iter().map(|a| slot_in(&record, a)) {
                if slot == 0 || subs.contains_key(&slot) {
                    continue;
                }
                let spec = bridges::sub_bridge(&record.bridge, slot, record.mtu, bridge.index);
                let was_gone = !links.contains_key(&spec.name);
                let name = spec.name.clone();
                let made = match self.ensure_sub_bridge(spec).await {
                    Ok(b) => {
                        s.bridges += 1;
                        Ok((b, was_gone))
                    }
                    Err(e) => {
                        s.failures
                            .push(format!("bridge {name} of network {network}: {e}"));
                        Err(())
                    }
                };
                subs.insert(slot, made);
            }
            for a in members {
                let slot = slot_in(&record, a);
                let (port, port_was_gone) = match subs.get(&slot) {
                    None => (&bridge, bridge_was_gone),
                    Some(Ok((b, gone))) => (b, *gone),
                    Some(Err(())) => continue,
                };
                // Only a veth that is on no bridge at all (its bridge was deleted) is put back; one
                // on another bridge was put there by someone on purpose. Without a link's details
                // (at start), every kept veth of a bridge that had to be created is on none.
                let masterless = match links.get(&a.host_veth) {
                    Some(Some(l)) => l.master.is_none(),
                    Some(None) => port_was_gone,
                    None => false,
                };
                if masterless {
                    match self
                        .nl
                        .enslave(&a.host_veth, port.index, record.hairpin)
                        .await
                    {
                        Ok(()) => s.reattached += 1,
                        Err(e) => s.failures.push(e.to_string()),
                    }
                }
            }
        }

        let t_bridges = t0.elapsed();
        // Orphans: fn-* links no allocation owns.
        let orphans: Vec<String> = links
            .keys()
            .filter(|name| is_flatnet_veth(name) && !owned.contains(*name))
            .cloned()
            .collect();
        for name in orphans {
            match self.nl.delete_link(&name).await {
                Ok(_) => {
                    links.remove(&name);
                    s.links_removed += 1;
                    tracing::info!(link = %name, "removed an fn-* link that no allocation owns");
                }
                Err(e) => s.failures.push(e.to_string()),
            }
        }
        // Addresses held back for veths that are gone now may be handed out again.
        self.held.keep_if(|veth| links.contains_key(veth));
        if s.index_repaired > 0 || released_any {
            self.store.flush().await?;
        }
        tracing::debug!(?t_fates, ?t_bridges, done = ?t0.elapsed(), "reconcile phases");
        Ok(())
    }

    async fn apply_spool_locked(&self, spool: &Spool, s: &mut Summary) {
        let (pending, rejected) = spool.pending();
        s.spool_rejected += rejected;
        for p in pending {
            match self.apply_spooled_del(&p.entry).await {
                Ok(outcome) => {
                    if outcome == SpoolOutcome::Applied {
                        s.spool_applied += 1;
                    } else {
                        s.spool_discarded += 1;
                    }
                    tracing::info!(container_id = %p.entry.container_id, ifname = %p.entry.ifname,
                        network = %p.entry.network, outcome = ?outcome, "spooled DEL dealt with");
                    spool.done(&p);
                }
                Err(e) if is_permanent(e.code()) => {
                    s.spool_rejected += 1;
                    spool.reject(&p.path, &e.to_string());
                }
                Err(e) => {
                    s.spool_failed += 1;
                    s.failures.push(format!(
                        "spooled DEL of {} (kept for the next sweep): {e}",
                        p.entry.container_id
                    ));
                }
            }
        }
    }

    /// Runs one spooled DEL unless the allocation it names is newer than it. The caller holds the
    /// gate exclusively.
    async fn apply_spooled_del(&self, entry: &SpooledDel) -> Result<SpoolOutcome, Error> {
        let conf = NetConf::parse(entry.config.as_bytes())?;
        if conf.name != entry.network {
            return Err(Error::Environment(format!(
                "spooled DEL is filed under network {:?} but its configuration is for {:?}",
                entry.network, conf.name
            )));
        }
        let req = Request {
            command: Command::Del,
            container_id: entry.container_id.clone(),
            netns: entry.netns.clone(),
            ifname: entry.ifname.clone(),
            args: entry.args.clone(),
            config: entry.config.clone().into_bytes(),
            deadline: None,
        };
        let key = Self::key(&conf, &req)?;
        if let Some(alloc) = self.store.get(&key)? {
            let newer = alloc.created_unix.saturating_mul(1000) > entry.spooled_unix_ms;
            let elsewhere =
                !entry.netns.is_empty() && !alloc.netns.is_empty() && entry.netns != alloc.netns;
            if newer || elsewhere {
                return Ok(SpoolOutcome::Stale);
            }
        }
        self.del(&conf, &req).await?;
        Ok(SpoolOutcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{engine, req};
    use crate::ipam::MemStore;
    use crate::veth::veth_name;
    use serde_json::json;

    /// The engine tests' network with room for a few more containers.
    fn conf() -> serde_json::Value {
        let mut c = crate::engine::testing::conf();
        c["ipam"]["rangeEnd"] = json!("10.87.1.30");
        c
    }

    /// Makes the allocation of `container` look as if it was made `secs` ago in boot `boot`.
    fn age(
        e: &Engine<crate::netlink::fake::FakeNetlink, MemStore>,
        container: &str,
        secs: u64,
        boot: &str,
    ) {
        let key = crate::ipam::AllocKey {
            network: "flatnet".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
        };
        let mut a = e.store().remove(&key).unwrap().unwrap();
        a.created_unix -= secs;
        a.boot_id = boot.into();
        e.store().insert(&a).unwrap();
    }

    fn held(e: &Engine<crate::netlink::fake::FakeNetlink, MemStore>) -> Vec<String> {
        let mut v: Vec<String> = e
            .store()
            .list(None)
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_sub_bridge_that_went_away_is_made_again_and_its_ports_put_back() {
        let e = engine();
        let mut c = conf();
        c["ipam"] = json!({"subnet": "10.87.0.0/16"});
        for (id, ip) in [("a", "10.87.0.5"), ("b", "10.87.3.5")] {
            let mut r = req(Command::Add, id, c.clone());
            r.args = format!("IP={ip}");
            e.exec(&r).await.unwrap();
        }
        let root = e.nl.links.lock().unwrap()["flatnet-br0"].index;
        let sub = bridges::sub_bridge("flatnet-br0", 3, None, root);
        let b = veth_name("b", "eth0");
        // Nothing to do: the periodic pass only looks.
        e.sweep(Pass::Periodic, None).await.unwrap();
        let before = e.nl.ops().len();
        e.sweep(Pass::Periodic, None).await.unwrap();
        assert!(
            !e.nl.ops()[before..]
                .iter()
                .any(|o| o.starts_with("ensure_sub_bridge") || o.starts_with("enslave")),
            "{:?}",
            &e.nl.ops()[before..]
        );
        // The sub-bridge's end of the trunk taken off it: put back.
        e.nl.links
            .lock()
            .unwrap()
            .get_mut(&sub.trunk_peer)
            .unwrap()
            .master = None;
        e.sweep(Pass::Periodic, None).await.unwrap();
        let sub_index = e.nl.links.lock().unwrap()[&sub.name].index;
        assert_eq!(e.nl.master_of(&sub.trunk_peer), Some(sub_index));
        // Someone deletes the sub-bridge (its port is left on no bridge) and its trunk.
        for name in [&sub.name, &sub.trunk, &sub.trunk_peer] {
            e.nl.remove_link(name);
        }
        e.nl.links.lock().unwrap().get_mut(&b).unwrap().master = None;
        let s = e.sweep(Pass::Periodic, None).await.unwrap();
        assert!(s.failures.is_empty(), "{s:?}");
        assert_eq!((s.kept, s.reattached, s.bridges), (2, 1, 2), "{s:?}");
        let links = e.nl.links.lock().unwrap().clone();
        let made = links[&sub.name].index;
        assert_eq!(links[&b].master, Some(made));
        assert_eq!(links[&sub.trunk].master, Some(root));
        assert_eq!(links[&sub.trunk_peer].master, Some(made));
        assert_eq!(links[&veth_name("a", "eth0")].master, Some(root));
        // At start, with names only: a veth of a sub-bridge that had to be made is put back.
        for name in [&sub.name, &sub.trunk, &sub.trunk_peer] {
            e.nl.remove_link(name);
        }
        e.nl.links.lock().unwrap().get_mut(&b).unwrap().master = None;
        let s = e.sweep(Pass::Startup, None).await.unwrap();
        assert_eq!((s.kept, s.reattached), (2, 1), "{s:?}");
        assert_eq!(
            e.nl.master_of(&b),
            Some(e.nl.links.lock().unwrap()[&sub.name].index)
        );
    }

    #[tokio::test]
    async fn startup_pass_makes_kernel_and_store_agree() {
        let e = engine();
        for c in ["kept", "gone", "old"] {
            e.exec(&req(Command::Add, c, conf())).await.unwrap();
        }
        age(&e, "old", 100, "an-earlier-boot");
        // "gone": its container namespace went away, and with it the veth.
        e.nl.remove_link(&veth_name("gone", "eth0"));
        // A crash between creating a veth and recording it, and a link that is not ours.
        e.nl.add_link("fn-deadbeef", None);
        e.nl.add_link("eth9", None);
        // The bridge was deleted: the kept veth is on no bridge any more.
        e.nl.remove_link("flatnet-br0");
        e.nl.links
            .lock()
            .unwrap()
            .get_mut(&veth_name("kept", "eth0"))
            .unwrap()
            .master = None;

        let s = e.sweep(Pass::Startup, None).await.unwrap();
        assert_eq!(held(&e), vec!["kept"]);
        assert_eq!(
            (s.kept, s.released_earlier_boot, s.released_gone),
            (1, 1, 1),
            "{s:?}"
        );
        assert_eq!(s.links_removed, 2, "old's veth and fn-deadbeef: {s:?}");
        assert!(s.failures.is_empty(), "{s:?}");
        assert!(!e.nl.has_link(&veth_name("old", "eth0")));
        assert!(!e.nl.has_link("fn-deadbeef"));
        assert!(e.nl.has_link("eth9"), "only fn-<hex> links are flatnet's");
        assert!(e.nl.has_link("flatnet-br0"), "bridge recreated");
        let bridge = e.nl.links.lock().unwrap()["flatnet-br0"].index;
        assert_eq!(e.nl.master_of(&veth_name("kept", "eth0")), Some(bridge));
        assert_eq!(s.reattached, 1);
        // The released addresses can be handed out again; nothing else changes on a second pass.
        let again = e.sweep(Pass::Startup, None).await.unwrap();
        assert_eq!(
            (again.kept, again.released(), again.links_removed),
            (1, 0, 0)
        );
    }

    /// The start-up pass reads only link names: a veth taken off a bridge that still exists is put
    /// back by the first periodic pass, which sees each link's bridge.
    #[tokio::test]
    async fn a_veth_off_its_existing_bridge_is_put_back_by_the_periodic_pass() {
        let e = engine();
        e.exec(&req(Command::Add, "kept", conf())).await.unwrap();
        let veth = veth_name("kept", "eth0");
        e.nl.links.lock().unwrap().get_mut(&veth).unwrap().master = None;

        let s = e.sweep(Pass::Startup, None).await.unwrap();
        assert_eq!((s.kept, s.reattached), (1, 0), "{s:?}");
        assert_eq!(e.nl.master_of(&veth), None);

        let s = e.sweep(Pass::Periodic, None).await.unwrap();
        assert_eq!((s.kept, s.reattached), (1, 1), "{s:?}");
        let bridge = e.nl.links.lock().unwrap()["flatnet-br0"].index;
        assert_eq!(e.nl.master_of(&veth), Some(bridge));
    }

    #[tokio::test]
    async fn periodic_pass_gives_young_allocations_a_grace() {
        let e = engine();
        e.exec(&req(Command::Add, "young", conf())).await.unwrap();
        e.exec(&req(Command::Add, "grown", conf())).await.unwrap();
        age(&e, "grown", GRACE.as_secs() + 1, "boot");
        e.nl.remove_link(&veth_name("young", "eth0"));
        e.nl.remove_link(&veth_name("grown", "eth0"));

        let first = e.sweep(Pass::Periodic, None).await.unwrap();
        assert_eq!((first.released_gone, first.waiting), (1, 1), "{first:?}");
        assert_eq!(held(&e), vec!["young"]);
        let second = e.sweep(Pass::Periodic, None).await.unwrap();
        assert_eq!((second.released_gone, second.waiting), (1, 0), "{second:?}");
        assert!(held(&e).is_empty());
    }

    #[tokio::test]
    async fn the_sweep_frees_an_address_held_back_by_a_failed_undo() {
        let e = engine();
        e.nl.fail_on
            .lock()
            .unwrap()
            .extend(["configure_container", "delete_link"]);
        e.exec(&req(Command::Add, "c1", conf())).await.unwrap_err();
        e.nl.fail_on.lock().unwrap().clear();
        assert!(e
            .held
            .is_held("flatnet", std::net::Ipv4Addr::new(10, 87, 1, 10)));
        let s = e.sweep(Pass::Periodic, None).await.unwrap();
        assert_eq!(s.links_removed, 1, "{s:?}");
        assert!(!e.nl.has_link(&veth_name("c1", "eth0")));
        assert!(!e
            .held
            .is_held("flatnet", std::net::Ipv4Addr::new(10, 87, 1, 10)));
    }

    #[tokio::test]
    async fn sweep_waits_for_requests_without_holding_them_up() {
        let e = std::sync::Arc::new(engine());
        // Something to do (a stray link), so the pass needs the gate.
        e.netlink().add_link("fn-00000001", None);
        let shared = e.gate.read().await;
        let sweeping = {
            let e = e.clone();
            tokio::spawn(async move { e.sweep(Pass::Periodic, None).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !sweeping.is_finished(),
            "the sweep ran while a request was in flight"
        );
        // A waiting sweep does not hold up new requests behind a stuck one.
        let other = tokio::time::timeout(Duration::from_millis(100), e.gate.read())
            .await
            .expect("a new request got the gate while the sweep waited");
        drop(other);
        drop(shared);
        sweeping.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_sweep_with_nothing_to_do_does_not_take_the_gate() {
        let e = engine();
        e.exec(&req(Command::Add, "c1", conf())).await.unwrap();
        let shared = e.gate.read().await;
        let s = tokio::time::timeout(Duration::from_secs(1), e.sweep(Pass::Periodic, None))
            .await
            .expect("the sweep waited for the gate")
            .unwrap();
        assert_eq!(s.kept, 1);
        drop(shared);
        // Once there is something to do, it takes the gate and does it.
        e.netlink().add_link("fn-00000001", None);
        let s = e.sweep(Pass::Periodic, None).await.unwrap();
        assert_eq!((s.kept, s.links_removed), (1, 1));
        assert!(!e.netlink().has_link("fn-00000001"));
    }

    fn spool_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "flatnet-reconcile-spool-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d.join(flatnet_proto::spool::DIR_NAME)
    }

    fn spooled(container: &str, config: serde_json::Value, at_ms: u64) -> SpooledDel {
        SpooledDel {
            format: flatnet_proto::spool::FORMAT,
            network: config["name"].as_str().unwrap_or("").to_string(),
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: String::new(),
            args: String::new(),
            path: "/opt/cni/bin".into(),
            config: config.to_string(),
            spooled_unix_ms: at_ms,
        }
    }

    #[tokio::test]
    async fn spooled_dels_are_applied_once_and_bad_ones_set_aside() {
        let e = engine();
        e.exec(&req(Command::Add, "stopped", conf())).await.unwrap();
        e.exec(&req(Command::Add, "restarted", conf()))
            .await
            .unwrap();
        let dir = spool_dir("apply");
        let spool = Spool::new(dir.clone());
        let now_ms = unix_now() * 1000 + 999;
        flatnet_proto::spool::write(&dir, &spooled("stopped", conf(), now_ms)).unwrap();
        // Spooled before the current attachment was made: the container was started again since.
        flatnet_proto::spool::write(&dir, &spooled("restarted", conf(), 1000)).unwrap();
        // Valid file, invalid request: the config is not a network configuration.
        let mut bad = spooled("broken", conf(), now_ms);
        bad.config = "{\"cniVersion\":\"1.0.0\"}".into();
        flatnet_proto::spool::write(&dir, &bad).unwrap();

        let s = e.sweep(Pass::Startup, Some(&spool)).await.unwrap();
        assert_eq!(
            (
                s.spool_applied,
                s.spool_discarded,
                s.spool_rejected,
                s.spool_failed
            ),
            (1, 1, 1, 0),
            "{s:?}"
        );
        assert_eq!(held(&e), vec!["restarted"]);
        e.drain_deletions(std::time::Duration::from_secs(2)).await;
        assert!(!e.nl.has_link(&veth_name("stopped", "eth0")));
        assert!(e.nl.has_link(&veth_name("restarted", "eth0")));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("rejected")]);

        // A DEL whose veth the kernel refuses to delete is applied, but its address stays held
        // while the veth exists; the next sweep removes the veth (no allocation owns it any more)
        // and only then frees the address.
        let address = e.store().list(None).unwrap()[0].address.unwrap();
        flatnet_proto::spool::write(&dir, &spooled("restarted", conf(), now_ms + 5000)).unwrap();
        e.nl.fail_on.lock().unwrap().insert("delete_link");
        let s = e.sweep(Pass::Startup, Some(&spool)).await.unwrap();
        assert_eq!(s.spool_applied, 1, "{s:?}");
        e.drain_deletions(std::time::Duration::from_secs(2)).await;
        assert!(held(&e).is_empty());
        assert!(e.nl.has_link(&veth_name("restarted", "eth0")));
        assert!(e.held.is_held("flatnet", address));
        e.nl.fail_on.lock().unwrap().clear();
        let s = e.sweep(Pass::Startup, Some(&spool)).await.unwrap();
        assert_eq!(s.links_removed, 1, "{s:?}");
        assert!(!e.held.is_held("flatnet", address));
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
