//! Allocations for tests (the crate's own, and others' with the feature `fake`).

use super::{Allocation, NetworkRecord, NetworkRecord4};
use crate::result::CniResult;
use std::net::Ipv4Addr;

/// An allocation of `ip/prefix` on network `n` for `container`'s `eth0`, with an empty result.
pub fn allocation(container: &str, ip: Ipv4Addr, prefix: u8) -> Allocation {
    Allocation {
        aliases: Vec::new(),
        port: None,
        network: "n".into(),
        container_id: container.into(),
        ifname: "eth0".into(),
        address: Some(ip),
        prefix,
        address6: None,
        container_name: None,
        host_veth: "fn-00000000".into(),
        netns: "/run/netns/x".into(),
        created_unix: 0,
        boot_id: "b".into(),
        result: CniResult {
            interfaces: vec![],
            ips: vec![],
            routes: vec![],
            dns: serde_json::json!({}),
        },
    }
}

/// Network `name` on bridge `bridge`: 10.87.1.0/24, the bridge the gateway at .1, no range.
pub fn network(name: &str, bridge: &str) -> NetworkRecord {
    NetworkRecord {
        name: name.into(),
        bridge: bridge.into(),
        v4: Some(NetworkRecord4 {
            subnet: Ipv4Addr::new(10, 87, 1, 0),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 87, 1, 1),
            range: None,
        }),
        is_gateway: true,
        mtu: None,
        hairpin: false,
        ip_masq: false,
        v6: None,
    }
}
