//! ADD: the address is chosen and recorded under the network's lock, then the kernel work (veth
//! pair, the container end's address and routes) runs after it, while the record is made durable;
//! a failure undoes both. In order: [`Engine::add`] waits for its turn, re-attaches what is attached
//! already ([`Engine::existing_attachment`]), chooses the address
//! ([`Engine::choose_address`]), records it, runs [`Engine::attach`] (the netlink calls) beside the
//! flush, and commits or undoes ([`Engine::undo_add`]).

use super::*;

/// What one ADD attaches: the container's interface, its address and MACs.
struct Attachment<'a> {
    conf: &'a NetConf,
    netns: &'a Netns,
    key: &'a AllocKey,
    /// On a network with an IPv4 range.
    address: Option<Ipv4Network>,
    /// On a network with an IPv6 range.
    address6: Option<Ipv6Network>,
    mac: [u8; 6],
    host_mac: [u8; 6],
}

impl<N: Netlink, S: Store> Engine<N, S> {
    pub(super) async fn add(&self, conf: &NetConf, req: &Request) -> Result<Done, Error> {
        let key = Self::key(conf, req)?;
        let args = cni::parse_cni_args(&req.args).map_err(|e| Error::Environment(e.0))?;
        if req.netns.is_empty() {
            return Err(Error::Environment(
                "CNI_NETNS is empty: ADD needs the container's network namespace".into(),
            ));
        }
        let requested = args.ip.or(conf.runtime_ip);
        if let (Some(ip), None) = (requested, &conf.ipam.v4) {
            return Err(Error::Environment(format!(
                "IPv4 address {ip} was asked for, but network {} has no IPv4 range: add one to ipam.ranges or ask for none",
                conf.name
            )));
        }
        let requested6 = args.ip6.or(conf.runtime_ip6);
        if let (Some(ip6), None) = (requested6, &conf.ipam.v6) {
            return Err(Error::Environment(format!(
                "IPv6 address {ip6} was asked for, but network {} has no IPv6 range: add one to ipam.ranges or ask for none",
                conf.name
            )));
        }
        let t0 = Instant::now();
        let netns = Netns::open(&req.netns)?;
        // The network's NAT rules, before any address is chosen: a firewall that refuses them
        // changes nothing else.
        self.firewall
            .ensure(&conf.name, nat_subnets(conf), conf.ip_masq)
            .await?;
        let host_veth = veth_name(&req.container_id, &req.ifname);
        // A container restarted right after its DEL needs the same veth name: wait until the old
        // veth is deleted (see [`deleter`]) before taking the network lock, so the wait holds up
        // nobody else.
        if !self.deleter.wait_gone(&host_veth, KERNEL_WAIT).await {
            return Err(Self::busy(
                &format!("host interface {host_veth}"),
                "the deletion of the previous one",
                KERNEL_WAIT,
            ));
        }
        let _attachment = self.attachment_lock(&key, req.deadline).await?;
        let guard = self.lock(&conf.name, req.deadline).await?;
        let t_lock = t0.elapsed();
        if let Some(result) = self
            .existing_attachment(conf, req, &key, requested, requested6)
            .await?
        {
            return Ok(result);
        }
        self.check_overlap(conf)?;
        let ((ip, ip6), guard) = self
            .choose_address(conf, &key, (requested, requested6), guard, req.deadline)
            .await?;
        let address = ip.zip(conf.ipam.v4.as_ref()).map(|(ip, v4)| {
            Ipv4Network::new(ip, v4.subnet.prefix()).expect("prefix comes from a valid subnet")
        });
        let address6 = ip6.zip(conf.ipam.v6.as_ref()).map(|(ip6, v6)| {
            Ipv6Network::new(ip6, v6.subnet.prefix()).expect("prefix comes from a valid subnet")
        });
        let a = Attachment {
            conf,
            netns: &netns,
            key: &key,
            address6,
            address,
            mac: args.mac.or(conf.runtime_mac).unwrap_or_else(random_mac),
            host_mac: random_mac(),
        };
        let bridge = self.bridge(conf, false).await?;
        let slot = slot_of(conf, ip, ip6);
        let port_bridge = self.port_bridge(conf, &bridge, slot, false).await?;
        let mut alloc = Allocation {
            network: conf.name.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            address: ip,
            prefix: address.map_or(0, |n| n.prefix()),
            address6: address6.map(|n| (n.ip(), n.prefix())),
            container_name: args.pod_name.clone(),
            aliases: conf.aliases.clone(),
            port: conf.port,
            host_veth: host_veth.clone(),
            netns: req.netns.clone(),
            created_unix: unix_now(),
            boot_id: self.boot_id.clone(),
            result: cni_result(&a, &bridge.mac, &host_veth),
        };
        // Recorded before the kernel work, so that making it durable overlaps with that work. A
        // record whose veth never comes (this ADD fails, or the daemon dies half way) is removed
        // below, or released by the start-up reconcile; no sweep can see it half way, as the gate
        // keeps sweeps away from requests in flight. The network's parameters go into the same
        // flush, so reconcile can rebuild its bridge for every allocation it finds.
        self.store.put_network(&network_record(conf))?;
        self.store.insert(&alloc)?;
        let t_recorded = t0.elapsed();
        // The address is taken in the store: other requests on this network may go on while the
        // kernel work and the durable write run (the attachment's own lock is still held).
        drop(guard);
        let (attached, flushed) = tokio::join!(
            async {
                let bridges = Bridges {
                    root: bridge.clone(),
                    port: port_bridge,
                    slot,
                };
                let (r, veth) = self.attach_salted(&a, &host_veth, &bridges).await;
                (r, veth, t0.elapsed())
            },
            async { (self.store.flush().await, t0.elapsed()) }
        );
        let ((attached, veth, t_attached), (flushed, t_flushed)) = (attached, flushed);
        let committed = match (attached, flushed) {
            (Ok(used), Ok(())) if used.mac == bridge.mac && veth == host_veth => {
                tracing::debug!(container_id = %req.container_id, ifname = %req.ifname, ?t_lock, ?t_recorded,
                    ?t_attached, ?t_flushed, done = ?t0.elapsed(), "ADD phases");
                Ok(())
            }
            // The bridge was recreated while attaching, or the veth got another name: the record
            // and the result name what is there.
            (Ok(used), Ok(())) => {
                alloc.result.interfaces[0].mac = cni::format_mac(&used.mac);
                alloc.result.interfaces[1].name = veth.clone();
                alloc.host_veth = veth.clone();
                match self.store.insert(&alloc) {
                    Ok(()) => self.store.flush().await.map_err(Error::from),
                    Err(e) => Err(Error::from(e)),
                }
            }
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(Error::from(e)),
        };
        match committed {
            Ok(()) => {
                self.events.announce(EventKind::Added, &alloc);
                self.routes.publish(&alloc);
                Ok(Done {
                    result: Some(alloc.result.render(&conf.cni_version)),
                    address: alloc.address_text(),
                })
            }
            Err(failure) => Err(self.undo_add(conf, &key, &alloc, &veth, failure).await),
        }
    }

    /// The result of an ADD for what is attached already (a runtime may send ADD again), or
    /// `None` when there is nothing to re-attach: no record, or a record whose interface was
    /// removed behind Flatnet's back (released here, so the container is attached anew).
    async fn existing_attachment(
        &self,
        conf: &NetConf,
        req: &Request,
        key: &AllocKey,
        requested: Option<Ipv4Addr>,
        requested6: Option<Ipv6Addr>,
    ) -> Result<Option<Done>, Error> {
        let Some(existing) = self.store.get(key)? else {
            return Ok(None);
        };
        let same = existing.netns == req.netns
            && requested.is_none_or(|ip| Some(ip) == existing.address)
            && requested6.is_none_or(|ip| Some(ip) == existing.address6.map(|(a, _)| a));
        if !same {
            return Err(Error::AlreadyAttached(format!(
                "container {} already has {} on network {} (address {}, namespace {}): delete it first",
                key.container_id, key.ifname, key.network, existing.address_text(), existing.netns
            )));
        }
        if self.nl.link(&existing.host_veth).await?.is_some() {
            return Ok(Some(Done {
                result: Some(existing.result.render(&conf.cni_version)),
                address: existing.address_text(),
            }));
        }
        if let Some(stale) = self.store.remove(key)? {
            self.released(&stale);
        }
        Ok(None)
    }

    /// The address for this ADD, chosen under the network's lock (`guard`, given back). When the
    /// address asked for, or the last free ones, only wait for the deletion of a veth whose DEL
    /// has already answered, it waits for those deletions without the lock and chooses again.
    async fn choose_address(
        &self,
        conf: &NetConf,
        key: &AllocKey,
        (requested, requested6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
        guard: tokio::sync::OwnedMutexGuard<()>,
        deadline: Option<Instant>,
    ) -> Result<
        (
            (Option<Ipv4Addr>, Option<Ipv6Addr>),
            tokio::sync::OwnedMutexGuard<()>,
        ),
        Error,
    > {
        let choose = || -> Result<_, IpamError> {
            let ip = conf
                .ipam
                .v4
                .as_ref()
                .map(|v4| ipam::choose(&self.store, &self.held, &conf.name, v4, requested))
                .transpose()?;
            let ip6 = conf
                .ipam
                .v6
                .as_ref()
                .map(|v6| ipam::choose6(&self.store, &self.held, &conf.name, v6, requested6))
                .transpose()?;
            Ok((ip, ip6))
        };
        match choose() {
            Err(e @ (IpamError::Taken { .. } | IpamError::Exhausted { .. })) => {
                let which = match &e {
                    IpamError::Taken { ip, .. } => Some(*ip),
                    _ => None,
                };
                let waiting = self.held.veths_holding(&conf.name, which);
                if waiting.is_empty() {
                    return Err(e.into());
                }
                // Without the network lock: the other requests need not wait with this one.
                drop(guard);
                for veth in &waiting {
                    self.deleter.wait_gone(veth, KERNEL_WAIT).await;
                }
                let guard = self.lock(&conf.name, deadline).await?;
                if self.store.get(key)?.is_some() {
                    return Err(Error::Busy(format!(
                        "another ADD for container {} on {} finished first; try again",
                        key.container_id, key.ifname
                    )));
                }
                Ok((choose()?, guard))
            }
            other => Ok((other?, guard)),
        }
    }

    /// [`Engine::attach`] under the interface's veth name, or, when that name is another
    /// container's, under the next salted one: the outcome and the name used.
    async fn attach_salted(
        &self,
        a: &Attachment<'_>,
        host_veth: &str,
        bridges: &Bridges,
    ) -> (Result<LinkState, Error>, String) {
        let mut veth = host_veth.to_string();
        let mut salt = 0;
        loop {
            match self.attach(a, &veth, bridges.clone()).await {
                Err(Error::NameTaken(_)) if salt < NAME_SALTS => {
                    salt += 1;
                    veth = veth_name_salted(&a.key.container_id, &a.key.ifname, salt);
                }
                r => return (r, veth),
            }
        }
    }

    /// Undoes a failed ADD and gives the error to answer: the veth pair first (deleting the host
    /// end removes the peer and the address in the container too), then the record. If the veth
    /// cannot be deleted, its address is held back until the interface is gone. A
    /// name that is another container's was never created: that veth is not ours to delete.
    async fn undo_add(
        &self,
        conf: &NetConf,
        key: &AllocKey,
        alloc: &Allocation,
        host_veth: &str,
        failure: Error,
    ) -> Error {
        let undo = match failure {
            Error::NameTaken(_) => Ok(false),
            _ => self.nl.delete_link(host_veth).await,
        };
        let _ = self.store.remove(key);
        match undo {
            Ok(_) => failure,
            Err(undo) => {
                for ip in alloc.addresses() {
                    self.held.hold(&conf.name, ip, host_veth);
                }
                tracing::error!(host_veth, address = %alloc.address_text(), error = %undo,
                    "cannot undo a failed ADD; its address is held back until the interface is gone");
                Error::RollbackFailed {
                    error: Box::new(failure),
                    undo: undo.to_string(),
                }
            }
        }
    }

    /// The kernel side of ADD: veth pair, container address and routes. Returns the network's
    /// bridge (another one than `bridges.root` if it had to be recreated).
    async fn attach(
        &self,
        a: &Attachment<'_>,
        host_veth: &str,
        mut bridges: Bridges,
    ) -> Result<LinkState, Error> {
        let (conf, netns, key) = (a.conf, a.netns, a.key);
        let ifname = key.ifname.as_str();
        let mut spec = VethSpec {
            host: host_veth.to_string(),
            host_mac: a.host_mac,
            bridge_index: bridges.port.index,
            mtu: conf.mtu,
            hairpin: conf.hairpin_mode,
            netns,
            ifname: ifname.to_string(),
            container_mac: a.mac,
        };
        // The way into the container's namespace is opened while the pair is being created.
        let (created, container) =
            tokio::join!(self.nl.create_veth(&spec), self.nl.open_container(netns));
        if let Err(first) = created {
            // A bridge may have been removed since it was cached, or a link of ours may be left
            // from a crash. Find out which, fix it, and try once more.
            let stale_root = self
                .nl
                .link(&conf.bridge)
                .await?
                .is_none_or(|l| l.index != bridges.root.index);
            let stale_port = bridges.slot > 0
                && (stale_root || {
                    let sub = bridges::sub_bridge(&conf.bridge, bridges.slot, None, 0);
                    let trunk = self.nl.link(&sub.trunk).await?;
                    self.nl
                        .link(&sub.name)
                        .await?
                        .is_none_or(|l| l.index != bridges.port.index)
                        || trunk.is_none_or(|t| t.master != Some(bridges.root.index))
                });
            let leftover = first.exists() && self.nl.link(host_veth).await?.is_some();
            if stale_root || stale_port {
                if stale_root {
                    bridges.root = self.bridge(conf, true).await?;
                }
                bridges.port = self
                    .port_bridge(conf, &bridges.root, bridges.slot, true)
                    .await?;
                spec.bridge_index = bridges.port.index;
            } else if leftover {
                if self
                    .store
                    .summaries()?
                    .iter()
                    .any(|a| a.host_veth == host_veth && a.key() != *key)
                {
                    return Err(Error::NameTaken(format!(
                        "host interface {host_veth} belongs to another container, and so did the \
                         other names tried: use another interface name"
                    )));
                }
                self.nl.delete_link(host_veth).await?;
                self.held.veth_gone(host_veth);
            } else if first.exists() {
                return Err(Error::InterfaceExists(format!(
                    "an interface named {ifname} already exists in {}: choose another CNI_IFNAME",
                    netns.path
                )));
            } else {
                return Err(first.into());
            }
            self.nl.create_veth(&spec).await?;
        }
        let routes = conf
            .ipam
            .v4
            .iter()
            .flat_map(|v4| v4.routes.iter().map(|r| (r.dst, v4.route_gateway(r))))
            .collect();
        let routes6 = conf
            .ipam
            .v6
            .iter()
            .flat_map(|v6| v6.routes.iter().map(|r| (r.dst, v6.route_gateway(r))))
            .collect();
        let inside = ContainerSpec {
            ifname: ifname.to_string(),
            address: a.address,
            routes,
            address6: a.address6,
            routes6,
        };
        let container = container?;
        // The bridge port comes up while the container's end is configured: neither waits for
        // the other (the pair has a carrier once both ends are up).
        let (port, configured) = tokio::join!(
            self.nl.activate_port(&spec),
            self.nl.configure_container(&container, &inside)
        );
        port?;
        configured?;
        Ok(bridges.root)
    }
}

/// The network's bridge and the one an ADD puts its veth on (the same for slot 0).
#[derive(Clone)]
struct Bridges {
    root: LinkState,
    port: LinkState,
    slot: u32,
}

/// The CNI result of an attachment: bridge, host veth, container interface; its address and routes.
fn cni_result(a: &Attachment<'_>, bridge_mac: &[u8], host_veth: &str) -> CniResult {
    let conf = a.conf;
    CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: cni::format_mac(bridge_mac),
                sandbox: None,
            },
            Interface {
                name: host_veth.to_string(),
                mac: cni::format_mac(&a.host_mac),
                sandbox: None,
            },
            Interface {
                name: a.key.ifname.clone(),
                mac: cni::format_mac(&a.mac),
                sandbox: Some(a.netns.path.clone()),
            },
        ],
        ips: a
            .address
            .zip(conf.ipam.v4.as_ref())
            .map(|(addr, v4)| IpConfig {
                address: addr.to_string(),
                gateway: Some(v4.gateway.to_string()),
                interface: Some(2),
            })
            .into_iter()
            .chain(
                a.address6
                    .zip(conf.ipam.v6.as_ref())
                    .map(|(addr, v6)| IpConfig {
                        address: addr.to_string(),
                        gateway: Some(v6.gateway.to_string()),
                        interface: Some(2),
                    }),
            )
            .collect(),
        routes: conf
            .ipam
            .v4
            .iter()
            .flat_map(|v4| {
                v4.routes.iter().map(|r| RouteOut {
                    dst: r.dst.to_string(),
                    gw: r.gw.map(|g| g.to_string()),
                })
            })
            .chain(conf.ipam.v6.iter().flat_map(|v6| {
                v6.routes.iter().map(|r| RouteOut {
                    dst: r.dst.to_string(),
                    gw: r.gw.map(|g| g.to_string()),
                })
            }))
            .collect(),
        dns: conf.dns.clone(),
    }
}
