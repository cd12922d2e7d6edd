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

/// The routes of a `flatnetctl --json routes` answer as (name, address, port, state).
pub fn route_rows(table: &Value) -> Vec<(String, String, u64, String)> {
    let field = |r: &Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
    table["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let port = r["port"].as_u64().unwrap_or_default();
            (
                field(r, "name"),
                field(r, "address"),
                port,
                field(r, "state"),
            )
        })
        .collect()
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

/// Runs `flatnetctl --socket <host socket> ARGS...` and returns its stdout; panics with the output
/// unless it succeeds.
pub fn flatnetctl_ok(host: &Host, args: &[&str]) -> String {
    let out = flatnetctl(host, args);
    assert!(
        out.status.success(),
        "flatnetctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `flatnetctl --json ARGS...`, parsed; panics with the output if it fails or is not JSON.
pub fn json(host: &Host, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = flatnetctl_ok(host, &all);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("flatnetctl {all:?} printed non-JSON ({e}):\n{text}"))
}

/// `flatnetctl ARGS...` started in the background (for `watch`), stdout and stderr piped.
pub fn spawn_flatnetctl(host: &Host, args: &[&str]) -> std::process::Child {
    Command::new(binary("flatnetctl"))
        .arg("--socket")
        .arg(host.socket_path())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flatnetctl starts")
}

/// A running `flatnetctl watch`, killed on drop if it is still running.
pub struct Watch {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    seen_stderr: Vec<String>,
}

impl Watch {
    /// Starts `flatnetctl ARGS...` (a `watch` command) and returns once it says it is watching:
    /// the daemon has subscribed it, so every change from here on reaches it.
    pub fn start(host: &Host, args: &[&str]) -> Watch {
        let mut child = spawn_flatnetctl(host, args);
        let stderr = child.stderr.take().expect("stderr was configured as piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch {
            child,
            stderr: rx,
            seen_stderr: Vec::new(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match watch.stderr.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("watching allocation events");
                    watch.seen_stderr.push(line);
                    if ready {
                        return watch;
                    }
                }
                Err(_) => panic!(
                    "flatnetctl {args:?} did not start watching within 10 s; stderr:\n{}",
                    watch.seen_stderr.join("\n")
                ),
            }
        }
    }

    /// Waits up to `timeout` for the watch to exit; returns its exit status, stdout and stderr.
    /// Panics (after killing it) if it is still running then.
    pub fn finish(
        mut self,
        timeout: std::time::Duration,
    ) -> (std::process::ExitStatus, String, String) {
        use std::io::Read;
        let status = crate::poll(timeout, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !status {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let mut out = String::new();
            if let Some(mut s) = self.child.stdout.take() {
                let _ = s.read_to_string(&mut out);
            }
            panic!(
                "flatnetctl watch still running after {timeout:?}; stdout so far:\n{out}\nstderr:\n{}",
                self.stderr_text()
            );
        }
        let status = self.child.wait().expect("the watch has exited");
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let err = self.stderr_text();
        (status, out, err)
    }

    fn stderr_text(&mut self) -> String {
        // The reader thread ends at EOF, which follows the exit; give it a moment.
        while let Ok(line) = self
            .stderr
            .recv_timeout(std::time::Duration::from_millis(500))
        {
            self.seen_stderr.push(line);
        }
        self.seen_stderr.join("\n")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
