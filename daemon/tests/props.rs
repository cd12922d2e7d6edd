//! Property tests for the parts that judge input and hand out addresses: the network-config parser
//! (`NetConf::parse`), the CNI_ARGS parser (`flatnet_proto::cni::parse_cni_args`) and the allocator
//! (`ipam::choose` over `MemStore` and `SledStore`). They need no privileges.
//!
//! The allocator is checked against a model: a map of who holds which address, and the round-robin
//! rule the README promises (the next free address after the last one handed out).

use flatnet_daemon::config::{Ipam4, IpamConf, NetConf};
use flatnet_daemon::ipam::testing::allocation;
use flatnet_daemon::ipam::{self, AllocKey, IpamError, MemStore, SledStore, Store};
use flatnet_proto::cni::{self, CniArgs, Code, SUPPORTED_VERSIONS};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

// ---------------------------------------------------------------------------------------------
// (a) NetConf::parse
// ---------------------------------------------------------------------------------------------

/// Any JSON value, small: the "anything at all" alternative for every key.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// An IPv4 address near `base` (often inside its /prefix, sometimes exactly on its edges),
/// sometimes anywhere, sometimes not an address at all.
fn ip_text(base: u32, prefix: u8) -> BoxedStrategy<String> {
    let size = 1u64 << (32 - u32::from(prefix));
    let net = base & mask(prefix);
    prop_oneof![
        12 => (0..size).prop_map(move |off| Ipv4Addr::from(net.wrapping_add(off as u32)).to_string()),
        1 => Just(Ipv4Addr::from(net).to_string()),
        1 => Just(Ipv4Addr::from(net.wrapping_add((size - 1) as u32)).to_string()),
        1 => any::<u32>().prop_map(|ip| Ipv4Addr::from(ip).to_string()),
        1 => prop_oneof![
            Just("10.87.1".to_string()),
            Just("fd00::1".to_string()),
            Just("".to_string()),
            Just("256.1.1.1".to_string()),
            "[0-9.:/a-f]{0,18}",
        ],
    ]
    .boxed()
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// A subnet in CIDR text: mostly valid, sometimes with host bits, an odd prefix, or IPv6.
fn cidr_text(base: u32, prefix: u8) -> BoxedStrategy<String> {
    let net = Ipv4Addr::from(base & mask(prefix));
    prop_oneof![
        12 => Just(format!("{net}/{prefix}")),
        1 => Just(format!("{}/{prefix}", Ipv4Addr::from(base))),
        1 => (0u8..=40).prop_map(move |p| format!("{net}/{p}")),
        1 => Just("fd00::/64".to_string()),
        1 => "[0-9./]{0,20}",
    ]
    .boxed()
}

/// A value for `key` that is usually of the right kind and sometimes anything.
fn sometimes_anything<S>(right: S) -> BoxedStrategy<Value>
where
    S: Strategy<Value = Value> + 'static,
{
    prop_oneof![15 => right, 1 => any_json()].boxed()
}

/// One ipam range object (or the top-level ipam keys) around a subnet.
fn range_object(base: u32, prefix: u8) -> BoxedStrategy<Map<String, Value>> {
    (
        prop::option::weighted(
            0.9,
            sometimes_anything(cidr_text(base, prefix).prop_map(Value::String)),
        ),
        prop::option::weighted(
            0.5,
            sometimes_anything(ip_text(base, prefix).prop_map(Value::String)),
        ),
        prop::option::weighted(
            0.5,
            sometimes_anything(ip_text(base, prefix).prop_map(Value::String)),
        ),
        prop::option::weighted(
            0.5,
            sometimes_anything(ip_text(base, prefix).prop_map(Value::String)),
        ),
    )
        .prop_map(|(subnet, start, end, gateway)| {
            let mut m = Map::new();
            for (k, v) in [
                ("subnet", subnet),
                ("rangeStart", start),
                ("rangeEnd", end),
                ("gateway", gateway),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            m
        })
        .boxed()
}

fn route(base: u32, prefix: u8) -> BoxedStrategy<Value> {
    (
        prop::option::weighted(0.9, prop_oneof![cidr_text(0, 0), cidr_text(base, prefix)]),
        prop::option::of(ip_text(base, prefix)),
    )
        .prop_map(|(dst, gw)| {
            let mut m = Map::new();
            if let Some(d) = dst {
                m.insert("dst".into(), Value::String(d));
            }
            if let Some(g) = gw {
                m.insert("gw".into(), Value::String(g));
            }
            Value::Object(m)
        })
        .boxed()
}

fn ipam_value() -> BoxedStrategy<Value> {
    (any::<u32>(), 8u8..=32)
        .prop_flat_map(|(base, prefix)| {
            (
                range_object(base, prefix),
                prop::option::weighted(
                    0.2,
                    sometimes_anything(prop_oneof![
                        // The one shape flatnet accepts: one set holding one range.
                        2 => range_object(base, prefix).prop_map(|r| json!([[r]])),
                        1 => prop::collection::vec(
                            prop::collection::vec(
                                range_object(base, prefix).prop_map(Value::Object),
                                0..3,
                            )
                            .prop_map(Value::Array),
                            0..3,
                        )
                        .prop_map(Value::Array),
                    ]),
                ),
                prop::option::weighted(
                    0.5,
                    sometimes_anything(
                        prop::collection::vec(route(base, prefix), 0..3).prop_map(Value::Array),
                    ),
                ),
                prop::option::weighted(
                    0.1,
                    prop_oneof![
                        Just(json!("flatnet")),
                        Just(json!("host-local")),
                        any_json()
                    ],
                ),
                0u8..10,
            )
                .prop_map(|(mut top, ranges, routes, ty, drop)| {
                    if let Some(r) = ranges {
                        // Usually the ranges form replaces the top-level subnet (else: code 7).
                        if drop > 1 {
                            top.remove("subnet");
                        }
                        top.insert("ranges".into(), r);
                    }
                    if let Some(r) = routes {
                        top.insert("routes".into(), r);
                    }
                    if let Some(t) = ty {
                        top.insert("type".into(), t);
                    }
                    Value::Object(top)
                })
        })
        .boxed()
}

fn version_value() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => prop::sample::select(SUPPORTED_VERSIONS).prop_map(|v| json!(v)),
        1 => prop::sample::select(&["0.2.0", "9.9.9", "1.0", ""][..]).prop_map(|v| json!(v)),
        1 => any_json(),
    ]
    .boxed()
}

fn name_value() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => "[a-zA-Z0-9_.-]{1,20}".prop_map(Value::String),
        1 => ".{0,20}".prop_map(Value::String),
        1 => any_json(),
    ]
    .boxed()
}

fn bridge_value() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => "[a-z0-9-]{1,15}".prop_map(Value::String),
        1 => "fn-[0-9a-f]{8}".prop_map(Value::String),
        1 => ".{0,20}".prop_map(Value::String),
        1 => any_json(),
    ]
    .boxed()
}

fn mtu_value() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (0u64..70000).prop_map(|m| json!(m)),
        1 => any_json(),
    ]
    .boxed()
}

fn bool_value() -> BoxedStrategy<Value> {
    prop_oneof![4 => any::<bool>().prop_map(Value::Bool), 1 => any_json()].boxed()
}

/// A network configuration shaped like what runtimes send: the known keys, each present or not,
/// each usually of the right kind, plus the odd unknown key.
fn netconf_json() -> BoxedStrategy<Value> {
    (
        (
            prop::option::weighted(0.95, version_value()),
            prop::option::weighted(0.95, name_value()),
            prop::option::weighted(
                0.7,
                prop_oneof![4 => Just(json!("flatnet")), 1 => any_json()],
            ),
            prop::option::weighted(0.5, bridge_value()),
            prop::option::weighted(0.3, mtu_value()),
            prop::option::weighted(0.3, bool_value()),
            prop::option::weighted(0.2, bool_value()),
            prop::option::weighted(0.2, bool_value()),
        ),
        (
            prop::option::weighted(0.85, sometimes_anything(ipam_value())),
            prop::option::weighted(0.05, any_json()),
            prop::option::weighted(0.05, any_json()),
            prop::option::weighted(0.05, any_json()),
            prop::option::weighted(0.05, any_json()),
            prop::option::weighted(0.05, any_json()),
            prop::option::weighted(0.1, ("[a-z]{1,8}", any_json())),
        ),
    )
        .prop_map(
            |(
                (version, name, ty, bridge, mtu, gw, masq, hairpin),
                (ipam, dns, prev, runtime, valid, socket, unknown),
            )| {
                let mut m = Map::new();
                let keys = [
                    ("cniVersion", version),
                    ("name", name),
                    ("type", ty),
                    ("bridge", bridge),
                    ("mtu", mtu),
                    ("isGateway", gw),
                    ("ipMasq", masq),
                    ("hairpinMode", hairpin),
                    ("ipam", ipam),
                    ("dns", dns),
                    ("prevResult", prev),
                    ("runtimeConfig", runtime),
                    ("cni.dev/valid-attachments", valid),
                    ("socket", socket),
                ];
                for (k, v) in keys {
                    if let Some(v) = v {
                        m.insert(k.to_string(), v);
                    }
                }
                if let Some((k, v)) = unknown {
                    m.insert(k, v);
                }
                Value::Object(m)
            },
        )
        .boxed()
}

/// Every accepted configuration is one the rest of the daemon can rely on.
fn assert_invariants(raw: &[u8], c: &NetConf) {
    let ctx = String::from_utf8_lossy(raw);
    assert!(
        SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()),
        "accepted cniVersion {:?}: {ctx}",
        c.cni_version
    );
    assert!(!c.name.is_empty(), "accepted an empty name: {ctx}");
    assert!(
        cni::validate_ifname("bridge", &c.bridge).is_ok() && !c.bridge.starts_with("fn-"),
        "accepted bridge {:?}: {ctx}",
        c.bridge
    );
    if let Some(mtu) = c.mtu {
        assert!((68..=65535).contains(&mtu), "accepted mtu {mtu}: {ctx}");
    }
    assert_ipam_invariants(&c.ipam, &ctx);
}

fn assert_ipam_invariants(ipam: &IpamConf, ctx: &str) {
    let Some(ipam) = &ipam.v4 else {
        assert!(
            ipam.v6.is_some(),
            "accepted a network without a range: {ctx}"
        );
        return;
    };
    let net = ipam.subnet;
    assert_eq!(net.ip(), net.network(), "subnet with host bits: {ctx}");
    assert!(net.prefix() <= 30, "subnet {net} has no room: {ctx}");
    let first = u32::from(net.network()) + 1;
    let last = u32::from(net.broadcast()) - 1;
    let host = |ip: Ipv4Addr| (first..=last).contains(&u32::from(ip));
    assert!(
        host(ipam.gateway),
        "gateway {} not a host of {net}: {ctx}",
        ipam.gateway
    );
    assert!(
        host(ipam.range_start) && host(ipam.range_end),
        "range {}-{} not inside the hosts of {net}: {ctx}",
        ipam.range_start,
        ipam.range_end
    );
    assert!(
        ipam.range_start <= ipam.range_end,
        "range {}-{} backwards: {ctx}",
        ipam.range_start,
        ipam.range_end
    );
    let any_assignable = (u32::from(ipam.range_start)..=u32::from(ipam.range_end))
        .take(3)
        .any(|ip| ipam.assignable(Ipv4Addr::from(ip)));
    assert!(
        any_assignable,
        "range {}-{} holds no assignable address: {ctx}",
        ipam.range_start, ipam.range_end
    );
    for r in &ipam.routes {
        assert_eq!(
            r.dst.ip(),
            r.dst.network(),
            "route dst with host bits: {ctx}"
        );
    }
}

fn check_parse(raw: &[u8]) -> Result<(), TestCaseError> {
    match NetConf::parse(raw) {
        Ok(c) => assert_invariants(raw, &c),
        Err(e) => {
            let allowed = [
                Code::IncompatibleVersion,
                Code::UnsupportedField,
                Code::Decode,
                Code::InvalidConfig,
            ];
            prop_assert!(
                allowed.contains(&e.code()),
                "config refusal with code {:?}: {}",
                e.code(),
                e.msg
            );
            prop_assert!(!e.msg.is_empty(), "refusal without a message");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 2048, failure_persistence: None, ..Config::default() })]

    #[test]
    fn netconf_parse_never_panics_on_bytes(raw in prop::collection::vec(any::<u8>(), 0..256)) {
        check_parse(&raw)?;
    }

    #[test]
    fn netconf_parse_never_panics_on_json_shaped_input(v in netconf_json()) {
        check_parse(v.to_string().as_bytes())?;
    }

    #[test]
    fn netconf_parse_never_panics_on_truncated_or_mangled_json(
        v in netconf_json(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let text = v.to_string().into_bytes();
        let truncated = &text[..cut.index(text.len() + 1)];
        check_parse(truncated)?;
        let mut mangled = text.clone();
        let i = flip.index(mangled.len());
        mangled[i] = byte;
        check_parse(&mangled)?;
    }
}

/// The generator must really reach accepted configurations, or the invariants above are checked on
/// nothing. Deterministic, so it cannot flake.
#[test]
fn netconf_generator_reaches_accepted_configs() {
    let mut runner = TestRunner::deterministic();
    let strategy = netconf_json();
    let total = 1000;
    let mut accepted = 0;
    let mut ranges_form = 0;
    for _ in 0..total {
        let v = strategy
            .new_tree(&mut runner)
            .expect("the strategy has no filters that can give up")
            .current();
        if NetConf::parse(v.to_string().as_bytes()).is_ok() {
            accepted += 1;
            if v["ipam"].get("ranges").is_some() {
                ranges_form += 1;
            }
        }
    }
    assert!(
        accepted >= total / 10,
        "only {accepted} of {total} generated configs were accepted: the invariants are barely exercised"
    );
    eprintln!("{accepted} of {total} generated configs accepted, {ranges_form} in the ranges form");
    assert!(
        ranges_form > 0,
        "no accepted config used ipam.ranges: {accepted} accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) CNI_ARGS
// ---------------------------------------------------------------------------------------------

fn unicast_mac() -> impl Strategy<Value = [u8; 6]> {
    any::<[u8; 6]>()
        .prop_map(|mut m| {
            m[0] &= 0xfe;
            m
        })
        .prop_filter("the all-zero MAC is refused", |m| *m != [0; 6])
}

fn mac_text(mac: [u8; 6], dash: bool, upper: bool) -> String {
    let s = mac
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect::<Vec<_>>()
        .join(if dash { "-" } else { ":" });
    s
}

proptest! {
    #![proptest_config(Config { cases: 2048, failure_persistence: None, ..Config::default() })]

    #[test]
    fn cni_args_parser_never_panics(raw in ".{0,80}") {
        let _ = cni::parse_cni_args(&raw);
    }

    #[test]
    fn cni_args_parser_never_panics_on_args_shaped_input(
        raw in "((IgnoreUnknown|IP|MAC|K8S_POD_NAME|K8S_POD_UID|X|)(=[0-9a-fA-F:.;=-]{0,20})?;?){0,5}"
    ) {
        let _ = cni::parse_cni_args(&raw);
    }

    #[test]
    fn validators_never_panic(s in ".{0,40}") {
        let _ = cni::validate_container_id(&s);
        let _ = cni::validate_ifname("CNI_IFNAME", &s);
        let _ = cni::parse_mac(&s);
    }

    #[test]
    fn cni_args_round_trip(
        ip in prop::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        mac in prop::option::of(unicast_mac()),
        dash in any::<bool>(),
        upper in any::<bool>(),
        name in prop::option::of("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}"),
        ignore in prop::option::of(prop::sample::select(&["1", "true", "TRUE", "True"][..])),
        unknown in prop::collection::vec(("[A-Z][A-Z_]{0,8}", "[a-z0-9]{0,6}"), 0..3),
        known_ignored in prop::option::of(prop::sample::select(
            &["K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"][..])),
        order in any::<u64>(),
    ) {
        let known = ["IgnoreUnknown", "IP", "MAC", "K8S_POD_NAME",
            "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"];
        let unknown: Vec<(String, String)> =
            unknown.into_iter().filter(|(k, _)| !known.contains(&k.as_str())).collect();
        let mut pairs: Vec<String> = Vec::new();
        if let Some(ip) = ip { pairs.push(format!("IP={ip}")); }
        if let Some(mac) = mac { pairs.push(format!("MAC={}", mac_text(mac, dash, upper))); }
        if let Some(n) = &name { pairs.push(format!("K8S_POD_NAME={n}")); }
        if let Some(i) = ignore { pairs.push(format!("IgnoreUnknown={i}")); }
        if let Some(k) = known_ignored { pairs.push(format!("{k}=x")); }
        for (k, v) in &unknown { pairs.push(format!("{k}={v}")); }
        // A deterministic shuffle: the order of the pairs must not matter.
        let mut o = order;
        for i in (1..pairs.len()).rev() {
            let j = (o % (i as u64 + 1)) as usize;
            o /= i as u64 + 1;
            pairs.swap(i, j);
        }
        let raw = pairs.join(";");
        let parsed = cni::parse_cni_args(&raw);
        if !unknown.is_empty() && ignore.is_none() {
            prop_assert!(parsed.is_err(), "unknown keys without IgnoreUnknown accepted: {raw}");
        } else {
            let want = CniArgs { ip, ip6: None, mac, pod_name: name.clone() };
            prop_assert_eq!(parsed, Ok(want), "{}", raw);
        }
    }

    #[test]
    fn mac_format_round_trips(mac in unicast_mac()) {
        prop_assert_eq!(cni::parse_mac(&cni::format_mac(&mac)), Ok(mac));
    }

    #[test]
    fn multicast_macs_are_refused(mut mac in any::<[u8; 6]>(), dash in any::<bool>()) {
        mac[0] |= 1;
        let raw = format!("IgnoreUnknown=1;MAC={}", mac_text(mac, dash, false));
        prop_assert!(cni::parse_cni_args(&raw).is_err(), "{}", raw);
    }
}

// ---------------------------------------------------------------------------------------------
// (c) the allocator
// ---------------------------------------------------------------------------------------------

/// A valid, randomly narrowed subnet/range/gateway, as the JSON a runtime would send.
#[derive(Debug, Clone)]
struct Pool {
    subnet: String,
    start: Ipv4Addr,
    end: Ipv4Addr,
    gateway: Ipv4Addr,
}

fn pool(prefixes: std::ops::RangeInclusive<u8>) -> impl Strategy<Value = Pool> {
    (any::<u32>(), prefixes)
        .prop_flat_map(|(base, prefix)| {
            let net = base & mask(prefix);
            let hosts = (1u32 << (32 - u32::from(prefix))) - 2;
            (
                Just((net, prefix)),
                0..hosts,
                0..hosts,
                0..hosts,
                // Narrow ranges are where exhaustion happens; often use the whole subnet too.
                prop_oneof![2 => Just(None), 3 => (1u32..12).prop_map(Some)],
            )
        })
        .prop_map(|((net, prefix), a, b, g, width)| {
            let first = net + 1;
            let (mut lo, mut hi) = (a.min(b), a.max(b));
            if let Some(w) = width {
                hi = hi.min(lo + w - 1);
            }
            if width.is_none() && a % 3 == 0 {
                lo = 0;
                hi = (1u32 << (32 - u32::from(prefix))) - 3;
            }
            Pool {
                subnet: format!("{}/{prefix}", Ipv4Addr::from(net)),
                start: Ipv4Addr::from(first + lo),
                end: Ipv4Addr::from(first + hi),
                gateway: Ipv4Addr::from(first + g),
            }
        })
        .prop_filter("a range holding only the gateway is refused", |p| {
            !(p.start == p.end && p.start == p.gateway)
        })
}

impl Pool {
    /// Parsed through the real config parser, which must accept it.
    fn ipam(&self) -> Ipam4 {
        let raw = json!({"cniVersion": "1.0.0", "name": "n", "type": "flatnet", "ipam": {
            "subnet": self.subnet, "rangeStart": self.start.to_string(),
            "rangeEnd": self.end.to_string(), "gateway": self.gateway.to_string()}});
        match NetConf::parse(raw.to_string().as_bytes()) {
            Ok(c) => c.ipam.v4.expect("an IPv4 pool"),
            Err(e) => panic!("a valid pool was refused ({}): {raw}", e.msg),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Allocate for a new container, optionally asking for the address at this offset from the
    /// range start (which may fall outside the range).
    Allocate(Option<i64>),
    /// Release the held allocation with this index (modulo the number held).
    Release(prop::sample::Index),
}

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => Just(Op::Allocate(None)),
            1 => (-3i64..16).prop_map(|o| Op::Allocate(Some(o))),
            3 => any::<prop::sample::Index>().prop_map(Op::Release),
        ],
        1..max,
    )
}

/// The model's round-robin answer: the first assignable, free address after `last` in cyclic order
/// through the range (from the range start when `last` is not in the range).
fn model_next(
    ipam: &Ipam4,
    last: Option<Ipv4Addr>,
    held: &BTreeMap<String, Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let start = u32::from(ipam.range_start);
    let end = u32::from(ipam.range_end);
    let size = u64::from(end - start) + 1;
    let from = match last.map(u32::from) {
        Some(l) if (start..=end).contains(&l) => u64::from(l - start) + 1,
        _ => 0,
    };
    (0..size)
        .map(|i| Ipv4Addr::from(start + ((from + i) % size) as u32))
        .find(|ip| ipam.assignable(*ip) && !held.values().any(|h| h == ip))
}

/// Runs `ops` against `store` and the model; fails on the first disagreement.
fn run_allocator<S: Store>(store: &S, p: &Pool, ops: &[Op]) -> Result<Outcomes, TestCaseError> {
    let mut seen = Outcomes::default();
    let ipam = p.ipam();
    let net = ipam.subnet;
    let mut held: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut last: Option<Ipv4Addr> = None;
    let mut serial = 0;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Allocate(offset) => {
                let requested = offset
                    .map(|o| Ipv4Addr::from((i64::from(u32::from(ipam.range_start)) + o) as u32));
                let got = ipam::choose(store, ipam::HeldBack::none(), "n", &ipam, requested);
                let free_exists = model_next(&ipam, None, &held).is_some();
                let ip = match (requested, got) {
                    (Some(r), Err(IpamError::OutsideRange { .. })) => {
                        prop_assert!(!ipam.assignable(r), "step {step}: {r} refused as outside");
                        seen.outside += 1;
                        continue;
                    }
                    (Some(r), Err(IpamError::Taken { .. })) => {
                        prop_assert!(
                            held.values().any(|h| *h == r),
                            "step {step}: {r} refused as taken but nobody holds it"
                        );
                        seen.taken += 1;
                        continue;
                    }
                    (Some(r), Ok(ip)) => {
                        prop_assert_eq!(ip, r, "step {}: asked for {} and got another", step, r);
                        ip
                    }
                    (None, Err(IpamError::Exhausted { .. })) => {
                        prop_assert!(
                            !free_exists,
                            "step {step}: Exhausted although {:?} is free (held: {held:?})",
                            model_next(&ipam, None, &held)
                        );
                        seen.exhausted += 1;
                        continue;
                    }
                    (None, Ok(ip)) => {
                        prop_assert_eq!(
                            Some(ip),
                            model_next(&ipam, last, &held),
                            "step {}: not the next free address after {:?}",
                            step,
                            last
                        );
                        ip
                    }
                    (r, Err(e)) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: choose({r:?}) failed unexpectedly: {e}"
                        )))
                    }
                };
                prop_assert!(
                    !held.values().any(|h| *h == ip),
                    "step {step}: {ip} handed out while held (held: {held:?})"
                );
                prop_assert!(ip != ipam.gateway, "step {step}: gateway {ip} handed out");
                prop_assert!(
                    ip != net.network() && ip != net.broadcast(),
                    "step {step}: network or broadcast {ip} handed out"
                );
                prop_assert!(
                    ip >= ipam.range_start && ip <= ipam.range_end,
                    "step {step}: {ip} outside {}-{}",
                    ipam.range_start,
                    ipam.range_end
                );
                serial += 1;
                let id = format!("c{serial}");
                store
                    .insert(&allocation(&id, ip, net.prefix()))
                    .map_err(|e| TestCaseError::fail(format!("step {step}: insert: {e}")))?;
                held.insert(id, ip);
                last = Some(ip);
                seen.allocated += 1;
            }
            Op::Release(i) => {
                if held.is_empty() {
                    continue;
                }
                let id = held
                    .keys()
                    .nth(i.index(held.len()))
                    .expect("index is below len")
                    .clone();
                let ip = held.remove(&id).expect("id came from the map");
                let key = AllocKey {
                    network: "n".into(),
                    container_id: id,
                    ifname: "eth0".into(),
                };
                let removed = store
                    .remove(&key)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: remove: {e}")))?;
                prop_assert_eq!(removed.and_then(|a| a.address), Some(ip), "step {}", step);
                prop_assert!(
                    !store.is_taken("n", ip.into()).unwrap(),
                    "step {step}: {ip} still taken"
                );
                seen.released += 1;
            }
        }
        let mut listed: Vec<(String, Option<Ipv4Addr>)> = store
            .list(Some("n"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .into_iter()
            .map(|a| (a.container_id, a.address))
            .collect();
        listed.sort();
        let want: Vec<(String, Option<Ipv4Addr>)> =
            held.iter().map(|(k, v)| (k.clone(), Some(*v))).collect();
        prop_assert_eq!(listed, want, "step {}: store and model disagree", step);
    }
    Ok(seen)
}

/// How often each outcome happened, so a test can show the generators reach all of them.
#[derive(Debug, Default)]
struct Outcomes {
    allocated: usize,
    released: usize,
    exhausted: usize,
    taken: usize,
    outside: usize,
}

/// The generators must reach every outcome (exhaustion above all), or the properties hold
/// vacuously. Deterministic, so it cannot flake.
#[test]
fn allocator_generators_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let strategy = (pool(24..=30), ops(160));
    let mut total = Outcomes::default();
    for _ in 0..200 {
        let (p, ops) = strategy
            .new_tree(&mut runner)
            .expect("the pool filter rarely rejects")
            .current();
        let got = run_allocator(&MemStore::default(), &p, &ops)
            .unwrap_or_else(|e| panic!("{e}: {p:?} {ops:?}"));
        total.allocated += got.allocated;
        total.released += got.released;
        total.exhausted += got.exhausted;
        total.taken += got.taken;
        total.outside += got.outside;
    }
    assert!(
        total.allocated > 0
            && total.released > 0
            && total.exhausted > 0
            && total.taken > 0
            && total.outside > 0,
        "some outcome never happened: {total:?}"
    );
    eprintln!("allocator outcomes over 200 generated cases: {total:?}");
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn allocator_on_mem_store(p in pool(24..=30), ops in ops(160)) {
        run_allocator(&MemStore::default(), &p, &ops)?;
    }
}

/// A temp dir for one sled case, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flatnet-props-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens a sled dir again. sled's flusher thread may hold the file lock for a moment after the
/// store is dropped (a restarted daemon is a new process and never sees that), so retry briefly.
fn reopen(dir: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match SledStore::open(dir) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() >= deadline => {
                panic!("{} does not open again: {e}", dir.display())
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 48, failure_persistence: None, ..Config::default() })]

    #[test]
    fn allocator_on_sled_store(p in pool(26..=30), ops in ops(60)) {
        let dir = TempDir::new();
        let want = {
            let store = SledStore::open(&dir.0).expect("a fresh temp dir opens");
            run_allocator(&store, &p, &ops)?;
            futures::executor::block_on(store.flush()).expect("flush");
            store.list(None).expect("list")
        };
        // What was recorded is what a restarted daemon finds.
        let reopened = reopen(&dir.0);
        prop_assert_eq!(reopened.list(None).expect("list"), want);
    }
}
