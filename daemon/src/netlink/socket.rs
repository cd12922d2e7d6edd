//! The plumbing under [`RtNetlink`](super::RtNetlink): one socket and its dump turn, the deletion
//! lane, sockets inside container namespaces, reading links, addresses and routes, and the time
//! bound of every kernel operation.

use super::*;
use futures::TryStreamExt;
use ipnetwork::{Ipv4Network, Ipv6Network};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// One rtnetlink socket, and the turn to run a dump on it. The kernel runs one dump per socket at a
/// time and answers a second one with EBUSY, so every dump on a socket goes through [`dump`], which
/// takes the turn; requests that are not dumps (a link by name, any change) need no turn.
#[derive(Clone)]
pub(super) struct Socket {
    pub(super) handle: rtnetlink::Handle,
    dump_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Socket {
    pub(super) fn new(handle: rtnetlink::Handle) -> Socket {
        Socket {
            handle,
            dump_turn: Default::default(),
        }
    }
}

/// A netlink connection whose dumps the kernel filters itself (`NETLINK_GET_STRICT_CHK`): an
/// address dump for one link then walks that link only, instead of every link of a namespace
/// that holds 10,000 of them.
pub(super) fn strict_connection() -> std::io::Result<(
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    rtnetlink::Handle,
)> {
    use rtnetlink::sys::AsyncSocket;
    let (mut conn, handle, _) = rtnetlink::new_connection()?;
    // A kernel before 4.20 has no strict mode; the answers are filtered here as well, so it only
    // costs time there.
    let _ = conn
        .socket_mut()
        .socket_mut()
        .set_netlink_get_strict_chk(true);
    Ok((conn, handle))
}

/// How many times a dump is started before a transient answer is given up on, and the longest
/// pause between two tries (they start at 1 ms and double).
pub(super) const DUMP_TRIES: u32 = 12;
pub(super) const DUMP_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Whether a dump that failed with `errno` may work when started again: EBUSY (a dump still runs
/// on the socket: one whose reader was dropped by a timeout is read to its end by the connection
/// task) or EINTR (the kernel gave up on a dump that raced with a change).
pub(super) fn transient_dump_errno(errno: i32) -> bool {
    matches!(errno, nix::libc::EBUSY | nix::libc::EINTR)
}

/// Runs the dump `request` on `socket` and returns every message of it. A dump the kernel marks
/// as interrupted (NLM_F_DUMP_INTR: the table changed while it was being read, so the answer may
/// miss entries or hold one twice) and a transient refusal (see [`transient_dump_errno`]) are
/// tried again, so neither ever reaches a caller; other errors are returned as they are.
pub(super) async fn dump(
    socket: &Socket,
    request: RouteNetlinkMessage,
    op: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    };
    let mut pause = Duration::from_millis(1);
    let mut tries = 0;
    loop {
        tries += 1;
        let mut messages = Vec::new();
        let mut interrupted = false;
        let mut refused = None;
        {
            let _turn = socket.dump_turn.lock().await;
            let mut req = NetlinkMessage::from(request.clone());
            req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut answers = socket
                .handle
                .clone()
                .request(req)
                .map_err(kernel(op.to_string()))?;
            // Read to the end even after an error or an interruption, so that the next dump on this
            // socket does not find this one still running.
            while let Some(msg) = answers.next().await {
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => messages.push(m),
                    NetlinkPayload::Error(e) if e.code.is_some() => refused = Some(e),
                    _ => {}
                }
            }
        }
        if dump_finished(op, tries, refused, interrupted)? {
            return Ok(messages);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(DUMP_PAUSE_MAX);
    }
}

/// What try `tries` of a dump came to: `Ok(true)` when it is complete, `Ok(false)` when it is to be
/// started again (the kernel interrupted it, or refused it for now), or the error, also once
/// [`DUMP_TRIES`] tries have been made.
fn dump_finished(
    op: &str,
    tries: u32,
    refused: Option<rtnetlink::packet_core::ErrorMessage>,
    interrupted: bool,
) -> Result<bool, NetlinkError> {
    let transient = match &refused {
        Some(e) => e.code.is_some_and(|c| transient_dump_errno(c.get().abs())),
        None => interrupted,
    };
    if !transient {
        return match refused {
            Some(e) => Err(kernel(op.to_string())(rtnetlink::Error::NetlinkError(e))),
            None => Ok(true),
        };
    }
    if tries >= DUMP_TRIES {
        let why = match refused {
            Some(e) => rtnetlink::Error::NetlinkError(e).to_string(),
            None => "the kernel kept interrupting it (the table changed while it was read)".into(),
        };
        return Err(NetlinkError::Io {
            op: op.to_string(),
            source: std::io::Error::other(format!("{why}; gave up after {tries} tries")),
        });
    }
    tracing::debug!(op, tries, interrupted, "netlink dump tried again");
    Ok(false)
}

/// A netlink socket whose requests are sent from a thread of its own. The kernel handles a netlink
/// request inside the `sendmsg` that sends it, and deleting a veth keeps that call busy for about
/// 19 ms (RCU grace periods, waiting for the device's last references). On the daemon's main
/// socket that stalled every request queued behind it, ADDs included, and on a tokio worker it
/// took one of the runtime's two threads for as long; measured with ADD+DEL cycles at P=1, ADD
/// p50 went from 2.6 ms to 17 ms.
pub(super) fn deletion_lane() -> std::io::Result<rtnetlink::Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("netlink-deleter".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match rtnetlink::new_connection() {
                    Ok((conn, handle, _)) => {
                        let _ = tx.send(Ok(handle));
                        // Runs until every handle is dropped, i.e. for the daemon's lifetime.
                        conn.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the netlink deletion thread ended at start"))?
}

/// Opens a netlink socket inside `netns`. The socket stays bound to the namespace it was created
/// in; the namespace is entered by `opener`'s thread, never by a tokio worker.
pub(super) async fn ns_socket(opener: &Opener, netns: &Netns) -> Result<Socket, NetlinkError> {
    let io_err = |source| NetlinkError::Io {
        op: format!("entering network namespace {}", netns.path),
        source,
    };
    let fd = netns.file.try_clone().map_err(io_err)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    opener.send(fd, tx).map_err(io_err)?;
    let opened = rx.await.map_err(|_| {
        io_err(std::io::Error::other(
            "namespace thread ended without an answer",
        ))
    })?;
    let (conn, handle) = opened.map_err(io_err)?;
    tokio::spawn(conn);
    Ok(Socket::new(handle))
}

type Opened = std::io::Result<(
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    rtnetlink::Handle,
)>;

/// One job for the opener thread: the namespace to open a socket in, and where the socket goes.
type OpenJob = (std::fs::File, tokio::sync::oneshot::Sender<Opened>);

/// A plain thread that opens the sockets of container namespaces: it enters the namespace, opens
/// the socket and returns to the daemon's own. One long-lived thread instead of one per request:
/// starting and ending a thread (its stack mapped, then unmapped) cost more than the rest of
/// opening the socket, twice per container (ADD and DEL). The thread starts with the first
/// request and ends when the opener is dropped.
#[derive(Default)]
pub(super) struct Opener {
    jobs: std::sync::Mutex<Option<std::sync::mpsc::Sender<OpenJob>>>,
}

impl Opener {
    /// Hands `fd` to the opener thread, starting one if there is none (the first request, or the
    /// thread stopped: it stops rather than go on from a namespace that is not the daemon's).
    fn send(
        &self,
        fd: std::fs::File,
        reply: tokio::sync::oneshot::Sender<Opened>,
    ) -> std::io::Result<()> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut job = (fd, reply);
        if let Some(tx) = jobs.as_ref() {
            match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::SendError(back)) => job = back,
            }
        }
        let tx = start_opener()?;
        // A thread that was just started takes its first job, or has ended with it unanswered,
        // which the caller sees as its answer's channel closing.
        let _ = tx.send(job);
        *jobs = Some(tx);
        Ok(())
    }
}

/// Starts an opener thread in the calling thread's namespace (the daemon's) and runtime; it ends
/// when the sender it returns is dropped.
fn start_opener() -> std::io::Result<std::sync::mpsc::Sender<OpenJob>> {
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = std::sync::mpsc::channel::<OpenJob>();
    std::thread::Builder::new()
        .name("netns-opener".into())
        .spawn(move || {
            // Sockets register with the runtime's I/O driver as they are made.
            let _runtime = rt.enter();
            for (fd, reply) in rx {
                let opened = nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
                    .and_then(|()| strict_connection());
                let back = nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET);
                let _ = reply.send(opened);
                if let Err(e) = back {
                    tracing::error!(error = %e, "the namespace opener cannot return to the daemon's namespace; it stops and another starts");
                    return;
                }
            }
        })?;
    Ok(tx)
}

pub(super) fn link_state(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        mac: Vec::new(),
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        peer: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(mac) => state.mac = mac.clone(),
            LinkAttribute::Controller(m) => state.master = Some(*m),
            LinkAttribute::Link(peer) => state.peer = Some(*peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        state.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    state
}

pub(super) async fn get_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<LinkState>, NetlinkError> {
    // Without statistics, the largest part of the answer (about a kilobyte to parse).
    let mut links = handle
        .link()
        .get()
        .match_name(name.to_string())
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
        .execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(link_state(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(None),
        Err(e) => Err(kernel(format!("looking up link {name}"))(e)),
    }
}

pub(super) async fn get_addresses(
    socket: &Socket,
    index: u32,
) -> Result<Vec<Ipv4Network>, NetlinkError> {
    let addrs = address_dump(socket, index, AddressFamily::Inet).await?;
    Ok(addrs
        .into_iter()
        .filter_map(|(ip, prefix, _)| match ip {
            IpAddr::V4(ip) => Ipv4Network::new(ip, prefix).ok(),
            IpAddr::V6(_) => None,
        })
        .collect())
}

pub(super) async fn get_routes(
    socket: &Socket,
    index: u32,
) -> Result<Vec<(Ipv4Network, Option<Ipv4Addr>)>, NetlinkError> {
    let routes = route_dump(socket, AddressFamily::Inet, index, "listing routes").await?;
    Ok(routes
        .into_iter()
        .filter_map(|(dst, prefix, gw)| match (dst, gw) {
            (RouteAddress::Inet(d), gw) => {
                let gw = match gw {
                    Some(RouteAddress::Inet(g)) => Some(g),
                    _ => None,
                };
                Some((Ipv4Network::new(d, prefix).ok()?, gw))
            }
            _ => None,
        })
        .collect())
}

pub(super) async fn get_routes6(
    socket: &Socket,
    index: u32,
) -> Result<Vec<(Ipv6Network, Option<Ipv6Addr>)>, NetlinkError> {
    let routes = route_dump(socket, AddressFamily::Inet6, index, "listing IPv6 routes").await?;
    Ok(routes
        .into_iter()
        .filter_map(|(dst, prefix, gw)| match (dst, gw) {
            (RouteAddress::Inet6(d), gw) => {
                let gw = match gw {
                    Some(RouteAddress::Inet6(g)) => Some(g),
                    _ => None,
                };
                Some((Ipv6Network::new(d, prefix).ok()?, gw))
            }
            _ => None,
        })
        .collect())
}

/// The main-table routes of `family` through link `index`: destination (the family's unspecified
/// address for a default route), prefix length, gateway. The request's header names only the
/// family: on a strict socket every other field set would filter the dump.
async fn route_dump(
    socket: &Socket,
    family: AddressFamily,
    index: u32,
    what: &str,
) -> Result<Vec<(RouteAddress, u8, Option<RouteAddress>)>, NetlinkError> {
    let mut request = netlink_packet_route::route::RouteMessage::default();
    request.header.address_family = family;
    let unspecified = match family {
        AddressFamily::Inet6 => RouteAddress::Inet6(Ipv6Addr::UNSPECIFIED),
        _ => RouteAddress::Inet(Ipv4Addr::UNSPECIFIED),
    };
    let msgs = dump(socket, RouteNetlinkMessage::GetRoute(request), what).await?;
    let mut out = Vec::new();
    for msg in msgs {
        let RouteNetlinkMessage::NewRoute(msg) = msg else {
            continue;
        };
        if msg.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut dst = unspecified.clone();
        let mut gw = None;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = a.clone(),
                RouteAttribute::Gateway(a) => gw = Some(a.clone()),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if oif == Some(index) {
            out.push((dst, msg.header.destination_prefix_length, gw));
        }
    }
    Ok(out)
}

/// The usable IPv6 addresses of a link: neither `tentative` (duplicate address detection still
/// running) nor `dadfailed`.
pub(super) async fn get_addresses6(
    socket: &Socket,
    index: u32,
) -> Result<Vec<Ipv6Network>, NetlinkError> {
    use netlink_packet_route::address::AddressFlags;
    let addrs = address_dump(socket, index, AddressFamily::Inet6).await?;
    Ok(addrs
        .into_iter()
        .filter(|(_, _, flags)| {
            !flags.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed)
        })
        .filter_map(|(ip, prefix, _)| match ip {
            IpAddr::V6(ip) => Ipv6Network::new(ip, prefix).ok(),
            IpAddr::V4(_) => None,
        })
        .collect())
}

/// The addresses of one family on link `index`: address, prefix length and flags (IFA_FLAGS,
/// or the header's when the kernel sends none).
async fn address_dump(
    socket: &Socket,
    index: u32,
    family: AddressFamily,
) -> Result<Vec<(IpAddr, u8, netlink_packet_route::address::AddressFlags)>, NetlinkError> {
    use netlink_packet_route::address::AddressFlags;
    let mut request = AddressMessage::default();
    request.header.family = family;
    request.header.index = index;
    let msgs = dump(
        socket,
        RouteNetlinkMessage::GetAddress(request),
        &format!("listing addresses of link {index}"),
    )
    .await?;
    let mut out = Vec::new();
    for msg in msgs {
        let RouteNetlinkMessage::NewAddress(msg) = msg else {
            continue;
        };
        if msg.header.index != index {
            continue;
        }
        let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
        let mut address = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        if let Some(ip) = address {
            out.push((ip, msg.header.prefix_len, flags));
        }
    }
    Ok(out)
}

/// `Ok(())` also when the kernel says the thing already exists.
pub(super) fn exists_ok(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(e) if e.errno() == Some(nix::libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// `addrgenmode none`: the interface gets no automatic IPv6 link-local address. The kernel takes
/// this only for an existing link, not in the message that creates it.
pub(super) fn no_ipv6_autoconf() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// Fails `op` with a timeout error when `fut` has not finished within [`KERNEL_TIMEOUT`].
pub(super) async fn bounded<T>(
    op: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T, NetlinkError>>,
) -> Result<T, NetlinkError> {
    match tokio::time::timeout(KERNEL_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(NetlinkError::Timeout { op: op() }),
    }
}

pub(super) fn link_name(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// A link dump read on the calling thread (a blocking one) from a socket of its own, each answer
/// parsed and made into what `keep` wants before the next is read. Through rtnetlink's connection
/// task the parsed messages of a whole dump wait in a channel for their reader, about 7 KB a link:
/// with 8,000 links flatnetd stayed at 60–70 MiB while a sweep listed them each second, 8 MiB
/// without. Retried like [`dump`] when the kernel interrupts it or refuses it for now.
pub(super) fn link_dump_blocking<T>(
    request: LinkMessage,
    op: &str,
    mut keep: impl FnMut(LinkMessage) -> Option<T>,
) -> Result<Vec<T>, NetlinkError> {
    use rtnetlink::packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    };
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
    let io = |source: std::io::Error| NetlinkError::Io {
        op: op.to_string(),
        source,
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    // Strict mode where the kernel has it, as on the daemon's other sockets.
    let _ = socket.set_netlink_get_strict_chk(true);
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    let mut pause = Duration::from_millis(1);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut tries = 0;
    loop {
        tries += 1;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(request.clone()));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.header.sequence_number = tries;
        req.finalize();
        let mut bytes = vec![0; req.header.length as usize];
        req.serialize(&mut bytes);
        socket.send(&bytes, 0).map_err(io)?;
        let mut kept = Vec::new();
        let mut interrupted = false;
        let mut refused = None;
        'dump: loop {
            buf.clear();
            // The kernel fills a dump's answers up to 32 KB at a time; MSG_TRUNC makes a larger
            // one show as such instead of being cut short unseen.
            let got = socket.recv(&mut buf, nix::libc::MSG_TRUNC).map_err(io)?;
            if got > buf.len() {
                return Err(io(std::io::Error::other(
                    "a netlink answer was larger than the buffer",
                )));
            }
            let mut at = 0;
            while at < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..])
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number != tries {
                    // An answer to an earlier, abandoned try.
                } else {
                    interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                    match msg.payload {
                        NetlinkPayload::Done(_) => break 'dump,
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            refused = Some(e);
                            break 'dump;
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                            kept.extend(keep(m))
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
            }
        }
        if dump_finished(op, tries, refused, interrupted)? {
            return Ok(kept);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(DUMP_PAUSE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the links of the test's own namespace (a read, nothing is changed): every name the
    /// kernel lists in `/proc/self/net/dev` before and after comes back, once, with its index.
    #[test]
    fn a_blocking_link_dump_lists_every_link() {
        let mut request = LinkMessage::default();
        request.attributes.push(LinkAttribute::ExtMask(vec![
            netlink_packet_route::link::LinkExtentMask::SkipStats,
        ]));
        let before = crate::host::link_names().unwrap();
        let listed = link_dump_blocking(request, "listing links", |m| {
            link_name(&m).map(|name| (name, m.header.index))
        })
        .unwrap();
        let after = crate::host::link_names().unwrap();
        let names: std::collections::HashSet<String> =
            listed.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names.len(), listed.len(), "a link listed twice: {listed:?}");
        // Links made or removed meanwhile by someone else may be in one read and not the other.
        assert!(
            before.intersection(&after).all(|n| names.contains(n)),
            "{listed:?}"
        );
        assert!(
            names
                .iter()
                .all(|n| before.contains(n) || after.contains(n)),
            "{listed:?}"
        );
        assert!(names.contains("lo"), "{listed:?}");
        assert!(listed.iter().all(|(_, index)| *index > 0), "{listed:?}");
    }

    /// Asks `opener` for a socket in the test's own namespace: the answer, within five seconds.
    async fn open_own(opener: &Opener) -> Opened {
        let fd = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        let (reply, answer) = tokio::sync::oneshot::channel();
        opener.send(fd, reply).expect("a thread takes the job");
        tokio::time::timeout(std::time::Duration::from_secs(5), answer)
            .await
            .expect("an answer within 5 s")
            .expect("the job was answered, not dropped")
    }

    /// The opener thread stops when it cannot return to the daemon's namespace; the next request
    /// starts another, which answers it and the ones after. Entering the test's own namespace
    /// needs CAP_SYS_ADMIN: without it the answer is setns's refusal, still an answer.
    #[tokio::test]
    async fn a_stopped_opener_thread_is_replaced() {
        let opener = Opener::default();
        // What a stopped thread leaves: a sender whose receiver is gone.
        let (stopped, receiver) = std::sync::mpsc::channel::<OpenJob>();
        drop(receiver);
        *opener.jobs.lock().unwrap() = Some(stopped);
        let first = open_own(&opener).await;
        let second = open_own(&opener).await;
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(first.is_ok(), root, "{:?}", first.as_ref().err());
        assert_eq!(second.is_ok(), root, "{:?}", second.as_ref().err());
        // The new thread's sender is the one kept.
        let jobs = opener.jobs.lock().unwrap();
        let (probe, _) = tokio::sync::oneshot::channel();
        let fd = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        assert!(
            jobs.as_ref().expect("a sender").send((fd, probe)).is_ok(),
            "the kept sender reaches a running thread"
        );
    }
}
