//! The few system calls the benchmark makes itself: entering a network namespace on the calling
//! thread, one-shot rtnetlink queries inside a container namespace (a link by name, the address
//! dump: to verify attachments without starting `ip`), sending a signal by pid, and noticing SIGINT. std links libc already, so
//! these are plain `extern "C"` declarations rather than another dependency.

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

const CLONE_NEWNET: c_int = 0x4000_0000;
const AF_NETLINK: c_int = 16;
const AF_INET: u8 = 2;
const SOCK_RAW: c_int = 3;
const SOCK_CLOEXEC: c_int = 0o2_000_000;
const NETLINK_ROUTE: c_int = 0;
const SIGINT: c_int = 2;
pub const SIGKILL: c_int = 9;
pub const SIGTERM: c_int = 15;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFLA_IFNAME: u16 = 3;
const ENODEV: i32 = 19;

extern "C" {
    fn setns(fd: c_int, nstype: c_int) -> c_int;
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn kill(pid: i32, sig: c_int) -> c_int;
    fn signal(sig: c_int, handler: usize) -> usize;
    fn geteuid() -> u32;
}

/// The effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() }
}

/// The network namespace the process started in (the machine's), opened once at start-up.
static HOME: OnceLock<File> = OnceLock::new();

/// Remembers the calling thread's current network namespace as "home". Call first thing in main.
pub fn remember_home() -> io::Result<()> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let _ = HOME.set(home);
    Ok(())
}

fn setns_file(ns: &File) -> io::Result<()> {
    // SAFETY: setns only reads the fd, which `ns` keeps open for the duration of the call.
    if unsafe { setns(ns.as_raw_fd(), CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread (only it) into the network namespace at `path`. Threads and processes
/// it starts afterwards inherit that namespace.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    setns_file(&File::open(path)?)
}

/// Moves the calling thread back into the namespace recorded by [`remember_home`].
pub fn return_home() -> io::Result<()> {
    let home = HOME
        .get()
        .ok_or_else(|| io::Error::other("remember_home was not called"))?;
    setns_file(home)
}

/// A rtnetlink socket that lives in the namespace at `path`; the calling thread ends up back in
/// the namespace it was in (a socket stays bound to the namespace it was created in).
fn netlink_socket_in(path: &Path) -> io::Result<File> {
    let own = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(path)?;
    setns_file(&target)?;
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe { socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) };
    let socket_err = io::Error::last_os_error();
    if let Err(e) = setns_file(&own) {
        // This thread would go on starting plugins in a container namespace: stop everything.
        panic!("cannot return to this thread's own network namespace after a netlink query: {e}");
    }
    if fd < 0 {
        return Err(socket_err);
    }
    // SAFETY: fd is a freshly created socket that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// One IPv4 address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// IFA_LABEL: the interface name (for IPv4 the device name unless a label was set).
    pub label: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Every IPv4 address in the network namespace at `path` (one RTM_GETADDR dump).
pub fn ipv4_addrs(path: &Path) -> io::Result<Vec<Addr>> {
    addr_dump(&mut netlink_socket_in(path)?)
}

/// Whether the namespace at `path` has an interface named `ifname`, and every IPv4 address in it:
/// what DEL must have cleared when it answers. Both from one netlink socket.
pub fn link_and_addrs(path: &Path, ifname: &str) -> io::Result<(bool, Vec<Addr>)> {
    let mut sock = netlink_socket_in(path)?;
    let exists = link_exists(&mut sock, ifname)?;
    Ok((exists, addr_dump(&mut sock)?))
}

/// RTM_GETLINK by name (not a dump): the link's RTM_NEWLINK, or ENODEV.
fn link_exists(sock: &mut File, ifname: &str) -> io::Result<bool> {
    // nlmsghdr (16) + ifinfomsg (16) + IFLA_IFNAME (4 + name + NUL, padded to 4).
    let attr_len = 4 + ifname.len() + 1;
    let len = 32 + align4(attr_len);
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&2u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0u8; 16]);
    req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    req.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
    req.extend_from_slice(ifname.as_bytes());
    req.resize(len, 0);
    sock.write_all(&req)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = sock.read(&mut buf)?;
    if n < 16 {
        return Err(io::Error::other("short netlink answer"));
    }
    match u16_at(&buf, 4) {
        RTM_NEWLINK => Ok(true),
        NLMSG_ERROR if n >= 20 => match -(u32_at(&buf, 16) as i32) {
            ENODEV => Ok(false),
            errno => Err(io::Error::from_raw_os_error(errno)),
        },
        other => Err(io::Error::other(format!(
            "unexpected netlink message type {other}"
        ))),
    }
}

/// Every IPv4 address of the socket's namespace (one RTM_GETADDR dump).
fn addr_dump(sock: &mut File) -> io::Result<Vec<Addr>> {
    // nlmsghdr (16 bytes) + ifaddrmsg (8 bytes), AF_INET, dump.
    let mut req = Vec::with_capacity(24);
    req.extend_from_slice(&24u32.to_ne_bytes());
    req.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[AF_INET, 0, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes());
    sock.write_all(&req)?;

    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // The kernel always ends a dump with NLMSG_DONE; the bound only guards against a parser bug.
    for _ in 0..10_000 {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("netlink socket closed during a dump"));
        }
        let b = &buf[..n];
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(b, off) as usize;
            let ty = u16_at(b, off + 4);
            if len < 16 || off + len > n {
                return Err(io::Error::other("malformed netlink message"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = if len >= 20 {
                        -(u32_at(b, off + 16) as i32)
                    } else {
                        0
                    };
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                }
                RTM_NEWADDR if len >= 24 => {
                    let family = b[off + 16];
                    let prefix = b[off + 17];
                    let mut local = None;
                    let mut address = None;
                    let mut label = String::new();
                    let mut a = off + 24;
                    while a + 4 <= off + len {
                        let rta_len = u16_at(b, a) as usize;
                        let rta_type = u16_at(b, a + 2);
                        if rta_len < 4 || a + rta_len > off + len {
                            break;
                        }
                        let data = &b[a + 4..a + rta_len];
                        match rta_type {
                            IFA_LOCAL if data.len() == 4 => {
                                local = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]))
                            }
                            IFA_ADDRESS if data.len() == 4 => {
                                address = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]))
                            }
                            IFA_LABEL => {
                                let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
                                label = String::from_utf8_lossy(&data[..end]).into_owned();
                            }
                            _ => {}
                        }
                        a += align4(rta_len);
                    }
                    if family == AF_INET {
                        if let Some(ip) = local.or(address) {
                            out.push(Addr { label, ip, prefix });
                        }
                    }
                }
                _ => {}
            }
            off += align4(len);
        }
    }
    Err(io::Error::other("netlink dump did not end"))
}

/// Sends `sig` to the process `pid` (one we started). Errors (already gone) are ignored.
pub fn send_signal(pid: u32, sig: c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) with a positive pid of a child we spawned; no memory is involved.
            unsafe { kill(pid, sig) };
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT only sets a flag: the benchmark stops at the next check and cleans up.
pub fn catch_sigint() {
    let handler: extern "C" fn(c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { signal(SIGINT, handler as usize) };
}

/// Whether SIGINT arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Busy and total CPU time of the whole machine so far, in clock ticks (first line of /proc/stat).
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Waits until the machine is quiet: the kernel goes on tearing down namespaces and deleting
/// interfaces for seconds after a phase that made hundreds of them, and that work would be
/// counted against whatever is measured next. Returns once one 250 ms window has the CPUs less
/// than 10% busy, or after `max`; returns how long it waited.
pub fn settle(max: std::time::Duration) -> std::time::Duration {
    let started = std::time::Instant::now();
    let Some(mut last) = cpu_ticks() else {
        return started.elapsed();
    };
    while started.elapsed() < max {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let Some(now) = cpu_ticks() else { break };
        let (busy, total) = (now.0 - last.0, now.1 - last.1);
        last = now;
        if total > 0 && (busy as f64) < 0.10 * total as f64 {
            break;
        }
    }
    started.elapsed()
}
