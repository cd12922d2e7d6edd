//! Runs the real `flatnetctl` against a test host's daemon.

use crate::{binary, Host};
use serde_json::Value;
use std::process::{Command, Output};

/// Runs `flatnetctl --socket <host socket> ARGS...`.
pub fn flatnetctl(host: &Host, args: &[&str]) -> Output {
    Command::new(binary("flatnetctl"))
        .arg("--socket")
        .arg(host.socket_path())
        .args(args)
        .output()
        .expect("flatnetctl runs")
}

/// `flatnetctl allocations --json [ARGS...]`, parsed; panics with the output if it fails.
pub fn allocations(host: &Host, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "allocations"];
    all.extend_from_slice(args);
    let out = flatnetctl(host, &all);
    assert!(
        out.status.success(),
        "flatnetctl {all:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(list)) => list,
        other => panic!("flatnetctl --json allocations printed {other:?}"),
    }
}
