//! The durable [`Store`]: sled, with writes made durable by one shared flush.

use super::*;

/// Allocations in sled: tree `allocations` (key → JSON record), tree `addresses`
/// (network + address → key), tree `meta` (round-robin position per network, the STATUS probe),
/// tree `networks` (network name → JSON [`NetworkRecord`]).
pub struct SledStore {
    db: sled::Db,
    flushes: Arc<GroupFlush>,
    allocs: sled::Tree,
    pub(super) addrs: sled::Tree,
    meta: sled::Tree,
    networks: sled::Tree,
}

/// sled's page cache (see [`SledStore::open`]).
const CACHE_BYTES: u64 = 8 << 20;

impl SledStore {
    /// Whether no flush runs or waits (for the tests of the shared flush).
    #[cfg(test)]
    pub(super) fn flusher_idle(&self) -> bool {
        let st = self.flushes.state.lock().unwrap();
        st.waiting.is_empty() && !st.running
    }

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

/// The index key of an address: 4 bytes after the network name for IPv4, 16 for IPv6.
pub(super) fn addr_key(network: &str, ip: impl Into<IpAddr>) -> Vec<u8> {
    match ip.into() {
        IpAddr::V4(ip) => [network.as_bytes(), b"\0", &ip.octets()].concat(),
        IpAddr::V6(ip) => [network.as_bytes(), b"\0", &ip.octets()].concat(),
    }
}

fn last_key(network: &str) -> Vec<u8> {
    [b"last\0".as_slice(), network.as_bytes()].concat()
}

fn last6_key(network: &str) -> Vec<u8> {
    [b"last6\0".as_slice(), network.as_bytes()].concat()
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| haystack[i + 1..].starts_with(rest))
}

fn decode(bytes: &[u8]) -> Result<Allocation, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Below this many records one thread decodes them all.
const PARALLEL_FROM: usize = 1_000;

/// Decodes `values` in order, on one thread per CPU (at most 4) when there are many: parsing the
/// JSON is most of the time reading 10,000 records takes, and the start-up pass waits for it.
fn decode_in_parallel<T: serde::de::DeserializeOwned + Send>(
    values: &[sled::IVec],
) -> Result<Vec<T>, StoreError> {
    let decode_all = |part: &[sled::IVec]| -> Result<Vec<T>, StoreError> {
        part.iter()
            .map(|v| serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if values.len() < PARALLEL_FROM || threads < 2 {
        return decode_all(values);
    }
    let chunk = values.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = values
            .chunks(chunk)
            .skip(1)
            .map(|part| scope.spawn(move || decode_all(part)))
            .collect();
        let mut all = decode_all(&values[..chunk])?;
        for part in parts {
            all.extend(part.join().expect("decoding does not panic")?);
        }
        Ok(all)
    })
}

impl Store for SledStore {
    fn get(&self, key: &AllocKey) -> Result<Option<Allocation>, StoreError> {
        self.allocs
            .get(key.encode())?
            .map(|v| decode(&v))
            .transpose()
    }

    fn is_taken(&self, network: &str, ip: IpAddr) -> Result<bool, StoreError> {
        Ok(self.addrs.contains_key(addr_key(network, ip))?)
    }

    fn last_handed_out(&self, network: &str) -> Result<Option<Ipv4Addr>, StoreError> {
        Ok(self
            .meta
            .get(last_key(network))?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok().map(Ipv4Addr::from)))
    }

    fn last_handed_out6(&self, network: &str) -> Result<Option<Ipv6Addr>, StoreError> {
        Ok(self
            .meta
            .get(last6_key(network))?
            .and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok().map(Ipv6Addr::from)))
    }

    fn insert(&self, alloc: &Allocation) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError as Abortable, TransactionError};
        use sled::Transactional;
        let key = alloc.key().encode();
        let akeys: Vec<(IpAddr, Vec<u8>)> = alloc
            .addresses()
            .map(|ip| (ip, addr_key(&alloc.network, ip)))
            .collect();
        let value = serde_json::to_vec(alloc).expect("Allocation is plain data");
        let res = (&self.allocs, &self.addrs, &self.meta).transaction(|(allocs, addrs, meta)| {
            for (ip, akey) in &akeys {
                if let Some(owner) = addrs.get(akey)? {
                    if owner.as_ref() != key.as_slice() {
                        return Err(Abortable::Abort((
                            *ip,
                            String::from_utf8_lossy(&owner).replace('\0', "/"),
                        )));
                    }
                }
            }
            allocs.insert(key.as_slice(), value.as_slice())?;
            for (_, akey) in &akeys {
                addrs.insert(akey.as_slice(), key.as_slice())?;
            }
            if let Some(ip) = alloc.address {
                meta.insert(last_key(&alloc.network), &ip.octets())?;
            }
            if let Some((ip6, _)) = alloc.address6 {
                meta.insert(last6_key(&alloc.network), &ip6.octets())?;
            }
            Ok(())
        });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort((ip, owner))) => Err(StoreError::AddressHeld { ip, owner }),
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
            for ip in alloc.addresses() {
                let akey = addr_key(&alloc.network, ip);
                // Only drop the address index if it still points at this allocation.
                if addrs
                    .get(&akey)?
                    .is_some_and(|owner| owner.as_ref() == k.as_slice())
                {
                    addrs.remove(akey)?;
                }
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
        let values = self.allocs.scan_prefix(prefix).values();
        decode_in_parallel(&values.collect::<Result<Vec<_>, _>>()?)
    }

    /// Decodes only the records that can match: the container id is in the key, and the name,
    /// as the record's JSON spells it, is looked for in the raw bytes (reading 10,000 records in
    /// full takes tens of ms; this a few).
    fn of_container(
        &self,
        network: Option<&str>,
        container: &str,
    ) -> Result<Vec<Allocation>, StoreError> {
        let name =
            serde_json::to_string(container).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let name_field = [b"\"container_name\":".as_slice(), name.as_bytes()].concat();
        let prefix = network
            .map(|n| [n.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        let mut found = Vec::new();
        for pair in self.allocs.scan_prefix(prefix) {
            let (key, value) = pair?;
            let id = key.split(|b| *b == 0).nth(1).unwrap_or_default();
            if id.starts_with(container.as_bytes()) || contains(&value, &name_field) {
                found.push(decode(&value)?);
            }
        }
        Ok(found)
    }

    fn summaries(&self) -> Result<Vec<AllocSummary>, StoreError> {
        let values = self.allocs.iter().values().collect::<Result<Vec<_>, _>>()?;
        decode_in_parallel(&values)
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
            let key = a.key().encode();
            let v4 = a.address.map(IpAddr::V4);
            for ip in v4.into_iter().chain(a.address6.map(|(ip, _)| ip.into())) {
                let akey = addr_key(&a.network, ip);
                if let Some(other) = claimed.get(&akey) {
                    // Two records for one address: nothing here can tell which is right; say so loudly.
                    tracing::error!(address = %ip, network = %a.network,
                        first = %String::from_utf8_lossy(other).replace('\0', "/"),
                        second = %String::from_utf8_lossy(&key).replace('\0', "/"),
                        "two allocations hold the same address");
                    continue;
                }
                claimed.insert(akey, key.clone());
            }
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
