//! Address management: which address a container gets, and the durable record of who holds what
//! (and of each network's parameters, so the daemon can rebuild a bridge without a request).
//! The choice ([`pick`]) is pure; [`Store`] is the record, with sled ([`SledStore`], in
//! `sled_store.rs`) as the real one and [`MemStore`] (`mem_store.rs`) for tests.

use crate::config::{Ipam4, Ipam6};
use crate::result::CniResult;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

pub mod held;
mod mem_store;
mod sled_store;
#[cfg(any(test, feature = "fake"))]
pub mod testing;

#[cfg(test)]
use sled_store::addr_key;

pub use held::HeldBack;
pub use mem_store::MemStore;
pub use sled_store::SledStore;

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
    /// The IPv4 address; `None` on an IPv6-only network (records of older versions always have
    /// one, in this same form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The IPv4 address's prefix length (0 without one).
    #[serde(default)]
    pub prefix: u8,
    /// The IPv6 address and prefix length, on a dual-stack or IPv6-only network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<(Ipv6Addr, u8)>,
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
    /// The port the HTTP gateway routes to, when the runtime named one (see
    /// `NetConf::port`); 80 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The result handed to the runtime, so a repeated ADD can answer the same.
    pub result: CniResult,
}

impl Allocation {
    /// The IPv4 address with its prefix length, as the container holds it.
    pub fn network_address(&self) -> Option<ipnetwork::Ipv4Network> {
        self.address
            .and_then(|ip| ipnetwork::Ipv4Network::new(ip, self.prefix).ok())
    }

    /// The IPv6 address with its prefix length, on a network with an IPv6 range.
    pub fn network_address6(&self) -> Option<ipnetwork::Ipv6Network> {
        self.address6
            .and_then(|(ip, prefix)| ipnetwork::Ipv6Network::new(ip, prefix).ok())
    }

    /// Every address the attachment holds (IPv4, then IPv6).
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = self.address.map(IpAddr::V4);
        v4.into_iter()
            .chain(self.address6.map(|(a, _)| IpAddr::V6(a)))
    }

    /// Its addresses with their prefix lengths, for a log line or a message:
    /// `10.87.1.2/24 fd87:1::2/64`.
    pub fn address_text(&self) -> String {
        let v4 = self.network_address().map(|n| n.to_string());
        let v6 = self.network_address6().map(|n| n.to_string());
        v4.into_iter().chain(v6).collect::<Vec<_>>().join(" ")
    }

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
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    #[serde(default)]
    pub address6: Option<(Ipv6Addr, u8)>,
    pub host_veth: String,
    pub created_unix: u64,
    pub boot_id: String,
    /// The container's name (CNI_ARGS `K8S_POD_NAME`), when the runtime gave one.
    #[serde(default)]
    pub container_name: Option<String>,
    /// Its network aliases and gateway port (see [`Allocation`]): what its routes are made of.
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

impl AllocSummary {
    /// Its addresses, for a log line: `10.87.1.2 fd87:1::2`.
    pub fn address_text(&self) -> String {
        let v4 = self.address.map(|a| a.to_string());
        let v6 = self.address6.map(|(a, _)| a.to_string());
        v4.into_iter().chain(v6).collect::<Vec<_>>().join(" ")
    }

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
            address6: a.address6,
            host_veth: a.host_veth.clone(),
            created_unix: a.created_unix,
            boot_id: a.boot_id.clone(),
            container_name: a.container_name.clone(),
            aliases: a.aliases.clone(),
            port: a.port,
        }
    }
}

/// The parameters of a network as the last ADD that used it gave them: what reconcile needs to
/// recreate the bridge and its gateway address and to put host veths back on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub bridge: String,
    /// The IPv4 range; `None` on an IPv6-only network. Its fields sit at the top of the record,
    /// where records of older versions (always with IPv4) have them.
    #[serde(flatten)]
    pub v4: Option<NetworkRecord4>,
    pub is_gateway: bool,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    /// `ipMasq`, so the NAT table can be written again at start; false in older records.
    #[serde(default)]
    pub ip_masq: bool,
    /// The IPv6 range of a dual-stack or IPv6-only network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<NetworkRecord6>,
}

/// The IPv4 half of a [`NetworkRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord4 {
    /// The subnet's network address and prefix length.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The addresses it hands out (`rangeStart`, `rangeEnd`), for inspection; `None` in records
    /// written before the range was remembered.
    #[serde(default)]
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
}

impl NetworkRecord4 {
    pub fn subnet(&self) -> Option<ipnetwork::Ipv4Network> {
        ipnetwork::Ipv4Network::new(self.subnet, self.prefix).ok()
    }
}

impl NetworkRecord6 {
    pub fn subnet(&self) -> Option<ipnetwork::Ipv6Network> {
        ipnetwork::Ipv6Network::new(self.subnet, self.prefix).ok()
    }
}

/// The IPv6 half of a [`NetworkRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord6 {
    pub subnet: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Ipv6Addr,
    pub range: (Ipv6Addr, Ipv6Addr),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] sled::Error),
    #[error("state database holds a record that cannot be read ({0}); was it written by another version?")]
    Corrupt(String),
    #[error("address {ip} is already held by container {owner}")]
    AddressHeld { ip: IpAddr, owner: String },
}

/// The durable record of allocations. Callers serialise changes per network; implementations still
/// refuse to record one address for two owners.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError>;
    fn is_taken(&self, network: &str, ip: IpAddr) -> Result<bool, StoreError>;
    /// The address most recently handed out on `network` (where round robin continues).
    fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError>;
    /// The IPv6 address most recently handed out on `network`.
    fn last_handed_out6(&self, network: &str) -> Result<Option<Ipv6Addr>, StoreError>;
    /// Records `alloc` and makes its addresses the last handed out.
    fn insert(&self, alloc: &Allocation) -> Result<(), StoreError>;
    fn remove(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError>;
    /// Every allocation, or those of one network.
    fn list(&self, network: Option<&str>) -> Result<Vec<Allocation>, StoreError>;
    /// Every allocation, without its CNI result.
    fn summaries(&self) -> Result<Vec<AllocSummary>, StoreError> {
        Ok(self.list(None)?.iter().map(AllocSummary::from).collect())
    }
    /// The allocations of one container, named by a prefix of its id or by its name, on
    /// `network` if given. May return others besides (callers match exactly).
    fn of_container(
        &self,
        network: Option<&str>,
        container: &str,
    ) -> Result<Vec<Allocation>, StoreError> {
        let mut found = Vec::new();
        for s in self.summaries()? {
            let wanted = network.is_none_or(|n| s.network == n)
                && (s.container_id.starts_with(container)
                    || s.container_name.as_deref() == Some(container));
            if wanted {
                found.extend(self.get(&s.key())?);
            }
        }
        Ok(found)
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
        start: IpAddr,
        end: IpAddr,
    },
    #[error("address {ip} is already in use by container {owner} on network {network}")]
    Taken {
        ip: IpAddr,
        owner: String,
        network: String,
    },
    #[error("requested address {ip} is outside the range {start}-{end} that network {network} hands out{reserved}")]
    OutsideRange {
        ip: IpAddr,
        start: IpAddr,
        end: IpAddr,
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
    ipam: &Ipam4,
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
/// otherwise the next free one. An address is free when no record holds it and it is not `held`
/// back (see [`held`]).
pub fn choose<S: Store>(
    store: &S,
    held: &HeldBack,
    network: &str,
    ipam: &Ipam4,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let taken = |ip| -> Result<bool, StoreError> {
        Ok(held.is_held(network, ip) || store.is_taken(network, IpAddr::V4(ip))?)
    };
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
                ip: ip.into(),
                start: ipam.range_start.into(),
                end: ipam.range_end.into(),
                network: network.to_string(),
                reserved,
            });
        }
        if taken(ip)? {
            return Err(taken_by(store, network, ip.into())?);
        }
        return Ok(ip);
    }
    let last = store.last_handed_out(network)?;
    pick(ipam, last, taken)?.ok_or_else(|| IpamError::Exhausted {
        network: network.to_string(),
        start: ipam.range_start.into(),
        end: ipam.range_end.into(),
    })
}

/// The error for a requested address that is taken, naming who holds it.
fn taken_by<S: Store>(store: &S, network: &str, ip: IpAddr) -> Result<IpamError, StoreError> {
    let owner = store
        .list(Some(network))?
        .into_iter()
        .find(|a| a.addresses().any(|held| held == ip))
        .map(|a| a.container_name.unwrap_or(a.container_id))
        .unwrap_or_else(|| "unknown".into());
    Ok(IpamError::Taken {
        ip,
        owner,
        network: network.to_string(),
    })
}

/// The IPv6 address for a new attachment of a dual-stack or IPv6-only network, chosen as [`choose`] chooses
/// the IPv4 one: the requested one when it is free and in range, otherwise the next free one
/// after the last handed out.
pub fn choose6<S: Store>(
    store: &S,
    held: &HeldBack,
    network: &str,
    v6: &Ipam6,
    requested: Option<Ipv6Addr>,
) -> Result<Ipv6Addr, IpamError> {
    let taken = |ip: Ipv6Addr| -> Result<bool, StoreError> {
        Ok(held.is_held(network, ip) || store.is_taken(network, IpAddr::V6(ip))?)
    };
    if let Some(ip) = requested {
        if !v6.assignable(ip) {
            let reserved = if ip == v6.gateway {
                " (it is the gateway)"
            } else if ip == v6.subnet.network() {
                " (it is the subnet-router anycast address)"
            } else {
                ""
            };
            return Err(IpamError::OutsideRange {
                ip: ip.into(),
                start: v6.range_start.into(),
                end: v6.range_end.into(),
                network: network.to_string(),
                reserved,
            });
        }
        if taken(ip)? {
            return Err(taken_by(store, network, ip.into())?);
        }
        return Ok(ip);
    }
    let (start, end) = (u128::from(v6.range_start), u128::from(v6.range_end));
    let size = end - start + 1;
    let first = match store.last_handed_out6(network)?.map(u128::from) {
        Some(l) if (start..end).contains(&l) => l + 1,
        _ => start,
    };
    // Round robin over the range; a /64 is never searched far, a small range to its end.
    let mut i = 0u128;
    while i < size {
        let candidate = Ipv6Addr::from(start + (first - start + i) % size);
        if v6.assignable(candidate) && !taken(candidate)? {
            return Ok(candidate);
        }
        i += 1;
    }
    Err(IpamError::Exhausted {
        network: network.to_string(),
        start: v6.range_start.into(),
        end: v6.range_end.into(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::NetConf;
    use std::collections::HashSet;

    pub(crate) fn ipam(extra: &str) -> Ipam4 {
        let raw = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"subnet":"10.87.1.0/24"{extra}}}}}"#
        );
        NetConf::parse(raw.as_bytes()).unwrap().ipam.v4.unwrap()
    }

    pub(crate) fn alloc(container: &str, ip: Ipv4Addr) -> Allocation {
        super::testing::allocation(container, ip, 24)
    }

    #[test]
    fn records_of_either_shape_read_back() {
        // A network record as versions before IPv6-only networks wrote it: IPv4 at the top.
        let old = r#"{"name":"n","bridge":"br","subnet":"10.87.1.0","prefix":24,
            "gateway":"10.87.1.1","is_gateway":true,"mtu":null,"hairpin":false,
            "range":["10.87.1.1","10.87.1.254"],"ip_masq":true}"#;
        let rec: NetworkRecord = serde_json::from_str(old).unwrap();
        let v4 = rec.v4.as_ref().expect("the IPv4 half");
        assert_eq!(v4.subnet().unwrap().to_string(), "10.87.1.0/24");
        assert_eq!(
            v4.range,
            Some((Ipv4Addr::new(10, 87, 1, 1), Ipv4Addr::new(10, 87, 1, 254)))
        );
        assert_eq!(
            serde_json::from_slice::<NetworkRecord>(&serde_json::to_vec(&rec).unwrap()).unwrap(),
            rec
        );
        // An IPv6-only network: no IPv4 keys, and none come back.
        let only6 = NetworkRecord {
            v4: None,
            v6: Some(NetworkRecord6 {
                subnet: "fd87:1::".parse().unwrap(),
                prefix: 64,
                gateway: "fd87:1::1".parse().unwrap(),
                range: (
                    "fd87:1::1".parse().unwrap(),
                    "fd87:1::ffff".parse().unwrap(),
                ),
            }),
            ..rec
        };
        let text = serde_json::to_string(&only6).unwrap();
        assert!(!text.contains("\"subnet\":\"10."), "{text}");
        assert_eq!(serde_json::from_str::<NetworkRecord>(&text).unwrap(), only6);

        // An allocation without an IPv4 address, and one of an older version.
        let mut a = alloc("c", Ipv4Addr::new(10, 87, 1, 2));
        let older = serde_json::to_string(&a).unwrap();
        assert!(
            older.contains("\"address\":\"10.87.1.2\",\"prefix\":24"),
            "{older}"
        );
        a.address = None;
        a.prefix = 0;
        a.address6 = Some(("fd87:1::2".parse().unwrap(), 64));
        let back: Allocation = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(back.address, None);
        assert_eq!(back.network_address(), None);
        assert_eq!(back.address_text(), "fd87:1::2/64");
        assert_eq!(
            back.addresses().collect::<Vec<_>>(),
            [IpAddr::V6("fd87:1::2".parse().unwrap())]
        );
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
            let ip = choose(&store, HeldBack::none(), "n", &c, None).unwrap();
            assert_ne!(ip, c.gateway);
            assert!(seen.insert(ip), "{ip} handed out twice");
            store.insert(&alloc(&format!("c{i}"), ip)).unwrap();
        }
        assert!(matches!(
            choose(&store, HeldBack::none(), "n", &c, None),
            Err(IpamError::Exhausted { .. })
        ));
        let freed = store.list(None).unwrap()[2].key();
        let freed_ip = store.remove(&freed).unwrap().unwrap().address.unwrap();
        assert_eq!(
            choose(&store, HeldBack::none(), "n", &c, None).unwrap(),
            freed_ip
        );
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let c = ipam("");
        let store = MemStore::default();
        let a = choose(&store, HeldBack::none(), "n", &c, None).unwrap();
        store.insert(&alloc("a", a)).unwrap();
        store.remove(&alloc("a", a).key()).unwrap();
        let b = choose(&store, HeldBack::none(), "n", &c, None).unwrap();
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
            assert!(store.flusher_idle(), "the flusher stopped idle");
        }
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.list(None).unwrap().len(), 60);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Many records are decoded on several threads; they come back whole and in key order.
    #[test]
    fn many_records_read_back_in_order() {
        let dir = std::env::temp_dir().join(format!("flatnet-many-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SledStore::open(&dir).unwrap();
        let mut made: Vec<Allocation> = (0..2_500u32)
            .map(|i| {
                let mut a = alloc(&format!("c{i:05}"), Ipv4Addr::from(0x0a57_0000 + i));
                a.aliases = vec![format!("alias{i}")];
                a
            })
            .collect();
        for a in &made {
            store.insert(a).unwrap();
        }
        made.sort_by_key(|a| a.key().encode());
        assert_eq!(store.list(None).unwrap(), made);
        let summaries: Vec<AllocSummary> = made.iter().map(AllocSummary::from).collect();
        assert_eq!(store.summaries().unwrap(), summaries);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A container is found by a prefix of its id or by its exact name, also when the name has
    /// characters JSON escapes; sled's search of the raw records finds what reading every
    /// summary finds.
    #[test]
    fn a_containers_records_are_found_without_reading_every_one() {
        let dir = std::env::temp_dir().join(format!("flatnet-of-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sled = SledStore::open(&dir).unwrap();
        let mem = MemStore::default();
        let named = [
            ("aaaa1111", "n", Some("web")),
            ("aaaa2222", "n", Some("web2")),
            ("bbbb1111", "n", Some("we\"b\\")),
            ("cccc1111", "m", Some("web")),
            ("dddd1111", "n", None),
        ];
        for (i, (id, network, name)) in named.iter().enumerate() {
            let mut a = alloc(id, Ipv4Addr::new(10, 87, 1, 10 + i as u8));
            a.network = network.to_string();
            a.container_name = name.map(str::to_string);
            sled.insert(&a).unwrap();
            mem.insert(&a).unwrap();
        }
        let found = |store: &dyn Fn(Option<&str>, &str) -> Vec<Allocation>,
                     network: Option<&str>,
                     c: &str| {
            let mut ids: Vec<String> = store(network, c)
                .into_iter()
                .filter(|a| crate::inspect::matches_container(a, c))
                .map(|a| format!("{}/{}", a.network, a.container_id))
                .collect();
            ids.sort();
            ids
        };
        let in_sled = |n: Option<&str>, c: &str| sled.of_container(n, c).unwrap();
        let in_mem = |n: Option<&str>, c: &str| mem.of_container(n, c).unwrap();
        for (network, c, want) in [
            (None, "web", vec!["m/cccc1111", "n/aaaa1111"]),
            (Some("n"), "web", vec!["n/aaaa1111"]),
            (None, "aaaa", vec!["n/aaaa1111", "n/aaaa2222"]),
            (None, "we\"b\\", vec!["n/bbbb1111"]),
            (None, "we", vec![]),
            (None, "eeee", vec![]),
        ] {
            assert_eq!(found(&in_sled, network, c), want, "{network:?} {c}");
            assert_eq!(found(&in_mem, network, c), want, "{network:?} {c}");
        }
        drop(sled);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn requested_address_rules() {
        let c = ipam(r#","rangeStart":"10.87.1.10","rangeEnd":"10.87.1.20""#);
        let store = MemStore::default();
        let ip = Ipv4Addr::new(10, 87, 1, 15);
        assert_eq!(
            choose(&store, HeldBack::none(), "n", &c, Some(ip)).unwrap(),
            ip
        );
        store.insert(&alloc("a", ip)).unwrap();
        assert!(matches!(
            choose(&store, HeldBack::none(), "n", &c, Some(ip)),
            Err(IpamError::Taken { .. })
        ));
        for outside in [[10, 87, 1, 9], [10, 87, 1, 21], [10, 87, 2, 15]] {
            assert!(matches!(
                choose(
                    &store,
                    HeldBack::none(),
                    "n",
                    &c,
                    Some(Ipv4Addr::from(outside))
                ),
                Err(IpamError::OutsideRange { .. })
            ));
        }
        let gw = ipam("");
        assert!(matches!(
            choose(
                &store,
                HeldBack::none(),
                "n",
                &gw,
                Some(Ipv4Addr::new(10, 87, 1, 1))
            ),
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
            assert!(s.is_taken("n", ip.into()).unwrap());
            assert_eq!(s.last_handed_out("n").unwrap(), Some(ip));
            futures::executor::block_on(s.flush()).unwrap();
        }
        {
            let s = reopen(&dir);
            assert_eq!(
                s.get(&alloc("a", ip).key()).unwrap().unwrap().address,
                Some(ip)
            );
            assert_eq!(s.list(Some("n")).unwrap().len(), 1);
            assert_eq!(s.list(Some("other")).unwrap().len(), 0);
            assert!(s.remove(&alloc("a", ip).key()).unwrap().is_some());
            assert!(!s.is_taken("n", ip.into()).unwrap());
            assert!(s.remove(&alloc("a", ip).key()).unwrap().is_none());
            let net = testing::network("n", "br-n");
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
            assert!(!s.is_taken("n", ip.into()).unwrap());
            assert_eq!(s.repair_index(&s.summaries().unwrap()).unwrap(), 2);
            assert!(s.is_taken("n", ip.into()).unwrap());
            assert!(!s.is_taken("n", Ipv4Addr::new(10, 87, 1, 9).into()).unwrap());
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
