//! All kernel networking work, behind one small trait ([`Netlink`]) so the attach logic can be tested
//! with a recording fake. [`RtNetlink`] is the real implementation: one long-lived rtnetlink socket
//! in the daemon's namespace, and a short-lived socket opened inside a container's namespace (on a
//! plain thread) for the container side. Every kernel operation is bounded by [`KERNEL_TIMEOUT`], so a
//! netlink request that never gets an answer fails its CNI request instead of holding it forever.

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// The longest one kernel operation (including entering a namespace) may take. Each normally takes
/// well under 50 ms; one that has not answered after this long is treated as failed.
/// The link group veths are moved into right before a batch deletes them (an arbitrary number no
/// other software is expected to use: "fnde"). Only the deleter puts links there, one batch at a time.
pub const DELETE_GROUP: u32 = 0x666e_6465;

pub const KERNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// An opened network namespace (CNI_NETNS), checked to be one.
#[derive(Debug)]
pub struct Netns {
    pub path: String,
    file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace (expected a path like /run/netns/NAME or /proc/PID/ns/net)")]
    NotANamespace { path: String },
}

impl Netns {
    pub fn open(path: &str) -> Result<Netns, NetnsError> {
        // O_NONBLOCK: opening a FIFO (or a device) named as the namespace must not block the
        // daemon; the fstatfs below refuses whatever is not a namespace anyway.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)
            .map_err(|source| NetnsError::Open {
                path: path.to_string(),
                source,
            })?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| NetnsError::Open {
            path: path.to_string(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetnsError::NotANamespace {
                path: path.to_string(),
            });
        }
        Ok(Netns {
            path: path.to_string(),
            file,
        })
    }
}

/// A refused or failed netlink operation, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        errno: Option<i32>,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(String),
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => *errno,
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            NetlinkError::Conflict(_) => None,
        }
    }
}

fn kernel(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Kernel {
        errno: errno_of(&source),
        op,
        source,
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// What is known about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub mac: Vec<u8>,
    pub master: Option<u32>,
    pub up: bool,
    pub kind: Option<String>,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub peer: Option<u32>,
}

/// The bridge a network uses.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: Option<u32>,
    /// The gateway address (with the subnet's prefix) the bridge holds when `isGateway`.
    pub gateway: Option<Ipv4Network>,
}

/// A veth pair: `host` on the bridge, the peer created directly inside `netns` as `ifname`.
#[derive(Debug)]
pub struct VethSpec<'a> {
    pub host: String,
    pub host_mac: [u8; 6],
    pub bridge_index: u32,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub netns: &'a Netns,
    pub ifname: String,
    pub container_mac: [u8; 6],
}

/// Address and routes of the container interface.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub ifname: String,
    pub address: Ipv4Network,
    /// Destination and gateway.
    pub routes: Vec<(Ipv4Network, Ipv4Addr)>,
}

/// What the kernel shows inside a container namespace for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub link: LinkState,
    pub addrs: Vec<Ipv4Network>,
    /// Destination and gateway of the main-table routes through the interface.
    pub routes: Vec<(Ipv4Network, Option<Ipv4Addr>)>,
}

/// The kernel operations Flatnet needs.
pub trait Netlink: Send + Sync + 'static {
    /// Every link in the daemon's namespace, with its name (one dump).
    fn links(&self) -> impl Future<Output = Result<Vec<(String, LinkState)>, NetlinkError>> + Send;
    /// The names of every link in the daemon's namespace, and nothing else about them: much cheaper
    /// than [`Netlink::links`] with thousands of links.
    fn link_names(&self) -> impl Future<Output = Result<HashSet<String>, NetlinkError>> + Send;
    /// Puts an existing link on a bridge (and turns on hairpin mode when asked).
    fn enslave(
        &self,
        name: &str,
        bridge_index: u32,
        hairpin: bool,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Makes sure the bridge exists, is up, and holds the gateway address.
    fn ensure_bridge(
        &self,
        spec: &BridgeSpec,
    ) -> impl Future<Output = Result<LinkState, NetlinkError>> + Send;
    /// Creates the veth pair: the host end up and on the bridge, the peer (still down) in the namespace.
    fn create_veth(
        &self,
        spec: &VethSpec<'_>,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Brings the container interface and `lo` up, addresses it and installs the routes.
    fn configure_container(
        &self,
        netns: &Netns,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<LinkState, NetlinkError>> + Send;
    /// Deletes a link in the daemon's namespace; `Ok(false)` when it was already gone.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<bool, NetlinkError>> + Send;
    /// Sets the container end of the veth `host_veth` aside before the pair is deleted (the kernel
    /// needs about 19 ms for that): inside `netns`, if `ifname` is that veth's peer, it is taken
    /// down, loses `address` and is renamed to `host_veth` (free there: that name lives in the
    /// daemon's namespace), so `ifname` and the address are free the moment this returns.
    /// `Ok(false)` when there is nothing of ours to set aside (no such veth, no such interface, or
    /// `ifname` is not its peer).
    fn park_container_end(
        &self,
        netns: &Netns,
        ifname: &str,
        host_veth: &str,
        address: Option<Ipv4Network>,
    ) -> impl Future<Output = Result<bool, NetlinkError>> + Send;
    /// Deletes several links of the daemon's namespace (those already gone are fine); returns the
    /// ones that could not be deleted, with why. Implementations may do it in one kernel batch.
    fn delete_links(
        &self,
        names: &[String],
    ) -> impl Future<Output = Vec<(String, NetlinkError)>> + Send {
        async move {
            let mut failed = Vec::new();
            for name in names {
                if let Err(e) = self.delete_link(name).await {
                    failed.push((name.clone(), e));
                }
            }
            failed
        }
    }
    /// A link in the daemon's namespace, if it exists.
    fn link(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkState>, NetlinkError>> + Send;
    /// IPv4 addresses on a link in the daemon's namespace.
    fn addresses(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Network>, NetlinkError>> + Send;
    /// The interface `ifname` inside `netns`, if it exists.
    fn inspect_container(
        &self,
        netns: &Netns,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<ContainerView>, NetlinkError>> + Send;
}

/// The real [`Netlink`], on rtnetlink.
pub struct RtNetlink {
    main: Socket,
    /// Link deletions only, on a socket and thread of their own (see [`deletion_lane`]).
    deletions: rtnetlink::Handle,
}

impl RtNetlink {
    /// Opens the netlink sockets of the daemon's own namespace. Must run inside a tokio runtime.
    pub fn new() -> std::io::Result<RtNetlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(RtNetlink {
            main: Socket::new(handle),
            deletions: deletion_lane()?,
        })
    }
}

/// One rtnetlink socket, and the turn to run a dump on it. The kernel runs one dump per socket at a
/// time and answers a second one with EBUSY, so every dump on a socket goes through [`dump`], which
/// takes the turn; requests that are not dumps (a link by name, any change) need no turn.
#[derive(Clone)]
struct Socket {
    handle: rtnetlink::Handle,
    dump_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Socket {
    fn new(handle: rtnetlink::Handle) -> Socket {
        Socket {
            handle,
            dump_turn: Default::default(),
        }
    }
}

/// How many times a dump is started before a transient answer is given up on, and the longest
/// pause between two tries (they start at 1 ms and double).
const DUMP_TRIES: u32 = 12;
const DUMP_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Whether a dump that failed with `errno` may work when started again: EBUSY (a dump still runs
/// on the socket: one whose reader was dropped by a timeout is read to its end by the connection
/// task) or EINTR (the kernel gave up on a dump that raced with a change).
fn transient_dump_errno(errno: i32) -> bool {
    matches!(errno, nix::libc::EBUSY | nix::libc::EINTR)
}

/// Runs the dump `request` on `socket` and returns every message of it. A dump the kernel marks
/// as interrupted (NLM_F_DUMP_INTR: the table changed while it was being read, so the answer may
/// miss entries or hold one twice) and a transient refusal (see [`transient_dump_errno`]) are
/// tried again, so neither ever reaches a caller; other errors are returned as they are.
async fn dump(
    socket: &Socket,
    request: RouteNetlinkMessage,
    op: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    };
    let mut pause = Duration::from_millis(1);
    let mut tries = 0;
    loop {
        tries += 1;
        let mut messages = Vec::new();
        let mut interrupted = false;
        let mut refused = None;
        {
            let _turn = socket.dump_turn.lock().await;
            let mut req = NetlinkMessage::from(request.clone());
            req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut answers = socket
                .handle
                .clone()
                .request(req)
                .map_err(kernel(op.to_string()))?;
            // Read to the end even after an error or an interruption, so that the next dump on this
            // socket does not find this one still running.
            while let Some(msg) = answers.next().await {
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => messages.push(m),
                    NetlinkPayload::Error(e) if e.code.is_some() => refused = Some(e),
                    _ => {}
                }
            }
        }
        let transient = match &refused {
            Some(e) => e.code.is_some_and(|c| transient_dump_errno(c.get().abs())),
            None => interrupted,
        };
        if !transient {
            return match refused {
                Some(e) => Err(kernel(op.to_string())(rtnetlink::Error::NetlinkError(e))),
                None => Ok(messages),
            };
        }
        if tries >= DUMP_TRIES {
            let why = match refused {
                Some(e) => rtnetlink::Error::NetlinkError(e).to_string(),
                None => {
                    "the kernel kept interrupting it (the table changed while it was read)".into()
                }
            };
            return Err(NetlinkError::Io {
                op: op.to_string(),
                source: std::io::Error::other(format!("{why}; gave up after {tries} tries")),
            });
        }
        tracing::debug!(op, tries, interrupted, "netlink dump tried again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(DUMP_PAUSE_MAX);
    }
}

/// A netlink socket whose requests are sent from a thread of its own. The kernel handles a netlink
/// request inside the `sendmsg` that sends it, and deleting a veth keeps that call busy for about
/// 19 ms (RCU grace periods, waiting for the device's last references). On the daemon's main
/// socket that stalled every request queued behind it, ADDs included, and on a tokio worker it
/// took one of the runtime's two threads for as long; measured with ADD+DEL cycles at P=1, ADD
/// p50 went from 2.6 ms to 17 ms.
fn deletion_lane() -> std::io::Result<rtnetlink::Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("netlink-deleter".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match rtnetlink::new_connection() {
                    Ok((conn, handle, _)) => {
                        let _ = tx.send(Ok(handle));
                        // Runs until every handle is dropped, i.e. for the daemon's lifetime.
                        conn.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the netlink deletion thread ended at start"))?
}

/// Opens a netlink socket inside `netns`. The namespace is entered on a throwaway plain thread, never
/// on a tokio worker; the socket stays bound to the namespace it was created in.
async fn ns_socket(netns: &Netns) -> Result<Socket, NetlinkError> {
    let io_err = |source| NetlinkError::Io {
        op: format!("entering network namespace {}", netns.path),
        source,
    };
    let fd = netns.file.try_clone().map_err(io_err)?;
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _runtime = rt.enter();
        let opened = nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|()| rtnetlink::new_connection());
        let _ = tx.send(opened);
    });
    let opened = rx.await.map_err(|_| {
        io_err(std::io::Error::other(
            "namespace thread ended without an answer",
        ))
    })?;
    let (conn, handle, _) = opened.map_err(io_err)?;
    tokio::spawn(conn);
    Ok(Socket::new(handle))
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        mac: Vec::new(),
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        peer: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(mac) => state.mac = mac.clone(),
            LinkAttribute::Controller(m) => state.master = Some(*m),
            LinkAttribute::Link(peer) => state.peer = Some(*peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        state.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    state
}

async fn get_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<LinkState>, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(link_state(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(None),
        Err(e) => Err(kernel(format!("looking up link {name}"))(e)),
    }
}

async fn get_addresses(socket: &Socket, index: u32) -> Result<Vec<Ipv4Network>, NetlinkError> {
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet;
    request.header.index = index;
    let msgs = dump(
        socket,
        RouteNetlinkMessage::GetAddress(request),
        &format!("listing addresses of link {index}"),
    )
    .await?;
    let mut out = Vec::new();
    for msg in msgs {
        let RouteNetlinkMessage::NewAddress(msg) = msg else {
            continue;
        };
        if msg.header.index != index {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                if let Ok(net) = Ipv4Network::new(*ip, msg.header.prefix_len) {
                    out.push(net);
                }
            }
        }
    }
    Ok(out)
}

async fn get_routes(
    socket: &Socket,
    index: u32,
) -> Result<Vec<(Ipv4Network, Option<Ipv4Addr>)>, NetlinkError> {
    let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let msgs = dump(
        socket,
        RouteNetlinkMessage::GetRoute(request),
        "listing routes",
    )
    .await?;
    let mut out = Vec::new();
    for msg in msgs {
        let RouteNetlinkMessage::NewRoute(msg) = msg else {
            continue;
        };
        if msg.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gw = None;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if oif == Some(index) {
            if let Ok(net) = Ipv4Network::new(dst, msg.header.destination_prefix_length) {
                out.push((net, gw));
            }
        }
    }
    Ok(out)
}

/// `Ok(())` also when the kernel says the thing already exists.
fn exists_ok(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(e) if e.errno() == Some(nix::libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// A random locally administered unicast MAC, so a bridge or veth never takes a MAC that changes
/// when ports come and go.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the buffer it is given.
    let n = unsafe { nix::libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // getrandom on 6 bytes does not fail once the kernel's pool is initialised; fall back to
        // time-derived bytes rather than refusing to work.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        mac.copy_from_slice(&t[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The operations themselves, unbounded; the [`Netlink`] impl below bounds each in time.
impl RtNetlink {
    async fn ensure_bridge_now(&self, spec: &BridgeSpec) -> Result<LinkState, NetlinkError> {
        let name = spec.name.as_str();
        let existing = get_link(&self.main.handle, name).await?;
        let state = match existing {
            Some(state) => {
                if state.kind.as_deref() != Some("bridge") {
                    return Err(NetlinkError::Conflict(format!(
                        "link {name} exists but is a {} device, not a bridge: remove it or choose another bridge name",
                        state.kind.as_deref().unwrap_or("plain")
                    )));
                }
                if !state.up {
                    self.main
                        .handle
                        .link()
                        .change(LinkUnspec::new_with_index(state.index).up().build())
                        .execute()
                        .await
                        .map_err(kernel(format!("bringing bridge {name} up")))?;
                }
                state
            }
            None => {
                let mut builder = LinkBridge::new(name).address(random_mac().to_vec());
                if let Some(mtu) = spec.mtu {
                    builder = builder.mtu(mtu);
                }
                exists_ok(
                    self.main
                        .handle
                        .link()
                        .add(builder.build())
                        .execute()
                        .await
                        .map_err(kernel(format!("creating bridge {name}"))),
                )?;
                get_link(&self.main.handle, name).await?.ok_or_else(|| {
                    NetlinkError::Conflict(format!(
                        "bridge {name} vanished right after it was created"
                    ))
                })?
            }
        };
        if let Some(gw) = spec.gateway {
            exists_ok(
                self.main
                    .handle
                    .address()
                    .add(state.index, IpAddr::V4(gw.ip()), gw.prefix())
                    .execute()
                    .await
                    .map_err(kernel(format!("adding gateway {gw} to bridge {name}"))),
            )?;
        }
        Ok(state)
    }

    async fn create_veth_now(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        // The peer is brought up from inside its namespace (configure_container): asking for IFF_UP
        // while creating it in another namespace fails with ENOTCONN on current kernels.
        // One queue each way on both ends. A veth otherwise gets one per possible CPU, each with
        // its sysfs objects to create at ADD and remove at deletion (measured on 2 CPUs: 7% of
        // the daemon's CPU time under ADD+DEL load); they serve only XDP, which Flatnet does not use.
        let mut peer = LinkUnspec::new_with_name(&spec.ifname)
            .address(spec.container_mac.to_vec())
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .setns_by_fd(spec.netns.file.as_raw_fd());
        let mut host = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host.clone())
            .address(spec.host_mac.to_vec())
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .controller(spec.bridge_index);
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
            host = host.mtu(mtu);
        }
        let msg = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.main
            .handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(kernel(format!(
                "creating veth {} with peer {} in {}",
                spec.host, spec.ifname, spec.netns.path
            )))?;
        // Up, without an IPv6 link-local address: Flatnet is IPv4, and address generation,
        // duplicate address detection and MLD reports for every new bridge port are kernel work
        // on the ADD path that nobody uses. (The kernel takes this only for an existing link.)
        let up = |no_autoconf: bool| {
            let mut msg = LinkUnspec::new_with_name(&spec.host);
            if no_autoconf {
                msg = msg.append_extra_attribute(no_ipv6_autoconf());
            }
            self.main.handle.link().change(msg.up().build()).execute()
        };
        match up(true).await {
            // No IPv6 on this link (MTU below 1280, or IPv6 off in the kernel): nothing to turn off.
            Err(e) if errno_of(&e) == Some(nix::libc::EAFNOSUPPORT) => up(false).await,
            other => other,
        }
        .map_err(kernel(format!("bringing {} up", spec.host)))?;
        if spec.hairpin {
            self.hairpin_now(&spec.host).await?;
        }
        Ok(())
    }

    async fn configure_container_now(
        &self,
        netns: &Netns,
        spec: &ContainerSpec,
    ) -> Result<LinkState, NetlinkError> {
        let socket = ns_socket(netns).await?;
        let handle = &socket.handle;
        let link = get_link(handle, &spec.ifname).await?.ok_or_else(|| {
            NetlinkError::Conflict(format!(
                "interface {} is missing in {} right after it was created",
                spec.ifname, netns.path
            ))
        })?;
        let addr = handle
            .address()
            .add(
                link.index,
                IpAddr::V4(spec.address.ip()),
                spec.address.prefix(),
            )
            .execute();
        // No automatic IPv6 link-local address on the container's side either: its duplicate
        // address detection, router solicitations and MLD reports would be flooded by the bridge to
        // every other container on the network, kernel work that grows with the network's size
        // (measured: a 1,000-port bridge made each ADD ~5 ms slower). Sent before `up`, on the same
        // socket, so the kernel applies it before the interface comes up.
        let no_autoconf = handle
            .link()
            .change(
                LinkUnspec::new_with_index(link.index)
                    .append_extra_attribute(no_ipv6_autoconf())
                    .build(),
            )
            .execute();
        let up = handle
            .link()
            .change(LinkUnspec::new_with_index(link.index).up().build())
            .execute();
        let lo = handle
            .link()
            .change(LinkUnspec::new_with_name("lo").up().build())
            .execute();
        let (no_autoconf, addr, up, lo) = futures::join!(no_autoconf, addr, up, lo);
        match no_autoconf {
            // No IPv6 on this link (MTU below 1280, or IPv6 off in the kernel): nothing to turn off.
            Err(e) if errno_of(&e) == Some(nix::libc::EAFNOSUPPORT) => {}
            other => other.map_err(kernel(format!(
                "turning off IPv6 address generation on {} in {}",
                spec.ifname, netns.path
            )))?,
        }
        addr.map_err(kernel(format!(
            "adding {} to {}",
            spec.address, spec.ifname
        )))?;
        up.map_err(kernel(format!(
            "bringing {} up in {}",
            spec.ifname, netns.path
        )))?;
        lo.map_err(kernel(format!("bringing lo up in {}", netns.path)))?;
        for (dst, gw) in &spec.routes {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix())
                .gateway(*gw)
                .output_interface(link.index)
                .build();
            exists_ok(
                handle
                    .route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(kernel(format!(
                        "adding route {dst} via {gw} in {}",
                        netns.path
                    ))),
            )?;
        }
        Ok(link)
    }

    async fn delete_link_now(&self, name: &str) -> Result<bool, NetlinkError> {
        let res = self
            .deletions
            .link()
            .del_with_message(LinkUnspec::new_with_name(name).build())
            .execute()
            .await;
        match res {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    errno_of(&e),
                    Some(nix::libc::ENODEV) | Some(nix::libc::ENOENT)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(kernel(format!("deleting link {name}"))(e)),
        }
    }

    /// Deletes `names` in one kernel batch: each link joins [`DELETE_GROUP`], then one RTM_DELLINK
    /// for the group unregisters them together. The kernel's cost of deleting a veth (about 19 ms,
    /// mostly waiting for RCU grace periods) is then paid once per batch instead of once per link.
    async fn delete_links_now(&self, names: &[String]) -> Vec<(String, NetlinkError)> {
        if names.len() == 1 {
            return match self.delete_link(&names[0]).await {
                Ok(_) => Vec::new(),
                Err(e) => vec![(names[0].clone(), e)],
            };
        }
        let moves = names.iter().map(|name| {
            self.deletions
                .link()
                .change(
                    LinkUnspec::new_with_name(name)
                        .link_group(DELETE_GROUP)
                        .build(),
                )
                .execute()
        });
        let moved = futures::future::join_all(moves).await;
        let mut failed = Vec::new();
        for (name, result) in names.iter().zip(moved) {
            match result {
                Ok(()) => {}
                Err(e) if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => {}
                Err(e) => failed.push((name.clone(), kernel(format!("deleting link {name}"))(e))),
            }
        }
        let group = LinkMessageBuilder::<LinkUnspec>::new()
            .link_group(DELETE_GROUP)
            .build();
        match self
            .deletions
            .link()
            .del_with_message(group)
            .execute()
            .await
        {
            Ok(()) => failed,
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => failed,
            // The batch failed as a whole: fall back to one link at a time.
            Err(_) => {
                let mut failed = Vec::new();
                for name in names {
                    if let Err(e) = self.delete_link(name).await {
                        failed.push((name.clone(), e));
                    }
                }
                failed
            }
        }
    }

    async fn link_now(&self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        get_link(&self.main.handle, name).await
    }

    async fn addresses_now(&self, index: u32) -> Result<Vec<Ipv4Network>, NetlinkError> {
        get_addresses(&self.main, index).await
    }

    async fn inspect_container_now(
        &self,
        netns: &Netns,
        ifname: &str,
    ) -> Result<Option<ContainerView>, NetlinkError> {
        let socket = ns_socket(netns).await?;
        let Some(link) = get_link(&socket.handle, ifname).await? else {
            return Ok(None);
        };
        let addrs = get_addresses(&socket, link.index).await?;
        let routes = get_routes(&socket, link.index).await?;
        Ok(Some(ContainerView {
            link,
            addrs,
            routes,
        }))
    }
}

impl RtNetlink {
    async fn park_container_end_now(
        &self,
        netns: &Netns,
        ifname: &str,
        host_veth: &str,
        address: Option<Ipv4Network>,
    ) -> Result<bool, NetlinkError> {
        // The host end is looked up while the namespace is entered.
        let (host, socket) =
            futures::join!(get_link(&self.main.handle, host_veth), ns_socket(netns));
        let Some(host) = host? else {
            return Ok(false);
        };
        let socket = socket?;
        let handle = &socket.handle;
        let Some(link) = get_link(handle, ifname).await? else {
            return Ok(false);
        };
        if link.kind.as_deref() != Some("veth") || link.peer != Some(host.index) {
            return Ok(false);
        }
        // Three requests on one socket, sent together and applied by the kernel in this order: down
        // first (kernels before 6.x rename only links that are down; routes through it go too),
        // then the address, then the name.
        let down = handle
            .link()
            .change(LinkUnspec::new_with_index(link.index).down().build())
            .execute();
        let unaddressed = async {
            let Some(address) = address else {
                return Ok(());
            };
            let msg = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
                .index(link.index)
                .address(address.ip(), address.prefix())
                .build();
            match handle.address().del(msg).execute().await {
                // EADDRNOTAVAIL: the address is not there (any more).
                Err(e) if errno_of(&e) == Some(nix::libc::EADDRNOTAVAIL) => Ok(()),
                other => other,
            }
        };
        let renamed = handle
            .link()
            .change(
                LinkUnspec::new_with_index(link.index)
                    .name(host_veth.to_string())
                    .build(),
            )
            .execute();
        let (down, unaddressed, renamed) = futures::join!(down, unaddressed, renamed);
        let at = &netns.path;
        down.map_err(kernel(format!("taking {ifname} down in {at}")))?;
        unaddressed.map_err(kernel(format!("removing the address of {ifname} in {at}")))?;
        renamed.map_err(kernel(format!("renaming {ifname} to {host_veth} in {at}")))?;
        Ok(true)
    }
}

/// The interface names in the text of `/proc/net/dev`: two header lines, then `  name: counters`
/// (a name cannot hold a colon or white space).
fn proc_net_dev_names(text: &str) -> HashSet<String> {
    text.lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// `addrgenmode none`: the interface gets no automatic IPv6 link-local address. The kernel takes
/// this only for an existing link, not in the message that creates it.
fn no_ipv6_autoconf() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// Fails `op` with a timeout error when `fut` has not finished within [`KERNEL_TIMEOUT`].
async fn bounded<T>(
    op: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T, NetlinkError>>,
) -> Result<T, NetlinkError> {
    match tokio::time::timeout(KERNEL_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(NetlinkError::Io {
            op: op(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the kernel did not answer within {} s",
                    KERNEL_TIMEOUT.as_secs()
                ),
            ),
        }),
    }
}

fn link_name(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

impl RtNetlink {
    async fn links_now(&self) -> Result<Vec<(String, LinkState)>, NetlinkError> {
        // Without statistics (the largest part of each message).
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let msgs = dump(
            &self.main,
            RouteNetlinkMessage::GetLink(request),
            "listing links",
        )
        .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(m) => link_name(&m).map(|name| (name, link_state(&m))),
                _ => None,
            })
            .collect())
    }

    async fn enslave_now(
        &self,
        name: &str,
        bridge_index: u32,
        hairpin: bool,
    ) -> Result<(), NetlinkError> {
        self.main
            .handle
            .link()
            .change(
                LinkUnspec::new_with_name(name)
                    .controller(bridge_index)
                    .build(),
            )
            .execute()
            .await
            .map_err(kernel(format!("putting {name} on bridge {bridge_index}")))?;
        if hairpin {
            self.hairpin_now(name).await?;
        }
        Ok(())
    }

    async fn hairpin_now(&self, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_name(name)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )]))
            .build();
        self.main
            .handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(kernel(format!("turning on hairpin mode on {name}")))
    }
}

impl Netlink for RtNetlink {
    async fn links(&self) -> Result<Vec<(String, LinkState)>, NetlinkError> {
        bounded(|| "listing links".into(), self.links_now()).await
    }

    async fn link_names(&self) -> Result<HashSet<String>, NetlinkError> {
        // /proc/<pid>/net/dev lists the links of that process's namespace, which is the daemon's:
        // only throwaway threads ever enter another one (see `ns_handle`). The kernel writes it at
        // about 2 µs per link, against 10-20 µs per link for a netlink dump (every attribute of
        // every link), which is most of a start-up with 10,000 veths.
        const PATH: &str = "/proc/self/net/dev";
        let read = tokio::task::spawn_blocking(|| std::fs::read_to_string(PATH))
            .await
            .map_err(|e| NetlinkError::Io {
                op: format!("reading {PATH}"),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| NetlinkError::Io {
                op: format!("reading {PATH}"),
                source,
            })?;
        Ok(proc_net_dev_names(&read))
    }

    async fn enslave(
        &self,
        name: &str,
        bridge_index: u32,
        hairpin: bool,
    ) -> Result<(), NetlinkError> {
        bounded(
            || format!("putting {name} on bridge {bridge_index}"),
            self.enslave_now(name, bridge_index, hairpin),
        )
        .await
    }

    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<LinkState, NetlinkError> {
        bounded(
            || format!("setting up bridge {}", spec.name),
            self.ensure_bridge_now(spec),
        )
        .await
    }

    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        bounded(
            || format!("creating veth {}", spec.host),
            self.create_veth_now(spec),
        )
        .await
    }

    async fn configure_container(
        &self,
        netns: &Netns,
        spec: &ContainerSpec,
    ) -> Result<LinkState, NetlinkError> {
        bounded(
            || format!("configuring {} in {}", spec.ifname, netns.path),
            self.configure_container_now(netns, spec),
        )
        .await
    }

    async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        bounded(
            || format!("deleting link {name}"),
            self.delete_link_now(name),
        )
        .await
    }

    async fn park_container_end(
        &self,
        netns: &Netns,
        ifname: &str,
        host_veth: &str,
        address: Option<Ipv4Network>,
    ) -> Result<bool, NetlinkError> {
        bounded(
            || format!("setting {ifname} in {} aside", netns.path),
            self.park_container_end_now(netns, ifname, host_veth, address),
        )
        .await
    }

    async fn delete_links(&self, names: &[String]) -> Vec<(String, NetlinkError)> {
        match tokio::time::timeout(KERNEL_TIMEOUT, self.delete_links_now(names)).await {
            Ok(failed) => failed,
            Err(_) => names
                .iter()
                .map(|name| {
                    let e = NetlinkError::Io {
                        op: format!("deleting link {name}"),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the kernel did not answer in time",
                        ),
                    };
                    (name.clone(), e)
                })
                .collect(),
        }
    }

    async fn link(&self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        bounded(|| format!("looking up link {name}"), self.link_now(name)).await
    }

    async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Network>, NetlinkError> {
        bounded(
            || format!("listing addresses of link {index}"),
            self.addresses_now(index),
        )
        .await
    }

    async fn inspect_container(
        &self,
        netns: &Netns,
        ifname: &str,
    ) -> Result<Option<ContainerView>, NetlinkError> {
        bounded(
            || format!("inspecting {ifname} in {}", netns.path),
            self.inspect_container_now(netns, ifname),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev_names_reads_every_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n\
flatnet-br0:  1234      10    0    0    0     0          0         0     5678      20    0    0    0     0       0          0\n\
fn-0a1b2c3d:1234567890 10    0    0    0     0          0         0     5678      20    0    0    0     0       0          0\n";
        let names = proc_net_dev_names(text);
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort();
        assert_eq!(names, ["flatnet-br0", "fn-0a1b2c3d", "lo"]);
    }

    /// Many dumps at once on one socket (the kernel refuses a second dump on a socket with EBUSY
    /// while the first runs): every one of them answers, none fails.
    #[tokio::test]
    async fn concurrent_dumps_on_one_socket_all_answer() {
        let nl = RtNetlink::new().expect("a netlink socket");
        let lo = nl
            .link("lo")
            .await
            .unwrap()
            .expect("every namespace has lo");
        for _ in 0..20 {
            let dumps = (0..16).map(|i| {
                let nl = &nl;
                async move {
                    match i % 3 {
                        0 => nl.links().await.map(|l| l.len()),
                        1 => nl.addresses(lo.index).await.map(|a| a.len()),
                        _ => get_routes(&nl.main, lo.index).await.map(|r| r.len()),
                    }
                }
            });
            for (i, answer) in futures::future::join_all(dumps)
                .await
                .into_iter()
                .enumerate()
            {
                let n = answer.unwrap_or_else(|e| panic!("dump {i} failed: {e}"));
                if i % 3 == 0 {
                    assert!(n >= 1, "a link dump without lo");
                }
            }
        }
    }

    /// The real file, in this process's namespace: it always has `lo`.
    #[tokio::test]
    async fn link_names_lists_this_namespace() {
        let nl = RtNetlink::new().expect("a netlink socket");
        let names = nl
            .link_names()
            .await
            .expect("/proc/self/net/dev is readable");
        assert!(names.contains("lo"), "{names:?}");
        let dumped: HashSet<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, dumped);
    }
}
