//! Runs the real `flatnet` binary the way Podman does (a clean environment holding only CNI_*
//! variables, the config on stdin) for everything the shim answers without a daemon: VERSION, bad
//! input, and a daemon that is not there. Needs neither root nor flatnetd.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use common::{add_stdin, assert_error, run, TempDir};

const ALL_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn version_answers_the_requested_version() {
    // Exactly what Podman 4.3.1 sends (tests/fixtures/podman-4.3.1/01-VERSION.txt).
    let run = run(
        &[
            ("CNI_COMMAND", Some("VERSION")),
            ("CNI_CONTAINERID", Some("")),
            ("CNI_ARGS", Some("")),
            ("CNI_NETNS", Some("dummy")),
            ("CNI_IFNAME", Some("dummy")),
            ("CNI_PATH", Some("dummy")),
        ],
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert_eq!(run.code, Some(0), "stderr {:?}", run.stderr);
    assert_eq!(
        run.json(),
        serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": ALL_VERSIONS})
    );
    assert!(
        run.stderr.is_empty(),
        "no diagnostics on success: {:?}",
        run.stderr
    );
}

#[test]
fn version_with_empty_stdin_answers_the_latest() {
    let run = run(&[("CNI_COMMAND", Some("VERSION"))], b"");
    assert_eq!(run.code, Some(0), "stderr {:?}", run.stderr);
    assert_eq!(
        run.json(),
        serde_json::json!({"cniVersion": "1.1.0", "supportedVersions": ALL_VERSIONS})
    );
}

#[test]
fn missing_command_is_code_4() {
    let run = run(&[("CNI_COMMAND", None)], &add_stdin("/nonexistent"));
    assert_error(&run, 4, "1.1.0", &["CNI_COMMAND is not set"]);
}

#[test]
fn bad_json_is_code_6() {
    let run = run(&[], b"{\"cniVersion\": \"1.0.0\",");
    assert_error(&run, 6, "1.1.0", &["JSON", "EOF while parsing"]);
}

#[test]
fn oversized_stdin_is_code_6() {
    let mut stdin = add_stdin("/nonexistent");
    stdin.resize(2 << 20, b' ');
    let run = run(&[], &stdin);
    assert_error(&run, 6, "1.1.0", &["larger than 1 MiB"]);
}

#[test]
fn unsupported_version_is_code_1() {
    let run = run(
        &[],
        br#"{"cniVersion":"0.2.0","name":"n","type":"flatnet"}"#,
    );
    assert_error(&run, 1, "1.1.0", &["\"0.2.0\" is not supported", "1.1.0"]);
}

#[test]
fn check_with_0_3_1_is_code_1() {
    let run = run(
        &[("CNI_COMMAND", Some("CHECK"))],
        br#"{"cniVersion":"0.3.1","name":"n","type":"flatnet","socket":"/nonexistent"}"#,
    );
    assert_error(&run, 1, "0.3.1", &["CHECK", "0.4.0"]);
}

#[test]
fn add_without_container_id_is_code_4() {
    let run = run(&[("CNI_CONTAINERID", None)], &add_stdin("/nonexistent"));
    assert_error(&run, 4, "1.0.0", &["CNI_CONTAINERID is not set"]);
}

#[test]
fn bad_ifname_is_code_4() {
    let run = run(
        &[("CNI_IFNAME", Some("eth0/../x"))],
        &add_stdin("/nonexistent"),
    );
    assert_error(
        &run,
        4,
        "1.0.0",
        &["CNI_IFNAME", "not a valid interface name"],
    );
}

#[test]
fn malformed_cni_args_is_code_4() {
    let run = run(
        &[("CNI_ARGS", Some("IP=10.87.1"))],
        &add_stdin("/nonexistent"),
    );
    assert_error(&run, 4, "1.0.0", &["CNI_ARGS", "10.87.1"]);
}

#[test]
fn missing_socket_is_code_11_naming_it() {
    let dir = TempDir::new();
    let socket = dir.socket("flatnetd.sock");
    let run = run(&[], &add_stdin(&socket));
    assert_error(
        &run,
        11,
        "1.0.0",
        &[
            &format!("not reachable at {socket} (connect: the socket does not exist)"),
            "systemctl start flatnetd.socket",
            &format!("flatnetd --socket {socket}"),
        ],
    );
}

#[test]
fn socket_without_listener_is_code_11() {
    let dir = TempDir::new();
    let socket = dir.socket("flatnetd.sock");
    // Binding and dropping leaves the socket file behind with nobody accepting on it.
    drop(UnixListener::bind(&socket).expect("bind a Unix socket"));
    assert!(dir.path().join("flatnetd.sock").exists());
    let run = run(&[], &add_stdin(&socket));
    assert_error(
        &run,
        11,
        "1.0.0",
        &[
            &format!("{socket} (connect: Connection refused)"),
            "systemctl start flatnetd.socket",
        ],
    );
}

#[test]
fn del_without_daemon_is_spooled_and_succeeds() {
    // DEL comes without a namespace when the container is already gone. With no daemon it is
    // recorded next to the socket for flatnetd to apply later, and the runtime sees success.
    let dir = TempDir::new();
    let socket = dir.socket("flatnetd.sock");
    let stdin = add_stdin(&socket);
    let run = run(
        &[("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", Some(""))],
        &stdin,
    );
    assert_eq!(run.code, Some(0), "stderr {:?}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout {:?}", run.stdout);
    assert!(
        run.stderr.contains("recorded in"),
        "stderr {:?}",
        run.stderr
    );

    let spool = dir.path().join(flatnet_proto::spool::DIR_NAME);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&spool), 0o700);
    let files: Vec<_> = std::fs::read_dir(&spool)
        .expect("spool dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);
    let entry = flatnet_proto::spool::parse(&std::fs::read(&files[0]).expect("read"))
        .expect("a well-formed spool file");
    assert_eq!(entry.network, "dumpnet");
    assert_eq!(entry.netns, "");
    assert_eq!(entry.ifname, "eth0");
    assert_eq!(entry.config.as_bytes(), &stdin[..]);
    assert!(files[0].ends_with(entry.file_name()));

    // ADD without a daemon is still code 11, and is not spooled.
    let add = run_add(&stdin);
    assert_error(&add, 11, "1.0.0", &[&socket]);
    assert_eq!(std::fs::read_dir(&spool).expect("spool dir").count(), 1);
}

fn run_add(stdin: &[u8]) -> common::Run {
    common::run(&[], stdin)
}

/// The shim starts without std's runtime (see main.rs): it still turns a reader that went away
/// into an error it reports, rather than being killed by SIGPIPE.
#[test]
fn a_stdout_nobody_reads_is_an_error_not_a_signal() {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [0; 2];
    // SAFETY: pipe() fills the two fds it is given; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let mut cmd = flatnet_tests::Shim::flatnet()
        .env("CNI_COMMAND", "VERSION")
        .command();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the shim starts");
    child.stdin.take().unwrap().write_all(b"{}").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        None,
        "killed by a signal; stderr {stderr:?}"
    );
    assert_eq!(out.status.code(), Some(1), "stderr {stderr:?}");
    assert!(
        stderr.contains("cannot write the reply to stdout"),
        "{stderr:?}"
    );
}
