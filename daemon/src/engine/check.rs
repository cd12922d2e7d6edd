//! CHECK: what `prevResult` says against the record and the kernel. Answers the address checked.

use super::*;

impl<N: Netlink, S: Store> Engine<N, S> {
    pub(super) async fn check(&self, conf: &NetConf, req: &Request) -> Result<String, Error> {
        let key = Self::key(conf, req)?;
        let prev = conf.prev_result.as_ref().ok_or_else(|| {
            Error::Config(ConfigError {
                kind: ConfigKind::Invalid,
                msg: "CHECK needs prevResult in the network configuration".into(),
            })
        })?;
        let prev = CniResult::from_prev_result(prev).map_err(|msg| {
            Error::Config(ConfigError {
                kind: ConfigKind::Decode,
                msg,
            })
        })?;
        let netns = Netns::open(&req.netns)?;
        let _attachment = self.attachment_lock(&key, req.deadline).await?;
        let alloc = self.store.get(&key)?.ok_or_else(|| {
            Error::UnknownContainer(format!(
                "container {} has no {} on network {}",
                key.container_id, key.ifname, key.network
            ))
        })?;
        let failed = |msg: String| Err(Error::CheckFailed(msg));
        // The first address prevResult gives the interface is the one flatnet assigned first.
        let prev_ip = prev.ips.iter().find(|i| {
            i.interface
                .and_then(|n| prev.interfaces.get(n))
                .is_none_or(|intf| intf.name == req.ifname)
        });
        let first = alloc
            .network_address()
            .map(|n| n.to_string())
            .or(alloc.network_address6().map(|n| n.to_string()))
            .unwrap_or_default();
        match prev_ip {
            Some(i) if i.address == first => {}
            Some(i) => {
                return failed(format!(
                    "prevResult says {} but flatnet assigned {first}",
                    i.address
                ))
            }
            None => return failed(format!("prevResult has no address for {}", req.ifname)),
        }

        let Some(bridge) = self.nl.link(&conf.bridge).await? else {
            return failed(format!("bridge {} does not exist", conf.bridge));
        };
        if !bridge.up {
            return failed(format!("bridge {} is down", conf.bridge));
        }
        if let Some(v4) = conf.ipam.v4.as_ref().filter(|_| conf.is_gateway) {
            let gw = v4.gateway_network();
            if !self.nl.addresses(bridge.index).await?.contains(&gw) {
                return failed(format!(
                    "bridge {} does not hold the gateway address {gw}",
                    conf.bridge
                ));
            }
        }
        // The bridge the veth belongs on: the network's, or a sub-bridge joined to it by its trunk.
        let slot = slot_of(conf, alloc.address, alloc.address6.map(|(a, _)| a));
        let (port_bridge, port_index) = if slot == 0 {
            (conf.bridge.clone(), bridge.index)
        } else {
            let sub = bridges::sub_bridge(&conf.bridge, slot, None, bridge.index);
            let Some(port) = self.nl.link(&sub.name).await? else {
                return failed(format!("bridge {} does not exist", sub.name));
            };
            if !port.up {
                return failed(format!("bridge {} is down", sub.name));
            }
            match self.nl.link(&sub.trunk).await? {
                Some(t) if t.master == Some(bridge.index) && t.up => {}
                _ => {
                    return failed(format!(
                        "bridge {} is not joined to {}: its trunk {} is missing, down or elsewhere",
                        sub.name, conf.bridge, sub.trunk
                    ))
                }
            }
            (sub.name, port.index)
        };
        match self.nl.link(&alloc.host_veth).await? {
            None => return failed(format!("host interface {} does not exist", alloc.host_veth)),
            Some(l) if l.master != Some(port_index) => {
                return failed(format!(
                    "host interface {} is not on bridge {port_bridge}",
                    alloc.host_veth
                ))
            }
            Some(_) => {}
        }
        let address6 = alloc.network_address6();
        if let Some(a6) = address6 {
            if !prev.ips.iter().any(|i| i.address == a6.to_string()) {
                return failed(format!(
                    "prevResult lacks the IPv6 address {a6} flatnet assigned"
                ));
            }
        }
        let Some(view) = self
            .nl
            .inspect_container(&netns, &req.ifname, address6.is_some())
            .await?
        else {
            return failed(format!(
                "interface {} does not exist in {}",
                req.ifname, req.netns
            ));
        };
        if !view.link.up {
            return failed(format!("interface {} in {} is down", req.ifname, req.netns));
        }
        if let Some(intf) = prev
            .interfaces
            .iter()
            .find(|i| i.name == req.ifname && !i.mac.is_empty())
        {
            if !intf
                .mac
                .eq_ignore_ascii_case(&cni::format_mac(&view.link.mac))
            {
                return failed(format!(
                    "interface {} has MAC {} but prevResult says {}",
                    req.ifname,
                    cni::format_mac(&view.link.mac),
                    intf.mac
                ));
            }
        }
        if let (Some(address), Some(v4)) = (alloc.network_address(), &conf.ipam.v4) {
            if !view.addrs.contains(&address) {
                return failed(format!(
                    "interface {} in {} does not hold {address}",
                    req.ifname, req.netns
                ));
            }
            for route in &v4.routes {
                let gw = v4.route_gateway(route);
                if !view.routes.contains(&(route.dst, Some(gw))) {
                    return failed(format!(
                        "route {} via {gw} is missing in {}",
                        route.dst, req.netns
                    ));
                }
            }
        }
        if let (Some(a6), Some(v6)) = (address6, &conf.ipam.v6) {
            if !view.addrs6.contains(&a6) {
                return failed(format!(
                    "interface {} in {} does not hold {a6} (or it is tentative or failed duplicate address detection)",
                    req.ifname, req.netns
                ));
            }
            for route in &v6.routes {
                let gw = v6.route_gateway(route);
                if !view.routes6.contains(&(route.dst, Some(gw))) {
                    return failed(format!(
                        "route {} via {gw} is missing in {}",
                        route.dst, req.netns
                    ));
                }
            }
        }
        Ok(alloc.address_text())
    }
}
