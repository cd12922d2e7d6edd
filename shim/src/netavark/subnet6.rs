//! The IPv6 subnet of a dual-stack or IPv6-only Flatnet network (`podman network create -d flatnet
//! --ipv6`).

use std::net::Ipv6Addr;

use serde_json::{Map, Value};

use super::network::{string_field, Subnet};

/// An IPv6 subnet with the gateway the bridge holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet6 {
    pub network: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Ipv6Addr,
}

impl Subnet6 {
    fn mask(prefix: u8) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
    }

    pub(super) fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & Self::mask(self.prefix) == u128::from(self.network)
    }

    /// The default IPv6 subnet of a network whose IPv4 subnet is 10.87.N.0/24: fd87:N::/64, so
    /// the two read alike (10.87.7.0/24 and fd87:7::/64); `None` for any other IPv4 subnet.
    pub(super) fn default_for(v4: Subnet) -> Option<Subnet6> {
        let [a, b, n, 0] = v4.network.octets() else {
            return None;
        };
        if (a, b, v4.prefix) != (10, 87, 24) {
            return None;
        }
        let network: Ipv6Addr = format!("fd87:{n}::").parse().ok()?;
        Some(Subnet6 {
            network,
            prefix: 64,
            gateway: Ipv6Addr::from(u128::from(network) + 1),
        })
    }

    pub(super) fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    /// A subnet as flatnetd lists it (`fd87:1::/64`); the gateway is not part of that text and
    /// is left at the first address.
    pub(super) fn parse_cidr(text: &str) -> Option<Subnet6> {
        let (ip, prefix) = text.split_once('/')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 128)?;
        let network = Ipv6Addr::from(u128::from(ip) & Self::mask(prefix));
        Some(Subnet6 {
            network,
            prefix,
            gateway: Ipv6Addr::from(u128::from(network) + 1),
        })
    }

    pub(super) fn overlaps(&self, other: &Subnet6) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

/// Whether a `subnets` entry is an IPv6 one.
pub(super) fn is_v6(entry: &Value) -> bool {
    entry["subnet"].as_str().is_some_and(|s| s.contains(':'))
}

/// One IPv6 entry of `subnets`: subnet and gateway (default: the first address after the
/// network's). A lease range is refused: Flatnet hands out IPv6 addresses from the whole subnet.
pub(super) fn parse_subnet6(name: &str, entry: &Map<String, Value>) -> Result<Subnet6, String> {
    let text = string_field(entry, "subnet")?.unwrap_or_default();
    let bad =
        || format!("network {name}: --subnet {text} is not an IPv6 subnet such as fd87:7::/64");
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 128).ok_or_else(bad)?;
    if prefix > 126 {
        return Err(format!(
            "network {name}: --subnet {text} leaves no address for containers: use a /126 or larger"
        ));
    }
    let network = Ipv6Addr::from(u128::from(ip) & Subnet6::mask(prefix));
    if network != ip {
        return Err(format!(
            "network {name}: --subnet {text} has host bits set: did you mean {network}/{prefix}?"
        ));
    }
    let mut subnet = Subnet6 {
        network,
        prefix,
        gateway: Ipv6Addr::from(u128::from(network) + 1),
    };
    if let Some(gw) = string_field(entry, "gateway")?.filter(|g| !g.is_empty()) {
        let gw: Ipv6Addr = gw
            .parse()
            .map_err(|_| format!("network {name}: --gateway {gw} is not an IPv6 address"))?;
        if !subnet.contains(gw) || gw == network {
            return Err(format!(
                "network {name}: --gateway {gw} is not a host address of --subnet {text}"
            ));
        }
        subnet.gateway = gw;
    }
    if !matches!(entry.get("lease_range"), None | Some(Value::Null)) {
        return Err(format!(
            "network {name}: an --ip-range for the IPv6 subnet is not supported (Flatnet hands out IPv6 addresses from the whole subnet): leave it out"
        ));
    }
    Ok(subnet)
}

/// A `--ip6` address checked against the network's IPv6 subnet.
pub(super) fn static_ip6(name: &str, v6: Option<Subnet6>, text: &str) -> Result<Ipv6Addr, String> {
    let ip: Ipv6Addr = text
        .parse()
        .map_err(|_| format!("--ip6 {text} is not an IPv6 address"))?;
    let Some(v6) = v6 else {
        return Err(format!(
            "--ip6 {ip}: network {name} has no IPv6 subnet: create it with --ipv6"
        ));
    };
    if !v6.contains(ip) || ip == v6.gateway || ip == v6.network {
        return Err(format!(
            "--ip6 {ip} is not an address network {name} hands out ({}, not the gateway {}): choose one in that subnet",
            v6.cidr(),
            v6.gateway
        ));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_reads_like_the_ipv4_subnet() {
        let v4 = Subnet::parse("10.87.7.0/24").unwrap();
        let v6 = Subnet6::default_for(v4).unwrap();
        assert_eq!(v6.cidr(), "fd87:7::/64");
        assert_eq!(v6.gateway, "fd87:7::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            Subnet6::default_for(Subnet::parse("10.89.0.0/24").unwrap()),
            None
        );
        assert_eq!(v4.network, std::net::Ipv4Addr::new(10, 87, 7, 0));
    }
}
