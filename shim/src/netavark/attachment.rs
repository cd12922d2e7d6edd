//! What `setup` and `teardown` attach: the network, the container and its interface, and the
//! CNI request each becomes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use flatnet_proto::cni::{parse_mac, validate_container_id, validate_ifname};
use flatnet_proto::v1::Command;
use serde_json::{json, Map, Value};

use super::subnet6;
use super::*;

/// What setup and teardown need from their input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub network: FlatnetNetwork,
    pub container_id: String,
    pub container_name: String,
    pub ifname: String,
    pub static_ip: Option<Ipv4Addr>,
    pub static_ip6: Option<Ipv6Addr>,
    pub static_mac: Option<String>,
    /// What the status block's `dns_server_ips` says (the network's DNS servers, if any).
    pub dns_servers: Vec<String>,
    /// The container's network aliases (recorded with its allocation).
    pub aliases: Vec<String>,
    /// `port_mappings` (Podman's `-p`) as CNI's `portMappings`: they name the port the HTTP
    /// gateway routes to; Flatnet publishes no host port.
    pub port_mappings: Vec<Value>,
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
    let (ips6, ips4): (Vec<&str>, Vec<&str>) = static_ips.iter().partition(|ip| ip.contains(':'));
    let static_ip = match ips4.as_slice() {
        [] => None,
        [one] => {
            let ip: Ipv4Addr = one
                .parse()
                .map_err(|_| format!("--ip {one} is not an IPv4 address"))?;
            let Some(v4) = network_flat.v4 else {
                return Err(format!(
                    "--ip {ip}: network {name} has no IPv4 subnet (it is IPv6 only): give --ip6 instead"
                ));
            };
            let (first, last) = v4.range.unwrap_or_else(|| v4.subnet.hosts());
            if ip < first || ip > last || ip == v4.gateway {
                return Err(format!(
                    "--ip {ip} is not an address network {name} hands out ({first}-{last}, not the gateway {}): choose one in that range",
                    v4.gateway
                ));
            }
            Some(ip)
        }
        _ => {
            return Err(format!(
                "network {name} gives a container one IPv4 address: give --ip once"
            ))
        }
    };
    let static_ip6 = match ips6.as_slice() {
        [] => None,
        [one] => Some(subnet6::static_ip6(name, network_flat.v6, one)?),
        _ => {
            return Err(format!(
                "network {name} gives a container one IPv6 address: give --ip6 once"
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
    let port_mappings = match input.get("port_mappings") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(m)) => m
            .iter()
            .map(|m| {
                json!({
                    "hostPort": m["host_port"],
                    "containerPort": m["container_port"],
                    "protocol": m["protocol"],
                })
            })
            .collect(),
        Some(_) => return Err("\"port_mappings\" must be an array".into()),
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
        static_ip6,
        static_mac,
        dns_servers,
        aliases,
        port_mappings,
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
            let ips: Vec<String> = self
                .static_ip
                .map(|ip| ip.to_string())
                .into_iter()
                .chain(self.static_ip6.map(|ip| ip.to_string()))
                .collect();
            if !ips.is_empty() {
                args.push_str(&format!(";IP={}", ips.join(",")));
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

    /// The network's CNI config with this container's aliases and port mappings, as Podman 4
    /// passes them (`runtimeConfig.aliases` and `runtimeConfig.portMappings`, the `aliases` and
    /// `portMappings` capabilities).
    fn cni_config(&self) -> Value {
        let mut conf = self.network.cni_config();
        let mut runtime = Map::new();
        if !self.aliases.is_empty() {
            runtime.insert(
                "aliases".into(),
                json!({ &self.network.name: self.aliases }),
            );
        }
        if !self.port_mappings.is_empty() {
            runtime.insert("portMappings".into(), self.port_mappings.clone().into());
        }
        if !runtime.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime);
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
