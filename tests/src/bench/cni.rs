//! Running a CNI plugin exactly as a runtime does (cleared environment, CNI_* variables, the
//! network config on stdin) and timing only that: from spawn to exit, with the config already
//! serialised. Flatnet's shim and the reference `bridge` go through the same code. Also the
//! verification that follows every timed ADD and DEL (outside the timed region), and the failure
//! counts that must stay at zero.

use super::{grpc, sys};
use crate::Shim;
use flatnet_proto::v1::Command as CniCommand;
use serde_json::Value;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Upper bound for one plugin run; the watchdog kills it after that.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Failures of one side of the comparison. Messages of the first few are kept for the report.
#[derive(Default)]
pub struct Tally {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub verify_failures: AtomicU64,
    messages: Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, msg: String) {
        let mut m = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() < 5 {
            m.push(msg);
        }
    }

    pub fn fail(&self, msg: String) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.note(msg);
    }

    pub fn verify_fail(&self, msg: String) {
        self.verify_failures.fetch_add(1, Ordering::SeqCst);
        self.note(msg);
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    pub fn verify_failures(&self) -> u64 {
        self.verify_failures.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One finished process.
pub struct Exec {
    pub elapsed: Duration,
    pub success: bool,
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

static WATCHED: Mutex<Vec<(u32, Instant, bool)>> = Mutex::new(Vec::new());
static WATCHDOG: OnceLock<()> = OnceLock::new();

/// One thread for the whole run that SIGKILLs (by pid) a plugin still running past its deadline.
fn start_watchdog() {
    WATCHDOG.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
            for (pid, deadline, killed) in watched.iter_mut() {
                if !*killed && now > *deadline {
                    sys::send_signal(*pid, sys::SIGKILL);
                    *killed = true;
                }
            }
        });
    });
}

/// Spawns `cmd`, writes `stdin`, waits for it; the time covers exactly spawn → exit.
pub fn run_timed(cmd: &mut Command, stdin: &[u8]) -> Exec {
    start_watchdog();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Exec {
                elapsed: started.elapsed(),
                success: false,
                status: format!("cannot start {cmd:?}: {e}"),
                stdout: Vec::new(),
                stderr: Vec::new(),
            }
        }
    };
    let pid = child.id();
    WATCHED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((pid, started + CALL_LIMIT, false));
    let mut input = child.stdin.take().expect("stdin was configured as piped");
    // A plugin that exits without reading stdin gives EPIPE here; its exit status tells why.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output();
    let elapsed = started.elapsed();
    let killed = {
        let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
        let i = watched.iter().position(|(p, _, _)| *p == pid);
        i.map(|i| watched.swap_remove(i).2).unwrap_or(false)
    };
    match out {
        Ok(out) => Exec {
            elapsed,
            success: out.status.success() && !killed,
            status: if killed {
                format!("killed after {CALL_LIMIT:?}")
            } else {
                out.status.to_string()
            },
            stdout: out.stdout,
            stderr: out.stderr,
        },
        Err(e) => Exec {
            elapsed,
            success: false,
            status: format!("waiting failed: {e}"),
            stdout: Vec::new(),
            stderr: Vec::new(),
        },
    }
}

/// One container interface as the runtime names it.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// CNI_NETNS
    pub netns: PathBuf,
    pub container_id: String,
    /// K8S_POD_NAME in CNI_ARGS (Podman's container name).
    pub name: String,
    pub ifname: String,
}

/// A CNI plugin binary and the failures seen running it.
pub struct Plugin {
    /// "Flatnet" or "reference".
    pub label: &'static str,
    pub binary: PathBuf,
    cni_path: String,
    pub tally: Tally,
}

/// The address an ADD handed out: `ips[0]` and the interface it belongs to.
#[derive(Clone, Debug)]
pub struct Added {
    pub result: Value,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub ifname: String,
    /// The IPv6 address (CIDR) on a dual-stack network.
    pub ip6: Option<String>,
}

impl Added {
    fn parse(result: Value) -> Result<Added, String> {
        let cidr = result["ips"][0]["address"]
            .as_str()
            .ok_or("result has no ips[0].address")?;
        let (ip, prefix) = cidr.split_once('/').ok_or("address without prefix")?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("address {cidr}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("address {cidr}: {e}"))?;
        let index = result["ips"][0]["interface"]
            .as_u64()
            .ok_or("ips[0] has no interface index")?;
        let ifname = result["interfaces"][index as usize]["name"]
            .as_str()
            .ok_or("ips[0].interface names no interface")?
            .to_string();
        let ip6 = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str())
            .find(|a| a.contains(':'))
            .map(str::to_string);
        Ok(Added {
            result,
            ip,
            prefix,
            ifname,
            ip6,
        })
    }
}

impl Plugin {
    pub fn new(label: &'static str, binary: PathBuf, cni_path: String) -> Plugin {
        Plugin {
            label,
            binary,
            cni_path,
            tally: Tally::default(),
        }
    }

    fn command(&self, command: &str, a: &Attachment) -> Command {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAME={}", a.name);
        Shim::new(&self.binary)
            .cni(
                command,
                &a.container_id,
                &a.ifname,
                Some(a.netns.to_str().expect("namespace paths are UTF-8")),
                &args,
            )
            .env("CNI_PATH", &self.cni_path)
            .command()
    }

    fn failed(&self, command: &str, a: &Attachment, e: &Exec) -> String {
        format!(
            "{} {command} {}/{}: {}; stdout: {}; stderr: {}",
            self.label,
            a.name,
            a.ifname,
            e.status,
            String::from_utf8_lossy(&e.stdout).trim(),
            String::from_utf8_lossy(&e.stderr).trim()
        )
    }

    /// Timed ADD; `None` (counted as a failure) unless it exits 0 with a usable result.
    pub fn add(&self, a: &Attachment, conf: &[u8]) -> Option<(Duration, Added)> {
        self.add_with_env(a, conf, &[])
            .map(|(d, added, _)| (d, added))
    }

    /// [`Plugin::add`] with more environment variables, also returning what it wrote to stderr.
    pub fn add_with_env(
        &self,
        a: &Attachment,
        conf: &[u8],
        env: &[(&str, &str)],
    ) -> Option<(Duration, Added, String)> {
        let mut cmd = self.command("ADD", a);
        cmd.envs(env.iter().copied());
        self.tally.calls.fetch_add(1, Ordering::SeqCst);
        let e = run_timed(&mut cmd, conf);
        if !e.success {
            self.tally.fail(self.failed("ADD", a, &e));
            return None;
        }
        let parsed = serde_json::from_slice::<Value>(&e.stdout)
            .map_err(|err| format!("result is not JSON: {err}"))
            .and_then(Added::parse);
        match parsed {
            Ok(added) => Some((
                e.elapsed,
                added,
                String::from_utf8_lossy(&e.stderr).into_owned(),
            )),
            Err(msg) => {
                self.tally
                    .fail(format!("{}: {msg}", self.failed("ADD", a, &e)));
                None
            }
        }
    }

    /// A timed ADD (with `env` set too) of `a`, verified, then a DEL with its result as
    /// `prevResult`, verified (untimed): the ADD's time and what it wrote to stderr.
    pub fn add_then_del(
        &self,
        a: &Attachment,
        conf: &Value,
        env: &[(&str, &str)],
    ) -> Option<(Duration, String)> {
        let (took, added, stderr) = self.add_with_env(a, conf.to_string().as_bytes(), env)?;
        self.verify_added(a, &added);
        if self
            .quiet("DEL", a, &with_prev_result(conf, &added.result))
            .is_some()
        {
            self.verify_deleted(a, &added);
        }
        Some((took, stderr))
    }

    /// ADD as the shim would send it, made by the calling thread itself over flatnetd's gRPC at
    /// `socket` (no plugin process); `None` (counted) on failure.
    pub fn add_without_process(&self, socket: &str, a: &Attachment, conf: &[u8]) -> Option<Added> {
        self.tally.calls.fetch_add(1, Ordering::SeqCst);
        let parsed = grpc::exec(socket, CniCommand::Add, &self.cni_env(a), conf).and_then(|json| {
            let result: Value =
                serde_json::from_str(&json).map_err(|e| format!("result is not JSON: {e}"))?;
            Added::parse(result)
        });
        parsed
            .map_err(|why| {
                self.tally.fail(format!(
                    "{} ADD {}/{} (gRPC): {why}",
                    self.label, a.name, a.ifname
                ))
            })
            .ok()
    }

    /// DEL the same way; `false` (counted) unless it succeeded with an empty result.
    pub fn del_without_process(&self, socket: &str, a: &Attachment, conf: &[u8]) -> bool {
        self.tally.calls.fetch_add(1, Ordering::SeqCst);
        match grpc::exec(socket, CniCommand::Del, &self.cni_env(a), conf) {
            Ok(json) if json.is_empty() => true,
            other => {
                self.tally.fail(format!(
                    "{} DEL {}/{} (gRPC): {other:?}",
                    self.label, a.name, a.ifname
                ));
                false
            }
        }
    }

    fn cni_env(&self, a: &Attachment) -> grpc::CniEnv {
        grpc::CniEnv {
            container_id: a.container_id.clone(),
            netns: a
                .netns
                .to_str()
                .expect("namespace paths are UTF-8")
                .to_string(),
            ifname: a.ifname.clone(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAME={}", a.name),
            path: self.cni_path.clone(),
        }
    }

    /// Timed CHECK or DEL (exit 0, nothing on stdout); `None` (counted) otherwise.
    pub fn quiet(&self, command: &str, a: &Attachment, conf: &[u8]) -> Option<Duration> {
        let mut cmd = self.command(command, a);
        self.tally.calls.fetch_add(1, Ordering::SeqCst);
        let e = run_timed(&mut cmd, conf);
        if !e.success || !String::from_utf8_lossy(&e.stdout).trim().is_empty() {
            self.tally.fail(self.failed(command, a, &e));
            return None;
        }
        Some(e.elapsed)
    }

    /// Timed VERSION with `{"cniVersion":"1.0.0"}` on stdin; `None` (counted) unless it lists
    /// supported versions.
    pub fn version(&self) -> Option<Duration> {
        let mut cmd = Shim::new(&self.binary)
            .env("CNI_COMMAND", "VERSION")
            .env("CNI_PATH", &self.cni_path)
            .command();
        self.tally.calls.fetch_add(1, Ordering::SeqCst);
        let e = run_timed(&mut cmd, br#"{"cniVersion":"1.0.0"}"#);
        let listed = serde_json::from_slice::<Value>(&e.stdout)
            .ok()
            .is_some_and(|v| v["supportedVersions"].is_array());
        if !e.success || !listed {
            self.tally.fail(format!(
                "{} VERSION: {}; stdout: {}",
                self.label,
                e.status,
                String::from_utf8_lossy(&e.stdout).trim()
            ));
            return None;
        }
        Some(e.elapsed)
    }

    /// After an ADD: the result's address is on the requested interface in the container.
    pub fn verify_added(&self, a: &Attachment, added: &Added) -> bool {
        let problem = if added.ifname != a.ifname {
            Some(format!(
                "result puts the address on {}, not {}",
                added.ifname, a.ifname
            ))
        } else {
            match sys::ipv4_addrs(&a.netns) {
                Err(e) => Some(format!("cannot list addresses: {e}")),
                Ok(addrs) => {
                    let found = addrs.iter().any(|x| {
                        x.label == a.ifname && x.ip == added.ip && x.prefix == added.prefix
                    });
                    (!found).then(|| {
                        format!(
                            "{}/{} is not on {} (addresses there: {addrs:?})",
                            added.ip, added.prefix, a.ifname
                        )
                    })
                }
            }
        };
        let problem = problem.or_else(|| {
            let cidr6 = added.ip6.as_ref()?;
            usable_ipv6(a, cidr6).err()
        });
        self.report_verify("ADD", a, problem)
    }

    /// After a DEL, at its answer: the container has no interface named as the attachment's and
    /// its address is on no interface any more.
    pub fn verify_deleted(&self, a: &Attachment, added: &Added) -> bool {
        let problem = match sys::link_and_addrs(&a.netns, &a.ifname) {
            Err(e) => Some(format!("cannot list links and addresses: {e}")),
            Ok((true, _)) => Some(format!("{} still exists", a.ifname)),
            Ok((false, addrs)) => addrs
                .iter()
                .find(|x| x.ip == added.ip)
                .map(|x| format!("{} is still on {}", added.ip, x.label)),
        };
        self.report_verify("DEL", a, problem)
    }

    fn report_verify(&self, command: &str, a: &Attachment, problem: Option<String>) -> bool {
        match problem {
            None => true,
            Some(p) => {
                self.tally.verify_fail(format!(
                    "{} after {command} {}/{}: {p}",
                    self.label, a.name, a.ifname
                ));
                false
            }
        }
    }
}

/// Whether `cidr6` is on the attachment's interface and usable (neither tentative nor failed
/// duplicate address detection), as `ip -6 -j addr` shows it in the namespace.
fn usable_ipv6(a: &Attachment, cidr6: &str) -> Result<(), String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", a.netns.display()))
        .args(["ip", "-j", "-6", "addr", "show", "dev", &a.ifname])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ip -j -6 addr printed no JSON ({e})"))?;
    let found = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .find(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]) == cidr6);
    match found {
        None => Err(format!("{cidr6} is not on {}: {v}", a.ifname)),
        Some(i) if i["tentative"] == true || i["dadfailed"] == true => {
            Err(format!("{cidr6} on {} is not usable yet: {i}", a.ifname))
        }
        Some(_) => Ok(()),
    }
}

/// `conf` with `prevResult`, as runtimes send it with CHECK and DEL, serialised.
pub fn with_prev_result(conf: &Value, result: &Value) -> Vec<u8> {
    let mut conf = conf.clone();
    conf["prevResult"] = result.clone();
    conf.to_string().into_bytes()
}

/// The size of a file, if it exists.
pub fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}
