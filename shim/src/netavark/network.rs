//! A Podman network of the driver `flatnet`: its subnet, options and routes, read and checked.

use std::net::Ipv4Addr;

use flatnet_proto::cni::validate_ifname;
use flatnet_proto::v1::{self};
use flatnet_proto::DEFAULT_SOCKET;
use serde_json::{json, Map, Value};

use super::subnet6::{self, Subnet6};
use super::*;

/// An IPv4 subnet: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub(super) fn parse(text: &str) -> Option<Subnet> {
        let (ip, prefix) = text.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let network = Ipv4Addr::from(u32::from(ip) & Self::mask(prefix));
        Some(Subnet { network, prefix })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    pub(super) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }

    pub(super) fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The first and last address containers may get (not the network or broadcast address).
    pub(super) fn hosts(&self) -> (Ipv4Addr, Ipv4Addr) {
        let net = u32::from(self.network);
        let last = net | !Self::mask(self.prefix);
        (Ipv4Addr::from(net + 1), Ipv4Addr::from(last - 1))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A network flatnetd already serves, as far as `create` needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub name: String,
    /// Its IPv4 and IPv6 subnets (empty when it has none of that family).
    pub subnet: String,
    pub subnet6: String,
    /// Addresses held, of both families.
    pub in_use: u64,
}

impl From<v1::Network> for Known {
    fn from(n: v1::Network) -> Known {
        Known {
            name: n.name,
            subnet: n.subnet,
            subnet6: n.subnet6,
            in_use: n.addresses_in_use + n.addresses6_in_use,
        }
    }
}

/// The IPv4 side of a [`FlatnetNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network4 {
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
}

/// The Flatnet view of a Podman network: what setup and teardown turn into a CNI config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatnetNetwork {
    pub name: String,
    /// The IPv4 subnet; `None` on an IPv6-only network.
    pub v4: Option<Network4>,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub default_route: bool,
    /// The IPv6 subnet of a dual-stack or IPv6-only network (`--ipv6`).
    pub v6: Option<Subnet6>,
    /// Outbound NAT (`ipMasq`); on unless `-o ip_masq=false`.
    pub ip_masq: bool,
    /// Extra routes: destination and gateway.
    pub routes: Vec<(Subnet, Ipv4Addr)>,
    pub socket: String,
}

pub(super) fn string_field<'a>(
    map: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

pub(super) fn bool_field(map: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("\"{key}\" must be true or false")),
    }
}

pub(super) fn parse_bool_option(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("-o {key}={value} must be true or false")),
    }
}

impl FlatnetNetwork {
    /// Reads a network as Podman stores it (after `create`), checking everything Flatnet relies
    /// on. `known` (the networks flatnetd serves) is consulted for the default subnet only.
    pub(super) fn from_podman(
        net: &Map<String, Value>,
        known: &[Known],
    ) -> Result<FlatnetNetwork, String> {
        let name = string_field(net, "name")?
            .filter(|n| !n.is_empty())
            .ok_or("the network has no name")?
            .to_string();
        let ipv6 = bool_field(net, "ipv6_enabled")?;
        if bool_field(net, "internal")? {
            return Err(format!(
                "network {name}: a Flatnet network is routable from the host by design, so --internal is not supported: create it without --internal"
            ));
        }
        let empty = Map::new();
        let options = match net.get("options") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(o)) => o,
            Some(_) => return Err("\"options\" must be an object".into()),
        };
        let mut bridge = None;
        let mut mtu = None;
        let mut default_route = true;
        let mut ip_masq = true;
        let mut socket = DEFAULT_SOCKET.to_string();
        for (key, value) in options {
            let Value::String(value) = value else {
                return Err(format!("-o {key} must be a string"));
            };
            match key.as_str() {
                "bridge" => bridge = Some(value.clone()),
                "mtu" => {
                    let n = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (68..=65535).contains(n))
                        .ok_or_else(|| {
                            format!("-o mtu={value} must be a number from 68 to 65535")
                        })?;
                    mtu = Some(n);
                }
                "isolate" => {
                    if value != "false" {
                        return Err(format!(
                            "-o isolate={value}: Flatnet keeps every address routable from the host and from the other Flatnet networks, so it does not isolate networks: leave the option out"
                        ));
                    }
                }
                "no_default_route" => default_route = !parse_bool_option(key, value)?,
                "ip_masq" => ip_masq = parse_bool_option(key, value)?,
                "socket" if !value.is_empty() => socket = value.clone(),
                _ => {
                    return Err(format!(
                        "-o {key}: a Flatnet network takes only the options {}",
                        OPTIONS.join(", ")
                    ))
                }
            }
        }
        // --interface-name names the bridge, as for Podman's own bridge driver.
        if let Some(interface) = string_field(net, "network_interface")?.filter(|i| !i.is_empty()) {
            if bridge.as_deref().is_some_and(|b| b != interface) {
                return Err(format!(
                    "--interface-name {interface} and -o bridge={} name two bridges: give one",
                    bridge.unwrap_or_default()
                ));
            }
            bridge = Some(interface.to_string());
        }
        let bridge = bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname("the bridge name", &bridge).map_err(|e| e.to_string())?;
        if bridge.starts_with("fn-") {
            return Err(format!(
                "bridge name {bridge}: names starting with fn- are Flatnet's veths: choose another"
            ));
        }
        if flatnet_proto::cni::SUB_BRIDGE_PREFIXES
            .iter()
            .any(|p| bridge.starts_with(p))
        {
            return Err(format!(
                "bridge name {bridge}: names starting with fnb-, fnt- or fnp- are the sub-bridges \
                 of Flatnet's large networks and their trunks: choose another"
            ));
        }

        let subnets = match net.get("subnets") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(s)) => s.clone(),
            Some(_) => return Err("\"subnets\" must be an array".into()),
        };
        let (subnets6, subnets): (Vec<Value>, Vec<Value>) =
            subnets.into_iter().partition(subnet6::is_v6);
        let v4 = match subnets.as_slice() {
            // Only an IPv6 --subnet: an IPv6-only network.
            [] if !subnets6.is_empty() => None,
            [] => {
                let subnet = free_default_subnet(&name, known)?;
                Some(Network4 {
                    subnet,
                    gateway: subnet.hosts().0,
                    range: None,
                })
            }
            [one] => Some(parse_subnet(&name, one)?),
            _ => {
                return Err(format!(
                    "network {name}: a Flatnet network has one IPv4 subnet (and with --ipv6 one IPv6 subnet): give each --subnet once"
                ))
            }
        };
        let v6 = match subnets6.as_slice() {
            [] if ipv6 => Some(v4.and_then(|v4| Subnet6::default_for(v4.subnet)).ok_or_else(|| {
                format!("network {name}: --ipv6 without an IPv6 --subnet needs an IPv4 subnet of 10.87.0.0/16 (the IPv6 one is then fd87:N::/64): give an IPv6 --subnet")
            })?),
            [] => None,
            [Value::Object(one)] => Some(subnet6::parse_subnet6(&name, one)?),
            [_] => return Err("each \"subnets\" entry must be an object".into()),
            _ => {
                return Err(format!(
                    "network {name}: a Flatnet network has one IPv6 subnet: give an IPv6 --subnet once"
                ))
            }
        };
        let routes = parse_routes(&name, net.get("routes"), v4.map(|v4| v4.subnet))?;
        Ok(FlatnetNetwork {
            name,
            v4,
            bridge,
            mtu,
            default_route,
            v6,
            ip_masq,
            routes,
            socket,
        })
    }

    /// The network as the CNI config flatnetd serves (what the conflist says for a CNI network).
    pub(super) fn cni_config(&self) -> Value {
        let mut routes: Vec<Value> = Vec::new();
        if self.default_route && self.v4.is_some() {
            routes.push(json!({ "dst": "0.0.0.0/0" }));
        }
        for (dst, gw) in &self.routes {
            routes.push(json!({ "dst": dst.to_string(), "gw": gw.to_string() }));
        }
        let range = self.v4.map(|v4| {
            let mut range = json!({
                "subnet": v4.subnet.to_string(),
                "gateway": v4.gateway.to_string(),
            });
            if let Some((start, end)) = v4.range {
                range["rangeStart"] = start.to_string().into();
                range["rangeEnd"] = end.to_string().into();
            }
            range
        });
        let ipam = match (range, self.v6) {
            (Some(mut ipam), None) => {
                ipam["routes"] = routes.into();
                ipam
            }
            (range, v6) => {
                if self.default_route {
                    routes.push(json!({ "dst": "::/0" }));
                }
                let range6 =
                    v6.map(|v6| json!({ "subnet": v6.cidr(), "gateway": v6.gateway.to_string() }));
                let sets: Vec<Value> = range
                    .into_iter()
                    .chain(range6)
                    .map(|r| json!([r]))
                    .collect();
                json!({ "ranges": sets, "routes": routes })
            }
        };
        let mut conf = json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "type": "flatnet",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": self.ip_masq,
            "ipam": ipam,
        });
        if let Some(mtu) = self.mtu {
            conf["mtu"] = mtu.into();
        }
        if self.socket != DEFAULT_SOCKET {
            conf["socket"] = self.socket.clone().into();
        }
        conf
    }
}

/// The first /24 from 10.87.1.0 up that no network flatnetd serves overlaps.
pub(super) fn free_default_subnet(name: &str, known: &[Known]) -> Result<Subnet, String> {
    // A network of this name keeps the subnet it has.
    if let Some(same) = known.iter().find(|k| k.name == name) {
        if let Some(s) = Subnet::parse(&same.subnet) {
            return Ok(s);
        }
    }
    let taken: Vec<Subnet> = known
        .iter()
        .filter_map(|k| Subnet::parse(&k.subnet))
        .collect();
    (0..255u32)
        .map(|i| Subnet {
            network: Ipv4Addr::from(u32::from(FIRST_DEFAULT_SUBNET) + (i << 8)),
            prefix: 24,
        })
        .find(|s| !taken.iter().any(|t| t.overlaps(s)))
        .ok_or_else(|| {
            format!("network {name}: every /24 of 10.87.0.0/16 is used by a Flatnet network: give --subnet")
        })
}

/// One entry of `subnets`: subnet, gateway (default: the first address) and `lease_range`.
pub(super) fn parse_subnet(name: &str, entry: &Value) -> Result<Network4, String> {
    let Value::Object(entry) = entry else {
        return Err("each \"subnets\" entry must be an object".into());
    };
    let text = string_field(entry, "subnet")?.unwrap_or_default();
    let subnet = Subnet::parse(text).ok_or_else(|| {
        format!("network {name}: --subnet {text} is neither an IPv4 subnet such as 10.87.2.0/24 nor an IPv6 one such as fd87:2::/64")
    })?;
    if subnet.prefix > 30 {
        return Err(format!(
            "network {name}: --subnet {subnet} leaves no address for containers: use a /30 or larger"
        ));
    }
    let (first, last) = subnet.hosts();
    let addr = |key: &str, flag: &str, v: Option<&str>| -> Result<Option<Ipv4Addr>, String> {
        let Some(v) = v.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let ip: Ipv4Addr = v
            .parse()
            .map_err(|_| format!("network {name}: {flag} {v} is not an IPv4 address"))?;
        if ip < first || ip > last {
            return Err(format!(
                "network {name}: {flag} {ip} is not a host address of --subnet {subnet} ({first}-{last}) ({key})"
            ));
        }
        Ok(Some(ip))
    };
    let gateway = addr("gateway", "--gateway", string_field(entry, "gateway")?)?.unwrap_or(first);
    let range = match entry.get("lease_range") {
        None | Some(Value::Null) => None,
        Some(Value::Object(lease)) => {
            let start = addr(
                "start_ip",
                "--ip-range start",
                string_field(lease, "start_ip")?,
            )?
            .unwrap_or(first);
            let end =
                addr("end_ip", "--ip-range end", string_field(lease, "end_ip")?)?.unwrap_or(last);
            if start > end {
                return Err(format!(
                    "network {name}: --ip-range starts at {start}, after its end {end}"
                ));
            }
            Some((start, end))
        }
        Some(_) => return Err("\"lease_range\" must be an object".into()),
    };
    Ok(Network4 {
        subnet,
        gateway,
        range,
    })
}

/// `--route DST,GW[,METRIC]`: IPv4 routes through a gateway in the IPv4 subnet.
pub(super) fn parse_routes(
    name: &str,
    routes: Option<&Value>,
    subnet: Option<Subnet>,
) -> Result<Vec<(Subnet, Ipv4Addr)>, String> {
    let routes = match routes {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(r)) if r.is_empty() => return Ok(Vec::new()),
        Some(Value::Array(r)) => r,
        Some(_) => return Err("\"routes\" must be an array".into()),
    };
    let Some(subnet) = subnet else {
        return Err(format!(
            "network {name}: --route gives IPv4 routes, but the network has no IPv4 subnet: leave --route out"
        ));
    };
    routes
        .iter()
        .map(|r| {
            let Value::Object(r) = r else {
                return Err("each \"routes\" entry must be an object".into());
            };
            let dst_text = string_field(r, "destination")?.unwrap_or_default();
            let dst = Subnet::parse(dst_text).ok_or_else(|| {
                format!("network {name}: --route destination {dst_text} is not an IPv4 subnet")
            })?;
            let gw_text = string_field(r, "gateway")?.unwrap_or_default();
            let gw: Ipv4Addr = gw_text.parse().map_err(|_| {
                format!("network {name}: --route gateway {gw_text} is not an IPv4 address")
            })?;
            if !subnet.contains(gw) {
                return Err(format!(
                    "network {name}: --route gateway {gw} is not in the network's subnet {subnet}"
                ));
            }
            Ok((dst, gw))
        })
        .collect()
}
