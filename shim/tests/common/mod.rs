//! What the shim's integration tests share: the Podman 4.3.1 ADD as captured, a runner for the real
//! binary with a clean environment, the "one JSON document on stdout" check, and a temp dir.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};

use flatnet_tests::Shim;
use serde_json::Value;

/// Podman 4.3.1's ADD as captured: the CNI_* variables, then `stdin: ...`.
const PODMAN_ADD: &str = include_str!("../../../tests/fixtures/podman-4.3.1/03-ADD.txt");

/// The captured ADD's environment variable `key`.
pub fn podman_add_env(key: &str) -> &'static str {
    PODMAN_ADD
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("{key} is not in the capture"))
        .1
}

/// The captured ADD's variables.
fn podman_add_vars() -> impl Iterator<Item = (&'static str, &'static str)> {
    let vars = PODMAN_ADD.lines().filter_map(|l| l.split_once('='));
    vars.filter(|(k, _)| k.starts_with("CNI_"))
}

/// The captured ADD's stdin with a `socket` key, so no test ever talks to a real daemon.
pub fn add_stdin(socket: &str) -> Vec<u8> {
    let stdin = PODMAN_ADD.lines().find_map(|l| l.strip_prefix("stdin: "));
    let mut conf: Value = serde_json::from_str(stdin.expect("the capture has stdin")).unwrap();
    conf["socket"] = socket.into();
    serde_json::to_vec(&conf).unwrap()
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
    let shim = podman_add_vars().fold(Shim::new(env!("CARGO_BIN_EXE_flatnet")), |shim, (k, v)| {
        shim.env(k, v)
    });
    let shim = changes.iter().fold(shim, |shim, (k, v)| match v {
        Some(v) => shim.env(k, v),
        None => shim.unset(k),
    });
    let out = shim.output(stdin).expect("the shim finishes");
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
