//! The network configuration a runtime sends on stdin, parsed and validated into [`NetConf`].
//! Every check that can refuse a request on its input alone lives here, so bad input is refused
//! before any state is touched.

use flatnet_proto::cni;
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

mod ipam4;
mod ipam6;
pub use ipam4::{Ipam4, Route};
pub use ipam6::{Ipam6, Route6};

/// Bridge used when the config names none.
pub const DEFAULT_BRIDGE: &str = "flatnet-br0";
/// Subnet used when the config names none.
pub const DEFAULT_SUBNET: &str = "10.87.1.0/24";

/// A refused configuration: the CNI code to answer with and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct ConfigError {
    pub kind: ConfigKind,
    pub msg: String,
}

/// What is wrong with a configuration; its CNI code is chosen in `crate::error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// Not JSON, not an object, or too large.
    Decode,
    /// A `cniVersion` Flatnet does not speak.
    Version,
    /// A value that is wrong.
    Invalid,
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError {
        kind: ConfigKind::Invalid,
        msg: msg.into(),
    }
}

/// A range's subnet, either family: no host bits set, and room for a gateway and containers.
fn check_subnet(subnet_str: &str, subnet: IpNetwork) -> Result<(), ConfigError> {
    if subnet.ip() != subnet.network() {
        return Err(invalid(format!(
            "ipam subnet {subnet_str} has host bits set: did you mean {}/{}?",
            subnet.network(),
            subnet.prefix()
        )));
    }
    let smallest = if subnet.is_ipv4() { 30 } else { 126 };
    if subnet.prefix() > smallest {
        return Err(invalid(format!(
            "ipam subnet {subnet_str} is too small: it needs room for a gateway and containers (/{smallest} or larger)"
        )));
    }
    Ok(())
}

/// A range's addresses, either family: the gateway, rangeStart and rangeEnd are among the
/// subnet's host addresses (`hosts`), the range is in order and holds more than the gateway.
fn check_range<T: Copy + Ord + std::fmt::Display>(
    subnet: IpNetwork,
    hosts: std::ops::RangeInclusive<T>,
    gateway: T,
    range_start: T,
    range_end: T,
) -> Result<(), ConfigError> {
    if !hosts.contains(&gateway) {
        return Err(invalid(format!(
            "ipam gateway {gateway} is not a host address of subnet {subnet}"
        )));
    }
    for (key, ip) in [("rangeStart", range_start), ("rangeEnd", range_end)] {
        if !hosts.contains(&ip) {
            return Err(invalid(format!(
                "ipam {key} {ip} is not a host address of subnet {subnet}"
            )));
        }
    }
    if range_start > range_end {
        return Err(invalid(format!(
            "ipam rangeStart {range_start} comes after rangeEnd {range_end}"
        )));
    }
    if range_start == range_end && range_start == gateway {
        return Err(invalid(format!(
            "ipam range {range_start}-{range_end} holds only the gateway: no address is left for containers"
        )));
    }
    Ok(())
}

/// A validated flatnet network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub is_gateway: bool,
    pub hairpin_mode: bool,
    /// `ipMasq`: traffic from the subnet to outside the flat range leaves with the host's address.
    pub ip_masq: bool,
    pub ipam: IpamConf,
    /// `dns` passed through to the result as given.
    pub dns: Value,
    /// `prevResult` as given (CHECK and DEL).
    pub prev_result: Option<Value>,
    /// `runtimeConfig.ips` (the `ips` capability).
    pub runtime_ip: Option<Ipv4Addr>,
    /// `runtimeConfig.ips`' IPv6 address.
    pub runtime_ip6: Option<Ipv6Addr>,
    /// `runtimeConfig.mac` (the `mac` capability).
    pub runtime_mac: Option<[u8; 6]>,
    /// `runtimeConfig.aliases[name]` (the `aliases` capability): the container's other names on
    /// this network.
    pub aliases: Vec<String>,
    /// The port the HTTP gateway routes to: the container port of the first TCP mapping in
    /// `runtimeConfig.portMappings` (the `portMappings` capability; Podman's `-p`), if any.
    pub port: Option<u16>,
    /// `cni.dev/valid-attachments` (GC): container id + ifname pairs still in use.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

/// Host-local-style address management settings: a range of one address family or of both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConf {
    /// The IPv4 range; `None` on an IPv6-only network.
    pub v4: Option<Ipam4>,
    /// The IPv6 range of a dual-stack or IPv6-only network.
    pub v6: Option<Ipam6>,
}

impl NetConf {
    /// Parses the raw stdin of a CNI request.
    pub fn parse(raw: &[u8]) -> Result<NetConf, ConfigError> {
        if raw.len() > cni::MAX_CONFIG_BYTES {
            return Err(ConfigError {
                kind: ConfigKind::Decode,
                msg: format!(
                    "network configuration is {} bytes, more than the {} flatnet accepts",
                    raw.len(),
                    cni::MAX_CONFIG_BYTES
                ),
            });
        }
        let value: Value = serde_json::from_slice(raw).map_err(|e| ConfigError {
            kind: ConfigKind::Decode,
            msg: format!("network configuration is not valid JSON: {e}"),
        })?;
        let Value::Object(obj) = value else {
            return Err(ConfigError {
                kind: ConfigKind::Decode,
                msg: "network configuration must be a JSON object".into(),
            });
        };
        Self::from_object(&obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<NetConf, ConfigError> {
        let cni_version = req_str(obj, "cniVersion")?;
        if cni::result_format(&cni_version).is_none() {
            return Err(ConfigError {
                kind: ConfigKind::Version,
                msg: cni::unsupported_version_msg(&cni_version),
            });
        }
        let name = req_str(obj, "name")?;
        validate_network_name(&name)?;
        if let Some(t) = opt_str(obj, "type")? {
            if t != "flatnet" {
                return Err(invalid(format!(
                    "type is {t:?}, but this is the flatnet plugin: set \"type\": \"flatnet\""
                )));
            }
        }
        let bridge = opt_str(obj, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        cni::validate_ifname("bridge", &bridge).map_err(|e| invalid(e.0))?;
        if bridge.starts_with("fn-") {
            return Err(invalid(format!(
                "bridge {bridge:?} uses the fn- prefix that flatnet reserves for its veth interfaces"
            )));
        }
        if crate::bridges::is_reserved(&bridge) {
            return Err(invalid(format!(
                "bridge {bridge:?} uses a prefix (fnb-, fnt-, fnp-) that flatnet reserves for the \
                 sub-bridges of large networks and their trunks"
            )));
        }
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(m) if (68..=65535).contains(&m) => Some(m as u32),
                _ => {
                    return Err(invalid(format!(
                        "mtu {v} must be an integer from 68 to 65535"
                    )))
                }
            },
        };
        let is_gateway = opt_bool(obj, "isGateway")?.unwrap_or(true);
        let ip_masq = opt_bool(obj, "ipMasq")?.unwrap_or(false);
        let hairpin_mode = opt_bool(obj, "hairpinMode")?.unwrap_or(false);
        opt_str(obj, "socket")?;
        let ipam = parse_ipam(obj.get("ipam"))?;
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(v) => return Err(invalid(format!("dns must be an object, not {v}"))),
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(v) => return Err(invalid(format!("prevResult must be an object, not {v}"))),
        };
        let runtime = parse_runtime_config(obj.get("runtimeConfig"))?;
        let aliases = parse_aliases(obj.get("runtimeConfig"), &name)?;
        let port = parse_port(obj.get("runtimeConfig"))?;
        let valid_attachments = parse_valid_attachments(obj.get("cni.dev/valid-attachments"))?;
        Ok(NetConf {
            cni_version,
            name,
            bridge,
            mtu,
            is_gateway,
            hairpin_mode,
            ip_masq,
            ipam,
            dns,
            prev_result,
            runtime_ip: runtime.ip,
            runtime_ip6: runtime.ip6,
            runtime_mac: runtime.mac,
            aliases,
            port,
            valid_attachments,
        })
    }
}

fn validate_network_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(invalid(format!(
            "network name {name:?} is invalid: use letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(())
}

fn req_str(obj: &Map<String, Value>, key: &str) -> Result<String, ConfigError> {
    opt_str(obj, key)?.ok_or_else(|| invalid(format!("network configuration has no {key:?}")))
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(format!("{key} must be a string, not {v}"))),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(format!("{key} must be true or false, not {v}"))),
    }
}

fn opt_ip(obj: &Map<String, Value>, key: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
    opt_str(obj, key)?
        .map(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| invalid(format!("ipam {key} {s:?} is not an IPv4 address")))
        })
        .transpose()
}

fn parse_cidr(what: &str, s: &str) -> Result<Ipv4Network, ConfigError> {
    let net: Ipv4Network = s.parse().map_err(|_| {
        invalid(format!(
            "{what} {s:?} is not an IPv4 network like 10.87.1.0/24 (an IPv6 range goes in a second range set of ipam.ranges)"
        ))
    })?;
    Ok(net)
}

fn parse_ipam(v: Option<&Value>) -> Result<IpamConf, ConfigError> {
    let empty = Map::new();
    let obj = match v {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(v) => return Err(invalid(format!("ipam must be an object, not {v}"))),
    };
    if let Some(t) = opt_str(obj, "type")? {
        if t != "flatnet" {
            return Err(invalid(format!(
                "ipam type {t:?} is not supported: flatnet has its own address management; \
                 remove ipam.type or set it to \"flatnet\""
            )));
        }
    }
    // `ranges` (host-local's newer form): one range set per address family, each holding one
    // range; it replaces the top-level keys.
    let (range_obj, mut v6) = match obj.get("ranges") {
        None | Some(Value::Null) => (Some(obj), None),
        Some(Value::Array(sets)) => {
            if obj.contains_key("subnet") {
                return Err(invalid("ipam has both subnet and ranges: use one of them"));
            }
            parse_range_sets(sets)?
        }
        Some(v) => return Err(invalid(format!("ipam ranges must be a list, not {v}"))),
    };

    let mut v4 = range_obj.map(ipam4::parse_range4).transpose()?;
    match obj.get("routes") {
        None | Some(Value::Null) => {
            if let Some(v4) = v4.as_mut() {
                v4.routes.push(Ipam4::default_route());
            }
            if let Some(v6) = v6.as_mut() {
                v6.routes.push(Ipam6::default_route());
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                match parse_route(item)? {
                    AnyRoute::V4(dst_str, r) => {
                        let Some(v4) = v4.as_mut() else {
                            return Err(invalid(format!(
                                "ipam route dst {dst_str} is IPv4, but the network has no IPv4 range"
                            )));
                        };
                        v4.routes.push(r);
                    }
                    AnyRoute::V6(dst_str, dst, o) => {
                        let Some(v6) = v6.as_mut() else {
                            return Err(invalid(format!(
                                "ipam route dst {dst_str} is IPv6, but the network has no IPv6 range"
                            )));
                        };
                        v6.routes.push(ipam6::parse_route6(&dst_str, dst, o)?);
                    }
                }
            }
        }
        Some(v) => return Err(invalid(format!("ipam routes must be a list, not {v}"))),
    };
    Ok(IpamConf { v4, v6 })
}

/// The IPv4 range set's object (still to be checked) and the parsed IPv6 range, those given.
type RangeSets<'a> = (Option<&'a Map<String, Value>>, Option<Ipam6>);

/// `ipam.ranges`: at most one set per family, each with exactly one range, and at least one set;
/// the IPv4 one is returned as its object (checked by the caller), the IPv6 one parsed here.
fn parse_range_sets(sets: &[Value]) -> Result<RangeSets<'_>, ConfigError> {
    let mut v4 = None;
    let mut v6 = None;
    for set in sets {
        let Value::Array(ranges) = set else {
            return Err(invalid(format!(
                "ipam ranges must be a list of lists, found {set}"
            )));
        };
        let range = match ranges.as_slice() {
            [Value::Object(r)] => r,
            [_] => return Err(invalid("each ipam range must be an object")),
            _ => {
                return Err(invalid(format!(
                    "an ipam range set holds {} ranges; flatnet supports exactly one range per address family",
                    ranges.len()
                )))
            }
        };
        let subnet_str = opt_str(range, "subnet")?;
        match subnet_str
            .as_deref()
            .map(str::parse::<ipnetwork::IpNetwork>)
        {
            Some(Ok(ipnetwork::IpNetwork::V6(net))) => {
                if v6.is_some() {
                    return Err(invalid(
                        "ipam ranges holds two IPv6 range sets; flatnet supports one per address family",
                    ));
                }
                let subnet_str = subnet_str.as_deref().unwrap_or_default();
                v6 = Some(ipam6::parse_range6(subnet_str, net, range)?);
            }
            _ => {
                if v4.is_some() {
                    return Err(invalid(
                        "ipam ranges holds two IPv4 range sets; flatnet supports one per address family",
                    ));
                }
                v4 = Some(range);
            }
        }
    }
    if v4.is_none() && v6.is_none() {
        return Err(invalid(
            "ipam ranges holds no range: add one range set per address family, e.g. [[{\"subnet\": \"10.87.1.0/24\"}], [{\"subnet\": \"fd87:1::/64\"}]]",
        ));
    }
    Ok((v4, v6))
}

/// A route of either family: IPv6 ones are finished by [`ipam6::parse_route6`].
enum AnyRoute<'a> {
    V4(String, Route),
    V6(String, ipnetwork::Ipv6Network, &'a Map<String, Value>),
}

fn parse_route(v: &Value) -> Result<AnyRoute<'_>, ConfigError> {
    let Value::Object(o) = v else {
        return Err(invalid(format!(
            "each ipam route must be an object, not {v}"
        )));
    };
    let dst_str = req_str(o, "dst").map_err(|_| invalid(format!("ipam route {v} has no dst")))?;
    if let Ok(ipnetwork::IpNetwork::V6(dst)) = dst_str.parse() {
        return Ok(AnyRoute::V6(dst_str, dst, o));
    }
    let dst = parse_cidr("ipam route dst", &dst_str)?;
    if dst.ip() != dst.network() {
        return Err(invalid(format!(
            "ipam route dst {dst_str} has host bits set: did you mean {}/{}?",
            dst.network(),
            dst.prefix()
        )));
    }
    let gw = opt_str(o, "gw")?
        .map(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| invalid(format!("ipam route gw {s:?} is not an IPv4 address")))
        })
        .transpose()?;
    Ok(AnyRoute::V4(dst_str, Route { dst, gw }))
}

/// `runtimeConfig.ips` (one address per family at most) and `runtimeConfig.mac`.
struct RuntimeConfig {
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
    mac: Option<[u8; 6]>,
}

fn parse_runtime_config(v: Option<&Value>) -> Result<RuntimeConfig, ConfigError> {
    let obj = match v {
        None | Some(Value::Null) => {
            return Ok(RuntimeConfig {
                ip: None,
                ip6: None,
                mac: None,
            })
        }
        Some(Value::Object(o)) => o,
        Some(v) => return Err(invalid(format!("runtimeConfig must be an object, not {v}"))),
    };
    let (mut ip, mut ip6) = (None, None);
    match obj.get("ips") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ips)) => {
            for one in ips {
                let Value::String(s) = one else {
                    return Err(invalid(format!(
                        "runtimeConfig ips must be a list of addresses, found {one}"
                    )));
                };
                let addr = s.split('/').next().unwrap_or(s);
                match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if ip.is_none() => ip = Some(a),
                    Ok(IpAddr::V6(a)) if ip6.is_none() => ip6 = Some(a),
                    Ok(_) => {
                        return Err(invalid(
                            "runtimeConfig ips holds two addresses of one family: flatnet gives a container one IPv4 and one IPv6 address per network",
                        ))
                    }
                    Err(_) => {
                        return Err(invalid(format!(
                            "runtimeConfig ips {s:?} is not an IP address"
                        )))
                    }
                }
            }
        }
        Some(v) => {
            return Err(invalid(format!(
                "runtimeConfig ips must be a list, not {v}"
            )))
        }
    };
    let mac = opt_str(obj, "mac")?
        .map(|s| cni::parse_mac(&s).map_err(|e| invalid(format!("runtimeConfig mac: {e}"))))
        .transpose()?;
    Ok(RuntimeConfig { ip, ip6, mac })
}

/// `runtimeConfig.portMappings` (`[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]`):
/// the container port of the first TCP mapping. Flatnet publishes no host port: the mapping only
/// says which port the container serves.
fn parse_port(runtime: Option<&Value>) -> Result<Option<u16>, ConfigError> {
    let mappings = match runtime.and_then(|r| r.get("portMappings")) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(m)) => m,
        Some(v) => {
            return Err(invalid(format!(
                "runtimeConfig portMappings must be a list, not {v}"
            )))
        }
    };
    for m in mappings {
        let tcp = m
            .get("protocol")
            .and_then(Value::as_str)
            .is_none_or(|p| p.is_empty() || p.eq_ignore_ascii_case("tcp"));
        let port = m.get("containerPort").and_then(Value::as_u64);
        match port {
            Some(p @ 1..=65535) if tcp => return Ok(Some(p as u16)),
            Some(1..=65535) => {}
            _ => {
                return Err(invalid(format!(
                    "runtimeConfig portMappings entry {m} has no containerPort from 1 to 65535"
                )))
            }
        }
    }
    Ok(None)
}

/// `runtimeConfig.aliases`: network name → names, as Podman sends it; only this network's.
fn parse_aliases(runtime: Option<&Value>, network: &str) -> Result<Vec<String>, ConfigError> {
    let Some(aliases) = runtime.and_then(|r| r.get("aliases")) else {
        return Ok(Vec::new());
    };
    let of_network = match aliases {
        Value::Null => return Ok(Vec::new()),
        Value::Object(map) => map.get(network),
        v => {
            return Err(invalid(format!(
                "runtimeConfig aliases must map network names to lists of names, not {v}"
            )))
        }
    };
    match of_network {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| match n {
                Value::String(s) if !s.is_empty() && s.len() <= 253 => Ok(s.clone()),
                other => Err(invalid(format!(
                    "runtimeConfig aliases of {network} must be names of 1 to 253 characters, not {other}"
                ))),
            })
            .collect(),
        Some(v) => Err(invalid(format!(
            "runtimeConfig aliases of {network} must be a list of names, not {v}"
        ))),
    }
}

fn parse_valid_attachments(
    v: Option<&Value>,
) -> Result<Option<Vec<(String, String)>>, ConfigError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(invalid(format!(
                "cni.dev/valid-attachments must be a list, not {v}"
            )))
        }
    };
    items
        .iter()
        .map(|item| {
            let Value::Object(o) = item else {
                return Err(invalid(format!(
                    "valid attachment {item} must be an object"
                )));
            };
            Ok((req_str(o, "containerID")?, req_str(o, "ifname")?))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatnet_proto::cni::Code;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, ConfigError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "flatnet", "type": "flatnet"})
    }

    fn with(extra: Value) -> Value {
        let mut v = base();
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    }

    #[test]
    fn defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.bridge, "flatnet-br0");
        assert!(c.is_gateway);
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().subnet.to_string(),
            "10.87.1.0/24"
        );
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().gateway,
            Ipv4Addr::new(10, 87, 1, 1)
        );
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().range_start,
            Ipv4Addr::new(10, 87, 1, 1)
        );
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().range_end,
            Ipv4Addr::new(10, 87, 1, 254)
        );
        assert_eq!(c.ipam.v4.as_ref().unwrap().routes.len(), 1);
        assert_eq!(c.ipam.v4.as_ref().unwrap().routes[0].dst.prefix(), 0);
        assert!(!c
            .ipam
            .v4
            .as_ref()
            .unwrap()
            .assignable(Ipv4Addr::new(10, 87, 1, 1)));
        assert!(c
            .ipam
            .v4
            .as_ref()
            .unwrap()
            .assignable(Ipv4Addr::new(10, 87, 1, 2)));
        assert!(!c
            .ipam
            .v4
            .as_ref()
            .unwrap()
            .assignable(Ipv4Addr::new(10, 87, 1, 255)));
    }

    #[test]
    fn podman_fixture_shape() {
        // Podman adds capabilities, and the fixture's plugin had ipam type host-local, which
        // flatnet refuses with a message that says what to do.
        let raw = r#"{"bridge":"flatnet-br0","capabilities":{"ips":true},"cniVersion":"1.0.0","ipam":{"routes":[{"dst":"0.0.0.0/0"}],"subnet":"10.87.1.0/24"},"isGateway":true,"name":"flatnet","type":"flatnet"}"#;
        let c = NetConf::parse(raw.as_bytes()).unwrap();
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().subnet.to_string(),
            "10.87.1.0/24"
        );
        let e = parse(with(json!({"ipam": {"type": "host-local"}}))).unwrap_err();
        assert_eq!(e.code(), Code::InvalidConfig);
        assert!(e.msg.contains("remove ipam.type"), "{}", e.msg);
    }

    #[test]
    fn ranges_form() {
        let c = parse(with(json!({"ipam": {"ranges": [[{"subnet": "10.88.0.0/16",
            "rangeStart": "10.88.1.10", "rangeEnd": "10.88.1.20", "gateway": "10.88.0.1"}]]}})))
        .unwrap();
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().subnet.to_string(),
            "10.88.0.0/16"
        );
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().range_start,
            Ipv4Addr::new(10, 88, 1, 10)
        );
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().gateway,
            Ipv4Addr::new(10, 88, 0, 1)
        );
    }

    #[test]
    fn dual_stack_ranges_and_routes() {
        let c = parse(with(json!({"ipam": {"ranges": [
            [{"subnet": "fd87:1::/64"}], [{"subnet": "10.87.1.0/24"}]]}})))
        .unwrap();
        assert_eq!(
            c.ipam.v4.as_ref().unwrap().subnet.to_string(),
            "10.87.1.0/24"
        );
        let v6 = c.ipam.v6.expect("the IPv6 set");
        assert_eq!(v6.subnet.to_string(), "fd87:1::/64");
        assert_eq!(v6.gateway, "fd87:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v6.range_end,
            "fd87:1::ffff:ffff:ffff:ffff".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.routes, [Ipam6::default_route()], "::/0 by default");
        assert!(!v6.assignable(v6.gateway) && !v6.assignable(v6.subnet.network()));
        assert!(v6.assignable("fd87:1::2".parse().unwrap()));

        let c = parse(with(json!({"ipam": {
            "ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::/64", "gateway": "fd87:1::fe",
                        "rangeStart": "fd87:1::10", "rangeEnd": "fd87:1::20"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "fd00::/8", "gw": "fd87:1::fe"}]}})))
        .unwrap();
        let v6 = c.ipam.v6.unwrap();
        assert_eq!(c.ipam.v4.as_ref().unwrap().routes.len(), 1);
        assert_eq!(v6.routes.len(), 1);
        assert_eq!(v6.routes[0].dst.to_string(), "fd00::/8");
        assert_eq!(v6.range_start, "fd87:1::10".parse::<Ipv6Addr>().unwrap());

        let c = parse(with(
            json!({"runtimeConfig": {"ips": ["fd87:1::5/64", "10.87.1.5/24"]}}),
        ))
        .unwrap();
        assert_eq!(c.runtime_ip, Some(Ipv4Addr::new(10, 87, 1, 5)));
        assert_eq!(c.runtime_ip6, Some("fd87:1::5".parse().unwrap()));

        // IPv6 only: no IPv4 range, and only the IPv6 default route.
        let c = parse(with(
            json!({"ipam": {"ranges": [[{"subnet": "fd87:1::/64"}]]}}),
        ))
        .unwrap();
        assert_eq!(c.ipam.v4, None);
        let v6 = c.ipam.v6.unwrap();
        assert_eq!(v6.subnet.to_string(), "fd87:1::/64");
        assert_eq!(v6.routes, [Ipam6::default_route()]);

        for (bad, says) in [
            (json!({"ranges": []}), "holds no range"),
            (
                json!({"ranges": [[{"subnet": "fd87:1::/64"}]], "routes": [{"dst": "0.0.0.0/0"}]}),
                "no IPv4 range",
            ),
            (
                json!({"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::/64"}],
                                  [{"subnet": "fd87:2::/64"}]]}),
                "two IPv6",
            ),
            (
                json!({"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::1/64"}]]}),
                "host bits",
            ),
            (
                json!({"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::/127"}]]}),
                "too small",
            ),
            (
                json!({"ranges": [[{"subnet": "10.87.1.0/24"}],
                                  [{"subnet": "fd87:1::/64", "gateway": "fd87:2::1"}]]}),
                "not a host address",
            ),
            (
                json!({"ranges": [[{"subnet": "10.87.1.0/24"}],
                                  [{"subnet": "fd87:1::/64", "rangeStart": "fd87:1::20",
                                    "rangeEnd": "fd87:1::10"}]]}),
                "comes after rangeEnd",
            ),
            (
                json!({"ranges": [[{"subnet": "10.87.1.0/24"}],
                                  [{"subnet": "fd87:1::/64", "rangeStart": "fd87:1::1",
                                    "rangeEnd": "fd87:1::1"}]]}),
                "holds only the gateway",
            ),
            (
                json!({"ranges": [[{"subnet": "10.87.1.0/24"}],
                                  [{"subnet": "fd87:1::/64", "rangeStart": "10.87.1.5"}]]}),
                "not an IPv6 address",
            ),
            (json!({"routes": [{"dst": "::/0"}]}), "no IPv6 range"),
            (json!({"subnet": "fd87:1::/64"}), "second range set"),
        ] {
            let e = parse(with(json!({ "ipam": bad }))).expect_err(&bad.to_string());
            assert_eq!(e.code(), Code::InvalidConfig);
            assert!(e.msg.contains(says), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn runtime_config_and_gc_list() {
        let c = parse(with(json!({
            "runtimeConfig": {"ips": ["10.87.1.50/24"], "mac": "02:11:22:33:44:55"},
            "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}]
        })))
        .unwrap();
        assert_eq!(c.runtime_ip, Some(Ipv4Addr::new(10, 87, 1, 50)));
        assert_eq!(c.runtime_mac, Some([2, 0x11, 0x22, 0x33, 0x44, 0x55]));
        assert_eq!(
            c.valid_attachments,
            Some(vec![("abc".to_string(), "eth0".to_string())])
        );
        assert!(c.aliases.is_empty());
        // The aliases of this network (by its name), as Podman passes them.
        let name = parse(with(json!({}))).unwrap().name;
        let c = parse(with(json!({
            "runtimeConfig": {"aliases": {name.clone(): ["web", "www"], "other": ["x"]}}
        })))
        .unwrap();
        assert_eq!(c.aliases, ["web", "www"]);
        assert_eq!(c.port, None);
        let ports = |m: Value| parse(with(json!({"runtimeConfig": {"portMappings": m}})));
        let c = ports(
            json!([{"hostPort": 53, "containerPort": 53, "protocol": "udp"},
                             {"hostPort": 9090, "containerPort": 8080, "protocol": "tcp"}]),
        );
        assert_eq!(c.unwrap().port, Some(8080), "the first TCP one");
        assert!(ports(json!([{"hostPort": 1, "containerPort": 0}])).is_err());
        assert!(ports(json!({"containerPort": 80})).is_err());
        for bad in [
            json!({"aliases": ["web"]}),
            json!({"aliases": {name: [""]}}),
        ] {
            let err = parse(with(json!({"runtimeConfig": bad}))).unwrap_err();
            assert_eq!(err.code(), Code::InvalidConfig, "{err:?}");
        }
    }

    #[test]
    fn refusals_have_the_right_code() {
        let cases: Vec<(Value, Code)> = vec![
            (
                json!({"cniVersion": "0.2.0", "name": "n"}),
                Code::IncompatibleVersion,
            ),
            (json!({"name": "n"}), Code::InvalidConfig),
            (json!({"cniVersion": 1, "name": "n"}), Code::InvalidConfig),
            (json!({"cniVersion": "1.0.0"}), Code::InvalidConfig),
            (with(json!({"name": "bad name"})), Code::InvalidConfig),
            (with(json!({"type": "bridge"})), Code::InvalidConfig),
            (
                with(json!({"bridge": "this-name-is-way-too-long"})),
                Code::InvalidConfig,
            ),
            (with(json!({"bridge": "fn-12345678"})), Code::InvalidConfig),
            (with(json!({"bridge": "fnb-612493-3"})), Code::InvalidConfig),
            (with(json!({"mtu": 20})), Code::InvalidConfig),
            (with(json!({"mtu": "1500"})), Code::InvalidConfig),
            (with(json!({"isGateway": "yes"})), Code::InvalidConfig),
            (with(json!({"ipMasq": "yes"})), Code::InvalidConfig),
            (with(json!({"socket": 5})), Code::InvalidConfig),
            (
                with(json!({"ipam": {"subnet": "10.87.1.0/33"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"subnet": "10.87.1.5/24"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"subnet": "fd00::/64"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"subnet": "10.87.1.0/31"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"gateway": "10.87.2.1"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"gateway": "10.87.1.255"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"rangeStart": "10.87.1.0"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"rangeEnd": "10.87.9.9"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"rangeStart": "10.87.1.9", "rangeEnd": "10.87.1.8"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"rangeStart": "10.87.1.1", "rangeEnd": "10.87.1.1"}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"routes": [{"gw": "10.87.1.1"}]}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"ipam": {"routes": [{"dst": "10.0.0.1/8"}]}})),
                Code::InvalidConfig,
            ),
            (with(json!({"ipam": {"routes": {}}})), Code::InvalidConfig),
            (
                with(
                    json!({"ipam": {"subnet": "10.87.1.0/24", "ranges": [[{"subnet": "10.87.1.0/24"}]]}}),
                ),
                Code::InvalidConfig,
            ),
            (
                with(
                    json!({"ipam": {"ranges": [[{"subnet": "10.87.1.0/24"}, {"subnet": "10.87.2.0/24"}]]}}),
                ),
                Code::InvalidConfig,
            ),
            (
                with(json!({"runtimeConfig": {"ips": ["10.87.1.5", "10.87.1.6"]}})),
                Code::InvalidConfig,
            ),
            (
                with(json!({"runtimeConfig": {"mac": "nope"}})),
                Code::InvalidConfig,
            ),
            (with(json!({"prevResult": []})), Code::InvalidConfig),
            (
                with(json!({"cni.dev/valid-attachments": [{"ifname": "eth0"}]})),
                Code::InvalidConfig,
            ),
        ];
        for (v, code) in cases {
            let e = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(e.code(), code, "{v}: {}", e.msg);
        }
        assert_eq!(NetConf::parse(b"{").unwrap_err().code(), Code::Decode);
        assert_eq!(NetConf::parse(b"[]").unwrap_err().code(), Code::Decode);
    }
}
