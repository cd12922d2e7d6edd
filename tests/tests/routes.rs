//! The route table the HTTP gateway follows (`flatnetctl routes`, `Inspect.ListRoutes`): a named
//! container is routed by its name and its network aliases, to its address and the port its first
//! TCP port mapping names (80 without one); a route is up once the port accepts TCP, down when it
//! stops; DEL takes the routes away before it answers; a restarted daemon routes every attachment
//! again; a reader can wait for the next change.

use flatnet_tests::ctl::{flatnetctl_ok, route_rows, spawn_flatnetctl};
use flatnet_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn host() -> Host {
    require_root();
    Host::start()
}

/// `flatnetctl --json routes`: the revision and the routes.
fn routes(host: &Host) -> (u64, Vec<Value>) {
    let v: Value = serde_json::from_str(&flatnetctl_ok(host, &["--json", "routes"]))
        .expect("flatnetctl --json routes prints JSON");
    let revision = v["revision"].as_u64().expect("a revision");
    (
        revision,
        v["routes"].as_array().cloned().unwrap_or_default(),
    )
}

/// (name, address, port, state) of every route.
fn table(host: &Host) -> Vec<(String, String, u64, String)> {
    let v: Value = serde_json::from_str(&flatnetctl_ok(host, &["--json", "routes"]))
        .expect("flatnetctl --json routes prints JSON");
    route_rows(&v)
}

/// Waits (at most `limit`) until every route is in `state`; how long that took.
fn all_become(host: &Host, state: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    assert!(
        poll(limit, || {
            let t = table(host);
            !t.is_empty() && t.iter().all(|r| r.3 == state)
        }),
        "not all {state} within {limit:?}: {:?}",
        table(host)
    );
    start.elapsed()
}

fn httpd(host: &Host, c: &Netns, port: u16) -> Background {
    let www = host.dir().join(format!("www-{}", c.label()));
    c.serve_page(&www, &port.to_string(), "hello\n")
}

#[test]
fn a_named_container_is_routed_by_name_and_alias_while_its_port_answers() {
    let host = host();
    let mut conf = host.conf(json!({}));
    conf["runtimeConfig"] = json!({
        "aliases": {"flatnet": ["api"]},
        "portMappings": [{"hostPort": 9090, "containerPort": 8080, "protocol": "tcp"}],
    });
    let c = host.container("web");
    let ip = result_ip(&host.add_ok(&c, &conf));
    let t = table(&host);
    let names: Vec<&str> = t.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["api", "web"], "{t:?}");
    assert!(
        t.iter()
            .all(|r| r.1 == ip && r.2 == 8080 && r.3 == "probing"),
        "{t:?}"
    );

    // The server comes up after the attachment: the routes are up within a few probes.
    let server = httpd(&host, &c, 8080);
    let took = all_become(&host, "up", Duration::from_secs(2));
    eprintln!("routes up {took:?} after the server started");
    assert_eq!(
        http_get(host.netns(), &format!("http://{ip}:8080/")),
        "hello\n"
    );

    // The server stops: down (two failed tries a second apart).
    drop(server);
    all_become(&host, "down", Duration::from_secs(5));

    // A restarted daemon routes what it holds again, and finds the port answering.
    let _server = httpd(&host, &c, 8080);
    host.stop_daemon();
    host.start_daemon_again();
    all_become(&host, "up", Duration::from_secs(2));

    // DEL takes the routes away before it answers.
    host.del(&c, &conf).assert_ok_empty();
    assert_eq!(table(&host), Vec::new());
}

#[test]
fn port_80_by_default_and_no_route_without_a_name() {
    let host = host();
    let conf = host.conf(json!({"cniVersion": "1.1.0"}));
    let named = host.container("plain");
    let ip = result_ip(&host.add_ok(&named, &conf));
    let unnamed = host.container("nameless");
    host.cni(
        "ADD",
        Some(&unnamed),
        unnamed.container_id(),
        "eth0",
        "IgnoreUnknown=1",
        &conf,
    )
    .assert_ok();
    assert_eq!(
        table(&host),
        vec![("plain".to_string(), ip, 80, "probing".to_string())]
    );
    // Nothing listens: still probing (down only after 30 s), and GC's release withdraws it.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": unnamed.container_id(), "ifname": "eth0"}]);
    host.cni("GC", None, "", "", "", &gc).assert_ok_empty();
    assert_eq!(table(&host), Vec::new());
}

#[test]
fn a_reader_waiting_past_a_revision_hears_of_the_next_change_at_once() {
    let host = host();
    let conf = host.conf(json!({}));
    let (revision, _) = routes(&host);
    let waiting = spawn_flatnetctl(
        &host,
        &[
            "--json",
            "routes",
            "--after",
            &revision.to_string(),
            "--wait-ms",
            "20000",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let c = host.container("late");
    let added = Instant::now();
    host.add_ok(&c, &conf);
    let out = waiting.wait_with_output().expect("flatnetctl ends");
    let waited = added.elapsed();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["revision"].as_u64().unwrap() > revision, "{v}");
    assert_eq!(v["routes"][0]["name"], "late", "{v}");
    assert!(
        waited < Duration::from_secs(2),
        "the wait ended {waited:?} after the ADD"
    );
    // Without a change the wait ends after wait-ms with the same revision.
    let (now, _) = routes(&host);
    let started = Instant::now();
    let same = flatnetctl_ok(
        &host,
        &[
            "--json",
            "routes",
            "--after",
            &now.to_string(),
            "--wait-ms",
            "300",
        ],
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let v: Value = serde_json::from_str(&same).unwrap();
    assert_eq!(v["revision"].as_u64(), Some(now));
}

#[test]
fn the_route_table_over_http_holds_only_names_addresses_ports_and_states_and_long_polls() {
    require_root();
    const LISTEN: &str = "127.0.0.1:18787";
    let host = Host::start_with_args(&["--routes-listen", LISTEN]);
    let conf = host.conf(json!({}));
    let url = format!("http://{LISTEN}/routes");
    let first: Value = serde_json::from_str(&http_get(host.netns(), &url)).unwrap();
    assert_eq!(first["routes"], json!([]), "{first}");
    let revision = first["revision"].as_u64().unwrap();

    // A long poll past that revision answers once a container is attached.
    let c = host.container("web");
    let ns = host.netns().name().to_string();
    let polled = format!("{url}?after={revision}&wait=10000");
    let waiting = std::thread::spawn(move || {
        let start = Instant::now();
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns, "busybox", "wget", "-q", "-O", "-", &polled,
            ])
            .output()
            .unwrap();
        (
            start.elapsed(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let ip = result_ip(&host.add_ok(&c, &conf));
    let (waited, text) = waiting.join().unwrap();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    let table: Value = serde_json::from_str(&text).unwrap();
    assert!(table["revision"].as_u64().unwrap() > revision, "{table}");
    assert_eq!(
        table["routes"],
        json!([{"name": "web", "address": ip, "port": 80, "state": "probing"}]),
        "nothing but name, address, port and state"
    );
    // Without a change, the wait ends with the same revision.
    let now = table["revision"].as_u64().unwrap();
    let same: Value = serde_json::from_str(&http_get(
        host.netns(),
        &format!("{url}?after={now}&wait=200"),
    ))
    .unwrap();
    assert_eq!(same["revision"].as_u64(), Some(now));
    host.del(&c, &conf).assert_ok_empty();
}

#[test]
fn the_route_table_listens_elsewhere_than_loopback_only_when_told() {
    require_root();
    let host = Host::start();
    host.stop_daemon();
    let flatnetd = binary("flatnetd");
    let out = host
        .netns()
        .exec_command(&[flatnetd.to_str().unwrap()])
        .args(["--routes-listen", "0.0.0.0:18788", "--socket"])
        .arg(host.dir().join("other.sock"))
        .arg("--state-dir")
        .arg(host.dir().join("other-state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--routes-public"), "{err}");
}
