//! Running a plugin binary as a runtime does, and reading what it printed. [`Shim`] is the one way
//! the tests and the benchmark start the shim (or a reference plugin): a cleared environment
//! holding `PATH` and the variables given, the arguments, stdin written byte for byte.

use crate::{binary, output_within, CNI_PATH, PATH, SHIM_TIMEOUT};
use serde_json::Value;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};

/// One invocation of a plugin binary, built up before it runs.
#[derive(Debug, Clone)]
pub struct Shim {
    binary: PathBuf,
    env: Vec<(String, OsString)>,
    args: Vec<String>,
}

impl Shim {
    /// `binary` with only `PATH` in its environment.
    pub fn new(binary: impl Into<PathBuf>) -> Shim {
        Shim {
            binary: binary.into(),
            env: vec![("PATH".into(), PATH.into())],
            args: Vec::new(),
        }
    }

    /// The project's `flatnet` (see [`binary`]).
    pub fn flatnet() -> Shim {
        Shim::new(binary("flatnet"))
    }

    /// Sets `name` (replacing an earlier value).
    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Shim {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// Leaves `name` unset.
    pub fn unset(mut self, name: &str) -> Shim {
        self.env.retain(|(n, _)| n != name);
        self
    }

    /// The CNI variables of one call as Podman 4 sets them: `CNI_NETNS` only when `netns` is given,
    /// `CNI_PATH` as Podman sends it (override it with [`Shim::env`]).
    pub fn cni(
        self,
        command: &str,
        container_id: &str,
        ifname: &str,
        netns: Option<&str>,
        args: &str,
    ) -> Shim {
        let shim = self
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", CNI_PATH);
        match netns {
            Some(netns) => shim.env("CNI_NETNS", netns),
            None => shim.unset("CNI_NETNS"),
        }
    }

    /// Command-line arguments (netavark's `flatnet setup NETNS` and the like).
    pub fn args(mut self, args: &[&str]) -> Shim {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The command, not started (for a caller that times it itself).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env_clear().args(&self.args);
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd
    }

    /// Runs it with `stdin`; `Err` with what it printed if it runs longer than the shim's own
    /// deadline allows.
    pub fn output(&self, stdin: &[u8]) -> Result<Output, String> {
        output_within(&mut self.command(), stdin, SHIM_TIMEOUT)
    }

    /// Runs it with `stdin` and reads what it printed; panics, naming `what`, if it hangs or
    /// prints anything but protocol JSON on stdout.
    pub fn run(&self, what: impl Into<String>, stdin: &[u8]) -> CniOutput {
        let what = what.into();
        let out = self
            .output(stdin)
            .unwrap_or_else(|e| panic!("shim hung: {what}: {e}"));
        CniOutput::from_output(what, out)
    }
}

/// What one shim invocation produced.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// `CNI_COMMAND` and container, for messages.
    pub what: String,
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    pub stdout: String,
    /// `stdout` parsed as JSON, when it is non-empty.
    pub json: Option<Value>,
    pub stderr: String,
}

impl std::fmt::Display for CniOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: exit {}\nstdout: {}\nstderr: {}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl CniOutput {
    /// The CNI error code in stdout, if stdout is a CNI error.
    /// What a shim run printed; panics if stdout is anything but empty or one JSON document
    /// (only protocol JSON may go there).
    pub fn from_output(what: String, out: Output) -> CniOutput {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = if stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&stdout).unwrap_or_else(|e| {
                panic!("shim stdout is not JSON ({e}); only protocol JSON may go there\n{what}\nstdout: {stdout}\nstderr: {stderr}")
            }))
        };
        CniOutput {
            what,
            status: out.status.code().unwrap_or(-1),
            stdout,
            json,
            stderr,
        }
    }

    pub fn code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// Asserts exit 0 and returns self.
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.status, 0, "expected success\n{self}");
        self
    }

    /// Asserts exit 0 with nothing on stdout (DEL, CHECK).
    pub fn assert_ok_empty(&self) {
        self.assert_ok();
        assert!(
            self.stdout.trim().is_empty(),
            "expected empty stdout\n{self}"
        );
    }

    /// Asserts exit 0 and returns the result JSON.
    pub fn result(&self) -> Value {
        self.assert_ok();
        self.json
            .clone()
            .unwrap_or_else(|| panic!("expected a result JSON on stdout\n{self}"))
    }

    /// Asserts a CNI error (non-zero exit, JSON with a numeric `code` and a non-empty `msg`) and
    /// returns its code.
    pub fn assert_cni_error(&self) -> u64 {
        assert_ne!(self.status, 0, "expected a CNI error\n{self}");
        let code = self.code().unwrap_or_else(|| {
            panic!("a failing plugin must print error JSON with a code\n{self}")
        });
        let msg = self
            .json
            .as_ref()
            .and_then(|j| j["msg"].as_str())
            .unwrap_or("");
        assert!(!msg.is_empty(), "CNI error without msg\n{self}");
        code
    }

    /// Asserts a CNI error with exactly `code`.
    pub fn assert_code(&self, code: u64) {
        assert_eq!(
            self.assert_cni_error(),
            code,
            "wrong CNI error code\n{self}"
        );
    }

    /// The error message (empty when there is none).
    pub fn msg(&self) -> String {
        self.json
            .as_ref()
            .and_then(|j| j["msg"].as_str())
            .unwrap_or("")
            .to_string()
    }
}

/// Podman's CNI_ARGS for a container without `--ip`/`--mac-address`.
pub fn podman_args(label: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAME={label}")
}

/// `conf` with `prevResult` set, as runtimes send it for CHECK and DEL.
pub fn with_prev_result(conf: &Value, result: &Value) -> Value {
    let mut conf = conf.clone();
    conf["prevResult"] = result.clone();
    conf
}

/// `ips[0].address` of a result ("10.87.1.2/24").
pub fn result_cidr(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no ips[0].address: {result:#}"))
        .to_string()
}

/// The result's IPv6 address ("fd87:1::2/64").
pub fn result_cidr6(result: &Value) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("result has no IPv6 address: {result:#}"))
        .to_string()
}

/// `ips[0].address` without the prefix length ("10.87.1.2").
pub fn result_ip(result: &Value) -> String {
    let cidr = result_cidr(result);
    cidr.split('/').next().unwrap_or(&cidr).to_string()
}

/// The host-side veth, `interfaces[1].name`.
pub fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no interfaces[1].name: {result:#}"))
        .to_string()
}
