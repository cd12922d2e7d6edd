//! The inspection service (`flatnet.v1.Inspect`): converts the store's records, the daemon's own
//! facts and the allocation events into proto messages for flatnetctl, grpcurl and the gateway.
//! `Gc` is the one method that changes anything: it runs the engine's sweep now.
//! Address arithmetic shared with the metrics page ([`network_usage`]) lives here too.

use crate::engine::reconcile::{Pass, Summary};
use crate::engine::Engine;
use crate::events::{Event, EventKind};
use crate::ipam::{self, NetworkRecord, Store, StoreError};
use crate::netlink::Netlink;
use crate::spool::Spool;
use flatnet_proto::v1;
use ipnetwork::Ipv4Network;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

/// Facts about the running daemon that `Status` reports.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub started: Instant,
    /// Seconds since the Unix epoch.
    pub started_unix: u64,
    /// `None`: no periodic sweep.
    pub sweep_interval: Option<Duration>,
    pub metrics_listen: Option<SocketAddr>,
}

impl DaemonInfo {
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

pub struct InspectService<N, S> {
    engine: Arc<Engine<N, S>>,
    spool: Arc<Spool>,
    info: DaemonInfo,
    /// Turns true when the daemon stops; open watches end then.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl<N, S> InspectService<N, S> {
    pub fn new(
        engine: Arc<Engine<N, S>>,
        spool: Arc<Spool>,
        info: DaemonInfo,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        InspectService {
            engine,
            spool,
            info,
            stop,
        }
    }
}

/// Whether `a` is the container a user named: its full id, an id prefix, or its name.
pub fn matches_container(a: &ipam::Allocation, wanted: &str) -> bool {
    wanted.is_empty()
        || a.container_id.starts_with(wanted)
        || a.container_name.as_deref() == Some(wanted)
}

fn to_proto(a: ipam::Allocation) -> v1::Allocation {
    v1::Allocation {
        address: a
            .address
            .map_or(String::new(), |ip| format!("{ip}/{}", a.prefix)),
        address6: a
            .address6
            .map_or(String::new(), |(ip, prefix)| format!("{ip}/{prefix}")),
        network: a.network,
        container_id: a.container_id,
        ifname: a.ifname,
        container_name: a.container_name.unwrap_or_default(),
        aliases: a.aliases,
        host_veth: a.host_veth,
        netns: a.netns,
        created_unix: a.created_unix,
        boot_id: a.boot_id,
    }
}

fn route_to_proto(r: crate::routes::Route) -> v1::Route {
    use crate::routes::State;
    let state = match r.state {
        State::Probing => v1::RouteState::Probing,
        State::Up => v1::RouteState::Up,
        State::Down => v1::RouteState::Down,
    };
    v1::Route {
        name: r.name,
        network: r.network,
        address: r.address.to_string(),
        port: u32::from(r.port),
        state: state.into(),
        container_id: r.container_id,
    }
}

fn event_to_proto(e: Event) -> v1::AllocationEvent {
    let kind = match e.kind {
        EventKind::Added => v1::EventKind::Added,
        EventKind::Released => v1::EventKind::Released,
    };
    v1::AllocationEvent {
        kind: kind.into(),
        allocation: Some(to_proto(e.allocation)),
        time_unix_ms: e.time_unix_ms,
    }
}

/// One network with its address counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkUsage {
    pub record: NetworkRecord,
    /// On a network with an IPv4 range.
    pub v4: Option<Usage4>,
    /// On a network with an IPv6 range: IPv6 addresses held, and those that can still be handed
    /// out (at most `u64::MAX`).
    pub v6: Option<(u64, u64)>,
}

/// The IPv4 counts of a [`NetworkUsage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage4 {
    /// The range handed out: the remembered one, or every host address of the subnet.
    pub range: (Ipv4Addr, Ipv4Addr),
    pub in_use: u64,
    pub free: u64,
}

/// Every remembered network with how many addresses are held and how many can still be handed
/// out, sorted by name. Reads the store twice (networks, allocations); nothing is locked.
pub fn network_usage<S: Store>(store: &S) -> Result<Vec<NetworkUsage>, StoreError> {
    let mut held: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut held6: BTreeMap<String, BTreeSet<u128>> = BTreeMap::new();
    for a in store.list(None)? {
        if let Some((ip6, _)) = a.address6 {
            held6
                .entry(a.network.clone())
                .or_default()
                .insert(u128::from(ip6));
        }
        held.entry(a.network).or_default().extend(a.address);
    }
    let mut out: Vec<NetworkUsage> = store
        .networks()?
        .into_iter()
        .map(|record| {
            let addrs = held
                .get(&record.name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let v4 = record.v4.as_ref().map(|v4| usage(v4, addrs));
            let v6 = record.v6.as_ref().map(|v6| {
                let used = held6.get(&record.name).cloned().unwrap_or_default();
                usage6(v6, &used)
            });
            NetworkUsage { record, v4, v6 }
        })
        .collect();
    out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    Ok(out)
}

fn usage(record: &ipam::NetworkRecord4, held: &[Ipv4Addr]) -> Usage4 {
    let subnet = Ipv4Network::new(record.subnet, record.prefix)
        .unwrap_or_else(|_| Ipv4Network::from(record.subnet));
    let (network, broadcast) = (u32::from(subnet.network()), u32::from(subnet.broadcast()));
    let range = record.range.unwrap_or_else(|| {
        if broadcast - network >= 2 {
            (Ipv4Addr::from(network + 1), Ipv4Addr::from(broadcast - 1))
        } else {
            (subnet.network(), subnet.broadcast())
        }
    });
    let (start, end) = (u32::from(range.0), u32::from(range.1));
    // The same rule as `Ipam4::assignable`: in range, not the gateway, network or broadcast.
    let assignable = |ip: u32| {
        (start..=end).contains(&ip)
            && ip != u32::from(record.gateway)
            && ip != network
            && ip != broadcast
    };
    let reserved: BTreeSet<u32> = [u32::from(record.gateway), network, broadcast]
        .into_iter()
        .filter(|ip| (start..=end).contains(ip))
        .collect();
    let size = u64::from(end.saturating_sub(start)) + u64::from(start <= end);
    let capacity = size.saturating_sub(reserved.len() as u64);
    let distinct: BTreeSet<u32> = held.iter().map(|ip| u32::from(*ip)).collect();
    let used_in_range = distinct.iter().filter(|ip| assignable(**ip)).count() as u64;
    Usage4 {
        range,
        in_use: held.len() as u64,
        free: capacity.saturating_sub(used_in_range),
    }
}

/// IPv6 addresses held and still free in a network's IPv6 range (the gateway and the subnet's
/// first address are never handed out).
fn usage6(v6: &ipam::NetworkRecord6, held: &BTreeSet<u128>) -> (u64, u64) {
    let (start, end) = (u128::from(v6.range.0), u128::from(v6.range.1));
    let in_range = |ip: u128| (start..=end).contains(&ip);
    let reserved = [u128::from(v6.gateway), u128::from(v6.subnet)]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|ip| in_range(*ip))
        .count() as u128;
    let used = held.iter().filter(|ip| in_range(**ip)).count() as u128;
    let size = (end - start).saturating_add(1);
    let free = size.saturating_sub(reserved).saturating_sub(used);
    (held.len() as u64, u64::try_from(free).unwrap_or(u64::MAX))
}

/// DELs waiting in the spool: files named like spool entries (what `Spool::pending` would read),
/// counted without reading, moving or rejecting anything.
pub fn pending_releases(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(flatnet_proto::spool::is_file_name)
                })
                .count() as u64
        })
        .unwrap_or(0)
}

fn store_status(e: StoreError) -> Status {
    Status::internal(format!("reading the address database: {e}"))
}

/// An address as a user may give it: `10.87.1.2` or `10.87.1.2/24`.
fn parse_address(raw: &str) -> Result<std::net::IpAddr, Status> {
    let ip = raw.split_once('/').map_or(raw, |(ip, _)| ip).trim();
    ip.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "{raw:?} is not an IP address (like 10.87.1.2 or fd87:1::2)"
        ))
    })
}

/// The allocations a `GetAllocation` names. A full id or a name wins over an id prefix; more
/// than one container left is an error that lists them.
fn select_container(
    list: Vec<ipam::Allocation>,
    wanted: &str,
) -> Result<Vec<ipam::Allocation>, Status> {
    let mut found: Vec<_> = list
        .into_iter()
        .filter(|a| matches_container(a, wanted))
        .collect();
    let exact = |a: &ipam::Allocation| {
        a.container_id == wanted || a.container_name.as_deref() == Some(wanted)
    };
    if found.iter().any(exact) {
        found.retain(exact);
    }
    let containers: BTreeMap<&str, &str> = found
        .iter()
        .map(|a| {
            (
                a.container_id.as_str(),
                a.container_name.as_deref().unwrap_or(""),
            )
        })
        .collect();
    if containers.len() > 1 {
        let names: Vec<String> = containers
            .iter()
            .map(|(id, name)| format!("{} ({name})", &id[..id.len().min(12)]))
            .collect();
        return Err(Status::invalid_argument(format!(
            "{wanted:?} matches {} containers: {}; give more of the id",
            containers.len(),
            names.join(", ")
        )));
    }
    Ok(found)
}

fn gc_to_proto(s: &Summary, took: Duration) -> v1::GcResponse {
    let n = |v: usize| v as u64;
    v1::GcResponse {
        kept: n(s.kept),
        waiting: n(s.waiting),
        released_gone: n(s.released_gone),
        released_earlier_boot: n(s.released_earlier_boot),
        links_removed: n(s.links_removed),
        reattached: n(s.reattached),
        spooled_applied: n(s.spool_applied),
        spooled_stale: n(s.spool_discarded),
        spooled_rejected: n(s.spool_rejected),
        spooled_pending: n(s.spool_failed),
        failures: s.failures.clone(),
        duration_ms: took.as_millis() as u64,
    }
}

/// Refuses callers other than root, like the Cni service does.
fn authorize<T>(method: &str, request: &Request<T>) -> Result<(), Status> {
    crate::server::authorize(request)
        .map(|_| ())
        .map_err(|msg| {
            tracing::warn!(method, "refused: {msg}");
            Status::permission_denied(msg)
        })
}

type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<v1::AllocationEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<N: Netlink, S: Store> v1::inspect_server::Inspect for InspectService<N, S> {
    async fn list_allocations(
        &self,
        request: Request<v1::ListAllocationsRequest>,
    ) -> Result<Response<v1::ListAllocationsResponse>, Status> {
        authorize("ListAllocations", &request)?;
        let req = request.into_inner();
        let network = (!req.network.is_empty()).then_some(req.network.as_str());
        let store = self.engine.store();
        let mut list = if req.container.is_empty() {
            store.list(network).map_err(store_status)?
        } else {
            store
                .of_container(network, &req.container)
                .map_err(store_status)?
        };
        list.retain(|a| matches_container(a, &req.container));
        list.sort_by(|a, b| {
            (&a.network, a.address, a.address6).cmp(&(&b.network, b.address, b.address6))
        });
        tracing::debug!(method = "ListAllocations", found = list.len(), "inspect");
        Ok(Response::new(v1::ListAllocationsResponse {
            allocations: list.into_iter().map(to_proto).collect(),
        }))
    }

    async fn get_allocation(
        &self,
        request: Request<v1::GetAllocationRequest>,
    ) -> Result<Response<v1::GetAllocationResponse>, Status> {
        use v1::get_allocation_request::Key;
        authorize("GetAllocation", &request)?;
        let req = request.into_inner();
        let network = (!req.network.is_empty()).then_some(req.network.as_str());
        let list = self.engine.store().list(network).map_err(store_status)?;
        let (mut found, what) = match req.key {
            Some(Key::Address(raw)) => {
                let ip = parse_address(&raw)?;
                let found: Vec<_> = list
                    .into_iter()
                    .filter(|a| a.addresses().any(|held| held == ip))
                    .collect();
                (found, format!("address {ip}"))
            }
            Some(Key::Container(c)) if !c.is_empty() => {
                (select_container(list, &c)?, format!("container {c:?}"))
            }
            _ => {
                return Err(Status::invalid_argument(
                    "give an address or a container (id, id prefix or name)",
                ))
            }
        };
        if found.is_empty() {
            let scope = network.map_or(String::new(), |n| format!(" on network {n}"));
            return Err(Status::not_found(format!(
                "no allocation for {what}{scope}"
            )));
        }
        found.sort_by(|a, b| (&a.network, &a.ifname).cmp(&(&b.network, &b.ifname)));
        Ok(Response::new(v1::GetAllocationResponse {
            allocations: found.into_iter().map(to_proto).collect(),
        }))
    }

    async fn list_networks(
        &self,
        request: Request<v1::ListNetworksRequest>,
    ) -> Result<Response<v1::ListNetworksResponse>, Status> {
        authorize("ListNetworks", &request)?;
        let networks = network_usage(self.engine.store())
            .map_err(store_status)?
            .into_iter()
            .map(|u| {
                let v4 = u.record.v4.as_ref();
                v1::Network {
                    subnet: v4.map_or(String::new(), |v| format!("{}/{}", v.subnet, v.prefix)),
                    gateway: v4.map_or(String::new(), |v| v.gateway.to_string()),
                    is_gateway: u.record.is_gateway,
                    range_start: u
                        .v4
                        .as_ref()
                        .map_or(String::new(), |v| v.range.0.to_string()),
                    range_end: u
                        .v4
                        .as_ref()
                        .map_or(String::new(), |v| v.range.1.to_string()),
                    mtu: u.record.mtu.unwrap_or(0),
                    addresses_in_use: u.v4.as_ref().map_or(0, |v| v.in_use),
                    addresses_free: u.v4.as_ref().map_or(0, |v| v.free),
                    addresses6_in_use: u.v6.map_or(0, |v| v.0),
                    addresses6_free: u.v6.map_or(0, |v| v.1),
                    subnet6: u
                        .record
                        .v6
                        .as_ref()
                        .map_or(String::new(), |v| format!("{}/{}", v.subnet, v.prefix)),
                    gateway6: u
                        .record
                        .v6
                        .as_ref()
                        .map_or(String::new(), |v| v.gateway.to_string()),
                    range6_start: u
                        .record
                        .v6
                        .as_ref()
                        .map_or(String::new(), |v| v.range.0.to_string()),
                    range6_end: u
                        .record
                        .v6
                        .as_ref()
                        .map_or(String::new(), |v| v.range.1.to_string()),
                    name: u.record.name.clone(),
                    bridge: u.record.bridge.clone(),
                }
            })
            .collect();
        Ok(Response::new(v1::ListNetworksResponse { networks }))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        authorize("Status", &request)?;
        let store = self.engine.store();
        let allocations = store.list(None).map_err(store_status)?.len() as u64;
        let networks = store.networks().map_err(store_status)?.len() as u64;
        let info = &self.info;
        Ok(Response::new(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: info.uptime().as_secs(),
            started_unix: info.started_unix,
            boot_id: self.engine.boot_id().to_string(),
            allocations,
            networks,
            pending_releases: pending_releases(self.spool.dir()),
            socket: info.socket.display().to_string(),
            state_dir: info.state_dir.display().to_string(),
            spool_dir: self.spool.dir().display().to_string(),
            sweep_interval_seconds: info.sweep_interval.map_or(0, |d| d.as_secs()),
            metrics_listen: info.metrics_listen.map_or(String::new(), |a| a.to_string()),
            warnings: self
                .engine
                .firewall()
                .blocked(None)
                .await
                .map_or(Vec::new(), |w| w.lines().map(String::from).collect()),
        }))
    }

    async fn gc(
        &self,
        request: Request<v1::GcRequest>,
    ) -> Result<Response<v1::GcResponse>, Status> {
        authorize("Gc", &request)?;
        let started = Instant::now();
        // A task of its own, like a CNI request: a caller that goes away does not cut a pass short.
        let engine = self.engine.clone();
        let spool = self.spool.clone();
        let summary = tokio::spawn(async move { engine.sweep(Pass::Periodic, Some(&spool)).await })
            .await
            .map_err(|e| Status::internal(format!("the sweep failed internally: {e}")))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let took = started.elapsed();
        tracing::info!(
            method = "Gc",
            kept = summary.kept,
            released = summary.released(),
            links_removed = summary.links_removed,
            duration_ms = took.as_millis() as u64,
            "sweep on request"
        );
        Ok(Response::new(gc_to_proto(&summary, took)))
    }

    async fn list_routes(
        &self,
        request: Request<v1::ListRoutesRequest>,
    ) -> Result<Response<v1::ListRoutesResponse>, Status> {
        authorize("ListRoutes", &request)?;
        let req = request.into_inner();
        let routes = self.engine.routes();
        let (revision, list) = if req.after_revision == 0 {
            routes.snapshot()
        } else {
            let wait = Duration::from_millis(u64::from(req.wait_ms.min(60_000)));
            // A daemon that stops ends the wait at once.
            let mut stop = self.stop.clone();
            tokio::select! {
                table = routes.wait_past(req.after_revision, wait) => table,
                _ = stop.wait_for(|s| *s) => routes.snapshot(),
            }
        };
        Ok(Response::new(v1::ListRoutesResponse {
            revision,
            routes: list.into_iter().map(route_to_proto).collect(),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        authorize("Watch", &request)?;
        let network = request.into_inner().network;
        // Subscribed before the answer goes out: every change after the caller sees the response
        // headers reaches it.
        let rx = self.engine.events().subscribe();
        let stop = self.stop.clone();
        tracing::info!(method = "Watch", network, "watch started");
        let stream = futures::stream::unfold(Some((rx, stop)), move |state| {
            let network = network.clone();
            async move {
                let (mut rx, mut stop) = state?;
                loop {
                    let event = tokio::select! {
                        _ = stop.wait_for(|s| *s) => return None,
                        event = rx.recv() => event,
                    };
                    match event {
                        Ok(e) if network.is_empty() || e.allocation.network == network => {
                            return Some((Ok(event_to_proto(e)), Some((rx, stop))));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(n)) => {
                            let status = Status::data_loss(format!(
                                "this watch fell {n} events behind and missed them: list the allocations, then watch again"
                            ));
                            return Some((Err(status), None));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(range: Option<(Ipv4Addr, Ipv4Addr)>) -> ipam::NetworkRecord4 {
        ipam::NetworkRecord4 {
            range,
            ..crate::ipam::testing::network("n", "br").v4.unwrap()
        }
    }

    fn alloc(id: &str, name: &str, last: u8) -> ipam::Allocation {
        let mut a = ipam::tests::alloc(id, Ipv4Addr::new(10, 87, 1, last));
        a.container_name = Some(name.into());
        a
    }

    #[test]
    fn free_addresses_follow_the_range_and_skip_reserved_ones() {
        let ip = |last| Ipv4Addr::new(10, 87, 1, last);
        // Whole subnet: .1-.254 minus the gateway.
        let u = usage(&record(None), &[ip(2), ip(3)]);
        assert_eq!((u.range, u.in_use, u.free), ((ip(1), ip(254)), 2, 251));
        // A range without the gateway: all 11 can be handed out.
        let u = usage(&record(Some((ip(10), ip(20)))), &[ip(15)]);
        assert_eq!((u.in_use, u.free), (1, 10));
        // A range of the gateway and one more address.
        let u = usage(&record(Some((ip(1), ip(2)))), &[]);
        assert_eq!(u.free, 1);
        let u = usage(&record(Some((ip(1), ip(2)))), &[ip(2)]);
        assert_eq!(u.free, 0);
    }

    #[test]
    fn a_container_is_found_by_id_prefix_or_name_and_ambiguity_is_refused() {
        let list = vec![
            alloc("abc111", "web", 2),
            alloc("abc222", "db", 3),
            alloc("abc", "x", 4),
        ];
        assert_eq!(select_container(list.clone(), "abc1").unwrap().len(), 1);
        assert_eq!(
            select_container(list.clone(), "db").unwrap()[0].address,
            Some(Ipv4Addr::new(10, 87, 1, 3))
        );
        // "abc" is a full id as well as a prefix of the others: the full id wins.
        assert_eq!(
            select_container(list.clone(), "abc").unwrap()[0]
                .container_name
                .as_deref(),
            Some("x")
        );
        let err = select_container(list[..2].to_vec(), "abc").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("web") && err.message().contains("db"),
            "{}",
            err.message()
        );
        assert!(select_container(list, "nothing").unwrap().is_empty());
    }

    #[test]
    fn addresses_parse_with_or_without_prefix() {
        assert_eq!(
            parse_address("10.87.1.2/24").unwrap(),
            Ipv4Addr::new(10, 87, 1, 2)
        );
        assert_eq!(
            parse_address("10.87.1.2").unwrap(),
            Ipv4Addr::new(10, 87, 1, 2)
        );
        assert!(parse_address("web").is_err());
    }
}
