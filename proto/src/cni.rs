//! CNI rules shared by the shim and the daemon: the error-code table (the only one in the project),
//! the versions Flatnet speaks, the CNI error JSON, and the validators for CNI_* values and CNI_ARGS.

use serde::Serialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Versions answered by VERSION, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version Flatnet speaks; used when a request names none we know.
pub const LATEST_VERSION: &str = "1.1.0";

/// Largest network configuration accepted on stdin. Podman's conflists are a few hundred bytes; the
/// limit keeps a runaway writer from making the shim or the daemon buffer without end.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The name prefixes of the links flatnetd makes for a large network (its sub-bridges and their
/// trunk ends): no configured bridge may use them.
pub const SUB_BRIDGE_PREFIXES: [&str; 3] = ["fnb-", "fnt-", "fnp-"];

/// CNI error codes: 1–11 and 50/51 are the spec's, 100 and up are Flatnet's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    PluginNotAvailable,
    PluginNotAvailableLimited,
    /// The requested address is taken, or the pool has no free address.
    AddressUnavailable,
    /// This container + interface is already attached in another namespace.
    AlreadyAttached,
    /// The kernel refused a netlink request.
    Kernel,
    /// CHECK found the attachment different from what prevResult says.
    CheckFailed,
    /// flatnetd failed internally: its state store holds something it cannot read, or a request
    /// failed in a way it did not foresee.
    Internal,
    /// nftables refused flatnetd's table, or the `nft` tool is missing (`ipMasq`).
    Firewall,
}

impl Code {
    pub const fn as_u32(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnvironment => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::PluginNotAvailable => 50,
            Code::PluginNotAvailableLimited => 51,
            Code::AddressUnavailable => 100,
            Code::AlreadyAttached => 101,
            Code::Kernel => 102,
            Code::CheckFailed => 103,
            Code::Internal => 104,
            Code::Firewall => 105,
        }
    }

    pub fn from_u32(code: u32) -> Option<Code> {
        ALL_CODES.iter().copied().find(|c| c.as_u32() == code)
    }
}

const ALL_CODES: &[Code] = &[
    Code::IncompatibleVersion,
    Code::UnsupportedField,
    Code::UnknownContainer,
    Code::InvalidEnvironment,
    Code::Io,
    Code::Decode,
    Code::InvalidConfig,
    Code::TryAgainLater,
    Code::PluginNotAvailable,
    Code::PluginNotAvailableLimited,
    Code::AddressUnavailable,
    Code::AlreadyAttached,
    Code::Kernel,
    Code::CheckFailed,
    Code::Internal,
    Code::Firewall,
];

/// A CNI error as printed on the shim's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(version: &str, code: Code, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: version.to_string(),
            code: code.as_u32(),
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and an integer cannot fail.
        serde_json::to_string(self).expect("CniError is plain data")
    }
}

/// How a result is rendered for a cniVersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFormat {
    /// 0.3.0, 0.3.1, 0.4.0: `ips[].version` is present.
    V03,
    /// 1.0.0, 1.1.0.
    V10,
}

/// Checks a cniVersion string against what Flatnet speaks.
pub fn result_format(version: &str) -> Option<ResultFormat> {
    match version {
        "0.3.0" | "0.3.1" | "0.4.0" => Some(ResultFormat::V03),
        "1.0.0" | "1.1.0" => Some(ResultFormat::V10),
        _ => None,
    }
}

/// The message for a cniVersion Flatnet does not speak.
pub fn unsupported_version_msg(version: &str) -> String {
    format!(
        "cniVersion {version:?} is not supported by flatnet (supported: {})",
        SUPPORTED_VERSIONS.join(", ")
    )
}

/// `true` when `version` is at least `min` (both known versions).
pub fn version_at_least(version: &str, min: &str) -> bool {
    fn parts(v: &str) -> (u32, u32, u32) {
        let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
        )
    }
    parts(version) >= parts(min)
}

/// A value that failed validation, with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// CNI_CONTAINERID: non-empty, starts alphanumeric, then alphanumerics, `_`, `.`, `-` (the spec's rule).
pub fn validate_container_id(id: &str) -> Result<(), Invalid> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if id.len() > 1024 || !first_ok || !rest_ok {
        return Err(Invalid(format!(
            "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(())
}

/// An interface name the kernel accepts: 1–15 bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn validate_ifname(what: &str, name: &str) -> Result<(), Invalid> {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." || bad_char {
        return Err(Invalid(format!(
            "{what} {name:?} is not a valid interface name: use 1 to 15 characters without '/', ':' or spaces"
        )));
    }
    Ok(())
}

/// CNI_ARGS as Flatnet understands them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IP=`: a fixed address (Podman's `--ip`).
    pub ip: Option<Ipv4Addr>,
    /// `IP=`'s IPv6 address (Podman's `--ip6`).
    pub ip6: Option<Ipv6Addr>,
    /// `MAC=`: the container interface's MAC (Podman's `--mac-address`).
    pub mac: Option<[u8; 6]>,
    /// `K8S_POD_NAME=`: Podman puts the container name here.
    pub pod_name: Option<String>,
}

/// Keys that runtimes commonly send and that Flatnet accepts without using.
const KNOWN_IGNORED_KEYS: &[&str] = &[
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// Parses CNI_ARGS (`K=V;K=V`). Unknown keys are an error unless `IgnoreUnknown` is true, as libcni's
/// reference plugins do.
pub fn parse_cni_args(raw: &str) -> Result<CniArgs, Invalid> {
    let mut args = CniArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Invalid(format!(
                "CNI_ARGS element {pair:?} is not of the form KEY=VALUE"
            )));
        };
        if key.is_empty() {
            return Err(Invalid(format!(
                "CNI_ARGS element {pair:?} has an empty key"
            )));
        }
        match key {
            "IgnoreUnknown" => {
                ignore_unknown = match value.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(Invalid(format!(
                            "CNI_ARGS IgnoreUnknown={value:?} must be 1, 0, true or false"
                        )))
                    }
                }
            }
            "IP" => {
                // Podman sends one address per family, comma-separated (`--ip` and `--ip6`).
                for one in value.split(',') {
                    match one.parse::<IpAddr>() {
                        Ok(IpAddr::V4(ip)) if args.ip.is_none() => args.ip = Some(ip),
                        Ok(IpAddr::V6(ip)) if args.ip6.is_none() => args.ip6 = Some(ip),
                        Ok(_) => {
                            return Err(Invalid(format!(
                                "CNI_ARGS IP={value:?} holds two addresses of one family: a container gets one IPv4 and one IPv6 address per network"
                            )))
                        }
                        Err(_) => {
                            return Err(Invalid(format!(
                                "CNI_ARGS IP={value:?}: {one:?} is not an IP address (e.g. IP=10.87.1.50 or IP=10.87.1.50,fd87:1::50)"
                            )))
                        }
                    }
                }
            }
            "MAC" => {
                args.mac =
                    Some(parse_mac(value).map_err(|e| Invalid(format!("CNI_ARGS MAC: {e}")))?)
            }
            "K8S_POD_NAME" => args.pod_name = Some(value.to_string()),
            k if KNOWN_IGNORED_KEYS.contains(&k) => {}
            k => unknown.push(k.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(Invalid(format!(
            "CNI_ARGS has keys flatnet does not know ({}); add IgnoreUnknown=1 to pass them anyway",
            unknown.join(", ")
        )));
    }
    Ok(args)
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`); refuses multicast and all-zero addresses, which the kernel
/// would refuse later with a less helpful error.
pub fn parse_mac(s: &str) -> Result<[u8; 6], Invalid> {
    let bad = || Invalid(format!("{s:?} is not a MAC address like 02:11:22:33:44:55"));
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(Invalid(format!(
            "{s:?} is a multicast or zero MAC address; a container interface needs a unicast one"
        )));
    }
    Ok(mac)
}

/// Formats a MAC the way CNI results do (`aa:bb:cc:dd:ee:ff`).
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_args_parse() {
        let a = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAME=dumpc1;MAC=02:11:22:33:44:55;IP=10.254.7.50",
        )
        .unwrap();
        assert_eq!(a.ip, Some(Ipv4Addr::new(10, 254, 7, 50)));
        assert_eq!(a.mac, Some([2, 0x11, 0x22, 0x33, 0x44, 0x55]));
        assert_eq!(a.pod_name.as_deref(), Some("dumpc1"));
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        let both = parse_cni_args("IP=fd87:1::5,10.87.1.5").unwrap();
        assert_eq!(both.ip, Some(Ipv4Addr::new(10, 87, 1, 5)));
        assert_eq!(both.ip6, Some("fd87:1::5".parse().unwrap()));
    }

    #[test]
    fn bad_args_are_refused() {
        for raw in [
            "IP=10.87.1",
            "IP=10.87.1.5,10.87.1.6",
            "IP=fd87:1::5,fd87:1::6",
            "IP=10.87.1.5,",
            "MAC=02:11:22:33:44",
            "MAC=01:00:5e:00:00:01",
            "MAC=zz:11:22:33:44:55",
            "novalue",
            "=x",
            "IgnoreUnknown=maybe",
            "FOO=bar",
        ] {
            assert!(parse_cni_args(raw).is_err(), "{raw} should be refused");
        }
        assert!(parse_cni_args("IgnoreUnknown=true;FOO=bar").is_ok());
    }

    #[test]
    fn names() {
        assert!(validate_container_id("f47cbc8ea4d0").is_ok());
        assert!(validate_container_id("a.b_c-d").is_ok());
        assert!(validate_container_id("").is_err());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("abc/def").is_err());
        assert!(validate_ifname("CNI_IFNAME", "eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(validate_ifname("CNI_IFNAME", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL_CODES {
            assert!(seen.insert(c.as_u32()));
            assert_eq!(Code::from_u32(c.as_u32()), Some(*c));
        }
    }

    #[test]
    fn versions() {
        assert_eq!(result_format("0.4.0"), Some(ResultFormat::V03));
        assert_eq!(result_format("1.1.0"), Some(ResultFormat::V10));
        assert_eq!(result_format("0.2.0"), None);
        assert!(version_at_least("1.1.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        for v in SUPPORTED_VERSIONS {
            assert!(result_format(v).is_some());
        }
    }

    #[test]
    fn error_json_shape() {
        let e = CniError::new("1.0.0", Code::TryAgainLater, "later");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["code"], 11);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v.get("details").is_none());
    }
}
