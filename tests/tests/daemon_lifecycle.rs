//! The daemon's life around the requests: reconcile at start (after a stop, a crash, a reboot), the
//! periodic sweep, DELs while the daemon is down (the spool), who may talk to it, a stuck client,
//! and CNI 1.1 GC and STATUS. Each test runs its own namespaced host with the real `flatnetd` and
//! drives the real `flatnet` shim as Podman does. Without root they fail, saying what is
//! missing.

use flatnet_tests::*;
use serde_json::{json, Value};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GATEWAY_CIDR: &str = "10.87.1.1/24";

fn host() -> Host {
    require_root();
    Host::start()
}

/// `ip -n NS ARGS...`, which must succeed.
fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A link named like one of flatnet's host veths that no allocation owns (what a crash between
/// creating a veth and recording its allocation leaves). A veth pair, as the kernel here has no
/// dummy driver; its peer is named so that it is not flatnet's.
fn stray_link(ns: &str, name: &str) {
    let peer = format!("stray{}", &name[3..]);
    ip(
        ns,
        &["link", "add", name, "type", "veth", "peer", "name", &peer],
    );
}

/// Container ids holding an address, sorted.
fn holders(host: &Host) -> Vec<String> {
    let mut ids: Vec<String> = ctl::allocations(host, &[])
        .iter()
        .map(|a| a["containerId"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The DEL spool of the host's daemon (next to its socket).
fn spool_dir(host: &Host) -> PathBuf {
    host.dir().join("pending-del")
}

/// Names in a directory, sorted (empty when it does not exist).
fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A flatnetd started by the test itself on the host's socket and state dir, with extra flags and
/// environment the harness does not pass. The harness's own daemon is stopped first. SIGTERMed
/// (then SIGKILLed) and reaped on drop; its log is printed when the test fails.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(host: &Host, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        host.stop_daemon();
        let log = host.dir().join("flatnetd-custom.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("daemon log opens");
        let socket = host.socket_path();
        let child = Command::new("ip")
            .args(["netns", "exec", host.netns().name()])
            .arg(binary("flatnetd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(host.dir().join("state"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("flatnetd starts");
        let mut daemon = Daemon {
            child: Some(child),
            log,
        };
        let ready = poll(Duration::from_secs(10), || {
            UnixStream::connect(&socket).is_ok()
        });
        assert!(ready, "flatnetd did not come up:\n{}", daemon.log());
        if let Some(status) = daemon
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("flatnetd exited with {status}:\n{}", daemon.log());
        }
        daemon
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait for it to exit.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("busybox")
            .args(["kill", "-TERM", &child.id().to_string()])
            .status();
        let exited = poll(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- test-started flatnetd log -----\n{}", self.log());
        }
        self.terminate();
    }
}

#[test]
fn restart_reconciles_the_kernel_with_the_store() {
    let host = host();
    let h = host.netns().name().to_string();
    let conf = host.conf(json!({}));
    let kept = host.container("kept");
    let gone = host.container("gone");
    let kept_result = host.add_ok(&kept, &conf);
    let gone_result = host.add_ok(&gone, &conf);
    let kept_veth = result_host_veth(&kept_result);
    let gone_veth = result_host_veth(&gone_result);

    host.stop_daemon();
    // While the daemon is away: a container goes, a stray fn-* link appears, the bridge is deleted.
    gone.delete();
    assert!(
        poll(Duration::from_secs(5), || !link_exists(&h, &gone_veth)),
        "`ip netns del` should take the host veth with it"
    );
    stray_link(&h, "fn-deadbeef");
    ip(&h, &["link", "del", "flatnet-br0"]);
    assert_eq!(master_of(&h, &kept_veth), None);

    host.restart_daemon();

    assert!(
        is_up(&h, "flatnet-br0"),
        "bridge not recreated: {:#?}",
        links(&h)
    );
    assert_eq!(addrs(&h, "flatnet-br0"), vec![GATEWAY_CIDR.to_string()]);
    assert_eq!(
        master_of(&h, &kept_veth).as_deref(),
        Some("flatnet-br0"),
        "the kept veth should be back on the bridge"
    );
    host.check(&kept, &with_prev_result(&conf, &kept_result))
        .assert_ok_empty();
    // The kept container is reachable again through the recreated bridge.
    let ip_kept = result_ip(&kept_result);
    let reached = poll(Duration::from_secs(5), || {
        host.netns()
            .exec(&[
                "busybox", "timeout", "2", "busybox", "ping", "-c", "1", &ip_kept,
            ])
            .status
            .success()
    });
    assert!(reached, "host cannot reach {ip_kept} after reconcile");
    assert_eq!(holders(&host), vec![kept.container_id().to_string()]);
    assert_eq!(host.host_veths(), vec![kept_veth]);
    let log = host.daemon_log();
    assert!(
        log.contains("reconciled: kept 1, released 1, links removed 1"),
        "summary line missing:\n{log}"
    );

    // The released address is free again: the pool has room for a new container.
    let next = host.container("next");
    host.add_ok(&next, &conf);
}

#[test]
fn allocations_of_an_earlier_boot_are_released_at_start() {
    let host = host();
    let conf = host.conf(json!({}));
    let old = host.container("old");
    let daemon = Daemon::start(
        &host,
        &[],
        &[("FLATNET_BOOT_ID", "flatnet-test-earlier-boot")],
    );
    let result = host.add_ok(&old, &conf);
    let allocs = ctl::allocations(&host, &[]);
    assert_eq!(allocs.len(), 1, "{allocs:#?}");
    assert_eq!(allocs[0]["bootId"], "flatnet-test-earlier-boot");
    daemon.stop();

    // The real boot id: everything recorded above is from "another boot".
    host.restart_daemon();
    assert_eq!(holders(&host), Vec::<String>::new());
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
    assert_eq!(
        non_lo_links(old.name()),
        Vec::<String>::new(),
        "the container end goes with the host veth"
    );
    // The same address can be handed out again.
    let ip = result_ip(&result);
    let again = host.container("again");
    let out = host.add_with_args(&again, &format!("IP={ip}"), &conf);
    assert_eq!(result_ip(&out.result()), ip);
}

#[test]
fn periodic_sweep_releases_what_went_away() {
    let host = host();
    let h = host.netns().name().to_string();
    let conf = host.conf(json!({}));
    let _daemon = Daemon::start(&host, &["--sweep-interval", "1"], &[]);
    let stays = host.container("stays");
    let goes = host.container("goes");
    let stays_result = host.add_ok(&stays, &conf);
    host.add_ok(&goes, &conf);

    goes.delete();
    stray_link(&h, "fn-0badf00d");
    let stays_veth = result_host_veth(&stays_result);
    let settled = poll(Duration::from_secs(15), || {
        holders(&host) == vec![stays.container_id().to_string()]
            && host.host_veths() == vec![stays_veth.clone()]
    });
    assert!(
        settled,
        "after 15 s: holders {:?}, fn-* links {:?}",
        holders(&host),
        host.host_veths()
    );
    host.check(&stays, &with_prev_result(&conf, &stays_result))
        .assert_ok_empty();
}

#[test]
fn sweeps_never_take_an_add_half_way() {
    let host = host();
    let conf = host.conf(json!({}));
    let _daemon = Daemon::start(&host, &["--sweep-interval", "1"], &[]);
    let containers: Vec<Netns> = (0..40).map(|i| host.container(&format!("s{i}"))).collect();
    let started = Instant::now();
    // Three rounds of 40 ADDs and 40 DELs with 8 in parallel, while a sweep runs every second.
    while started.elapsed() < Duration::from_secs(3) {
        for_each_parallel(&containers, 8, |c| {
            host.add_ok(c, &conf);
        });
        let mut veths = host.host_veths();
        veths.sort();
        assert_eq!(holders(&host).len(), 40);
        assert_eq!(veths.len(), 40, "{veths:?}");
        for_each_parallel(&containers, 8, |c| host.del(c, &conf).assert_ok_empty());
        assert_eq!(holders(&host), Vec::<String>::new());
    }
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
}

#[test]
fn del_while_the_daemon_is_down_is_applied_when_it_is_back() {
    let host = host();
    let conf = host.conf(json!({}));
    let c = host.container("late");
    let result = host.add_ok(&c, &conf);
    let veth = result_host_veth(&result);

    host.stop_daemon();
    let out = host.del(&c, &with_prev_result(&conf, &result));
    out.assert_ok_empty();
    assert!(out.stderr.contains("recorded in"), "{out}");
    let spool = spool_dir(&host);
    assert_eq!(dir_names(&spool).len(), 1, "one spooled DEL");
    assert_eq!(
        fs::metadata(&spool).expect("spool").permissions().mode() & 0o777,
        0o700
    );
    // A repeated DEL replaces the same file.
    host.del(&c, &with_prev_result(&conf, &result))
        .assert_ok_empty();
    assert_eq!(dir_names(&spool).len(), 1);
    // Next to it, garbage that the daemon must set aside, not choke on.
    fs::write(
        spool.join("0123456789abcdef.json"),
        "{\"format\": 1, \"trunc",
    )
    .expect("write");
    // While the daemon is down, ADD still fails fast with code 11 and spools nothing.
    let other = host.container("other");
    host.add(&other, &conf).assert_code(11);

    host.restart_daemon();
    assert_eq!(holders(&host), Vec::<String>::new());
    assert!(
        link_gone_eventually(host.netns().name(), &veth),
        "veth survived"
    );
    assert!(
        poll(DEL_SETTLE, || non_lo_links(c.name()).is_empty()),
        "{:?}",
        non_lo_links(c.name())
    );
    assert_eq!(dir_names(&spool), vec!["rejected".to_string()]);
    assert_eq!(dir_names(&spool.join("rejected")).len(), 1);
    // And the daemon serves on.
    host.add_ok(&other, &conf);
}

#[test]
fn del_spooled_while_running_is_applied_by_the_sweep() {
    let host = host();
    let conf = host.conf(json!({}));
    let c = host.container("c");
    let _daemon = Daemon::start(&host, &["--sweep-interval", "1"], &[]);
    let result = host.add_ok(&c, &conf);
    // As the shim writes it when the daemon did not answer (the daemon itself is fine).
    let spool = spool_dir(&host);
    fs::create_dir_all(&spool).expect("spool dir");
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o700)).expect("chmod");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let entry = json!({
        "format": 1, "network": "flatnet", "container_id": c.container_id(), "ifname": "eth0",
        "netns": c.path(), "args": podman_args(c.label()), "path": "/opt/cni/bin",
        "config": with_prev_result(&conf, &result).to_string(), "spooled_unix_ms": now_ms + 1000,
    });
    let name = spool_file_name("flatnet", c.container_id(), "eth0");
    fs::write(spool.join(&name), entry.to_string()).expect("write");
    let applied = poll(Duration::from_secs(10), || {
        holders(&host).is_empty() && dir_names(&spool).is_empty()
    });
    assert!(
        applied,
        "holders {:?}, spool {:?}",
        holders(&host),
        dir_names(&spool)
    );
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
}

/// The spool file name the shim uses (FNV-1a 64 of network, container id and interface).
fn spool_file_name(network: &str, container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(&[
        network.as_bytes(),
        container_id.as_bytes(),
        ifname.as_bytes(),
    ]);
    format!("{h:016x}.json")
}

/// Runs the shim as uid/gid 65534 with Podman's environment for `command` on `c`.
fn shim_as_nobody(command: &str, c: &Netns, conf: &Value) -> (i32, Value, String) {
    let flatnet = binary("flatnet");
    let out = Shim::new("setpriv")
        .args(&["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(&[flatnet.to_str().expect("the binary's path is UTF-8")])
        .cni(
            command,
            c.container_id(),
            "eth0",
            Some(&c.path()),
            &podman_args(c.label()),
        )
        .env("CNI_PATH", "/opt/cni/bin")
        .output(conf.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "shim as nobody printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn only_root_may_talk_to_the_daemon() {
    let host = host();
    let conf = host.conf(json!({}));
    let mine = host.container("mine");
    host.add_ok(&mine, &conf);
    let before = ctl::allocations(&host, &[]);

    // The socket's mode is the first gate; open it up to reach the second (SO_PEERCRED).
    fs::set_permissions(host.dir(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    fs::set_permissions(host.socket_path(), fs::Permissions::from_mode(0o666)).expect("chmod sock");

    let intruder = host.container("intruder");
    let (status, json, stderr) = shim_as_nobody("ADD", &intruder, &conf);
    assert_ne!(status, 0);
    assert_eq!(json["code"], 5, "{json}\nstderr: {stderr}");
    let msg = json["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("flatnetd accepts requests from root only (caller uid 65534)"),
        "{msg}"
    );

    // A refused DEL is an error, not something to spool for later.
    let (status, json, _) = shim_as_nobody("DEL", &mine, &conf);
    assert_ne!(status, 0);
    assert_eq!(json["code"], 5, "{json}");
    assert!(
        !spool_dir(&host).exists(),
        "a refused DEL must not be spooled"
    );

    // flatnetctl as nobody is refused too.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(binary("flatnetctl"))
        .arg("--socket")
        .arg(host.socket_path())
        .arg("allocations")
        .output()
        .expect("flatnetctl runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("root only"), "{text}");

    assert_eq!(ctl::allocations(&host, &[]), before, "nothing changed");
    assert_eq!(non_lo_links(intruder.name()), Vec::<String>::new());
}

#[test]
fn a_stuck_client_does_not_stall_the_others() {
    let host = host();
    let conf = host.conf(json!({}));
    let socket = host.socket_path();
    // One connection that sent the HTTP/2 preface and half a frame, one that sent nothing, and one
    // that finished the handshake and then went quiet: all held open.
    let mut half = UnixStream::connect(&socket).expect("connect");
    half.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00")
        .expect("write");
    let _silent = UnixStream::connect(&socket).expect("connect");
    let mut headers_only = UnixStream::connect(&socket).expect("connect");
    headers_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("write");

    let c = host.container("busy");
    let started = Instant::now();
    let result = host.add_ok(&c, &conf);
    host.del(&c, &with_prev_result(&conf, &result))
        .assert_ok_empty();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ADD + DEL took {:?} with stuck clients around",
        started.elapsed()
    );
    drop(half);
    drop(headers_only);
}

#[test]
fn gc_and_status_speak_cni_1_1() {
    let host = host();
    let h = host.netns().name().to_string();
    let conf = host.conf(json!({
        "cniVersion": "1.1.0",
        "ipam": {"subnet": "10.87.1.0/24", "rangeStart": "10.87.1.10", "rangeEnd": "10.87.1.11",
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }));
    let status = |conf: &Value| host.cni("STATUS", None, "", "", "", conf);
    status(&conf).assert_ok_empty();

    let keep = host.container("keep");
    let drop_me = host.container("drop");
    let keep_result = host.add_ok(&keep, &conf);
    let drop_result = host.add_ok(&drop_me, &conf);
    // The two addresses of the range are taken: the network cannot serve an ADD.
    let full = status(&conf);
    full.assert_code(50);
    assert!(full.msg().contains("no free address"), "{full}");

    // A stray fn-* link on the bridge, and one elsewhere that this network's GC leaves alone.
    stray_link(&h, "fn-0badc0de");
    ip(&h, &["link", "set", "fn-0badc0de", "master", "flatnet-br0"]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": keep.container_id(), "ifname": "eth0"}]);
    host.cni("GC", None, "", "", "", &gc).assert_ok_empty();

    assert_eq!(holders(&host), vec![keep.container_id().to_string()]);
    assert_eq!(
        sorted(host.host_veths()),
        vec![result_host_veth(&keep_result)],
        "GC leaves only what valid-attachments names"
    );
    assert!(link_gone_eventually(&h, &result_host_veth(&drop_result)));
    status(&conf).assert_ok_empty();

    // The versions and keys GC needs.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    host.cni("GC", None, "", "", "", &old).assert_code(1);
    host.cni("GC", None, "", "", "", &conf).assert_code(7);
    let mut old_status = conf.clone();
    old_status["cniVersion"] = json!("1.0.0");
    status(&old_status).assert_code(1);
}

/// A small tmpfs mounted over `dir` by exact path; unmounted (lazily, as the daemon may still hold
/// files in it) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&dir).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn status_is_51_when_the_state_disk_is_full() {
    let host = host();
    let conf = host.conf(json!({"cniVersion": "1.1.0"}));
    host.stop_daemon();
    let state = Tmpfs::mount(host.dir().join("state"), "4m");
    let daemon = Daemon::start(&host, &["--sweep-interval", "0"], &[]);
    host.cni("STATUS", None, "", "", "", &conf)
        .assert_ok_empty();

    // Fill the state disk to the last byte.
    let mut fill = fs::File::create(state.0.join("fill")).expect("create");
    let chunk = vec![0u8; 64 * 1024];
    while fill.write_all(&chunk).is_ok() {}
    while fill.write_all(&chunk[..512]).is_ok() {}
    drop(fill);

    // The next write the database makes durable fails; STATUS says the daemon cannot serve.
    let mut last = None;
    for _ in 0..50 {
        let out = host.cni("STATUS", None, "", "", "", &conf);
        if out.status != 0 {
            last = Some(out);
            break;
        }
    }
    let out = last.expect("STATUS kept answering ok on a full disk");
    out.assert_code(51);
    assert!(out.msg().contains("state database"), "{out}");

    // An ADD on that disk fails and leaves nothing behind.
    let c = host.container("nospace");
    let add = host.add(&c, &conf);
    add.assert_cni_error();
    assert_eq!(host.host_veths(), Vec::<String>::new(), "{add}");
    assert_eq!(non_lo_links(c.name()), Vec::<String>::new(), "{add}");
    drop(daemon);
}
