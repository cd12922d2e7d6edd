//! The real [`Netlink`]: one long-lived rtnetlink socket in the daemon's namespace, a deletion
//! lane, and short-lived sockets inside container namespaces. Each operation is bounded in time
//! once, by [`bounded`].

use super::socket::*;
use super::*;
use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkExtentMask, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Adds an IPv6 address without duplicate address detection (IFA_F_NODAD): usable the moment
/// the request answers, never `tentative` or `dadfailed`. Flatnet's IPAM makes it unique.
fn add_address6(
    handle: &rtnetlink::Handle,
    index: u32,
    net: ipnetwork::Ipv6Network,
) -> rtnetlink::AddressAddRequest {
    use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
    let mut req = handle
        .address()
        .add(index, IpAddr::V6(net.ip()), net.prefix());
    let msg = req.message_mut();
    msg.header.flags |= AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    req
}

/// The real [`Netlink`], on rtnetlink.
pub struct RtNetlink {
    /// Every request but the link listing, which runs on a socket and blocking thread of its own
    /// ([`link_dump_blocking`]): with 10,000 links that dump takes the kernel a few hundred ms,
    /// and a request's dump on the same socket would wait for its turn behind it.
    main: Socket,
    /// Link deletions only, on a socket and thread of their own (see [`deletion_lane`]).
    deletions: rtnetlink::Handle,
    /// Opens the sockets of container namespaces (see [`ns_socket`]).
    opener: Opener,
    /// The daemon's `/proc/sys/net/ipv6/conf` (see [`port_ipv6_off`]).
    ipv6_conf: Option<Arc<std::fs::File>>,
}

impl RtNetlink {
    /// Opens the netlink sockets of the daemon's own namespace. Must run inside a tokio runtime.
    pub fn new() -> std::io::Result<RtNetlink> {
        let (conn, handle) = super::socket::strict_connection()?;
        tokio::spawn(conn);
        Ok(RtNetlink {
            main: Socket::new(handle),
            deletions: deletion_lane()?,
            opener: Opener::default(),
            ipv6_conf: ipv6_conf_dir(),
        })
    }
}

/// Turns IPv6 off on bridge port `name` before it comes up; whether it did. The bridge forwards
/// IPv6 frames without it, and with it each port puts a multicast route in the namespace's IPv6
/// table, which the kernel walks whole whenever a link changes state or goes away: with 10,000
/// ports, several walks of 10,000 routes per ADD and DEL, under the RTNL lock every link change
/// waits for. The kernel takes this only through the sysctl, which, while another thread holds
/// that lock, retries in a loop: so on a blocking thread, never on one of the runtime's workers.
/// The file is opened relative to `conf` (the daemon's `/proc/sys/net/ipv6/conf`): a path from
/// `/proc/sys` would compare each of its parts with the same part of every other namespace that
/// was ever looked at (each container's), a cost that grows with the number of containers.
async fn port_ipv6_off(conf: &Option<Arc<std::fs::File>>, name: &str) -> bool {
    let Some(conf) = conf.clone() else {
        // No IPv6 in this kernel: nothing to turn off.
        return false;
    };
    let path = format!("{name}/disable_ipv6");
    let written = tokio::task::spawn_blocking(move || {
        use nix::fcntl::{openat, OFlag};
        let fd = openat(
            &*conf,
            path.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        nix::unistd::write(&fd, b"1").map(|_| ())
    })
    .await;
    let error = match written {
        Ok(Ok(())) => return true,
        // No IPv6 on this link: nothing to turn off.
        Ok(Err(nix::errno::Errno::ENOENT)) => return false,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(host_veth = %name, %error, "cannot turn IPv6 off on a bridge port");
    false
}

/// The daemon's `/proc/sys/net/ipv6/conf`, as a directory to open files under (see
/// [`port_ipv6_off`]); `None` without IPv6.
fn ipv6_conf_dir() -> Option<Arc<std::fs::File>> {
    use nix::fcntl::{open, OFlag};
    let fd = open(
        "/proc/sys/net/ipv6/conf",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    Some(Arc::new(std::fs::File::from(fd)))
}

impl RtNetlink {
    async fn set_hairpin(&self, name: &str) -> Result<(), NetlinkError> {
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

/// The request that creates the veth pair `end` + `peer`, both with `mtu` when given and one queue
/// each way. A veth otherwise gets a queue per possible CPU, each with its sysfs objects to create
/// at ADD and remove at deletion (measured on 2 CPUs: 7% of the daemon's CPU time under ADD+DEL
/// load); they serve only XDP, which Flatnet does not use.
fn veth_pair(
    end: LinkMessageBuilder<LinkVeth>,
    peer: LinkMessageBuilder<LinkUnspec>,
    mtu: Option<u32>,
) -> LinkMessage {
    let mut peer = peer
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1));
    let mut end = end
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1));
    if let Some(mtu) = mtu {
        peer = peer.mtu(mtu);
        end = end.mtu(mtu);
    }
    end.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build()
}

/// A netlink socket inside one container namespace, and the namespace's path for messages.
pub struct ContainerSocket {
    socket: Socket,
    path: String,
}

impl Netlink for RtNetlink {
    type Container = ContainerSocket;
    async fn links(&self) -> Result<Vec<(String, LinkState)>, NetlinkError> {
        bounded(|| "listing links".into(), async {
            // Without statistics (the largest part of each message).
            let mut request = LinkMessage::default();
            request
                .attributes
                .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
            tokio::task::spawn_blocking(move || {
                link_dump_blocking(request, "listing links", |m| {
                    link_name(&m).map(|name| (name, link_state(&m)))
                })
            })
            .await
            .map_err(|e| NetlinkError::Io {
                op: "listing links".into(),
                source: std::io::Error::other(e),
            })?
        })
        .await
    }

    async fn enslave(
        &self,
        name: &str,
        bridge_index: u32,
        hairpin: bool,
    ) -> Result<(), NetlinkError> {
        bounded(
            || format!("putting {name} on bridge {bridge_index}"),
            async {
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
                    self.set_hairpin(name).await?;
                }
                Ok(())
            },
        )
        .await
    }

    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<LinkState, NetlinkError> {
        bounded(
            || format!("setting up bridge {}", spec.name),
            async {
        let name = spec.name.as_str();
        let existing = get_link(&self.main.handle, name).await?;
        let state = match existing {
            Some(state) => {
                if state.kind.as_deref() != Some("bridge") {
                    return Err(NetlinkError::WrongKind(format!(
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
                // Without multicast snooping: the bridge floods multicast as it floods broadcast,
                // and adding or removing a port no longer visits every other port's multicast
                // state (the kernel re-enables it on each port whenever the port states are
                // chosen again): kernel work under the RTNL lock that grows with the bridge's
                // size, about 0.2 ms per ADD and per veth deletion on a 1,000-port bridge.
                let mut builder = LinkBridge::new(name)
                    .address(random_mac().to_vec())
                    .append_info_data(InfoBridge::MulticastSnooping(false));
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
                    NetlinkError::Gone(format!("bridge {name} vanished right after it was created"))
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
        if let Some(gw) = spec.gateway6 {
            exists_ok(
                add_address6(&self.main.handle, state.index, gw)
                    .execute()
                    .await
                    .map_err(kernel(format!("adding IPv6 gateway {gw} to bridge {name}"))),
            )?;
        }
        Ok(state)
        },
        )
        .await
    }

    async fn ensure_sub_bridge(&self, spec: &SubBridgeSpec) -> Result<LinkState, NetlinkError> {
        let sub = self
            .ensure_bridge(&BridgeSpec {
                name: spec.name.clone(),
                mtu: spec.mtu,
                gateway: None,
                gateway6: None,
            })
            .await?;
        bounded(
            || format!("joining bridge {} to {}", spec.name, spec.root),
            async {
                let handle = &self.main.handle;
                if get_link(handle, &spec.trunk).await?.is_none() {
                    // Both ends in this namespace; the kernel puts only the first on a bridge.
                    let msg = veth_pair(
                        LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                            .name(spec.trunk.clone())
                            .controller(spec.root_index),
                        LinkUnspec::new_with_name(&spec.trunk_peer),
                        spec.mtu,
                    );
                    exists_ok(
                        handle
                            .link()
                            .add(msg)
                            .execute()
                            .await
                            .map_err(kernel(format!(
                                "creating trunk {} / {}",
                                spec.trunk, spec.trunk_peer
                            ))),
                    )?;
                }
                for (end, master, bridge) in [
                    (&spec.trunk, spec.root_index, &spec.root),
                    (&spec.trunk_peer, sub.index, &spec.name),
                ] {
                    let state = get_link(handle, end).await?.ok_or_else(|| {
                        NetlinkError::Gone(format!(
                            "trunk end {end} vanished right after it was made"
                        ))
                    })?;
                    if state.kind.as_deref() != Some("veth") {
                        return Err(NetlinkError::WrongKind(format!(
                            "link {end} exists but is not a veth: flatnet names the trunks of \
                             bridge {} so; remove it",
                            spec.root
                        )));
                    }
                    match state.master {
                        Some(m) if m == master => {}
                        Some(_) => {
                            return Err(NetlinkError::WrongKind(format!(
                                "trunk end {end} is on another bridge than {bridge}: remove it, \
                                 or give bridge {} another name",
                                spec.root
                            )))
                        }
                        None => handle
                            .link()
                            .change(
                                LinkUnspec::new_with_index(state.index)
                                    .controller(master)
                                    .build(),
                            )
                            .execute()
                            .await
                            .map_err(kernel(format!("putting {end} on bridge {bridge}")))?,
                    }
                    if !state.up {
                        port_ipv6_off(&self.ipv6_conf, end).await;
                        handle
                            .link()
                            .change(LinkUnspec::new_with_index(state.index).up().build())
                            .execute()
                            .await
                            .map_err(kernel(format!("bringing {end} up")))?;
                    }
                }
                Ok(sub)
            },
        )
        .await
    }

    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        bounded(|| format!("creating veth {}", spec.host), async {
            // The peer is brought up from inside its namespace (configure_container): asking for IFF_UP
            // while creating it in another namespace fails with ENOTCONN on current kernels.
            let msg = veth_pair(
                LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                    .name(spec.host.clone())
                    .address(spec.host_mac.to_vec())
                    .controller(spec.bridge_index),
                LinkUnspec::new_with_name(&spec.ifname)
                    .address(spec.container_mac.to_vec())
                    .setns_by_fd(spec.netns.file.as_raw_fd()),
                spec.mtu,
            );
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
            Ok(())
        })
        .await
    }

    async fn activate_port(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        bounded(|| format!("bringing {} up", spec.host), async {
            let ipv6_off = port_ipv6_off(&self.ipv6_conf, &spec.host).await;
            // Up; where IPv6 could not be turned off, at least without an IPv6 link-local
            // address: address generation, duplicate address detection and MLD reports for
            // every new bridge port are kernel work on the ADD path that nobody uses. (The
            // kernel takes this only for an existing link.)
            let up = |no_autoconf: bool| {
                let mut msg = LinkUnspec::new_with_name(&spec.host);
                if no_autoconf {
                    msg = msg.append_extra_attribute(no_ipv6_autoconf());
                }
                self.main.handle.link().change(msg.up().build()).execute()
            };
            match up(!ipv6_off).await {
                // No IPv6 on this link (MTU below 1280, or IPv6 off in the kernel): nothing to turn off.
                Err(e) if errno_of(&e) == Some(nix::libc::EAFNOSUPPORT) => up(false).await,
                other => other,
            }
            .map_err(kernel(format!("bringing {} up", spec.host)))?;
            if spec.hairpin {
                self.set_hairpin(&spec.host).await?;
            }
            Ok(())
        })
        .await
    }

    async fn open_container(&self, netns: &Netns) -> Result<ContainerSocket, NetlinkError> {
        bounded(
            || format!("entering network namespace {}", netns.path),
            async {
                Ok(ContainerSocket {
                    socket: ns_socket(&self.opener, netns).await?,
                    path: netns.path.clone(),
                })
            },
        )
        .await
    }

    async fn configure_container(
        &self,
        container: &ContainerSocket,
        spec: &ContainerSpec,
    ) -> Result<LinkState, NetlinkError> {
        let at = &container.path;
        bounded(|| format!("configuring {} in {at}", spec.ifname), async {
            let handle = &container.socket.handle;
            let link = get_link(handle, &spec.ifname).await?.ok_or_else(|| {
                NetlinkError::Gone(format!(
                    "interface {} is missing in {} right after it was created",
                    spec.ifname, at
                ))
            })?;
            let addr = async {
                match spec.address {
                    Some(a) => {
                        let add = handle
                            .address()
                            .add(link.index, IpAddr::V4(a.ip()), a.prefix());
                        add.execute().await
                    }
                    None => Ok(()),
                }
            };
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
            let addr6 = async {
                match spec.address6 {
                    Some(a6) => add_address6(handle, link.index, a6).execute().await,
                    None => Ok(()),
                }
            };
            let (no_autoconf, addr, addr6, up, lo) =
                futures::join!(no_autoconf, addr, addr6, up, lo);
            match no_autoconf {
                // No IPv6 on this link (MTU below 1280, or IPv6 off in the kernel): nothing to turn off.
                Err(e) if errno_of(&e) == Some(nix::libc::EAFNOSUPPORT) => {}
                other => other.map_err(kernel(format!(
                    "turning off IPv6 address generation on {} in {}",
                    spec.ifname, at
                )))?,
            }
            if let Some(a) = spec.address {
                addr.map_err(kernel(format!("adding {a} to {}", spec.ifname)))?;
            }
            if let Some(a6) = spec.address6 {
                addr6.map_err(kernel(format!("adding {a6} to {}", spec.ifname)))?;
            }
            up.map_err(kernel(format!("bringing {} up in {}", spec.ifname, at)))?;
            lo.map_err(kernel(format!("bringing lo up in {}", at)))?;
            let routes = spec
                .routes
                .iter()
                .map(|(dst, gw)| {
                    let route = RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(dst.network(), dst.prefix())
                        .gateway(*gw)
                        .output_interface(link.index)
                        .build();
                    (dst.to_string(), gw.to_string(), route)
                })
                .chain(spec.routes6.iter().map(|(dst, gw)| {
                    let route = RouteMessageBuilder::<Ipv6Addr>::new()
                        .destination_prefix(dst.network(), dst.prefix())
                        .gateway(*gw)
                        .output_interface(link.index)
                        .build();
                    (dst.to_string(), gw.to_string(), route)
                }));
            for (dst, gw, route) in routes {
                exists_ok(
                    handle
                        .route()
                        .add(route)
                        .execute()
                        .await
                        .map_err(kernel(format!("adding route {dst} via {gw} in {}", at))),
                )?;
            }
            Ok(link)
        })
        .await
    }

    async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        bounded(|| format!("deleting link {name}"), async {
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
        })
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
            async {
                // The host end is looked up while the namespace is entered.
                let (host, socket) = futures::join!(
                    get_link(&self.main.handle, host_veth),
                    ns_socket(&self.opener, netns)
                );
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
            },
        )
        .await
    }

    async fn delete_links(&self, names: &[String]) -> Vec<(String, NetlinkError)> {
        match tokio::time::timeout(KERNEL_TIMEOUT, async {
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
                    Err(e)
                        if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => {}
                    Err(e) => {
                        failed.push((name.clone(), kernel(format!("deleting link {name}"))(e)))
                    }
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
                Err(e) if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => {
                    failed
                }
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
        })
        .await
        {
            Ok(failed) => failed,
            Err(_) => names
                .iter()
                .map(|name| {
                    let op = format!("deleting link {name}");
                    (name.clone(), NetlinkError::Timeout { op })
                })
                .collect(),
        }
    }

    async fn link(&self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        bounded(|| format!("looking up link {name}"), async {
            get_link(&self.main.handle, name).await
        })
        .await
    }

    async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Network>, NetlinkError> {
        bounded(|| format!("listing addresses of link {index}"), async {
            get_addresses(&self.main, index).await
        })
        .await
    }

    async fn inspect_container(
        &self,
        netns: &Netns,
        ifname: &str,
        v6: bool,
    ) -> Result<Option<ContainerView>, NetlinkError> {
        bounded(|| format!("inspecting {ifname} in {}", netns.path), async {
            let socket = ns_socket(&self.opener, netns).await?;
            let Some(link) = get_link(&socket.handle, ifname).await? else {
                return Ok(None);
            };
            let addrs = get_addresses(&socket, link.index).await?;
            let routes = get_routes(&socket, link.index).await?;
            let (addrs6, routes6) = if v6 {
                (
                    get_addresses6(&socket, link.index).await?,
                    get_routes6(&socket, link.index).await?,
                )
            } else {
                (Vec::new(), Vec::new())
            };
            Ok(Some(ContainerView {
                link,
                addrs,
                routes,
                addrs6,
                routes6,
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The names /proc gives are the names a dump gives (see `host::link_names`).
    #[tokio::test]
    async fn proc_link_names_are_the_dumped_ones() {
        let nl = RtNetlink::new().expect("a netlink socket");
        let names = crate::host::link_names().expect("/proc/self/net/dev is readable");
        assert!(names.contains("lo"), "{names:?}");
        let dumped: std::collections::HashSet<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, dumped);
    }
}
