//! ADD: the address is chosen and recorded under the network's lock, then the kernel work (veth
//! pair, the container end's address and routes) runs after it; a failure undoes both.

use super::*;

impl<N: Netlink, S: Store> Engine<N, S> {
    pub(super) async fn add(&self, conf: &NetConf, req: &Request) -> Result<String, Error> {
        let key = Self::key(conf, req)?;
        let args = cni::parse_cni_args(&req.args).map_err(|e| Error::Environment(e.0))?;
        if req.netns.is_empty() {
            return Err(Error::Environment(
                "CNI_NETNS is empty: ADD needs the container's network namespace".into(),
            ));
        }
        let t0 = Instant::now();
        let netns = Netns::open(&req.netns)?;
        let requested = args.ip.or(conf.runtime_ip);
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
        let mut _guard = self.lock(&conf.name, req.deadline).await?;
        let t_lock = t0.elapsed();

        if let Some(existing) = self.store.get(&key)? {
            let same =
                existing.netns == req.netns && requested.is_none_or(|ip| ip == existing.address);
            if !same {
                return Err(Error::AlreadyAttached(format!(
                    "container {} already has {} on network {} (address {}, namespace {}): delete it first",
                    key.container_id, key.ifname, key.network, existing.address, existing.netns
                )));
            }
            if self.nl.link(&existing.host_veth).await?.is_some() {
                return Ok(existing.result.render(&conf.cni_version));
            }
            // The record outlived its interface (the link was removed behind our back): it is
            // released, and the container is attached anew.
            if let Some(stale) = self.store.remove(&key)? {
                self.events.announce(EventKind::Released, &stale);
            }
        }

        self.check_overlap(conf)?;
        let choose = || {
            ipam::choose_excluding(&self.store, &conf.name, &conf.ipam, requested, &|ip| {
                self.is_quarantined(&conf.name, ip)
            })
        };
        let ip = match choose() {
            // The address asked for, or the last free ones, may only be waiting for the deletion of
            // a veth whose DEL has already answered: wait for those deletions, then choose again.
            Err(e @ (IpamError::Taken { .. } | IpamError::Exhausted { .. })) => {
                let waiting = self.quarantined_veths(&conf.name, requested);
                if waiting.is_empty() {
                    return Err(e.into());
                }
                // Without the network lock: the other requests need not wait with this one.
                drop(_guard);
                for veth in &waiting {
                    self.deleter.wait_gone(veth, KERNEL_WAIT).await;
                }
                _guard = self.lock(&conf.name, req.deadline).await?;
                if self.store.get(&key)?.is_some() {
                    return Err(Error::Busy(format!(
                        "another ADD for container {} on {} finished first; try again",
                        key.container_id, key.ifname
                    )));
                }
                choose()?
            }
            other => other?,
        };
        let mac = args.mac.or(conf.runtime_mac).unwrap_or_else(random_mac);
        let host_mac = random_mac();
        let bridge = self.bridge(conf, false).await?;
        let address = Ipv4Network::new(ip, conf.ipam.subnet.prefix())
            .expect("prefix comes from a valid subnet");
        let mut alloc = Allocation {
            network: conf.name.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            address: ip,
            prefix: conf.ipam.subnet.prefix(),
            container_name: args.pod_name.clone(),
            aliases: conf.aliases.clone(),
            host_veth: host_veth.clone(),
            netns: req.netns.clone(),
            created_unix: unix_now(),
            boot_id: self.boot_id.clone(),
            result: cni_result(
                conf,
                &bridge.mac,
                &host_veth,
                host_mac,
                &req.ifname,
                mac,
                &netns.path,
                address,
            ),
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
        drop(_guard);
        let (attached, flushed) = tokio::join!(
            async {
                // Another container's veth may have this name: then the next name is tried.
                let mut veth = host_veth.clone();
                let mut salt = 0;
                loop {
                    let r = self
                        .attach(
                            conf,
                            &netns,
                            &key,
                            &veth,
                            address,
                            mac,
                            host_mac,
                            bridge.clone(),
                        )
                        .await;
                    match r {
                        Err(Error::NameTaken(_)) if salt < NAME_SALTS => {
                            salt += 1;
                            veth = veth_name_salted(&req.container_id, &req.ifname, salt);
                        }
                        r => break (r, veth, t0.elapsed()),
                    }
                }
            },
            async { (self.store.flush().await, t0.elapsed()) }
        );
        let ((attached, veth, t_attached), (flushed, t_flushed)) = (attached, flushed);
        let committed = match (attached, flushed) {
            (Ok(used), Ok(())) if used.mac == bridge.mac && veth == host_veth => {
                tracing::debug!(?t_lock, ?t_recorded, ?t_attached, ?t_flushed, done = ?t0.elapsed(), "ADD phases");
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
        let host_veth = veth;
        let failure = match committed {
            Ok(()) => {
                self.events.announce(EventKind::Added, &alloc);
                return Ok(alloc.result.render(&conf.cni_version));
            }
            Err(e) => e,
        };
        // Undo: the veth pair first (deleting the host end removes the peer and the address in the
        // container too), then the record. If the veth cannot be deleted, its address is held back
        // (quarantined) until the interface is gone. A name that is another container's was never
        // created: that veth is not ours to delete.
        let undo = match failure {
            Error::NameTaken(_) => Ok(false),
            _ => self.nl.delete_link(&host_veth).await,
        };
        let _ = self.store.remove(&key);
        match undo {
            Ok(_) => Err(failure),
            Err(undo) => {
                self.quarantine
                    .lock()
                    .expect("quarantine poisoned")
                    .push(Quarantined {
                        network: conf.name.clone(),
                        address: ip,
                        host_veth: host_veth.clone(),
                    });
                tracing::error!(host_veth, address = %ip, error = %undo,
                    "cannot undo a failed ADD; its address is held back until the interface is gone");
                Err(Error::RollbackFailed {
                    error: Box::new(failure),
                    undo: undo.to_string(),
                })
            }
        }
    }

    /// The kernel side of ADD: veth pair, container address and routes. Returns the bridge the veth
    /// went on (another one than `bridge` if the bridge had to be recreated).
    #[allow(clippy::too_many_arguments)]
    async fn attach(
        &self,
        conf: &NetConf,
        netns: &Netns,
        key: &AllocKey,
        host_veth: &str,
        address: Ipv4Network,
        mac: [u8; 6],
        host_mac: [u8; 6],
        mut bridge: LinkState,
    ) -> Result<LinkState, Error> {
        let ifname = key.ifname.as_str();
        let mut spec = VethSpec {
            host: host_veth.to_string(),
            host_mac,
            bridge_index: bridge.index,
            mtu: conf.mtu,
            hairpin: conf.hairpin_mode,
            netns,
            ifname: ifname.to_string(),
            container_mac: mac,
        };
        if let Err(first) = self.nl.create_veth(&spec).await {
            // The bridge may have been removed since it was cached, or a link of ours may be left
            // from a crash. Find out which, fix it, and try once more.
            let stale_bridge = self
                .nl
                .link(&conf.bridge)
                .await?
                .is_none_or(|l| l.index != bridge.index);
            let leftover = first.exists() && self.nl.link(host_veth).await?.is_some();
            if stale_bridge {
                bridge = self.bridge(conf, true).await?;
                spec.bridge_index = bridge.index;
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
                self.release_quarantine(host_veth);
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
            .routes
            .iter()
            .map(|r| (r.dst, conf.ipam.route_gateway(r)))
            .collect();
        self.nl
            .configure_container(
                netns,
                &ContainerSpec {
                    ifname: ifname.to_string(),
                    address,
                    routes,
                },
            )
            .await?;
        Ok(bridge)
    }
}

/// The CNI result of an attachment: bridge, host veth, container interface; its address and routes.
#[allow(clippy::too_many_arguments)]
fn cni_result(
    conf: &NetConf,
    bridge_mac: &[u8],
    host_veth: &str,
    host_mac: [u8; 6],
    ifname: &str,
    mac: [u8; 6],
    sandbox: &str,
    address: Ipv4Network,
) -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: cni::format_mac(bridge_mac),
                sandbox: None,
            },
            Interface {
                name: host_veth.to_string(),
                mac: cni::format_mac(&host_mac),
                sandbox: None,
            },
            Interface {
                name: ifname.to_string(),
                mac: cni::format_mac(&mac),
                sandbox: Some(sandbox.to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: address.to_string(),
            gateway: Some(conf.ipam.gateway.to_string()),
            interface: Some(2),
        }],
        routes: conf
            .ipam
            .routes
            .iter()
            .map(|r| RouteOut {
                dst: r.dst.to_string(),
                gw: r.gw.map(|g| g.to_string()),
            })
            .collect(),
        dns: conf.dns.clone(),
    }
}
