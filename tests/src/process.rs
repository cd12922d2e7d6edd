//! Small utilities of the harness: polling, parallel work, unique names, and running a command
//! with a bound on its time.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on every item using `threads` worker threads (work is handed out one item at a time).
pub fn for_each_parallel<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                f(item);
            });
        }
    });
}

/// A string no other test run has used: pid, a per-process counter and the clock.
pub fn unique_token(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), next_serial())
}

pub(crate) fn next_serial() -> usize {
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    SERIAL.fetch_add(1, Ordering::SeqCst)
}

/// FNV-1a (64 bit), the hash the project names things with (veth names, spool files).
pub use flatnet_proto::fnv::fnv1a64;

/// A Podman-like 64-hex container ID derived from a label (FNV-1a, repeated), stable per label.
pub fn container_id_for(label: &str) -> String {
    let h = fnv1a64(&[label.as_bytes()]);
    (0..4u64)
        .map(|i| format!("{:016x}", h.rotate_left(16 * i as u32) ^ i))
        .collect()
}

/// Runs a command and panics with its output unless it succeeds.
pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` with stdin, stdout and stderr piped, feeds it `stdin` and returns its output. A
/// command still running after `timeout` is SIGKILLed by pid and reported as `Err`, with whatever
/// output it produced, so a hung tool fails its test instead of hanging the run.
pub fn output_within(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin was configured as piped");
    let stdin = stdin.to_vec();
    // On a thread of its own: a command that stops reading (oversized stdin) must not block the
    // wait below. EPIPE when it exited without reading; its output tells why.
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("waiting for {cmd:?} failed: {e}")),
        Err(_) => {
            let _ = Command::new("busybox")
                .args(["kill", "-KILL", &pid.to_string()])
                .status();
            // Bounded too: a grandchild may still hold the pipes open.
            let partial = match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(out)) => format!(
                    "\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                _ => " (no output could be collected)".to_string(),
            };
            Err(format!(
                "{cmd:?} did not finish within {timeout:?}; killed pid {pid}{partial}"
            ))
        }
    }
}

/// Sends SIGTERM through busybox's `kill` (a required tool), by exact pid.
pub(crate) fn sigterm(pid: u32) {
    // A failure means the process is already gone, which is what we want.
    let _ = Command::new("busybox")
        .args(["kill", "-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit; SIGKILLs it after that. Never leaves a zombie.
pub(crate) fn stop_child(child: &mut Child, timeout: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    sigterm(child.id());
    let exited = poll(timeout, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        eprintln!(
            "process {} ignored SIGTERM for {timeout:?}; killing it",
            child.id()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn container_ids_are_valid_and_distinct() {
        let a = container_id_for("a");
        let b = container_id_for("b");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, container_id_for("a"));
    }

    #[test]
    fn poll_reports_timeout_and_success() {
        assert!(poll(Duration::from_millis(10), || true));
        assert!(!poll(Duration::from_millis(60), || false));
    }

    #[test]
    fn output_within_kills_what_hangs() {
        let start = Instant::now();
        let mut hung = Command::new("sh");
        hung.args(["-c", "echo started; exec sleep 30"]);
        let err = output_within(&mut hung, b"", Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("started"), "partial output missing: {err}");
        assert!(start.elapsed() < Duration::from_secs(5), "{err}");

        let mut cat = Command::new("cat");
        let out = output_within(&mut cat, b"stdin reaches it", Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"stdin reaches it");
    }

    #[test]
    fn parallel_visits_every_item_once() {
        let items: Vec<usize> = (0..50).collect();
        let seen = Mutex::new(Vec::new());
        for_each_parallel(&items, 8, |i| seen.lock().unwrap().push(*i));
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, items);
    }
}
