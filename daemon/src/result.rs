//! The CNI result: one version-neutral form that is stored with each allocation, rendered in the
//! cniVersion a request asks for, and parsed back from `prevResult` (any supported version).

use flatnet_proto::cni::{self, ResultFormat};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation: `10.87.1.2/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteOut {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteOut>,
    #[serde(default = "empty_object")]
    pub dns: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl CniResult {
    /// Renders the result JSON for `version` (a version Flatnet supports): 0.3.x and 0.4.0 carry
    /// `"version": "4"` or `"6"` on each IP, 1.x does not.
    pub fn render(&self, version: &str) -> String {
        let mut v = serde_json::to_value(self).expect("CniResult is plain data");
        if cni::result_format(version) == Some(ResultFormat::V03) {
            if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips {
                    let v6 = ip["address"].as_str().is_some_and(|a| a.contains(':'));
                    ip["version"] = json!(if v6 { "6" } else { "4" });
                }
            }
        }
        v["cniVersion"] = json!(version);
        v.to_string()
    }

    /// Reads a `prevResult` of any supported version (extra keys such as `version` are ignored).
    pub fn from_prev_result(v: &Value) -> Result<CniResult, String> {
        serde_json::from_value(v.clone())
            .map_err(|e| format!("prevResult is not a CNI result: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "flatnet-br0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: None,
                },
                Interface {
                    name: "fn-0011aabb".into(),
                    mac: "02:00:00:00:00:02".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:11:22:33:44:55".into(),
                    sandbox: Some("/run/netns/c1".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.87.1.2/24".into(),
                gateway: Some("10.87.1.1".into()),
                interface: Some(2),
            }],
            routes: vec![RouteOut {
                dst: "0.0.0.0/0".into(),
                gw: None,
            }],
            dns: json!({}),
        }
    }

    #[test]
    fn renders_per_version() {
        for version in cni::SUPPORTED_VERSIONS {
            let v: Value = serde_json::from_str(&sample().render(version)).unwrap();
            assert_eq!(v["cniVersion"], *version);
            assert_eq!(v["ips"][0]["address"], "10.87.1.2/24");
            assert_eq!(v["ips"][0]["interface"], 2);
            assert_eq!(v["interfaces"][2]["sandbox"], "/run/netns/c1");
            assert!(v["interfaces"][0].get("sandbox").is_none());
            let legacy = version.starts_with("0.");
            assert_eq!(v["ips"][0].get("version").is_some(), legacy, "{version}");
        }
        let mut dual = sample();
        dual.ips.push(IpConfig {
            address: "fd87:1::2/64".into(),
            gateway: Some("fd87:1::1".into()),
            interface: Some(2),
        });
        let v: Value = serde_json::from_str(&dual.render("0.3.1")).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
    }

    #[test]
    fn round_trips_through_prev_result() {
        for version in ["0.4.0", "1.0.0"] {
            let v: Value = serde_json::from_str(&sample().render(version)).unwrap();
            assert_eq!(CniResult::from_prev_result(&v).unwrap(), sample());
        }
        // The reference bridge plugin's result from the Podman fixture parses too.
        let fixture = json!({"cniVersion":"1.0.0","interfaces":[{"name":"dumpbr0","mac":"3a:c7:88:01:35:89"},
            {"name":"veth26f72ff0","mac":"92:1a:69:57:4c:bc"},{"name":"eth0","mac":"02:11:22:33:44:55",
            "sandbox":"/run/netns/netns-6dd92020"}],"ips":[{"interface":2,"address":"10.254.7.50/24",
            "gateway":"10.254.7.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let r = CniResult::from_prev_result(&fixture).unwrap();
        assert_eq!(r.ips[0].interface, Some(2));
        assert!(CniResult::from_prev_result(&json!({"ips": "x"})).is_err());
    }
}
