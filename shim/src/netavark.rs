//! `flatnet info|create|setup|teardown`: Flatnet as a netavark plugin (plugin API 1.0.0), which is
//! how Podman 5 attaches containers (it has no CNI). The same binary as the CNI plugin, installed a
//! second time in a netavark plugin directory under the driver name `flatnet`: a CNI runtime runs
//! it without arguments, netavark and Podman with a subcommand.
//!
//! Each command becomes what flatnetd already serves: `setup` is a CNI ADD and `teardown` a CNI DEL
//! of the same attachment (network name, container id, interface name), with a network config made
//! from the Podman network, so both front ends share one engine, one IPAM, one event stream and the
//! same locks, and a `teardown` while flatnetd is down is spooled like a DEL. `create` checks and
//! completes the network Podman is about to store: Flatnet's defaults, Flatnet's IPAM
//! (`ipam_options.driver = "flatnet"`, so Podman allocates nothing itself), and no subnet that
//! clashes with a network flatnetd already serves.
//!
//! stdout carries exactly one JSON document: the reply, or `{"error": "..."}` with exit status 1,
//! which Podman shows to the user.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;

use flatnet_proto::cni::{parse_mac, validate_container_id, validate_ifname};
use flatnet_proto::v1::{self, Command};
use flatnet_proto::DEFAULT_SOCKET;
use serde_json::{json, Map, Value};

use crate::request::Request;

/// The netavark plugin API version this plugin speaks.
pub const API_VERSION: &str = "1.0.0";

/// The CNI version of the requests made from netavark calls (the daemon renders its result in it).
const CNI_VERSION: &str = "1.0.0";

/// What a network gets when `podman network create -d flatnet` names no subnet: the first free
/// /24 from here up (10.87.1.0/24, then 10.87.2.0/24, ...), as in the CNI network file.
const FIRST_DEFAULT_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 87, 1, 0);
const DEFAULT_BRIDGE: &str = "flatnet-br0";

/// The `-o` options a Flatnet network takes.
const OPTIONS: &[&str] = &["bridge", "mtu", "isolate", "no_default_route", "socket"];

/// A parsed invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subcommand {
    Info,
    Create,
    Setup { netns: String },
    Teardown { netns: String },
}

/// The subcommand in `args` (argv without the program name), or the error to print.
pub fn subcommand(args: &[String]) -> Result<Subcommand, String> {
    let netns = |cmd: &str| -> Result<String, String> {
        match args.get(1) {
            Some(path) if !path.is_empty() => Ok(path.clone()),
            _ => Err(format!(
                "{cmd} needs the container's network namespace path as its argument (flatnet {cmd} /run/netns/NAME)"
            )),
        }
    };
    match args.first().map(String::as_str) {
        None | Some("info") => Ok(Subcommand::Info),
        Some("create") => Ok(Subcommand::Create),
        Some("setup") => netns("setup").map(|netns| Subcommand::Setup { netns }),
        Some("teardown") => netns("teardown").map(|netns| Subcommand::Teardown { netns }),
        Some(other) => Err(format!(
            "unknown subcommand {other:?}: flatnet is a netavark plugin (info, create, setup, teardown) when given a subcommand, and a CNI plugin when run without one"
        )),
    }
}

/// `{"error": msg}`, the plugin API's error reply.
pub fn error_json(msg: &str) -> String {
    json!({ "error": msg }).to_string()
}

/// The `info` reply.
pub fn info() -> String {
    json!({ "version": env!("CARGO_PKG_VERSION"), "api_version": API_VERSION }).to_string()
}

/// Reads stdin (bounded like a CNI config) as one JSON object.
pub fn read_input(stdin: impl Read) -> Result<Map<String, Value>, String> {
    let mut bytes = Vec::new();
    let max = flatnet_proto::cni::MAX_CONFIG_BYTES;
    stdin
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the request from stdin: {e}"))?;
    if bytes.len() > max {
        return Err(format!("the request on stdin is larger than {max} bytes"));
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the request on stdin is not a JSON object".into()),
        Err(e) => Err(format!("cannot decode the request on stdin as JSON: {e}")),
    }
}

/// An IPv4 subnet: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    fn parse(text: &str) -> Option<Subnet> {
        let (ip, prefix) = text.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let network = Ipv4Addr::from(u32::from(ip) & Self::mask(prefix));
        Some(Subnet { network, prefix })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }

    fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The first and last address containers may get (not the network or broadcast address).
    fn hosts(&self) -> (Ipv4Addr, Ipv4Addr) {
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
    pub subnet: String,
    pub in_use: u64,
}

impl From<v1::Network> for Known {
    fn from(n: v1::Network) -> Known {
        Known {
            name: n.name,
            subnet: n.subnet,
            in_use: n.addresses_in_use,
        }
    }
}

/// The Flatnet view of a Podman network: what setup and teardown turn into a CNI config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatnetNetwork {
    pub name: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub default_route: bool,
    /// Extra routes: destination and gateway.
    pub routes: Vec<(Subnet, Ipv4Addr)>,
    pub socket: String,
}

fn string_field<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

fn bool_field(map: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("\"{key}\" must be true or false")),
    }
}

fn parse_bool_option(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("-o {key}={value} must be true or false")),
    }
}

impl FlatnetNetwork {
    /// Reads a network as Podman stores it (after `create`), checking everything Flatnet relies
    /// on. `known` (the networks flatnetd serves) is consulted for the default subnet only.
    fn from_podman(net: &Map<String, Value>, known: &[Known]) -> Result<FlatnetNetwork, String> {
        let name = string_field(net, "name")?
            .filter(|n| !n.is_empty())
            .ok_or("the network has no name")?
            .to_string();
        if bool_field(net, "ipv6_enabled")? {
            return Err(format!(
                "network {name}: Flatnet networks are IPv4 only: create it without --ipv6"
            ));
        }
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

        let subnets = match net.get("subnets") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(s)) => s.clone(),
            Some(_) => return Err("\"subnets\" must be an array".into()),
        };
        let (subnet, gateway, range) = match subnets.as_slice() {
            [] => {
                let subnet = free_default_subnet(&name, known)?;
                (subnet, subnet.hosts().0, None)
            }
            [one] => parse_subnet(&name, one)?,
            _ => {
                return Err(format!(
                    "network {name}: a Flatnet network has one IPv4 subnet: give --subnet once"
                ))
            }
        };
        let routes = parse_routes(&name, net.get("routes"), subnet)?;
        Ok(FlatnetNetwork {
            name,
            subnet,
            gateway,
            range,
            bridge,
            mtu,
            default_route,
            routes,
            socket,
        })
    }

    /// The network as the CNI config flatnetd serves (what the conflist says for a CNI network).
    fn cni_config(&self) -> Value {
        let mut routes: Vec<Value> = Vec::new();
        if self.default_route {
            routes.push(json!({ "dst": "0.0.0.0/0" }));
        }
        for (dst, gw) in &self.routes {
            routes.push(json!({ "dst": dst.to_string(), "gw": gw.to_string() }));
        }
        let mut ipam = json!({
            "subnet": self.subnet.to_string(),
            "gateway": self.gateway.to_string(),
            "routes": routes,
        });
        if let Some((start, end)) = self.range {
            ipam["rangeStart"] = start.to_string().into();
            ipam["rangeEnd"] = end.to_string().into();
        }
        let mut conf = json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "type": "flatnet",
            "bridge": self.bridge,
            "isGateway": true,
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
fn free_default_subnet(name: &str, known: &[Known]) -> Result<Subnet, String> {
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

type SubnetParts = (Subnet, Ipv4Addr, Option<(Ipv4Addr, Ipv4Addr)>);

/// One entry of `subnets`: subnet, gateway (default: the first address) and `lease_range`.
fn parse_subnet(name: &str, entry: &Value) -> Result<SubnetParts, String> {
    let Value::Object(entry) = entry else {
        return Err("each \"subnets\" entry must be an object".into());
    };
    let text = string_field(entry, "subnet")?.unwrap_or_default();
    let subnet = Subnet::parse(text).ok_or_else(|| {
        format!("network {name}: --subnet {text} is not an IPv4 subnet such as 10.87.2.0/24 (Flatnet networks are IPv4 only)")
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
    Ok((subnet, gateway, range))
}

/// `--route DST,GW[,METRIC]`: IPv4 routes through a gateway in the subnet.
fn parse_routes(
    name: &str,
    routes: Option<&Value>,
    subnet: Subnet,
) -> Result<Vec<(Subnet, Ipv4Addr)>, String> {
    let routes = match routes {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(r)) => r,
        Some(_) => return Err("\"routes\" must be an array".into()),
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

/// The daemon socket a network's `-o socket=PATH` names, else the default.
pub fn socket_of(net: &Map<String, Value>) -> String {
    net.get("options")
        .and_then(|o| o.get("socket"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SOCKET)
        .to_string()
}

/// `create`: the network Podman will store, or why Flatnet refuses it. `known` is what flatnetd
/// serves now.
pub fn create(mut net: Map<String, Value>, known: &[Known]) -> Result<Map<String, Value>, String> {
    if let Some(driver) = net
        .get("ipam_options")
        .and_then(|o| o.get("driver"))
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty() && *d != "flatnet" && *d != "host-local")
    {
        return Err(format!(
            "--ipam-driver {driver}: Flatnet hands out the addresses of its networks itself: leave --ipam-driver out"
        ));
    }
    let flat = FlatnetNetwork::from_podman(&net, known)?;
    for other in known {
        let Some(theirs) = Subnet::parse(&other.subnet) else {
            continue;
        };
        if other.name == flat.name {
            if theirs != flat.subnet && other.in_use > 0 {
                return Err(format!(
                    "network {} is already served by flatnetd with subnet {theirs} and {} addresses in use: create it with --subnet {theirs}, or use another name",
                    flat.name, other.in_use
                ));
            }
        } else if theirs.overlaps(&flat.subnet) {
            return Err(format!(
                "subnet {} overlaps subnet {theirs} of Flatnet network {}: choose another --subnet (see `flatnetctl networks`)",
                flat.subnet, other.name
            ));
        }
    }
    let mut subnet = Map::new();
    subnet.insert("subnet".into(), flat.subnet.to_string().into());
    subnet.insert("gateway".into(), flat.gateway.to_string().into());
    if let Some((start, end)) = flat.range {
        subnet.insert(
            "lease_range".into(),
            json!({ "start_ip": start.to_string(), "end_ip": end.to_string() }),
        );
    }
    net.insert("subnets".into(), Value::Array(vec![Value::Object(subnet)]));
    net.insert("network_interface".into(), flat.bridge.clone().into());
    let mut options = match net.remove("options") {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    };
    options.insert("bridge".into(), flat.bridge.into());
    net.insert("options".into(), Value::Object(options));
    net.insert("ipam_options".into(), json!({ "driver": "flatnet" }));
    Ok(net)
}

/// What setup and teardown need from their input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub network: FlatnetNetwork,
    pub container_id: String,
    pub container_name: String,
    pub ifname: String,
    pub static_ip: Option<Ipv4Addr>,
    pub static_mac: Option<String>,
    /// What the status block's `dns_server_ips` says (the network's DNS servers, if any).
    pub dns_servers: Vec<String>,
    /// The container's network aliases (recorded with its allocation).
    pub aliases: Vec<String>,
}

/// Reads a setup or teardown input (`NetworkPluginExec`).
pub fn attachment(input: &Map<String, Value>) -> Result<Attachment, String> {
    let Some(Value::Object(network)) = input.get("network") else {
        return Err("the request has no \"network\" object".into());
    };
    let network_flat = FlatnetNetwork::from_podman(network, &[])?;
    let container_id = string_field(input, "container_id")?
        .unwrap_or_default()
        .to_string();
    validate_container_id(&container_id)
        .map_err(|e| e.to_string().replace("CNI_CONTAINERID", "the container id"))?;
    let container_name = string_field(input, "container_name")?
        .unwrap_or_default()
        .to_string();
    if container_name.contains([';', '=']) {
        return Err(format!(
            "container name {container_name:?} cannot be recorded: it holds ';' or '='"
        ));
    }
    let empty = Map::new();
    let options = match input.get("network_options") {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err("\"network_options\" must be an object".into()),
    };
    let ifname = string_field(options, "interface_name")?
        .unwrap_or("eth0")
        .to_string();
    validate_ifname("interface_name", &ifname).map_err(|e| e.to_string())?;
    let static_ips: Vec<&str> = match options.get("static_ips") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ips)) => ips
            .iter()
            .map(|v| v.as_str().ok_or("\"static_ips\" must hold strings"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"static_ips\" must be an array".into()),
    };
    let name = &network_flat.name;
    let static_ip = match static_ips.as_slice() {
        [] => None,
        [one] => {
            let ip: Ipv4Addr = one.parse().map_err(|_| {
                format!(
                    "--ip {one}: Flatnet networks are IPv4 only; give an address of {}",
                    network_flat.subnet
                )
            })?;
            let (first, last) = network_flat
                .range
                .unwrap_or_else(|| network_flat.subnet.hosts());
            if ip < first || ip > last || ip == network_flat.gateway {
                return Err(format!(
                    "--ip {ip} is not an address network {name} hands out ({first}-{last}, not the gateway {}): choose one in that range",
                    network_flat.gateway
                ));
            }
            Some(ip)
        }
        _ => {
            return Err(format!(
                "network {name} gives a container one address: give --ip once"
            ))
        }
    };
    let static_mac = match string_field(options, "static_mac")? {
        None | Some("") => None,
        Some(mac) => {
            parse_mac(mac).map_err(|e| format!("--mac-address: {e}"))?;
            Some(mac.to_string())
        }
    };
    let aliases = match options.get("aliases") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or("\"aliases\" must hold strings")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"aliases\" must be an array".into()),
    };
    let dns_servers = match network.get("network_dns_servers") {
        Some(Value::Array(s)) => s
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Attachment {
        network: network_flat,
        container_id,
        container_name,
        ifname,
        static_ip,
        static_mac,
        dns_servers,
        aliases,
    })
}

impl Attachment {
    /// The CNI request flatnetd serves for this attachment: ADD for setup, DEL for teardown.
    pub fn cni_request(&self, command: Command, netns: &str) -> Request {
        let mut args = String::from("IgnoreUnknown=1");
        if !self.container_name.is_empty() {
            args.push_str(&format!(";K8S_POD_NAME={}", self.container_name));
        }
        if command == Command::Add {
            if let Some(ip) = self.static_ip {
                args.push_str(&format!(";IP={ip}"));
            }
            if let Some(mac) = &self.static_mac {
                args.push_str(&format!(";MAC={mac}"));
            }
        }
        Request {
            command,
            cni_version: CNI_VERSION.into(),
            socket: self.network.socket.clone(),
            container_id: self.container_id.clone(),
            netns: netns.to_string(),
            ifname: self.ifname.clone(),
            args,
            path: String::new(),
            config: self.cni_config().to_string().into_bytes(),
        }
    }

    /// The network's CNI config with this container's aliases, as Podman 4 passes them
    /// (`runtimeConfig.aliases`, the `aliases` capability).
    fn cni_config(&self) -> Value {
        let mut conf = self.network.cni_config();
        if !self.aliases.is_empty() {
            conf["runtimeConfig"] = json!({ "aliases": { &self.network.name: self.aliases } });
        }
        conf
    }

    /// The setup reply (netavark's status block) from flatnetd's CNI result.
    pub fn status_block(&self, result: &str) -> Result<String, String> {
        let result: Value = serde_json::from_str(result)
            .map_err(|e| format!("flatnetd's answer is not JSON: {e}"))?;
        let interface = result["interfaces"]
            .as_array()
            .and_then(|ifs| {
                ifs.iter()
                    .find(|i| i["name"] == self.ifname.as_str() && i["sandbox"].is_string())
            })
            .ok_or("flatnetd's answer names no container interface")?;
        let mut subnets = Vec::new();
        for ip in result["ips"].as_array().into_iter().flatten() {
            let mut entry = Map::new();
            entry.insert("ipnet".into(), ip["address"].clone());
            if ip["gateway"].is_string() {
                entry.insert("gateway".into(), ip["gateway"].clone());
            }
            subnets.push(Value::Object(entry));
        }
        let mut interfaces = BTreeMap::new();
        interfaces.insert(
            self.ifname.clone(),
            json!({ "mac_address": interface["mac"], "subnets": subnets }),
        );
        Ok(json!({
            "dns_search_domains": [],
            "dns_server_ips": self.dns_servers,
            "interfaces": interfaces,
        })
        .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One file of the captured Podman 5.4.2 / netavark 1.14.0 calls.
    fn fixture(name: &str) -> Map<String, Value> {
        let path = format!(
            "{}/../tests/fixtures/podman-5.4.2/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        read_input(text.as_bytes()).unwrap()
    }

    /// A captured input with the probe's driver and network replaced by a Flatnet network.
    fn flatnet_input(name: &str) -> Map<String, Value> {
        let mut input = fixture(name);
        let network = input["network"].as_object_mut().unwrap();
        network.insert("driver".into(), "flatnet".into());
        network.insert(
            "subnets".into(),
            json!([{"subnet": "10.87.1.0/24", "gateway": "10.87.1.1", "lease_range": null}]),
        );
        network.insert("ipam_options".into(), json!({"driver": "flatnet"}));
        network.insert("options".into(), Value::Null);
        // With Flatnet's IPAM, Podman allocates nothing: static_ips holds only what --ip asks.
        input["network_options"]["static_ips"] = Value::Null;
        input
    }

    #[test]
    fn subcommands_are_read_from_argv() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(subcommand(&args(&[])), Ok(Subcommand::Info));
        assert_eq!(subcommand(&args(&["info"])), Ok(Subcommand::Info));
        assert_eq!(subcommand(&args(&["create"])), Ok(Subcommand::Create));
        assert_eq!(
            subcommand(&args(&["setup", "/run/netns/x"])),
            Ok(Subcommand::Setup {
                netns: "/run/netns/x".into()
            })
        );
        assert!(subcommand(&args(&["setup"]))
            .unwrap_err()
            .contains("namespace"));
        assert!(subcommand(&args(&["teardown", ""])).is_err());
        assert!(subcommand(&args(&["frobnicate"]))
            .unwrap_err()
            .contains("unknown"));
        let info: Value = serde_json::from_str(&info()).unwrap();
        assert_eq!(info["api_version"], "1.0.0");
    }

    #[test]
    fn create_without_options_gets_flatnets_defaults_and_ipam() {
        let mut input = fixture("create-default.stdin.json");
        input.insert("driver".into(), "flatnet".into());
        let out = create(input.clone(), &[]).unwrap();
        // What Podman checks: name, id and driver unchanged.
        for key in ["name", "id", "driver", "created", "dns_enabled"] {
            assert_eq!(out[key], input[key], "{key}");
        }
        assert_eq!(
            out["subnets"],
            json!([{"subnet": "10.87.1.0/24", "gateway": "10.87.1.1"}])
        );
        assert_eq!(out["ipam_options"], json!({"driver": "flatnet"}));
        assert_eq!(out["network_interface"], "flatnet-br0");
        assert_eq!(out["options"], json!({"bridge": "flatnet-br0"}));
        // The next network without --subnet gets the next free /24.
        let known = [Known {
            name: "flatnet".into(),
            subnet: "10.87.1.0/24".into(),
            in_use: 0,
        }];
        assert_eq!(
            create(input.clone(), &known).unwrap()["subnets"][0]["subnet"],
            "10.87.2.0/24"
        );
        // A network of the same name keeps the subnet it has.
        let known = [Known {
            name: "probe".into(),
            subnet: "10.87.1.0/24".into(),
            in_use: 2,
        }];
        assert_eq!(
            create(input, &known).unwrap()["subnets"][0]["subnet"],
            "10.87.1.0/24"
        );
    }

    #[test]
    fn create_keeps_what_podman_sent_and_maps_subnet_gateway_range() {
        let mut input = fixture("create-subnet-options.stdin.json");
        input.insert("driver".into(), "flatnet".into());
        input.insert("options".into(), json!({"mtu": "1400", "bridge": "fnbr7"}));
        input["subnets"][0]["lease_range"] =
            json!({"start_ip": "10.89.6.100", "end_ip": "10.89.6.150"});
        let out = create(input.clone(), &[]).unwrap();
        assert_eq!(out["labels"], json!({"k": "v"}));
        assert_eq!(out["subnets"][0]["subnet"], "10.89.6.0/24");
        assert_eq!(out["subnets"][0]["gateway"], "10.89.6.1");
        assert_eq!(
            out["subnets"][0]["lease_range"],
            json!({"start_ip": "10.89.6.100", "end_ip": "10.89.6.150"})
        );
        assert_eq!(out["options"], json!({"mtu": "1400", "bridge": "fnbr7"}));
        let flat = FlatnetNetwork::from_podman(&out, &[]).unwrap();
        assert_eq!(flat.mtu, Some(1400));
        assert_eq!(flat.bridge, "fnbr7");
        assert_eq!(
            flat.range,
            Some((Ipv4Addr::new(10, 89, 6, 100), Ipv4Addr::new(10, 89, 6, 150)))
        );
        let conf = flat.cni_config();
        assert_eq!(conf["ipam"]["rangeStart"], "10.89.6.100");
        assert_eq!(conf["mtu"], 1400);
        assert_eq!(conf["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
    }

    /// One row per refused create: what is sent, and a piece of the message that says what to do.
    #[test]
    fn create_refuses_what_flatnet_cannot_do_and_says_what_to_change() {
        let base = || {
            let mut n = fixture("create-default.stdin.json");
            n.insert("driver".into(), "flatnet".into());
            n
        };
        let known = [Known {
            name: "busy".into(),
            subnet: "10.87.5.0/24".into(),
            in_use: 3,
        }];
        let rows: Vec<(&str, Value, &str)> = vec![
            ("ipv6", json!({"ipv6_enabled": true}), "without --ipv6"),
            ("internal", json!({"internal": true}), "without --internal"),
            (
                "unknown option",
                json!({"options": {"vlan": "5"}}),
                "takes only the options",
            ),
            ("bad mtu", json!({"options": {"mtu": "9"}}), "68 to 65535"),
            (
                "isolate",
                json!({"options": {"isolate": "true"}}),
                "leave the option out",
            ),
            (
                "fn- bridge",
                json!({"options": {"bridge": "fn-12345678"}}),
                "choose another",
            ),
            (
                "long bridge",
                json!({"options": {"bridge": "a-very-long-bridge-name"}}),
                "1 to 15",
            ),
            (
                "v6 subnet",
                json!({"subnets": [{"subnet": "fd87::/64"}]}),
                "IPv4 subnet",
            ),
            (
                "bad subnet",
                json!({"subnets": [{"subnet": "10.87.1.0/33"}]}),
                "IPv4 subnet",
            ),
            (
                "two subnets",
                json!({"subnets": [{"subnet": "10.87.8.0/24"}, {"subnet": "10.87.9.0/24"}]}),
                "--subnet once",
            ),
            (
                "gateway outside",
                json!({"subnets": [{"subnet": "10.87.8.0/24", "gateway": "10.87.9.1"}]}),
                "not a host address",
            ),
            (
                "range outside",
                json!({"subnets": [{"subnet": "10.87.8.0/24", "lease_range": {"start_ip": "10.87.8.10", "end_ip": "10.87.10.1"}}]}),
                "not a host address",
            ),
            (
                "range reversed",
                json!({"subnets": [{"subnet": "10.87.8.0/24", "lease_range": {"start_ip": "10.87.8.100", "end_ip": "10.87.8.10"}}]}),
                "after its end",
            ),
            (
                "overlap",
                json!({"subnets": [{"subnet": "10.87.0.0/16"}]}),
                "choose another --subnet",
            ),
            (
                "dhcp",
                json!({"ipam_options": {"driver": "dhcp"}}),
                "leave --ipam-driver out",
            ),
            (
                "route gw outside",
                json!({"subnets": [{"subnet": "10.87.8.0/24"}], "routes": [{"destination": "10.99.0.0/16", "gateway": "10.1.1.1"}]}),
                "not in the network's subnet",
            ),
        ];
        for (what, change, says) in rows {
            let mut input = base();
            for (k, v) in change.as_object().unwrap() {
                input.insert(k.clone(), v.clone());
            }
            let err = create(input, &known).expect_err(what);
            assert!(err.contains(says), "{what}: {err}");
        }
        // The same name with another subnet while addresses are in use.
        let mut input = base();
        input.insert("name".into(), "busy".into());
        input.insert("subnets".into(), json!([{"subnet": "10.87.6.0/24"}]));
        assert!(create(input, &known)
            .unwrap_err()
            .contains("--subnet 10.87.5.0/24"));
    }

    #[test]
    fn setup_becomes_a_cni_add_with_name_ip_and_mac() {
        let input = flatnet_input("setup-static-ip-mac-ports.stdin.json");
        let mut input = input;
        input["network_options"]["static_ips"] = json!(["10.87.1.50"]);
        let a = attachment(&input).unwrap();
        let req = a.cni_request(Command::Add, "/run/netns/x");
        assert_eq!(req.ifname, "eth0");
        assert_eq!(req.netns, "/run/netns/x");
        assert_eq!(
            req.container_id,
            "7d6d04c15997955daffc209c8f4758a437b65529aebd7752b0562fe75903b087"
        );
        assert_eq!(
            req.args,
            "IgnoreUnknown=1;K8S_POD_NAME=pweb;IP=10.87.1.50;MAC=02:00:00:00:06:32"
        );
        let conf: Value = serde_json::from_slice(&req.config).unwrap();
        assert_eq!(conf["name"], "probe2");
        assert_eq!(conf["type"], "flatnet");
        assert_eq!(conf["bridge"], "flatnet-br0");
        assert_eq!(conf["ipam"]["subnet"], "10.87.1.0/24");
        // The aliases go where Podman 4 puts them.
        assert_eq!(
            conf["runtimeConfig"]["aliases"],
            json!({"probe2": ["7d6d04c15997"]})
        );
        // Teardown: the same attachment, no address asked for.
        let del = a.cni_request(Command::Del, "/run/netns/x");
        assert_eq!(del.args, "IgnoreUnknown=1;K8S_POD_NAME=pweb");
        assert_eq!(del.config, req.config);
        // A second network is eth1.
        let connect = attachment(&flatnet_input("setup-network-connect.stdin.json")).unwrap();
        assert_eq!(connect.ifname, "eth1");
    }

    #[test]
    fn setup_refuses_addresses_the_network_does_not_hand_out() {
        let mut input = flatnet_input("setup-run-rm.stdin.json");
        for (ips, says) in [
            (json!(["10.87.2.5"]), "choose one in that range"),
            (json!(["10.87.1.1"]), "not the gateway"),
            (json!(["fd87::5"]), "IPv4 only"),
            (json!(["10.87.1.5", "10.87.1.6"]), "--ip once"),
        ] {
            input["network_options"]["static_ips"] = ips;
            let err = attachment(&input).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        input["network_options"]["static_ips"] = Value::Null;
        input["network_options"]["static_mac"] = "01:00:00:00:00:01".into();
        assert!(attachment(&input).unwrap_err().contains("--mac-address"));
    }

    /// Every setup and teardown netavark sent in the captured runs reads as the attachment it
    /// names: its container, its interface, its name, its aliases.
    #[test]
    fn every_captured_setup_and_teardown_is_read() {
        let dir = format!(
            "{}/../tests/fixtures/podman-5.4.2",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let is_call = (name.starts_with("setup-") || name.starts_with("teardown-"))
                && name.ends_with(".stdin.json");
            if !is_call {
                continue;
            }
            let input = flatnet_input(&name);
            let a = attachment(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(a.container_id, input["container_id"], "{name}");
            assert_eq!(a.container_name, input["container_name"], "{name}");
            assert_eq!(
                a.ifname, input["network_options"]["interface_name"],
                "{name}"
            );
            assert_eq!(a.aliases, [&a.container_id[..12]], "{name}");
            let command = if name.starts_with("setup") {
                Command::Add
            } else {
                Command::Del
            };
            let req = a.cni_request(command, "/run/netns/x");
            let conf: Value = serde_json::from_slice(&req.config).unwrap();
            assert_eq!(conf["name"], input["network"]["name"], "{name}");
            seen += 1;
        }
        assert!(seen >= 10, "only {seen} captured calls");
    }

    #[test]
    fn the_status_block_is_what_netavark_accepted() {
        let a = attachment(&flatnet_input("setup-run-rm.stdin.json")).unwrap();
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "flatnet-br0", "mac": "02:aa:aa:aa:aa:aa"},
                {"name": "fn-12345678", "mac": "02:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "fe:11:20:d6:2d:c2", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"address": "10.89.5.2/24", "gateway": "10.89.5.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let block: Value =
            serde_json::from_str(&a.status_block(&result.to_string()).unwrap()).unwrap();
        let captured: Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "{}/../tests/fixtures/podman-5.4.2/setup-run-rm.stdout.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(block, captured);
    }
}
