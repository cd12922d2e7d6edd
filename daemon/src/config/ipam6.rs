//! The IPv6 half of a dual-stack network: host-local's second range set
//! (`"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::/64"}]]`) and its routes.

use super::{check_range, check_subnet, invalid, opt_str, ConfigError};
use ipnetwork::Ipv6Network;
use serde_json::{Map, Value};
use std::net::Ipv6Addr;

/// The IPv6 range of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipam6 {
    pub subnet: Ipv6Network,
    pub range_start: Ipv6Addr,
    pub range_end: Ipv6Addr,
    pub gateway: Ipv6Addr,
    pub routes: Vec<Route6>,
}

/// An IPv6 route installed in the container; `gw` defaults to the network's IPv6 gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    pub dst: Ipv6Network,
    pub gw: Option<Ipv6Addr>,
}

impl Ipam6 {
    /// The gateway a route uses inside the container.
    pub fn route_gateway(&self, route: &Route6) -> Ipv6Addr {
        route.gw.unwrap_or(self.gateway)
    }

    /// Whether `ip` may be handed out: inside the range and neither the gateway nor the subnet's
    /// first address (the subnet-router anycast address).
    pub fn assignable(&self, ip: Ipv6Addr) -> bool {
        ip >= self.range_start
            && ip <= self.range_end
            && ip != self.gateway
            && ip != self.subnet.network()
    }

    /// The default route of the family, via the gateway.
    pub fn default_route() -> Route6 {
        Route6 {
            dst: Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("prefix 0 is valid"),
            gw: None,
        }
    }
}

fn opt_ip6(obj: &Map<String, Value>, key: &str) -> Result<Option<Ipv6Addr>, ConfigError> {
    opt_str(obj, key)?
        .map(|s| {
            s.parse::<Ipv6Addr>().map_err(|_| {
                invalid(format!(
                    "ipam {key} {s:?} is not an IPv6 address (the range's subnet is IPv6)"
                ))
            })
        })
        .transpose()
}

/// One IPv6 range object (`subnet` already parsed), without routes.
pub(super) fn parse_range6(
    subnet_str: &str,
    subnet: Ipv6Network,
    obj: &Map<String, Value>,
) -> Result<Ipam6, ConfigError> {
    check_subnet(subnet_str, subnet.into())?;
    let base = u128::from(subnet.network());
    let size = if subnet.prefix() == 0 {
        u128::MAX
    } else {
        (1u128 << (128 - subnet.prefix())) - 1
    };
    let (first, last) = (Ipv6Addr::from(base + 1), Ipv6Addr::from(base + size));
    let gateway = opt_ip6(obj, "gateway")?.unwrap_or(first);
    let range_start = opt_ip6(obj, "rangeStart")?.unwrap_or(first);
    let range_end = opt_ip6(obj, "rangeEnd")?.unwrap_or(last);
    check_range(subnet.into(), first..=last, gateway, range_start, range_end)?;
    Ok(Ipam6 {
        subnet,
        range_start,
        range_end,
        gateway,
        routes: Vec::new(),
    })
}

/// One IPv6 route object (`dst` already parsed).
pub(super) fn parse_route6(
    dst_str: &str,
    dst: Ipv6Network,
    o: &Map<String, Value>,
) -> Result<Route6, ConfigError> {
    if dst.ip() != dst.network() {
        return Err(invalid(format!(
            "ipam route dst {dst_str} has host bits set: did you mean {}/{}?",
            dst.network(),
            dst.prefix()
        )));
    }
    let gw = opt_str(o, "gw")?
        .map(|s| {
            s.parse::<Ipv6Addr>().map_err(|_| {
                invalid(format!(
                    "ipam route gw {s:?} is not an IPv6 address, but dst {dst_str} is IPv6"
                ))
            })
        })
        .transpose()?;
    Ok(Route6 { dst, gw })
}
