//! flatnetd's request logs: one line per request with its fields (verb, container id, network,
//! address, duration) and the request id the shim generated, as text, as JSON, and to journald.

use flatnet_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The request id the shim printed with its error ("... [request ID]: error ...").
fn request_id_in(stderr: &str) -> String {
    let start = stderr
        .find("[request ")
        .unwrap_or_else(|| panic!("no request id in the shim's stderr: {stderr}"))
        + "[request ".len();
    let len = stderr[start..]
        .find(']')
        .expect("the request id ends with ]");
    stderr[start..start + len].to_string()
}

/// ADD of `db` asking for the address `web` holds: the daemon refuses it with code 100, and the
/// shim prints its request id on stderr.
fn failing_add(host: &Host, web_ip: &str, db: &Netns, conf: &Value) -> String {
    let out = host.add_with_args(db, &format!("IP={web_ip}"), conf);
    out.assert_code(100);
    request_id_in(&out.stderr)
}

#[test]
fn text_log_lines_carry_request_fields_and_the_shims_request_id() {
    require_root();
    let host = Host::start();
    let web = host.container("web");
    let db = host.container("db");
    let conf = host.conf(json!({}));
    let web_ip = result_ip(&host.add_ok(&web, &conf));
    let id = failing_add(&host, &web_ip, &db, &conf);
    host.del(&web, &conf).assert_ok_empty();

    let log = host.daemon_log();
    let line_of = |needles: &[&str]| {
        log.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no log line with all of {needles:?} in:\n{log}"))
            .to_string()
    };
    // The refused ADD: the shim's request id, the container, the verb and the code.
    let refused = line_of(&[&format!("request_id=\"{id}\"")]);
    for want in [
        "verb=\"ADD\"",
        &format!("container_id={}", db.container_id()),
        "network=\"flatnet\"",
        "code=100",
        "duration_ms=",
        "failed",
    ] {
        assert!(refused.contains(want), "{want} missing from: {refused}");
    }
    // The ADD and the DEL that worked: address, network and duration, and a request id.
    for verb in ["ADD", "DEL"] {
        let line = line_of(&[
            &format!("verb=\"{verb}\""),
            &format!("container_id={}", web.container_id()),
            " ok ",
        ]);
        for want in [
            format!("address=\"{web_ip}/24\""),
            "network=\"flatnet\"".to_string(),
            "ifname=eth0".to_string(),
            "duration_ms=".to_string(),
        ] {
            assert!(line.contains(&want), "{want} missing from: {line}");
        }
        assert!(!line.contains("request_id=\"-\""), "no request id: {line}");
    }
}

#[test]
fn json_log_lines_carry_request_fields_and_the_shims_request_id() {
    require_root();
    let host = Host::start_with_args(&["--log-format", "json"]);
    let web = host.container("web");
    let db = host.container("db");
    let conf = host.conf(json!({}));
    let web_ip = result_ip(&host.add_ok(&web, &conf));
    let id = failing_add(&host, &web_ip, &db, &conf);

    let lines: Vec<Value> = host
        .daemon_log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refused = lines
        .iter()
        .find(|l| l["fields"]["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no line with request_id {id}: {lines:#?}"));
    assert_eq!(refused["fields"]["verb"], "ADD", "{refused:#}");
    assert_eq!(refused["fields"]["code"], 100, "{refused:#}");
    assert_eq!(
        refused["fields"]["container_id"],
        db.container_id(),
        "{refused:#}"
    );
    assert_eq!(refused["level"], "WARN", "{refused:#}");
    let added = lines
        .iter()
        .find(|l| l["fields"]["message"] == "ok" && l["fields"]["verb"] == "ADD")
        .unwrap_or_else(|| panic!("no ADD line: {lines:#?}"));
    let f = &added["fields"];
    assert_eq!(f["container_id"], web.container_id(), "{added:#}");
    assert_eq!(f["network"], "flatnet", "{added:#}");
    assert_eq!(f["address"], format!("{web_ip}/24"), "{added:#}");
    assert!(
        f["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{added:#}"
    );
    assert!(
        f["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty() && r != "-"),
        "{added:#}"
    );
}

/// One journald native-protocol datagram: `NAME=value\n`, or `NAME\n` + 64-bit little-endian
/// length + value + `\n` for values that may hold newlines.
fn journal_fields(datagram: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let nl = rest.iter().position(|b| *b == b'\n').expect("field ends");
        let head = &rest[..nl];
        if let Some(eq) = head.iter().position(|b| *b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&head[..eq]).into_owned(),
                String::from_utf8_lossy(&head[eq + 1..]).into_owned(),
            );
            rest = &rest[nl + 1..];
        } else {
            let len_bytes: [u8; 8] = rest[nl + 1..nl + 9].try_into().expect("length");
            let len = u64::from_le_bytes(len_bytes) as usize;
            let value = &rest[nl + 9..nl + 9 + len];
            fields.insert(
                String::from_utf8_lossy(head).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
            rest = &rest[nl + 9 + len + 1..];
        }
    }
    fields
}

/// A flatnetd started by the test itself (not by the harness), SIGTERMed and reaped on drop.
struct OwnDaemon(Child);

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = Command::new("busybox")
            .args(["kill", "-TERM", &self.0.id().to_string()])
            .status();
        if !poll(Duration::from_secs(5), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts flatnetd in the host's namespace (replacing the harness's daemon, same socket and state)
/// in a mount namespace of its own where `/run/systemd/journal` is the test's directory holding a
/// datagram socket the test reads: journald as flatnetd sees it, without touching the machine's.
fn daemon_with_journal(host: &Host, journal_stream: bool) -> (OwnDaemon, UnixDatagram, String) {
    host.stop_daemon();
    let dir = host.dir().join("journal");
    std::fs::create_dir_all(&dir).unwrap();
    let journal = UnixDatagram::bind(dir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = host.dir().join("own-daemon.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    // `ip netns exec` runs the command in a new mount namespace whose mounts do not propagate
    // back; the tmpfs hides the machine's /run/systemd from this daemon only.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.netns().name(), "sh", "-c"])
        .arg(
            "set -e; mount -t tmpfs -o mode=0755 flatnet-test /run/systemd; \
             mkdir /run/systemd/journal; mount --bind \"$1\" /run/systemd/journal; shift; exec \"$@\"",
        )
        .arg("sh")
        .arg(&dir)
        .arg(binary("flatnetd"))
        .arg("--socket")
        .arg(host.socket_path())
        .arg("--state-dir")
        .arg(host.dir().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if journal_stream {
        // What systemd sets when it connects stderr to the journal.
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let daemon = OwnDaemon(cmd.spawn().unwrap());
    let socket = host.socket_path();
    assert!(
        poll(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        }),
        "flatnetd did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (daemon, journal, log.display().to_string())
}

/// Every datagram that arrives within `wait`, until `done` says enough.
fn read_journal(
    journal: &UnixDatagram,
    wait: Duration,
    mut done: impl FnMut(&[BTreeMap<String, String>]) -> bool,
) -> Vec<BTreeMap<String, String>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let until = Instant::now() + wait;
    while Instant::now() < until && !done(&got) {
        if let Ok(n) = journal.recv(&mut buf) {
            if n > 0 {
                got.push(journal_fields(&buf[..n]));
            }
        }
    }
    got
}

#[test]
fn logs_go_to_journald_when_its_socket_exists() {
    require_root();
    if !std::path::Path::new("/run/systemd").is_dir() {
        // Nothing to mount the test's journal over without creating directories on the machine.
        unmet("needs a /run/systemd directory to stand in journald's socket (Debian's systemd package creates it)");
    }
    for journal_stream in [false, true] {
        let host = Host::start();
        let web = host.container("web");
        let db = host.container("db");
        let conf = host.conf(json!({}));
        let (daemon, journal, log) = daemon_with_journal(&host, journal_stream);
        let web_ip = result_ip(&host.add_ok(&web, &conf));
        let id = failing_add(&host, &web_ip, &db, &conf);

        let entries = read_journal(&journal, Duration::from_secs(10), |got| {
            got.iter()
                .any(|e| e.get("REQUEST_ID").map(String::as_str) == Some(id.as_str()))
        });
        let refused = entries
            .iter()
            .find(|e| e.get("REQUEST_ID") == Some(&id))
            .unwrap_or_else(|| panic!("request {id} not in the journal: {entries:#?}"));
        assert_eq!(refused["VERB"], "ADD", "{refused:#?}");
        assert_eq!(refused["CODE"], "100", "{refused:#?}");
        assert_eq!(refused["CONTAINER_ID"], db.container_id(), "{refused:#?}");
        assert_eq!(refused["SYSLOG_IDENTIFIER"], "flatnetd", "{refused:#?}");
        // warn → priority 4
        assert_eq!(refused["PRIORITY"], "4", "{refused:#?}");
        let added = entries
            .iter()
            .find(|e| e.get("MESSAGE").map(String::as_str) == Some("ok"))
            .unwrap_or_else(|| panic!("the ADD is not in the journal: {entries:#?}"));
        assert_eq!(added["ADDRESS"], format!("{web_ip}/24"), "{added:#?}");
        assert_eq!(added["NETWORK"], "flatnet", "{added:#?}");

        drop(daemon);
        let stderr = std::fs::read_to_string(&log).unwrap();
        if journal_stream {
            // stderr is the journal already: nothing written twice.
            assert!(
                !stderr.contains(&id),
                "logged to stderr too although it is the journal:\n{stderr}"
            );
        } else {
            assert!(
                stderr.contains(&format!("request_id=\"{id}\"")),
                "stderr should still carry the log:\n{stderr}"
            );
        }
    }
}

/// The shim's phase times: with `FLATNET_TIMINGS=1` one line on stderr after the reply (stdout
/// still carries only the result), with the request id flatnetd logs; without it, nothing.
#[test]
fn shim_writes_its_phase_times_only_when_asked() {
    require_root();
    let host = Host::start();
    let web = host.container("web");
    let conf = host.conf(json!({}));
    let quiet = host.add(&web, &conf);
    quiet.assert_ok();
    assert!(quiet.stderr.trim().is_empty(), "stderr: {}", quiet.stderr);
    host.del(&web, &conf).assert_ok_empty();

    let path = web.path();
    let timed = |command: &str| {
        Shim::flatnet()
            .cni(
                command,
                web.container_id(),
                "eth0",
                Some(path.as_str()),
                &podman_args(web.label()),
            )
            .env("FLATNET_TIMINGS", "1")
            .run(
                format!("{command} with timings"),
                conf.to_string().as_bytes(),
            )
    };
    let add = timed("ADD");
    let result = add.result();
    assert!(result["ips"][0]["address"].is_string(), "{result}");
    let del = timed("DEL");
    del.assert_ok_empty();

    let log = host.daemon_log();
    for out in [&add, &del] {
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {}", out.stderr);
        let line = lines[0];
        assert!(line.starts_with("flatnet timings [request "), "{line}");
        let id = request_id_in(line);
        assert!(
            log.contains(&format!("request_id=\"{id}\"")),
            "flatnetd logged no request {id}:\n{log}"
        );
        let value = |name: &str| -> f64 {
            line.split(' ')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .parse()
                .unwrap_or_else(|e| panic!("{name} in {line}: {e}"))
        };
        let phases = ["parse", "connect", "call", "print"];
        let sum: f64 = phases.iter().map(|p| value(p)).sum();
        assert!(phases.iter().all(|p| value(p) >= 0.0), "{line}");
        // The phases follow one another inside main, so together they are at most main.
        assert!(sum <= value("main") + 0.01, "{line}");
        assert!(value("call") > 0.0, "{line}");
    }
}
