//! The IPv4 range of a network: host-local's top-level keys, or the IPv4 set of `ipam.ranges`.

use super::{check_range, check_subnet, opt_ip, opt_str, parse_cidr, ConfigError, DEFAULT_SUBNET};
use ipnetwork::Ipv4Network;
use serde_json::{Map, Value};
use std::net::Ipv4Addr;

/// The IPv4 half of [`super::IpamConf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipam4 {
    pub subnet: Ipv4Network,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub routes: Vec<Route>,
}

/// A route installed in the container; `gw` defaults to the network's gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Network,
    pub gw: Option<Ipv4Addr>,
}

impl Ipam4 {
    /// The gateway a route uses inside the container.
    pub fn route_gateway(&self, route: &Route) -> Ipv4Addr {
        route.gw.unwrap_or(self.gateway)
    }

    /// Whether `ip` may be handed out: inside the range and neither the gateway, the network
    /// address nor the broadcast address.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        ip >= self.range_start
            && ip <= self.range_end
            && ip != self.gateway
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
    }

    /// The gateway with the subnet's prefix length, as the bridge holds it.
    pub fn gateway_network(&self) -> Ipv4Network {
        Ipv4Network::new(self.gateway, self.subnet.prefix())
            .expect("prefix comes from a valid subnet")
    }

    /// `0.0.0.0/0` through the gateway, what a network without `routes` gets.
    pub fn default_route() -> Route {
        Route {
            dst: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("prefix 0 is valid"),
            gw: None,
        }
    }
}

/// One IPv4 range (subnet, gateway, rangeStart, rangeEnd), without routes.
pub(super) fn parse_range4(range: &Map<String, Value>) -> Result<Ipam4, ConfigError> {
    let subnet_str = opt_str(range, "subnet")?.unwrap_or_else(|| DEFAULT_SUBNET.to_string());
    let subnet = parse_cidr("ipam subnet", &subnet_str)?;
    check_subnet(&subnet_str, subnet.into())?;
    let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    let last = Ipv4Addr::from(u32::from(subnet.broadcast()) - 1);
    let gateway = opt_ip(range, "gateway")?.unwrap_or(first);
    let range_start = opt_ip(range, "rangeStart")?.unwrap_or(first);
    let range_end = opt_ip(range, "rangeEnd")?.unwrap_or(last);
    check_range(subnet.into(), first..=last, gateway, range_start, range_end)?;
    Ok(Ipam4 {
        subnet,
        range_start,
        range_end,
        gateway,
        routes: Vec::new(),
    })
}
