//! All kernel networking work, behind one small trait ([`Netlink`]) so the attach logic can be tested
//! with a recording fake. [`RtNetlink`] is the real implementation: one long-lived rtnetlink socket
//! in the daemon's namespace, and a short-lived socket opened inside a container's namespace (on a
//! plain thread) for the container side. Every kernel operation is bounded by [`KERNEL_TIMEOUT`], so a
//! netlink request that never gets an answer fails its CNI request instead of holding it forever.

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod rt;
mod socket;

pub use rt::RtNetlink;

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

/// A refused or failed netlink operation, with what was being done. The engine asks what kind of
/// failure it is ([`NetlinkError::exists`]); errno stays in here.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request.
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        errno: Option<i32>,
        #[source]
        source: rtnetlink::Error,
    },
    /// The request could not be made (a socket, a namespace, /proc).
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not answer within [`KERNEL_TIMEOUT`].
    #[error("{op}: the kernel did not answer within {} s", KERNEL_TIMEOUT.as_secs())]
    Timeout { op: String },
    /// A link that was just made or found is not there any more.
    #[error("{0}")]
    Gone(String),
    /// A link of the name asked for exists, but is of another kind.
    #[error("{0}")]
    WrongKind(String),
}

impl NetlinkError {
    fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => *errno,
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            NetlinkError::Timeout { .. } | NetlinkError::Gone(_) | NetlinkError::WrongKind(_) => {
                None
            }
        }
    }

    /// Whether the kernel refused because something of that name exists already (EEXIST).
    pub fn exists(&self) -> bool {
        self.errno() == Some(nix::libc::EEXIST)
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
    /// The IPv6 gateway address of a dual-stack network, likewise.
    pub gateway6: Option<Ipv6Network>,
}

/// A sub-bridge of a network (see [`crate::bridges`]) and the trunk that joins it to the
/// network's bridge.
#[derive(Debug, Clone)]
pub struct SubBridgeSpec {
    pub name: String,
    /// The network's bridge, and its index.
    pub root: String,
    pub root_index: u32,
    /// The trunk: a veth pair, `trunk` on the network's bridge, `trunk_peer` on the sub-bridge.
    pub trunk: String,
    pub trunk_peer: String,
    pub mtu: Option<u32>,
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
    pub address: Option<Ipv4Network>,
    /// Destination and gateway.
    pub routes: Vec<(Ipv4Network, Ipv4Addr)>,
    /// The IPv6 address, on a network with an IPv6 range (added without duplicate address detection, so
    /// it is usable at once) and its routes.
    pub address6: Option<Ipv6Network>,
    pub routes6: Vec<(Ipv6Network, Ipv6Addr)>,
}

/// What the kernel shows inside a container namespace for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub link: LinkState,
    pub addrs: Vec<Ipv4Network>,
    /// Destination and gateway of the main-table routes through the interface.
    pub routes: Vec<(Ipv4Network, Option<Ipv4Addr>)>,
    /// The usable IPv6 addresses and the IPv6 routes, when asked for.
    pub addrs6: Vec<Ipv6Network>,
    pub routes6: Vec<(Ipv6Network, Option<Ipv6Addr>)>,
}

/// The kernel operations Flatnet needs.
pub trait Netlink: Send + Sync + 'static {
    /// A way into one container namespace, for [`Netlink::configure_container`].
    type Container: Send + Sync;
    /// Every link in the daemon's namespace, with its name (one dump).
    fn links(&self) -> impl Future<Output = Result<Vec<(String, LinkState)>, NetlinkError>> + Send;
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
    /// Makes sure the sub-bridge exists and is up, and that its trunk exists, is up and joins it
    /// to the network's bridge.
    fn ensure_sub_bridge(
        &self,
        spec: &SubBridgeSpec,
    ) -> impl Future<Output = Result<LinkState, NetlinkError>> + Send;
    /// Opens the way into `netns` that [`Netlink::configure_container`] takes. It does not depend
    /// on the veth, so an ADD opens it while the pair is being created.
    fn open_container(
        &self,
        netns: &Netns,
    ) -> impl Future<Output = Result<Self::Container, NetlinkError>> + Send;
    /// Creates the veth pair: the host end on the bridge, the peer in the namespace, both down.
    fn create_veth(
        &self,
        spec: &VethSpec<'_>,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Brings the host end of a new pair up as a bridge port (and turns on hairpin mode when
    /// asked). Independent of [`Netlink::configure_container`]: an ADD runs the two side by side.
    fn activate_port(
        &self,
        spec: &VethSpec<'_>,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Brings the container interface and `lo` up, addresses it and installs the routes.
    fn configure_container(
        &self,
        container: &Self::Container,
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
    /// The interface `ifname` inside `netns`, if it exists (its IPv6 side only when `v6`).
    fn inspect_container(
        &self,
        netns: &Netns,
        ifname: &str,
        v6: bool,
    ) -> impl Future<Output = Result<Option<ContainerView>, NetlinkError>> + Send;
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
