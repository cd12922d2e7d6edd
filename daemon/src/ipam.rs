//! Address management: which address a container gets, and the durable record of who holds what
//! (and of each network's parameters, so the daemon can rebuild a bridge without a request).
//! The choice ([`pick`]) is pure; [`Store`] is the record, with sled ([`SledStore`]) as the real one.

use crate::config::IpamConf;
use crate::result::CniResult;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

/// Identifies one attachment: network + container + interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl AllocKey {
    fn encode(&self) -> Vec<u8> {
        [
            self.network.as_bytes(),
            b"\0",
            self.container_id.as_bytes(),
            b"\0",
            self.ifname.as_bytes(),
        ]
        .concat()
    }
}

/// One address held by one container interface, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The container's name (CNI_ARGS `K8S_POD_NAME`), when the runtime gave one.
    pub container_name: Option<String>,
    pub host_veth: String,
    pub netns: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// The kernel boot this attachment was made in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Other names of the container on this network (Podman's network aliases), when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The result handed to the runtime, so a repeated ADD can answer the same.
    pub result: CniResult,
}

impl Allocation {
    pub fn key(&self) -> AllocKey {
        AllocKey {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The fields of an [`Allocation`] that reconcile needs, read without the stored CNI result (most
/// of a record's bytes): reconciling 10,000 allocations at start must be cheap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AllocSummary {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub address: Ipv4Addr,
    pub host_veth: String,
    pub created_unix: u64,
    pub boot_id: String,
    /// The container's name (CNI_ARGS `K8S_POD_NAME`), when the runtime gave one.
    #[serde(default)]
    pub container_name: Option<String>,
}

impl AllocSummary {
    pub fn key(&self) -> AllocKey {
        AllocKey {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

impl From<&Allocation> for AllocSummary {
    fn from(a: &Allocation) -> Self {
        AllocSummary {
            network: a.network.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            address: a.address,
            host_veth: a.host_veth.clone(),
            created_unix: a.created_unix,
            boot_id: a.boot_id.clone(),
            container_name: a.container_name.clone(),
        }
    }
}

/// The parameters of a network as the last ADD that used it gave them: what reconcile needs to
/// recreate the bridge and its gateway address and to put host veths back on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub bridge: String,
    /// The subnet's network address and prefix length.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub is_gateway: bool,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    /// The addresses it hands out (`rangeStart`, `rangeEnd`), for inspection; `None` in records
    /// written before the range was remembered.
    #[serde(default)]
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] sled::Error),
    #[error("state database holds a record that cannot be read ({0}); was it written by another version?")]
    Corrupt(String),
    #[error("address {ip} is already held by container {owner}")]
    AddressHeld { ip: Ipv4Addr, owner: String },
}

/// The durable record of allocations. Callers serialise changes per network; implementations still
/// refuse to record one address for two owners.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError>;
    fn is_taken(&self, network: &str, ip: Ipv4Addr) -> Result<bool, StoreError>;
    /// The address most recently handed out on `network` (where round robin continues).
    fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError>;
    /// Records `alloc` and makes its address the last handed out.
    fn insert(&self, alloc: &Allocation) -> Result<(), StoreError>;
    fn remove(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError>;
    /// Every allocation, or those of one network.
    fn list(&self, network: Option<&str>) -> Result<Vec<Allocation>, StoreError>;
    /// Every allocation, without its CNI result.
    fn summaries(&self) -> Result<Vec<AllocSummary>, StoreError> {
        Ok(self.list(None)?.iter().map(AllocSummary::from).collect())
    }
    /// Makes every change so far survive a crash of the daemon.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The remembered parameters of one network.
    fn network(&self, name: &str) -> Result<Option<NetworkRecord>, StoreError>;
    /// Every remembered network.
    fn networks(&self) -> Result<Vec<NetworkRecord>, StoreError>;
    /// Remembers a network's parameters; writes only when they changed (`Ok(true)`).
    fn put_network(&self, record: &NetworkRecord) -> Result<bool, StoreError>;
    /// Proves the store can still take a write and make it durable (STATUS asks this).
    fn probe(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Makes the address index agree with the allocations (an allocation whose address is not
    /// indexed would let that address be handed out again), given every allocation as
    /// [`Store::summaries`] read them just before; returns how many entries it fixed. Stores without
    /// a separate index have nothing to do.
    fn repair_index(&self, _allocs: &[AllocSummary]) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// Why no address could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {start}-{end} of network {network}: delete containers you no longer need or widen the range")]
    Exhausted {
        network: String,
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
    #[error("address {ip} is already in use by container {owner} on network {network}")]
    Taken {
        ip: Ipv4Addr,
        owner: String,
        network: String,
    },
    #[error("requested address {ip} is outside the range {start}-{end} that network {network} hands out{reserved}")]
    OutsideRange {
        ip: Ipv4Addr,
        start: Ipv4Addr,
        end: Ipv4Addr,
        network: String,
        reserved: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Chooses the next free address after `last` (round robin, like host-local), so an address that was
/// just released is not handed out again at once. Never returns the gateway, the network or the
/// broadcast address.
pub fn pick<E>(
    ipam: &IpamConf,
    last: Option<Ipv4Addr>,
    mut taken: impl FnMut(Ipv4Addr) -> Result<bool, E>,
) -> Result<Option<Ipv4Addr>, E> {
    let start = u32::from(ipam.range_start);
    let end = u32::from(ipam.range_end);
    let size = end - start + 1;
    let first = match last.map(u32::from) {
        Some(l) if (start..end).contains(&l) => l + 1,
        _ => start,
    };
    for i in 0..size {
        let candidate = Ipv4Addr::from(start + (first - start + i) % size);
        if ipam.assignable(candidate) && !taken(candidate)? {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Chooses the address for a new attachment: the requested one when it is free and in range,
/// otherwise the next free one.
pub fn choose<S: Store>(
    store: &S,
    network: &str,
    ipam: &IpamConf,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    choose_excluding(store, network, ipam, requested, &|_| false)
}

/// [`choose`], also treating the addresses `held` says yes to as taken (addresses that may still be
/// live in a container although no allocation records them).
pub fn choose_excluding<S: Store>(
    store: &S,
    network: &str,
    ipam: &IpamConf,
    requested: Option<Ipv4Addr>,
    held: &dyn Fn(Ipv4Addr) -> bool,
) -> Result<Ipv4Addr, IpamError> {
    let taken = |ip| -> Result<bool, StoreError> { Ok(held(ip) || store.is_taken(network, ip)?) };
    if let Some(ip) = requested {
        if !ipam.assignable(ip) {
            let reserved = if ip == ipam.gateway {
                " (it is the gateway)"
            } else if ip == ipam.subnet.network() || ip == ipam.subnet.broadcast() {
                " (it is the network or broadcast address)"
            } else {
                ""
            };
            return Err(IpamError::OutsideRange {
                ip,
                start: ipam.range_start,
                end: ipam.range_end,
                network: network.to_string(),
                reserved,
            });
        }
        if taken(ip)? {
            let owner = store
                .list(Some(network))?
                .into_iter()
                .find(|a| a.address == ip)
                .map(|a| a.container_name.unwrap_or(a.container_id))
                .unwrap_or_else(|| "unknown".into());
            return Err(IpamError::Taken {
                ip,
                owner,
                network: network.to_string(),
            });
        }
        return Ok(ip);
    }
    let last = store.last_handed_out(network)?;
    pick(ipam, last, taken)?.ok_or_else(|| IpamError::Exhausted {
        network: network.to_string(),
        start: ipam.range_start,
        end: ipam.range_end,
    })
}

/// Allocations in sled: tree `allocations` (key → JSON record), tree `addresses`
/// (network + address → key), tree `meta` (round-robin position per network, the STATUS probe),
/// tree `networks` (network name → JSON [`NetworkRecord`]).
pub struct SledStore {
    db: sled::Db,
    flushes: Arc<GroupFlush>,
    allocs: sled::Tree,
    addrs: sled::Tree,
    meta: sled::Tree,
    networks: sled::Tree,
}

/// sled's page cache (see [`SledStore::open`]).
const CACHE_BYTES: u64 = 8 << 20;

impl SledStore {
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        // sled's page cache defaults to 1 GiB and would hold the whole database in the daemon's
        // memory; 8 MiB keeps the hot part (the OS page cache serves the rest) and the daemon small.
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .open()?;
        Ok(SledStore {
            flushes: Arc::default(),
            allocs: db.open_tree("allocations")?,
            addrs: db.open_tree("addresses")?,
            meta: db.open_tree("meta")?,
            networks: db.open_tree("networks")?,
            db,
        })
    }
}

/// Group commit: concurrent [`Store::flush`] calls share one sled flush instead of each starting
/// its own. A caller queues itself after its writes; one task at a time takes everyone queued,
/// flushes (which makes every write made before it durable) and answers them all; whoever queued
/// meanwhile goes into the next flush.
#[derive(Default)]
struct GroupFlush {
    state: std::sync::Mutex<FlushQueue>,
}

#[derive(Default)]
struct FlushQueue {
    waiting: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    running: bool,
}

async fn group_flush(db: sled::Db, flushes: Arc<GroupFlush>) {
    /// Should the flush panic, the next caller starts a new task instead of waiting for this one.
    struct Running(Arc<GroupFlush>);
    impl Drop for Running {
        fn drop(&mut self) {
            if std::thread::panicking() {
                if let Ok(mut st) = self.0.state.lock() {
                    st.running = false;
                }
            }
        }
    }
    let _running = Running(flushes.clone());
    loop {
        let batch = {
            let mut st = flushes.state.lock().expect("flush state poisoned");
            if st.waiting.is_empty() {
                st.running = false;
                return;
            }
            std::mem::take(&mut st.waiting)
        };
        let result = db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        for tx in batch {
            let _ = tx.send(result.clone());
        }
    }
}

fn addr_key(network: &str, ip: Ipv4Addr) -> Vec<u8> {
    [network.as_bytes(), b"\0", &ip.octets()].concat()
}

fn last_key(network: &str) -> Vec<u8> {
    [b"last\0".as_slice(), network.as_bytes()].concat()
}

fn decode(bytes: &[u8]) -> Result<Allocation, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store for SledStore {
    fn get(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
        self.allocs
            .get(key.encode())?
            .map(|v| decode(&v))
            .transpose()
    }

    fn is_taken(&self, network: &str, ip: Ipv4Addr) -> Result<bool, StoreError> {
        Ok(self.addrs.contains_key(addr_key(network, ip))?)
    }

    fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError> {
        Ok(self
            .meta
            .get(last_key(network))?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok().map(Ipv4Addr::from)))
    }

    fn insert(&self, alloc: &Allocation) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError as Abortable, TransactionError};
        use sled::Transactional;
        let key = alloc.key().encode();
        let akey = addr_key(&alloc.network, alloc.address);
        let value = serde_json::to_vec(alloc).expect("Allocation is plain data");
        let res = (&self.allocs, &self.addrs, &self.meta).transaction(|(allocs, addrs, meta)| {
            if let Some(owner) = addrs.get(&akey)? {
                if owner.as_ref() != key.as_slice() {
                    return Err(Abortable::Abort(
                        String::from_utf8_lossy(&owner).replace('\0', "/"),
                    ));
                }
            }
            allocs.insert(key.as_slice(), value.as_slice())?;
            addrs.insert(akey.as_slice(), key.as_slice())?;
            meta.insert(last_key(&alloc.network), &alloc.address.octets())?;
            Ok(())
        });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(owner)) => Err(StoreError::AddressHeld {
                ip: alloc.address,
                owner,
            }),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    fn remove(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
        use sled::transaction::ConflictableTransactionError as Abortable;
        use sled::Transactional;
        let k = key.encode();
        let removed = (&self.allocs, &self.addrs).transaction(|(allocs, addrs)| {
            let Some(v) = allocs.remove(k.as_slice())? else {
                return Ok(None);
            };
            let alloc = decode(&v).map_err(Abortable::Abort)?;
            let akey = addr_key(&alloc.network, alloc.address);
            // Only drop the address index if it still points at this allocation.
            if addrs
                .get(&akey)?
                .is_some_and(|owner| owner.as_ref() == k.as_slice())
            {
                addrs.remove(akey)?;
            }
            Ok(Some(alloc))
        });
        removed.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        })
    }

    fn list(&self, network: Option<&str>) -> Result<Vec<Allocation>, StoreError> {
        let prefix = network
            .map(|n| [n.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        self.allocs
            .scan_prefix(prefix)
            .map(|kv| decode(&kv?.1))
            .collect()
    }

    fn summaries(&self) -> Result<Vec<AllocSummary>, StoreError> {
        self.allocs
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv?.1).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Outside a tokio runtime (some tests) there is no flusher task to hand the work to.
        if tokio::runtime::Handle::try_current().is_err() {
            self.db.flush_async().await?;
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut st = self.flushes.state.lock().expect("flush state poisoned");
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(group_flush(self.db.clone(), self.flushes.clone()));
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::Db(sled::Error::Io(std::io::Error::other(msg)))),
            Err(_) => Err(StoreError::Db(sled::Error::Io(std::io::Error::other(
                "the database's flusher stopped",
            )))),
        }
    }

    fn network(&self, name: &str) -> Result<Option<NetworkRecord>, StoreError> {
        self.networks
            .get(name.as_bytes())?
            .map(|v| decode_network(&v))
            .transpose()
    }

    fn networks(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        self.networks
            .iter()
            .map(|kv| decode_network(&kv?.1))
            .collect()
    }

    fn put_network(&self, record: &NetworkRecord) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(record).expect("NetworkRecord is plain data");
        if self
            .networks
            .get(record.name.as_bytes())?
            .is_some_and(|old| old.as_ref() == value.as_slice())
        {
            return Ok(false);
        }
        self.networks.insert(record.name.as_bytes(), value)?;
        Ok(true)
    }

    fn repair_index(&self, allocs: &[AllocSummary]) -> Result<usize, StoreError> {
        // One pass over the index (no lookup per record): what the allocations claim, what the
        // index says, then the differences.
        let mut claimed: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
        for a in allocs {
            let akey = addr_key(&a.network, a.address);
            let key = a.key().encode();
            if let Some(other) = claimed.get(&akey) {
                // Two records for one address: nothing here can tell which is right; say so loudly.
                tracing::error!(address = %a.address, network = %a.network,
                    first = %String::from_utf8_lossy(other).replace('\0', "/"),
                    second = %String::from_utf8_lossy(&key).replace('\0', "/"),
                    "two allocations hold the same address");
                continue;
            }
            claimed.insert(akey, key);
        }
        let mut wrong: Vec<sled::IVec> = Vec::new();
        for kv in self.addrs.iter() {
            let (akey, owner) = kv?;
            match claimed.get(akey.as_ref()) {
                Some(key) if key.as_slice() == owner.as_ref() => {
                    claimed.remove(akey.as_ref());
                }
                Some(_) => {}
                None => wrong.push(akey),
            }
        }
        let fixed = wrong.len() + claimed.len();
        for akey in wrong {
            self.addrs.remove(akey)?;
        }
        for (akey, key) in claimed {
            self.addrs.insert(akey, key)?;
        }
        Ok(fixed)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        // About the size of an allocation record, so a disk without room for one more fails here.
        let mut value = vec![0u8; 1024];
        value[..8].copy_from_slice(&now.to_be_bytes());
        self.meta.insert(b"probe", value)?;
        self.db.flush_async().await?;
        Ok(())
    }
}

fn decode_network(bytes: &[u8]) -> Result<NetworkRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("network record: {e}")))
}

/// An in-memory [`Store`] for tests of the logic above it.
#[derive(Default)]
pub struct MemStore {
    inner: std::sync::Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    allocs: std::collections::BTreeMap<AllocKey, Allocation>,
    last: std::collections::HashMap<String, Ipv4Addr>,
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

    fn is_taken(&self, network: &str, ip: Ipv4Addr) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .allocs
            .values()
            .any(|a| a.network == network && a.address == ip))
    }

    fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError> {
        Ok(self.lock().last.get(network).copied())
    }

    fn insert(&self, alloc: &Allocation) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = alloc.key();
        if let Some(other) = inner
            .allocs
            .values()
            .find(|a| a.network == alloc.network && a.address == alloc.address && a.key() != key)
        {
            return Err(StoreError::AddressHeld {
                ip: alloc.address,
                owner: other.container_id.clone(),
            });
        }
        inner.last.insert(alloc.network.clone(), alloc.address);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::NetConf;
    use std::collections::HashSet;

    pub(crate) fn ipam(extra: &str) -> IpamConf {
        let raw = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"subnet":"10.87.1.0/24"{extra}}}}}"#
        );
        NetConf::parse(raw.as_bytes()).unwrap().ipam
    }

    pub(crate) fn alloc(container: &str, ip: Ipv4Addr) -> Allocation {
        Allocation {
            aliases: Vec::new(),
            network: "n".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
            address: ip,
            prefix: 24,
            container_name: None,
            host_veth: "fn-00000000".into(),
            netns: "/run/netns/x".into(),
            created_unix: 0,
            boot_id: "b".into(),
            result: CniResult {
                interfaces: vec![],
                ips: vec![],
                routes: vec![],
                dns: serde_json::json!({}),
            },
        }
    }

    #[test]
    fn round_robin_skips_gateway_and_wraps() {
        let c = ipam("");
        let none = |_| Ok::<_, ()>(false);
        assert_eq!(pick(&c, None, none), Ok(Some(Ipv4Addr::new(10, 87, 1, 2))));
        assert_eq!(
            pick(&c, Some(Ipv4Addr::new(10, 87, 1, 7)), none),
            Ok(Some(Ipv4Addr::new(10, 87, 1, 8)))
        );
        assert_eq!(
            pick(&c, Some(Ipv4Addr::new(10, 87, 1, 254)), none),
            Ok(Some(Ipv4Addr::new(10, 87, 1, 2)))
        );
        // Everything taken: nothing to hand out.
        assert_eq!(pick(&c, None, |_| Ok::<_, ()>(true)), Ok(None));
    }

    #[test]
    fn whole_pool_then_exhausted_then_reuse_after_release() {
        let c = ipam(r#","rangeStart":"10.87.1.1","rangeEnd":"10.87.1.6""#);
        let store = MemStore::default();
        let mut seen = HashSet::new();
        for i in 0..5 {
            let ip = choose(&store, "n", &c, None).unwrap();
            assert_ne!(ip, c.gateway);
            assert!(seen.insert(ip), "{ip} handed out twice");
            store.insert(&alloc(&format!("c{i}"), ip)).unwrap();
        }
        assert!(matches!(
            choose(&store, "n", &c, None),
            Err(IpamError::Exhausted { .. })
        ));
        let freed = store.list(None).unwrap()[2].key();
        let freed_ip = store.remove(&freed).unwrap().unwrap().address;
        assert_eq!(choose(&store, "n", &c, None).unwrap(), freed_ip);
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let c = ipam("");
        let store = MemStore::default();
        let a = choose(&store, "n", &c, None).unwrap();
        store.insert(&alloc("a", a)).unwrap();
        store.remove(&alloc("a", a).key()).unwrap();
        let b = choose(&store, "n", &c, None).unwrap();
        assert_ne!(a, b);
    }

    /// Concurrent flushes share sled flushes (group commit) and every caller's write is durable:
    /// after the store is closed and opened again, every record is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_make_every_write_durable() {
        let dir =
            std::env::temp_dir().join(format!("flatnet-groupflush-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Arc::new(SledStore::open(&dir).unwrap());
            let tasks: Vec<_> = (1..=60u8)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store
                            .insert(&alloc(&format!("c{i}"), Ipv4Addr::new(10, 87, 1, i)))
                            .unwrap();
                        store.flush().await
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let st = store.flushes.state.lock().unwrap();
            assert!(
                st.waiting.is_empty() && !st.running,
                "the flusher stopped idle"
            );
        }
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.list(None).unwrap().len(), 60);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn requested_address_rules() {
        let c = ipam(r#","rangeStart":"10.87.1.10","rangeEnd":"10.87.1.20""#);
        let store = MemStore::default();
        let ip = Ipv4Addr::new(10, 87, 1, 15);
        assert_eq!(choose(&store, "n", &c, Some(ip)).unwrap(), ip);
        store.insert(&alloc("a", ip)).unwrap();
        assert!(matches!(
            choose(&store, "n", &c, Some(ip)),
            Err(IpamError::Taken { .. })
        ));
        for outside in [[10, 87, 1, 9], [10, 87, 1, 21], [10, 87, 2, 15]] {
            assert!(matches!(
                choose(&store, "n", &c, Some(Ipv4Addr::from(outside))),
                Err(IpamError::OutsideRange { .. })
            ));
        }
        let gw = ipam("");
        assert!(matches!(
            choose(&store, "n", &gw, Some(Ipv4Addr::new(10, 87, 1, 1))),
            Err(IpamError::OutsideRange { .. })
        ));
    }

    /// Opens the store again; sled's background threads may hold the file lock for a moment after
    /// the previous handle is dropped.
    fn reopen(dir: &Path) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(dir) {
                Ok(s) => return s,
                Err(StoreError::Db(sled::Error::Io(e))) if e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopening {}: {e}", dir.display()),
            }
        }
        panic!("{} stayed locked", dir.display())
    }

    #[test]
    fn sled_store_refuses_double_owner_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("flatnet-ipam-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ip = Ipv4Addr::new(10, 87, 1, 2);
        {
            let s = SledStore::open(&dir).unwrap();
            s.insert(&alloc("a", ip)).unwrap();
            assert!(matches!(
                s.insert(&alloc("b", ip)),
                Err(StoreError::AddressHeld { .. })
            ));
            assert!(s.is_taken("n", ip).unwrap());
            assert_eq!(s.last_handed_out("n").unwrap(), Some(ip));
            futures::executor::block_on(s.flush()).unwrap();
        }
        {
            let s = reopen(&dir);
            assert_eq!(s.get(&alloc("a", ip).key()).unwrap().unwrap().address, ip);
            assert_eq!(s.list(Some("n")).unwrap().len(), 1);
            assert_eq!(s.list(Some("other")).unwrap().len(), 0);
            assert!(s.remove(&alloc("a", ip).key()).unwrap().is_some());
            assert!(!s.is_taken("n", ip).unwrap());
            assert!(s.remove(&alloc("a", ip).key()).unwrap().is_none());
            let net = NetworkRecord {
                name: "n".into(),
                bridge: "br-n".into(),
                subnet: Ipv4Addr::new(10, 87, 1, 0),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 87, 1, 1),
                is_gateway: true,
                mtu: None,
                hairpin: false,
                range: None,
            };
            assert!(s.put_network(&net).unwrap());
            assert!(
                !s.put_network(&net).unwrap(),
                "unchanged: not written again"
            );
            // An allocation whose address lost its index entry, and an entry nobody owns.
            s.insert(&alloc("b", ip)).unwrap();
            s.addrs.remove(addr_key("n", ip)).unwrap();
            s.addrs
                .insert(
                    addr_key("n", Ipv4Addr::new(10, 87, 1, 9)),
                    b"n\0gone\0eth0".as_slice(),
                )
                .unwrap();
            assert!(!s.is_taken("n", ip).unwrap());
            assert_eq!(s.repair_index(&s.summaries().unwrap()).unwrap(), 2);
            assert!(s.is_taken("n", ip).unwrap());
            assert!(!s.is_taken("n", Ipv4Addr::new(10, 87, 1, 9)).unwrap());
            assert_eq!(s.repair_index(&s.summaries().unwrap()).unwrap(), 0);
            s.remove(&alloc("b", ip).key()).unwrap();
            futures::executor::block_on(s.probe()).unwrap();
        }
        {
            let s = reopen(&dir);
            assert_eq!(s.network("n").unwrap().unwrap().bridge, "br-n");
            assert_eq!(s.networks().unwrap().len(), 1);
            assert!(s.network("other").unwrap().is_none());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
