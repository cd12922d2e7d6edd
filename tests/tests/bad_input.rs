//! Bad input, one table row per case: the real shim, a real daemon in one namespaced host, and the
//! exact CNI code each case must get. After every row nothing may have changed: the daemon's
//! allocations (via flatnetctl), the host's `fn-*` links, and the container namespace the row
//! targets (still only `lo`). Without root (or a tool it needs) it fails, saying what is missing.
//!
//! Every row changes one thing in an ADD that is known to work (a control ADD before and after the
//! table proves that), so a row fails for its own reason and not for a broken setup.

use flatnet_tests::reliability::{podman_add_env, run_shim, with_env, ShimEnv};
use flatnet_tests::*;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// The address the `holder` container holds (the "already taken" cases).
const HELD_IP: &str = "10.87.1.50";
/// The one address of the tiny range the `single` container already uses (pool exhausted).
const SINGLE_IP: &str = "10.87.1.60";

/// What a row sends on stdin.
enum Stdin {
    /// The host's working config with these top-level keys replaced (`null` removes a key).
    Conf(Value),
    /// The working config with these `ipam` keys replaced (`null` removes a key).
    Ipam(Value),
    /// Exactly these bytes.
    Raw(Vec<u8>),
}

/// The container a row's ADD is for (CNI_CONTAINERID and CNI_NETNS, unless the row changes them).
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// A fresh container id, in the target namespace that must keep only `lo`.
    Fresh,
    /// The id of the container that already holds HELD_IP, in the target namespace.
    HolderElsewhere,
    /// The id of the container that already holds HELD_IP, in its own namespace.
    HolderInPlace,
}

struct Row {
    what: &'static str,
    /// Changes to Podman's ADD environment (CNI_COMMAND included).
    env: ShimEnv,
    stdin: Stdin,
    target: Target,
    code: u64,
}

fn set(name: &str, value: &str) -> (String, Option<OsString>) {
    (name.to_string(), Some(OsString::from(value)))
}

fn set_bytes(name: &str, value: &[u8]) -> (String, Option<OsString>) {
    (name.to_string(), Some(OsString::from_vec(value.to_vec())))
}

fn unset(name: &str) -> (String, Option<OsString>) {
    (name.to_string(), None)
}

fn row(what: &'static str, env: ShimEnv, stdin: Stdin, code: u64) -> Row {
    Row {
        what,
        env,
        stdin,
        target: Target::Fresh,
        code,
    }
}

fn conf(extra: Value) -> Stdin {
    Stdin::Conf(extra)
}

fn ipam(extra: Value) -> Stdin {
    Stdin::Ipam(extra)
}

fn same() -> Stdin {
    Stdin::Conf(json!({}))
}

/// CNI_ARGS as Podman sends them plus `extra`.
fn args(extra: &str) -> (String, Option<OsString>) {
    set("CNI_ARGS", &format!("{};{extra}", podman_args("bad")))
}

/// `base` with `top` merged in (null removes) and then `ipam` merged into its ipam object.
fn merged(base: &Value, top: &Value, ipam: &Value) -> Value {
    let mut v = base.clone();
    for (k, val) in top.as_object().expect("rows give objects") {
        if val.is_null() {
            v.as_object_mut().expect("conf is an object").remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    for (k, val) in ipam.as_object().expect("rows give objects") {
        if val.is_null() {
            v["ipam"]
                .as_object_mut()
                .expect("ipam is an object")
                .remove(k);
        } else {
            v["ipam"][k] = val.clone();
        }
    }
    v
}

/// Everything a bad request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    allocations: Vec<Value>,
    host_veths: Vec<String>,
    holder_eth0: Vec<String>,
}

fn snapshot(host: &Host, holder: &Netns) -> Snapshot {
    Snapshot {
        allocations: ctl::allocations(host, &[]),
        host_veths: host.host_veths(),
        holder_eth0: addrs(holder.name(), "eth0"),
    }
}

fn table(host: &Host) -> Vec<Row> {
    let dir = host.dir();
    let regular_file = dir.join("not-a-netns");
    std::fs::write(&regular_file, "").expect("the host temp dir is writable");
    let regular_file = regular_file.to_str().expect("temp dir paths are UTF-8");
    let directory = dir.to_str().expect("temp dir paths are UTF-8");
    let missing_netns = "/run/netns/flatnet-test-no-such-netns";
    let nowhere = dir.join("no-daemon-here.sock");
    let nowhere = nowhere.to_str().expect("temp dir paths are UTF-8");

    let good = host.conf(json!({}));
    let good_text = good.to_string();
    let truncated = good_text.as_bytes()[..good_text.len() / 2].to_vec();
    let mut oversized = good.clone();
    oversized["padding"] = json!("x".repeat((1 << 20) + 100));
    let oversized = oversized.to_string().into_bytes();
    let mut deep = "[".repeat(500);
    deep.push_str(&"]".repeat(500));
    let deep = format!(r#"{{"cniVersion":"1.0.0","name":"flatnet","x":{deep}}}"#);
    let mut bad_utf8 = good_text
        .replace("flatnet-br0", "flatnet-br\u{1}")
        .into_bytes();
    let at = bad_utf8
        .iter()
        .position(|b| *b == 1)
        .expect("the marker is in the config");
    bad_utf8[at] = 0xff;

    let mut rows = vec![
        // --- CNI_COMMAND ---
        row("CNI_COMMAND missing", vec![unset("CNI_COMMAND")], same(), 4),
        row("CNI_COMMAND empty", vec![set("CNI_COMMAND", "")], same(), 4),
        row(
            "CNI_COMMAND unknown",
            vec![set("CNI_COMMAND", "FROB")],
            same(),
            4,
        ),
        row(
            "CNI_COMMAND lower case",
            vec![set("CNI_COMMAND", "add")],
            same(),
            4,
        ),
        // --- CNI_CONTAINERID ---
        row(
            "CNI_CONTAINERID missing",
            vec![unset("CNI_CONTAINERID")],
            same(),
            4,
        ),
        row(
            "CNI_CONTAINERID empty",
            vec![set("CNI_CONTAINERID", "")],
            same(),
            4,
        ),
        row(
            "CNI_CONTAINERID with '/'",
            vec![set("CNI_CONTAINERID", "abc/def")],
            same(),
            4,
        ),
        row(
            "CNI_CONTAINERID starting with '-'",
            vec![set("CNI_CONTAINERID", "-abc")],
            same(),
            4,
        ),
        row(
            "CNI_CONTAINERID with a space",
            vec![set("CNI_CONTAINERID", "abc def")],
            same(),
            4,
        ),
        row(
            "CNI_CONTAINERID not UTF-8",
            vec![set_bytes("CNI_CONTAINERID", b"abc\xffdef")],
            same(),
            4,
        ),
        // --- CNI_NETNS ---
        row("CNI_NETNS missing", vec![unset("CNI_NETNS")], same(), 4),
        row("CNI_NETNS empty", vec![set("CNI_NETNS", "")], same(), 4),
        row(
            "CNI_NETNS does not exist",
            vec![set("CNI_NETNS", missing_netns)],
            same(),
            4,
        ),
        row(
            "CNI_NETNS is a regular file",
            vec![set("CNI_NETNS", regular_file)],
            same(),
            4,
        ),
        row(
            "CNI_NETNS is a directory",
            vec![set("CNI_NETNS", directory)],
            same(),
            4,
        ),
        // --- CNI_IFNAME ---
        row("CNI_IFNAME missing", vec![unset("CNI_IFNAME")], same(), 4),
        row(
            "CNI_IFNAME 16 bytes long",
            vec![set("CNI_IFNAME", "eth0123456789012")],
            same(),
            4,
        ),
        row(
            "CNI_IFNAME with '/'",
            vec![set("CNI_IFNAME", "eth/0")],
            same(),
            4,
        ),
        row(
            "CNI_IFNAME with ':'",
            vec![set("CNI_IFNAME", "eth0:1")],
            same(),
            4,
        ),
        row(
            "CNI_IFNAME is '..'",
            vec![set("CNI_IFNAME", "..")],
            same(),
            4,
        ),
        // --- CNI_PATH ---
        row("CNI_PATH missing", vec![unset("CNI_PATH")], same(), 4),
        // --- CNI_ARGS ---
        row(
            "CNI_ARGS IP= not an address",
            vec![args("IP=10.87.1")],
            same(),
            4,
        ),
        row("CNI_ARGS IP= IPv6", vec![args("IP=fd00::5")], same(), 4),
        row(
            "CNI_ARGS IP= outside the range",
            vec![args("IP=10.87.2.5")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS IP= the gateway",
            vec![args("IP=10.87.1.1")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS IP= the broadcast address",
            vec![args("IP=10.87.1.255")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS IP= already taken",
            vec![args(&format!("IP={HELD_IP}"))],
            same(),
            100,
        ),
        row(
            "CNI_ARGS MAC= multicast",
            vec![args("MAC=01:00:5e:00:00:01")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS MAC= all zero",
            vec![args("MAC=00:00:00:00:00:00")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS MAC= five bytes",
            vec![args("MAC=02:11:22:33:44")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS MAC= not hex",
            vec![args("MAC=02:11:22:33:44:zz")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS unknown key without IgnoreUnknown",
            vec![set("CNI_ARGS", "K8S_POD_NAME=bad;FOO=bar")],
            same(),
            4,
        ),
        row(
            "CNI_ARGS element without '='",
            vec![set("CNI_ARGS", "IgnoreUnknown=1;novalue")],
            same(),
            4,
        ),
        // --- stdin that is not a JSON object ---
        row(
            "stdin not JSON",
            vec![],
            Stdin::Raw(b"hello, flatnet".to_vec()),
            6,
        ),
        row("stdin truncated JSON", vec![], Stdin::Raw(truncated), 6),
        row("stdin empty", vec![], Stdin::Raw(Vec::new()), 6),
        row("stdin larger than 1 MiB", vec![], Stdin::Raw(oversized), 6),
        row("stdin a JSON array", vec![], Stdin::Raw(b"[]".to_vec()), 6),
        row(
            "stdin nested 500 deep",
            vec![],
            Stdin::Raw(deep.into_bytes()),
            6,
        ),
        row("stdin not UTF-8", vec![], Stdin::Raw(bad_utf8), 6),
        row(
            "VERSION with stdin that is not JSON",
            vec![set("CNI_COMMAND", "VERSION")],
            Stdin::Raw(b"{not json".to_vec()),
            6,
        ),
        // --- wrong JSON types ---
        row(
            "cniVersion missing",
            vec![],
            conf(json!({"cniVersion": null})),
            7,
        ),
        row(
            "cniVersion a number",
            vec![],
            conf(json!({"cniVersion": 1.0})),
            7,
        ),
        row("name missing", vec![], conf(json!({"name": null})), 7),
        row("name a number", vec![], conf(json!({"name": 5})), 7),
        row(
            "name with a space",
            vec![],
            conf(json!({"name": "flat net"})),
            7,
        ),
        row(
            "type not flatnet",
            vec![],
            conf(json!({"type": "bridge"})),
            7,
        ),
        row("bridge a number", vec![], conf(json!({"bridge": 5})), 7),
        row("mtu a string", vec![], conf(json!({"mtu": "1500"})), 7),
        row("mtu too small", vec![], conf(json!({"mtu": 20})), 7),
        row(
            "isGateway a string",
            vec![],
            conf(json!({"isGateway": "yes"})),
            7,
        ),
        row("socket a number", vec![], conf(json!({"socket": 5})), 7),
        row(
            "ipam not an object",
            vec![],
            conf(json!({"ipam": "10.87.1.0/24"})),
            7,
        ),
        row(
            "ipam routes not a list",
            vec![],
            ipam(json!({"routes": {"dst": "0.0.0.0/0"}})),
            7,
        ),
        row(
            "ipam route without dst",
            vec![],
            ipam(json!({"routes": [{"gw": "10.87.1.1"}]})),
            7,
        ),
        row(
            "runtimeConfig ips not an address",
            vec![],
            conf(json!({"runtimeConfig": {"ips": ["nope"]}})),
            7,
        ),
        // --- versions ---
        row(
            "cniVersion 0.2.0",
            vec![],
            conf(json!({"cniVersion": "0.2.0"})),
            1,
        ),
        row(
            "cniVersion 9.9.9",
            vec![],
            conf(json!({"cniVersion": "9.9.9"})),
            1,
        ),
        row(
            "CHECK with cniVersion 0.3.1",
            vec![set("CNI_COMMAND", "CHECK")],
            conf(json!({"cniVersion": "0.3.1"})),
            1,
        ),
        row(
            "GC with cniVersion 1.0.0",
            vec![set("CNI_COMMAND", "GC")],
            same(),
            1,
        ),
        // --- subnets, ranges, gateways ---
        row(
            "subnet /33",
            vec![],
            ipam(json!({"subnet": "10.87.1.0/33"})),
            7,
        ),
        row(
            "subnet with host bits set",
            vec![],
            ipam(json!({"subnet": "10.87.1.5/24"})),
            7,
        ),
        row(
            "subnet IPv6",
            vec![],
            ipam(json!({"subnet": "fd00::/64"})),
            7,
        ),
        row(
            "subnet /31 (no room)",
            vec![],
            ipam(json!({"subnet": "10.87.1.0/31"})),
            7,
        ),
        row(
            "rangeStart after rangeEnd",
            vec![],
            ipam(json!({"rangeStart": "10.87.1.90", "rangeEnd": "10.87.1.80"})),
            7,
        ),
        row(
            "rangeEnd outside the subnet",
            vec![],
            ipam(json!({"rangeEnd": "10.87.2.10"})),
            7,
        ),
        row(
            "rangeStart the network address",
            vec![],
            ipam(json!({"rangeStart": "10.87.1.0"})),
            7,
        ),
        row(
            "gateway outside the subnet",
            vec![],
            ipam(json!({"gateway": "10.87.2.1"})),
            7,
        ),
        row(
            "gateway the broadcast address",
            vec![],
            ipam(json!({"gateway": "10.87.1.255"})),
            7,
        ),
        row(
            "range holding only the gateway",
            vec![],
            ipam(json!({"rangeStart": "10.87.1.1", "rangeEnd": "10.87.1.1"})),
            7,
        ),
        row(
            "both subnet and ranges",
            vec![],
            ipam(json!({"ranges": [[{"subnet": "10.87.1.0/24"}]]})),
            7,
        ),
        row(
            "two ranges",
            vec![],
            ipam(
                json!({"subnet": null, "ranges": [[{"subnet": "10.87.1.0/24"}, {"subnet": "10.87.2.0/24"}]]}),
            ),
            7,
        ),
        // --- bridge names ---
        row(
            "bridge name 16 bytes long",
            vec![],
            conf(json!({"bridge": "flatnet-bridge-0"})),
            7,
        ),
        row(
            "bridge name with '/'",
            vec![],
            conf(json!({"bridge": "flat/net"})),
            7,
        ),
        row(
            "bridge name with the fn- prefix",
            vec![],
            conf(json!({"bridge": "fn-12345678"})),
            7,
        ),
        row(
            "bridge name of a sub-bridge",
            vec![],
            conf(json!({"bridge": "fnb-612493-3"})),
            7,
        ),
        // --- unsupported ---
        row(
            "ipam type host-local",
            vec![],
            ipam(json!({"type": "host-local"})),
            7,
        ),
        row(
            "ipMasq not a boolean",
            vec![],
            conf(json!({"ipMasq": "yes"})),
            7,
        ),
        // --- state ---
        row(
            "pool exhausted (1-address range in use)",
            vec![],
            ipam(json!({"rangeStart": SINGLE_IP, "rangeEnd": SINGLE_IP})),
            100,
        ),
        row(
            "GC without cni.dev/valid-attachments",
            vec![set("CNI_COMMAND", "GC")],
            conf(json!({"cniVersion": "1.1.0"})),
            7,
        ),
        row(
            "daemon socket that nobody listens on",
            vec![],
            conf(json!({"socket": nowhere})),
            11,
        ),
    ];
    rows.push(Row {
        what: "second ADD for the same container in another netns",
        env: vec![],
        stdin: same(),
        target: Target::HolderElsewhere,
        code: 101,
    });
    rows.push(Row {
        what: "second ADD for the same container asking for another IP",
        env: vec![args("IP=10.87.1.51")],
        stdin: same(),
        target: Target::HolderInPlace,
        code: 101,
    });
    rows
}

#[test]
fn every_bad_input_gets_its_exact_code_and_changes_nothing() {
    require_root();
    let host = Host::start();
    let good = host.conf(json!({}));

    // Allowed state the table runs against: one container holding HELD_IP, one holding the only
    // address of a one-address range.
    let holder = host.container("holder");
    let held = host
        .add_with_args(&holder, &format!("IP={HELD_IP}"), &good)
        .result();
    assert_eq!(result_ip(&held), HELD_IP, "{held:#}");
    let single = host.container("single");
    let tiny = merged(
        &good,
        &json!({}),
        &json!({"rangeStart": SINGLE_IP, "rangeEnd": SINGLE_IP}),
    );
    assert_eq!(result_ip(&host.add_ok(&single, &tiny)), SINGLE_IP);

    // One namespace every row targets; it must keep only `lo` throughout.
    let target = host.container("target");
    let control = |when: &str| {
        // The unchanged ADD works, so each row below fails for its one change alone.
        let env = podman_add_env("control", &target.path(), "control");
        let out = run_shim(
            &format!("control ADD {when}"),
            &env,
            good.to_string().as_bytes(),
        );
        out.result();
        let del = with_env(&env, &vec![("CNI_COMMAND".into(), Some("DEL".into()))]);
        run_shim(
            &format!("control DEL {when}"),
            &del,
            good.to_string().as_bytes(),
        )
        .assert_ok_empty();
        // DEL leaves no eth0 when it answers; the pair it set aside goes right after.
        assert!(!link_exists(target.name(), "eth0"));
        assert!(
            poll(DEL_SETTLE, || non_lo_links(target.name()).is_empty()),
            "{:?} left after DEL",
            non_lo_links(target.name())
        );
    };
    control("before the table");

    let before = snapshot(&host, &holder);
    assert_eq!(before.allocations.len(), 2, "{:#?}", before.allocations);
    let rows = table(&host);
    assert!(rows.len() >= 40, "the issue asks for at least 40 cases");

    let mut failures = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let (container_id, netns) = match r.target {
            // A fresh, valid container id per row: nothing it does can hide behind another row.
            Target::Fresh => (container_id_for(&format!("bad-{i}")), target.path()),
            Target::HolderElsewhere => (holder.container_id().to_string(), target.path()),
            Target::HolderInPlace => (holder.container_id().to_string(), holder.path()),
        };
        let env = with_env(&podman_add_env(&container_id, &netns, "bad"), &r.env);
        let stdin = match &r.stdin {
            Stdin::Conf(top) => merged(&good, top, &json!({})).to_string().into_bytes(),
            Stdin::Ipam(extra) => merged(&good, &json!({}), extra).to_string().into_bytes(),
            Stdin::Raw(bytes) => bytes.clone(),
        };
        let out = run_shim(&format!("row {i} ({})", r.what), &env, &stdin);
        let got = if out.status == 0 { None } else { out.code() };
        if out.status == 0 || got != Some(r.code) || out.msg().is_empty() {
            failures.push(format!(
                "row {i} {:?}: expected code {}, got {got:?}\n{out}",
                r.what, r.code
            ));
        }
        let after = snapshot(&host, &holder);
        assert_eq!(
            after, before,
            "row {i} {:?} changed the daemon's or the kernel's state\n{out}",
            r.what
        );
        assert_eq!(
            non_lo_links(target.name()),
            Vec::<String>::new(),
            "row {i} {:?} left an interface in the target namespace\n{out}",
            r.what
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows got the wrong code:\n\n{}\n\nflatnetd log:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n"),
        host.daemon_log()
    );

    control("after the table");
    assert_eq!(snapshot(&host, &holder), before);
    eprintln!("{} bad-input rows, each with its exact code", rows.len());
}
