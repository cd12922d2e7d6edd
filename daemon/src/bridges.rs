//! Where a container's host veth goes: a network larger than a /24 spreads its ports over several
//! Linux bridges. The kernel visits every port of a bridge several times whenever a port is added
//! or removed (port states, MTU, GSO limits, features), so each ADD on a bridge of 1,000 ports
//! cost about 0.4 ms more kernel work (under the RTNL lock every link change waits for) than on an
//! empty one, and a bridge takes at most 1,023 ports: a /16 network could not hold more than that.
//!
//! The addresses of each /24 block of the subnet (each 256 addresses from its start, for IPv6 too)
//! have a bridge of their own. Block 0 is on the network's bridge (`bridge` in the configuration,
//! which holds the gateway address), so a network of a /24 or less is one bridge as it always was.
//! Block k > 0 is on the sub-bridge `fnb-<h>-<k>` (h: 6 hex digits of a stable hash of the
//! network's bridge name), which a veth pair, the trunk, joins to the network's bridge: `fnt-<h>-<k>`
//! on the network's bridge, `fnp-<h>-<k>` on the sub-bridge. Everything stays one layer 2 segment:
//! a frame between two sub-bridges crosses the network's bridge. Blocks past the last sub-bridge the
//! network's bridge has room for wrap around.

use crate::netlink::SubBridgeSpec;
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Addresses per bridge: a /24 block.
pub const BLOCK: u128 = 256;

/// The most sub-bridges one network has: the network's bridge holds a block's ports and one
/// trunk per sub-bridge, and a Linux bridge takes at most 1,023 ports.
pub const MAX_SUB_BRIDGES: u32 = 1023 - BLOCK as u32;

/// Which bridge of its network the host veth of an interface with these addresses goes on: 0 for
/// the network's bridge, k for sub-bridge k. The IPv4 address decides when there is one.
pub fn slot(v4: Option<(Ipv4Network, Ipv4Addr)>, v6: Option<(Ipv6Network, Ipv6Addr)>) -> u32 {
    let offset = match (v4, v6) {
        (Some((net, ip)), _) => u128::from(u32::from(ip).wrapping_sub(u32::from(net.network()))),
        (None, Some((net, ip))) => u128::from(ip).wrapping_sub(u128::from(net.network())),
        (None, None) => 0,
    };
    ((offset / BLOCK) % (u128::from(MAX_SUB_BRIDGES) + 1)) as u32
}

/// The 6 hex digits that tie a sub-bridge and its trunk to their network's bridge.
fn tag(bridge: &str) -> String {
    let h = flatnet_proto::fnv::fnv1a64(&[bridge.as_bytes()]);
    format!("{:06x}", (h ^ (h >> 32)) as u32 & 0x00ff_ffff)
}

/// Sub-bridge `slot` (> 0) of the network whose bridge is `bridge`, with its trunk.
pub fn sub_bridge(bridge: &str, slot: u32, mtu: Option<u32>, root_index: u32) -> SubBridgeSpec {
    let tag = tag(bridge);
    SubBridgeSpec {
        name: format!("fnb-{tag}-{slot}"),
        root: bridge.to_string(),
        root_index,
        trunk: format!("fnt-{tag}-{slot}"),
        trunk_peer: format!("fnp-{tag}-{slot}"),
        mtu,
    }
}

/// Whether `name` is a sub-bridge of the network whose bridge is `bridge`.
pub fn is_sub_bridge_of(name: &str, bridge: &str) -> bool {
    name.strip_prefix("fnb-")
        .and_then(|rest| rest.strip_prefix(tag(bridge).as_str()))
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|k| k.parse::<u32>().ok())
        .is_some_and(|k| (1..=MAX_SUB_BRIDGES).contains(&k))
}

/// Whether a bridge name has the shape of the links this module names (`fnb-`, `fnt-`, `fnp-`):
/// reserved, like `fn-`.
pub fn is_reserved(name: &str) -> bool {
    flatnet_proto::cni::SUB_BRIDGE_PREFIXES
        .iter()
        .any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(net: &str, ip: &str) -> Option<(Ipv4Network, Ipv4Addr)> {
        Some((net.parse().unwrap(), ip.parse().unwrap()))
    }

    #[test]
    fn a_24_is_one_bridge() {
        for ip in ["10.87.1.0", "10.87.1.2", "10.87.1.254", "10.87.1.255"] {
            assert_eq!(slot(v4("10.87.1.0/24", ip), None), 0, "{ip}");
        }
    }

    #[test]
    fn each_24_of_a_larger_subnet_has_its_bridge() {
        assert_eq!(slot(v4("10.87.0.0/16", "10.87.0.7"), None), 0);
        assert_eq!(slot(v4("10.87.0.0/16", "10.87.1.7"), None), 1);
        assert_eq!(slot(v4("10.87.0.0/16", "10.87.255.254"), None), 255);
        assert_eq!(slot(v4("10.80.0.0/12", "10.82.0.1"), None), 512);
        // Past the last sub-bridge the blocks wrap around.
        assert_eq!(slot(v4("10.0.0.0/8", "10.3.0.0"), None), 768 % 768);
        assert_eq!(slot(v4("10.0.0.0/8", "10.3.1.0"), None), 1);
    }

    #[test]
    fn ipv6_decides_only_without_ipv4() {
        let six = Some(("fd87::/64".parse().unwrap(), "fd87::305".parse().unwrap()));
        assert_eq!(slot(None, six), 3);
        assert_eq!(slot(v4("10.87.1.0/24", "10.87.1.9"), six), 0);
        let far = Some((
            "fd87::/64".parse().unwrap(),
            "fd87::1:0:0:0".parse().unwrap(),
        ));
        assert!(slot(None, far) <= MAX_SUB_BRIDGES);
    }

    #[test]
    fn the_root_bridge_has_room_for_a_block_and_every_trunk() {
        assert_eq!(BLOCK as u32 + MAX_SUB_BRIDGES, 1023);
    }

    #[test]
    fn names_fit_the_kernel_and_stay_the_same() {
        let s = sub_bridge("flatnet-br0", MAX_SUB_BRIDGES, None, 7);
        for name in [&s.name, &s.trunk, &s.trunk_peer] {
            assert!(name.len() <= 15, "{name}");
            assert!(!crate::veth::is_flatnet_veth(name), "{name}");
            assert!(is_reserved(name), "{name}");
        }
        // An upgraded flatnetd must find the sub-bridges the previous one made.
        assert_eq!(sub_bridge("flatnet-br0", 3, None, 7).name, "fnb-612493-3");
        assert_ne!(tag("flatnet-br0"), tag("flatnet-br1"));
    }

    #[test]
    fn sub_bridges_are_known_by_their_network() {
        let s = sub_bridge("flatnet-br0", 12, None, 7);
        assert!(is_sub_bridge_of(&s.name, "flatnet-br0"));
        assert!(!is_sub_bridge_of(&s.name, "flatnet-br1"));
        assert!(!is_sub_bridge_of(&s.trunk, "flatnet-br0"));
        assert!(!is_sub_bridge_of("flatnet-br0", "flatnet-br0"));
        let zero = s.name.replace("-12", "-0");
        assert!(!is_sub_bridge_of(&zero, "flatnet-br0"));
    }
}
