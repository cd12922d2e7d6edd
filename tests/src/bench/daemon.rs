//! A `flatnetd` started by the benchmark in the namespace the calling thread is in: spawned
//! directly (no `ip netns exec` in between, so its start-up can be timed and its pid read), in its
//! own process group (Ctrl-C reaches only the benchmark, which then stops it), and stopped with
//! SIGTERM by its pid.

use super::cleanup::{Cleanup, Guard};
use super::{grpc, sys};
use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a daemon may take to answer its first request.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long it may take to exit on SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

pub struct Daemon {
    child: Mutex<Option<Child>>,
    pid: u32,
    log: PathBuf,
}

/// What [`Daemon::start`] saw.
pub struct Started {
    pub daemon: Guard<Daemon>,
    /// From spawn until the first answered request.
    pub ready: Duration,
}

impl Daemon {
    /// Starts `flatnetd --socket SOCKET --state-dir STATE` (stderr appended to `log`) and waits
    /// until it answers a ListAllocations call, polling every 0.5 ms.
    pub fn start(bin: &Path, socket: &Path, state: &Path, log: &Path) -> Started {
        Daemon::start_with(bin, socket, state, log, &[])
    }

    /// [`Daemon::start`] with more arguments.
    pub fn start_with(
        bin: &Path,
        socket: &Path,
        state: &Path,
        log: &Path,
        args: &[&str],
    ) -> Started {
        Daemon::start_with_env(bin, socket, state, log, args, &[])
    }

    /// [`Daemon::start_with`] with environment variables (`FLATNET_LOG`) set too.
    pub fn start_with_env(
        bin: &Path,
        socket: &Path,
        state: &Path,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Started {
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", super::PATH)
            .envs(env.iter().copied())
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let pid = child.id();
        let daemon = Guard::new(Daemon {
            child: Mutex::new(Some(child)),
            pid,
            log: log.to_path_buf(),
        });
        loop {
            if let Ok(stream) = UnixStream::connect(socket) {
                if let Ok(answer) = grpc::call(stream, Duration::from_secs(10)) {
                    let ready = started.elapsed();
                    if answer != grpc::Answer::Ok {
                        eprintln!(
                            "warning: flatnetd answered the start-up probe with a gRPC error"
                        );
                    }
                    return Started { ready, daemon };
                }
            }
            if let Some(status) = daemon.exited() {
                panic!(
                    "flatnetd exited with {status} before answering; its log:\n{}",
                    daemon.log_text()
                );
            }
            if started.elapsed() > READY_LIMIT {
                panic!(
                    "flatnetd did not answer on {} within {READY_LIMIT:?}; its log:\n{}",
                    socket.display(),
                    daemon.log_text()
                );
            }
            if sys::interrupted() {
                super::cleanup::interrupted_exit();
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Whether the daemon has exited without being stopped.
    pub fn exited_early(&self) -> bool {
        self.exited().is_some()
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last 4 KiB of the daemon's log.
    pub fn log_text(&self) -> String {
        match fs::read(&self.log) {
            Ok(bytes) => {
                let tail = &bytes[bytes.len().saturating_sub(4096)..];
                String::from_utf8_lossy(tail).into_owned()
            }
            Err(e) => format!("<no log: {e}>"),
        }
    }

    /// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in KiB.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status
            .lines()
            .find(|l| l.split(':').next() == Some(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGTERM, wait for the exit (SIGKILL after 10 s); returns how long the exit took, `None` if
    /// it was already stopped. Stopped stays stopped.
    pub fn stop(&self) -> Option<Duration> {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let mut child = slot.take()?;
        if let Ok(Some(_)) = child.try_wait() {
            return Some(Duration::ZERO);
        }
        let started = Instant::now();
        sys::send_signal(self.pid, sys::SIGTERM);
        while started.elapsed() < STOP_LIMIT {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        eprintln!(
            "warning: flatnetd {} ignored SIGTERM for {STOP_LIMIT:?}; killing it",
            self.pid
        );
        let _ = child.kill();
        let _ = child.wait();
        Some(started.elapsed())
    }
}

impl Cleanup for Daemon {
    fn cleanup(&self) {
        self.stop();
    }

    fn what(&self) -> String {
        format!("flatnetd (pid {})", self.pid)
    }
}
