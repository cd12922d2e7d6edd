//! Network namespaces the tests create, deleted by exact name on drop, and processes started in them.

use crate::*;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// A network namespace this test created (`ip netns add`), deleted by exact name on drop.
/// For a container it also carries the container label and a Podman-like container ID.
#[derive(Debug)]
pub struct Netns {
    name: String,
    label: String,
    container_id: String,
}

impl Netns {
    /// `ip netns add NAME` and bring `lo` up inside.
    pub fn create(name: &str, label: &str) -> Netns {
        run_ok(Command::new("ip").args(["netns", "add", name]));
        // From here on the guard owns the namespace, so a failure below still removes it.
        let ns = Netns {
            name: name.to_string(),
            label: label.to_string(),
            container_id: container_id_for(label),
        };
        run_ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        ns
    }

    /// The kernel-visible name (`ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what a runtime puts in CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The label given at creation: Podman's container name (K8S_POD_NAME).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The CNI_CONTAINERID used for this container.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        Path::new(&self.path()).exists()
    }

    /// The `ip netns exec` command that runs `args` inside the namespace, to be configured further.
    pub fn exec_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        // Cleared environment: no proxy variables can leak into wget, nothing host-specific.
        cmd.env_clear()
            .env("PATH", PATH)
            .args(["netns", "exec", &self.name])
            .args(args);
        cmd
    }

    /// Runs `args` inside the namespace (`ip netns exec`) and returns its output.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in netns {}: {e}", self.name))
    }

    /// busybox httpd inside the namespace on `listen` (`80`, `[::]:80`), serving `page` at `/`
    /// from `dir` (made here); killed when the guard drops.
    pub fn serve_page(&self, dir: &Path, listen: &str, page: &str) -> Background {
        std::fs::create_dir_all(dir).expect("the test's temp dir is writable");
        std::fs::write(dir.join("index.html"), page).expect("the test's temp dir is writable");
        let www = dir.to_str().expect("temp dir paths are UTF-8");
        self.spawn(&["busybox", "httpd", "-f", "-p", listen, "-h", www])
    }

    /// Starts a long-running process inside the namespace; it is killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let child = self
            .exec_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in netns {}: {e}", self.name));
        Background {
            child,
            what: format!("{args:?} in {}", self.name),
        }
    }

    /// A veth made inside the two namespaces (nothing in the machine's own): `here` in this one
    /// with `here_cidr`, `there` in `other` with `there_cidr`, both up.
    pub fn link_to(
        &self,
        here: &str,
        here_cidr: &str,
        other: &Netns,
        there: &str,
        there_cidr: &str,
    ) {
        let (h, o) = (self.name.as_str(), other.name());
        run_ok(Command::new("ip").args([
            "-n", h, "link", "add", here, "type", "veth", "peer", "name", there, "netns", o,
        ]));
        run_ok(Command::new("ip").args(["-n", h, "addr", "add", here_cidr, "dev", here]));
        run_ok(Command::new("ip").args(["-n", h, "link", "set", here, "up"]));
        run_ok(Command::new("ip").args(["-n", o, "addr", "add", there_cidr, "dev", there]));
        run_ok(Command::new("ip").args(["-n", o, "link", "set", there, "up"]));
    }

    /// `ip netns del` by exact name; a namespace that is already gone is fine.
    pub fn delete(&self) {
        delete_netns(&self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

pub(crate) fn delete_netns(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    let out = Command::new("ip").args(["netns", "del", name]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: `ip netns del {name}` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("warning: cannot run `ip netns del {name}`: {e}"),
    }
}

/// A process started in a namespace; SIGKILLed and reaped on drop.
pub struct Background {
    child: Child,
    what: String,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit (killed after that).
    pub fn terminate(&mut self, limit: std::time::Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Panics if the process has already exited (e.g. httpd could not bind).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early with {status}", self.what);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
