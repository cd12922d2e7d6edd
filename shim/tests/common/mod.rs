//! What the shim's integration tests share: the Podman 4.3.1 ADD as captured, a runner for the real
//! binary with a clean environment, the "one JSON document on stdout" check, and a temp dir.
#![allow(dead_code)] // each test file uses a different part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// The environment of Podman 4.3.1's ADD (tests/fixtures/podman-4.3.1/03-ADD.txt).
pub const PODMAN_ADD_ENV: &[(&str, &str)] = &[
    (
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=dumpc1;MAC=02:11:22:33:44:55;IP=10.254.7.50",
    ),
    ("CNI_COMMAND", "ADD"),
    (
        "CNI_CONTAINERID",
        "f47cbc8ea4d048b993bd5fc1e304e6733ddb27cf6838d9a0813e786bfb6954c1",
    ),
    ("CNI_IFNAME", "eth0"),
    (
        "CNI_NETNS",
        "/run/netns/netns-6dd92020-1af2-572b-cf27-7feaef562d93",
    ),
    ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
];

/// The stdin of that ADD, with a `socket` key (`{socket}`) so no test ever talks to a real daemon.
const PODMAN_ADD_STDIN: &str = r#"{"bridge":"dumpbr0","capabilities":{"ips":true},"cniVersion":"1.0.0","ipam":{"routes":[{"dst":"0.0.0.0/0"}],"subnet":"10.254.7.0/24","type":"host-local"},"isGateway":true,"name":"dumpnet","socket":"{socket}","type":"dumpcni"}"#;

/// The Podman ADD stdin pointing at `socket`.
pub fn add_stdin(socket: &str) -> Vec<u8> {
    PODMAN_ADD_STDIN.replace("{socket}", socket).into_bytes()
}

/// What one run of the shim produced.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// stdout as its one JSON document (fails the test unless there is exactly one).
    pub fn json(&self) -> Value {
        one_json_document(&self.stdout)
    }
}

/// Runs the shim with only the Podman ADD variables, `changes` applied (`None` removes one).
pub fn run(changes: &[(&str, Option<&str>)], stdin: &[u8]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flatnet"));
    cmd.env_clear();
    for (key, value) in PODMAN_ADD_ENV {
        if !changes.iter().any(|(k, _)| k == key) {
            cmd.env(key, value);
        }
    }
    for (key, value) in changes {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the shim binary runs");
    let mut pipe = child.stdin.take().expect("stdin was piped");
    // The shim may stop reading early (oversized stdin) and exit; a broken pipe is fine then.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let out = child.wait_with_output().expect("the shim finishes");
    Run {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// stdout must be exactly one JSON document (white space around it is fine).
pub fn one_json_document(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let mut docs = serde_json::Deserializer::from_slice(stdout).into_iter::<Value>();
    let first = docs
        .next()
        .unwrap_or_else(|| panic!("stdout holds no JSON document: {text:?}"))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}"));
    assert!(
        docs.next().is_none(),
        "stdout holds more than one JSON document: {text:?}"
    );
    first
}

/// Asserts a CNI error: exit 1, one JSON document with the code and cniVersion, a msg containing
/// each of `parts`, and the same message with a request id on stderr.
pub fn assert_error(run: &Run, code: u64, version: &str, parts: &[&str]) -> Value {
    let json = run.json();
    assert_eq!(run.code, Some(1), "exit code; stdout {json}");
    assert_eq!(json["code"], code, "stdout {json}");
    assert_eq!(json["cniVersion"], version, "stdout {json}");
    let msg = json["msg"].as_str().expect("msg is a string");
    for part in parts {
        assert!(msg.contains(part), "msg {msg:?} should contain {part:?}");
    }
    assert!(
        run.stderr.contains(msg) && run.stderr.contains("[request "),
        "stderr should repeat the error with a request id: {:?}",
        run.stderr
    );
    json
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flatnet-shim-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the dir, as the UTF-8 string a config's `socket` key needs.
    pub fn socket(&self, name: &str) -> String {
        self.0
            .join(name)
            .into_os_string()
            .into_string()
            .expect("temp paths are UTF-8 here")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
