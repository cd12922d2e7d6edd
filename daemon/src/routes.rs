//! The route table the HTTP gateway follows: for each attached container, one route per name (its
//! name and its network aliases) to its address and port, with whether that port accepts TCP.
//!
//! The engine publishes an attachment when its ADD has committed and withdraws it as soon as its
//! record goes (on DEL before the container's interface is set aside, so a gateway never routes
//! to an interface that is going). One scheduler task tries the ports from flatnetd's namespace,
//! where the gateway is: each route every 50 ms until its port first accepts a connection (up),
//! giving up after 30 s (down, then tried every 10 s: a container that never answered on its port
//! most likely serves something else there, and 10,000 of them would otherwise keep the host busy
//! with 2,000 tries a second for good); once up, every second, two failures in a row making it
//! down, and a route that was up is tried every second while down. The scheduler keeps a queue
//! of when each route is due and starts at most
//! [`TRIES_PER_SECOND`] tries a second (so with more than 100 ports awaiting their first answer,
//! each is tried less often than every 50 ms, and 10,000 attachments made at once cost the host
//! bounded work); a route costs its entry and its place in the queue, not a task of its own.
//! Every change bumps the table's revision, which a reader can wait past.

pub mod http;

use crate::ipam::{AllocKey, AllocSummary, Allocation};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The port a route uses when the container named none.
pub const DEFAULT_PORT: u16 = 80;
/// How often a port that has not accepted a connection yet is tried.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long a new attachment's port may take to accept a connection before it is marked down.
pub const DOWN_AFTER: Duration = Duration::from_secs(30);
/// How often a port is tried once up, or once down after it was up.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a port that never accepted a connection is tried once down.
pub const NEVER_UP_EVERY: Duration = Duration::from_secs(10);
/// How many connections the scheduler starts a second at most.
pub const TRIES_PER_SECOND: u32 = 2_000;
/// How long one try waits for the connection at most.
const TRY_LIMIT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Probing,
    Up,
    Down,
}

/// One route as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub network: String,
    pub address: IpAddr,
    pub port: u16,
    pub state: State,
    pub container_id: String,
}

struct Entry {
    names: Vec<String>,
    address: IpAddr,
    port: u16,
    state: State,
    /// Which publication of the key this is, so a try of an earlier one changes nothing.
    generation: u64,
    published: Instant,
    /// Failed tries in a row since the port was last up.
    failures: u8,
    /// Whether the port has accepted a connection since this publication.
    ever_up: bool,
}

/// What one attachment is routed by, before it is in the table.
struct Publication {
    key: AllocKey,
    names: Vec<String>,
    address: Option<IpAddr>,
    port: Option<u16>,
}

/// A route's next try: when, and of which publication.
type Due = Reverse<(Instant, u64, Arc<AllocKey>)>;

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<AllocKey>, Entry>,
    generation: u64,
    /// One item per probed publication (an item whose publication is gone is dropped when it
    /// comes up).
    due: BinaryHeap<Due>,
    /// Whether the scheduler task runs.
    scheduling: bool,
}

pub struct Routes {
    /// Whether ports are tried at all: only a daemon that serves real attachments tries them
    /// ([`Routes::probing`]); an engine on a fake kernel has no container to connect to, and its
    /// addresses must not be tried from the machine's own namespace.
    probes: bool,
    inner: Mutex<Inner>,
    revision: watch::Sender<u64>,
    /// Wakes the scheduler: a route is due earlier than it was waiting for, or the table is gone.
    wake: Arc<Notify>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes::new(false)
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// The names an attachment is routed by: its container's name and its aliases, without the short
/// container id Podman adds to the aliases. None at all for a container without a name.
pub fn names_of(a: &Allocation) -> Vec<String> {
    names(&a.container_id, a.container_name.as_deref(), &a.aliases)
}

fn names(container_id: &str, container_name: Option<&str>, aliases: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in container_name
        .into_iter()
        .chain(aliases.iter().map(String::as_str))
    {
        let id_prefix = name.len() >= 12 && container_id.starts_with(name);
        if !name.is_empty() && !id_prefix && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

impl Routes {
    /// A table whose routes are probed (flatnetd's own); [`Routes::default`] leaves every route
    /// `Probing`.
    pub fn probing() -> Routes {
        Routes::new(true)
    }

    fn new(probes: bool) -> Routes {
        Routes {
            probes,
            inner: Mutex::default(),
            revision: watch::channel(1).0,
            wake: Arc::default(),
        }
    }

    /// Routes `a` (again, if it was), queueing its first try [`PROBE_EVERY`] from now: ADD answers
    /// before the container's processes start, so nothing can listen on its port yet, and a
    /// container that lives for less than that is never tried at all. An attachment without a
    /// name or an address has nothing to be routed by.
    pub fn publish(self: &Arc<Self>, a: &Allocation) {
        let names = names_of(a);
        self.publish_parts(a.key(), names, a.addresses().next(), a.port);
    }

    /// [`Routes::publish`] for records read without their CNI result (the start-up reconcile's),
    /// all under one lock, with one revision for them all. Their containers are running already:
    /// each is tried at once.
    pub fn publish_summaries<'a>(
        self: &Arc<Self>,
        all: impl IntoIterator<Item = &'a AllocSummary>,
    ) {
        let parts: Vec<_> = all
            .into_iter()
            .map(|a| {
                let names = names(&a.container_id, a.container_name.as_deref(), &a.aliases);
                let v4 = a.address.map(IpAddr::V4);
                let address = v4.or(a.address6.map(|(ip, _)| IpAddr::V6(ip)));
                Publication {
                    key: a.key(),
                    names,
                    address,
                    port: a.port,
                }
            })
            .collect();
        self.insert(parts, Duration::ZERO);
    }

    fn publish_parts(
        self: &Arc<Self>,
        key: AllocKey,
        names: Vec<String>,
        address: Option<IpAddr>,
        port: Option<u16>,
    ) {
        self.insert(
            vec![Publication {
                key,
                names,
                address,
                port,
            }],
            PROBE_EVERY,
        );
    }

    /// Routes each publication; queues their first tries `first_try` from now.
    fn insert(self: &Arc<Self>, parts: Vec<Publication>, first_try: Duration) {
        let now = Instant::now();
        let mut replaced = Vec::new();
        let mut inner = self.inner.lock().expect("routes poisoned");
        let mut added = false;
        for Publication {
            key,
            names,
            address,
            port,
        } in parts
        {
            let Some(address) = address.filter(|_| !names.is_empty()) else {
                continue;
            };
            let key = Arc::new(key);
            inner.generation += 1;
            let generation = inner.generation;
            let entry = Entry {
                names,
                address,
                port: port.unwrap_or(DEFAULT_PORT),
                state: State::Probing,
                generation,
                published: now,
                failures: 0,
                ever_up: false,
            };
            if self.probes {
                inner
                    .due
                    .push(Reverse((now + first_try, generation, key.clone())));
            }
            // An entry it replaces is dropped, and its queued try with it when that comes up.
            replaced.extend(inner.entries.insert(key, entry));
            added = true;
        }
        if !added {
            return;
        }
        let start = self.probes && !inner.scheduling;
        inner.scheduling |= self.probes;
        drop(inner);
        drop(replaced);
        if start {
            tokio::spawn(schedule(Arc::downgrade(self), self.wake.clone()));
        } else if self.probes {
            self.wake.notify_one();
        }
        self.bump();
    }

    /// Takes the routes of `key` away (nothing to do if it has none).
    pub fn withdraw(&self, key: &AllocKey) {
        let gone = self
            .inner
            .lock()
            .expect("routes poisoned")
            .entries
            .remove(key);
        if gone.is_some() {
            drop(gone);
            self.bump();
        }
    }

    /// The table's revision and its routes, sorted by name.
    pub fn snapshot(&self) -> (u64, Vec<Route>) {
        let inner = self.inner.lock().expect("routes poisoned");
        let revision = *self.revision.borrow();
        let mut routes: Vec<Route> = inner
            .entries
            .iter()
            .flat_map(|(key, e)| {
                e.names.iter().map(|name| Route {
                    name: name.clone(),
                    network: key.network.clone(),
                    address: e.address,
                    port: e.port,
                    state: e.state,
                    container_id: key.container_id.clone(),
                })
            })
            .collect();
        routes.sort_by(|a, b| (&a.name, &a.network).cmp(&(&b.name, &b.network)));
        (revision, routes)
    }

    /// Waits until the revision is above `after`, for at most `timeout`; answers the table then.
    pub async fn wait_past(&self, after: u64, timeout: Duration) -> (u64, Vec<Route>) {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r > after)).await;
        self.snapshot()
    }

    fn bump(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    /// The next try that is due by `now`, with its target; else when the next one is due.
    fn next_due(&self, now: Instant) -> Result<Try, Option<Instant>> {
        let mut inner = self.inner.lock().expect("routes poisoned");
        loop {
            let Some(Reverse((at, generation, _))) = inner.due.peek() else {
                return Err(None);
            };
            let (at, generation) = (*at, *generation);
            if at > now {
                return Err(Some(at));
            }
            let Some(Reverse((_, _, key))) = inner.due.pop() else {
                return Err(None);
            };
            let Some(e) = inner
                .entries
                .get(&key)
                .filter(|e| e.generation == generation)
            else {
                continue;
            };
            return Ok(Try {
                target: SocketAddr::new(e.address, e.port),
                limit: interval(e.state, e.ever_up).min(TRY_LIMIT),
                key,
                generation,
                started: now,
            });
        }
    }

    /// Records what a try found and queues the route's next one (nothing if its publication is
    /// gone).
    fn tried(&self, t: Try, accepted: bool) {
        let mut inner = self.inner.lock().expect("routes poisoned");
        let Some(entry) = inner
            .entries
            .get_mut(&t.key)
            .filter(|e| e.generation == t.generation)
        else {
            return;
        };
        let state = match (entry.state, accepted) {
            (_, true) => {
                entry.failures = 0;
                entry.ever_up = true;
                State::Up
            }
            (State::Probing, false) if entry.published.elapsed() >= DOWN_AFTER => State::Down,
            (State::Up, false) => {
                entry.failures = entry.failures.saturating_add(1);
                if entry.failures >= 2 {
                    State::Down
                } else {
                    State::Up
                }
            }
            (s, false) => s,
        };
        let changed = entry.state != state;
        entry.state = state;
        let next = t.started + interval(state, entry.ever_up);
        inner.due.push(Reverse((next, t.generation, t.key.clone())));
        drop(inner);
        if changed {
            let key = &t.key;
            tracing::info!(network = %key.network, container_id = %key.container_id, ?state, "route");
            self.bump();
        }
    }
}

/// One try of a route's port.
struct Try {
    key: Arc<AllocKey>,
    generation: u64,
    target: SocketAddr,
    limit: Duration,
    started: Instant,
}

/// Whether `addr` accepts a TCP connection within `limit`.
async fn accepts(addr: SocketAddr, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// How often a route in `state` is tried (`ever_up`: its port has accepted a connection).
fn interval(state: State, ever_up: bool) -> Duration {
    match (state, ever_up) {
        (State::Probing, _) => PROBE_EVERY,
        (State::Up, _) | (State::Down, true) => RECHECK_EVERY,
        (State::Down, false) => NEVER_UP_EVERY,
    }
}

/// The scheduler: starts each due try (no more than [`TRIES_PER_SECOND`]), runs the tries in
/// flight side by side, and records their answers; ends once the table is gone.
async fn schedule(routes: Weak<Routes>, wake: Arc<Notify>) {
    let spacing = Duration::from_secs(1) / TRIES_PER_SECOND;
    let mut in_flight: JoinSet<(Try, bool)> = JoinSet::new();
    let mut next_slot = Instant::now();
    loop {
        let now = Instant::now();
        let wait_until = {
            let Some(r) = routes.upgrade() else { return };
            if next_slot > now {
                Some(next_slot)
            } else {
                match r.next_due(now) {
                    Ok(t) => {
                        next_slot = now + spacing;
                        in_flight.spawn(async move {
                            let accepted = accepts(t.target, t.limit).await;
                            (t, accepted)
                        });
                        continue;
                    }
                    Err(at) => at,
                }
            }
        };
        let sleep = async {
            match wait_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(done) = in_flight.join_next() => {
                let Some(r) = routes.upgrade() else { return };
                if let Ok((t, accepted)) = done {
                    r.tried(t, accepted);
                }
            }
            _ = sleep => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn named(id: &str, name: &str, aliases: &[&str], port: Option<u16>) -> Allocation {
        let mut a = crate::ipam::tests::alloc(id, Ipv4Addr::LOCALHOST);
        a.container_name = Some(name.into());
        a.aliases = aliases.iter().map(|s| s.to_string()).collect();
        a.port = port;
        a
    }

    #[test]
    fn names_are_the_container_name_and_aliases_but_not_the_short_id() {
        let id = "7d6d04c1599712345678";
        let a = named(id, "web", &["web", "api", "7d6d04c15997"], None);
        assert_eq!(names_of(&a), ["web", "api"]);
        let mut unnamed = a.clone();
        unnamed.container_name = None;
        unnamed.aliases.clear();
        assert!(names_of(&unnamed).is_empty());
    }

    #[tokio::test]
    async fn the_start_ups_records_are_routed_in_one_revision() {
        let routes = Arc::new(Routes::default());
        let (before, _) = routes.snapshot();
        let named_ones: Vec<Allocation> = (0..3)
            .map(|i| named(&format!("c{i}"), &format!("web{i}"), &[], Some(8080)))
            .collect();
        let mut unnamed = named("c9", "x", &[], None);
        unnamed.container_name = None;
        let summaries: Vec<AllocSummary> = named_ones
            .iter()
            .chain([&unnamed])
            .map(AllocSummary::from)
            .collect();
        routes.publish_summaries(&summaries);
        let (after, list) = routes.snapshot();
        assert_eq!(after, before + 1);
        let names: Vec<(&str, u16)> = list.iter().map(|r| (r.name.as_str(), r.port)).collect();
        assert_eq!(names, [("web0", 8080), ("web1", 8080), ("web2", 8080)]);
        // Nothing to route: no new revision.
        routes.publish_summaries(&summaries[3..]);
        assert_eq!(routes.snapshot().0, after);
    }

    /// An ADD's route is first tried a probe interval later (its container has not started yet);
    /// a route restored at start-up, whose container runs already, at once. The test reads the
    /// queue itself with time paused: the scheduler never gets to run, so nothing connects.
    #[tokio::test(start_paused = true)]
    async fn a_new_attachment_is_first_tried_a_probe_interval_later_a_restored_one_at_once() {
        let routes = Arc::new(Routes::probing());
        let now = Instant::now();
        routes.publish(&named("c1", "web", &[], None));
        match routes.next_due(now + PROBE_EVERY - Duration::from_millis(1)) {
            Err(Some(at)) => assert_eq!(at, now + PROBE_EVERY),
            other => panic!("tried too early: {:?}", other.map(|t| t.started)),
        }
        assert!(routes.next_due(now + PROBE_EVERY).is_ok());

        let restored = AllocSummary::from(&named("c2", "db", &[], None));
        routes.publish_summaries([&restored]);
        assert!(routes.next_due(now).is_ok(), "a restored route waits");
    }

    #[tokio::test]
    async fn a_table_without_probes_connects_to_nothing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes = Arc::new(Routes::default());
        routes.publish(&named("c1", "web", &[], Some(port)));
        let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(accepted.is_err(), "a connection came");
        assert_eq!(routes.snapshot().1[0].state, State::Probing);
    }

    #[tokio::test]
    async fn a_port_that_accepts_is_up_and_a_withdrawn_route_is_gone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes = Arc::new(Routes::probing());
        let a = named("c1", "web", &["api"], Some(port));
        routes.publish(&a);
        let (rev, list) = routes.snapshot();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].state, State::Probing);
        let (rev2, list) = routes.wait_past(rev, Duration::from_secs(2)).await;
        assert!(rev2 > rev);
        assert_eq!(list[0].state, State::Up, "{list:?}");
        assert_eq!((list[0].name.as_str(), list[0].port), ("api", port));

        // The port stops answering: down after two failed tries.
        drop(listener);
        let mut state = State::Up;
        let deadline = Instant::now() + Duration::from_secs(5);
        while state == State::Up && Instant::now() < deadline {
            let (r, list) = routes
                .wait_past(routes.snapshot().0, Duration::from_secs(3))
                .await;
            let _ = r;
            state = list[0].state;
        }
        assert_eq!(state, State::Down);

        routes.withdraw(&a.key());
        assert!(routes.snapshot().1.is_empty());
    }

    /// When a route's next try is due after `tried` recorded a failed try started now.
    fn next_after_failure(routes: &Routes, a: &Allocation, generation: u64) -> Duration {
        let now = Instant::now();
        // Only the try recorded here stays queued.
        while routes.next_due(now + Duration::from_secs(3600)).is_ok() {}
        routes.tried(
            Try {
                key: Arc::new(a.key()),
                generation,
                target: SocketAddr::new(a.addresses().next().unwrap(), 80),
                limit: TRY_LIMIT,
                started: now,
            },
            false,
        );
        match routes.next_due(now) {
            Err(Some(at)) => at - now,
            other => panic!("no later try queued: {:?}", other.map(|t| t.started)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_that_never_answered_is_tried_less_often_once_down() {
        // No probes: the test plays the scheduler, and nothing connects anywhere.
        let routes = Arc::new(Routes::default());
        let db = named("c1", "db", &[], None);
        routes.publish_parts(db.key(), names_of(&db), db.addresses().next(), None);
        assert_eq!(next_after_failure(&routes, &db, 1), PROBE_EVERY);
        tokio::time::advance(DOWN_AFTER).await;
        assert_eq!(next_after_failure(&routes, &db, 1), NEVER_UP_EVERY);
        assert_eq!(routes.snapshot().1[0].state, State::Down);

        // One that was up and stopped answering comes back within a second.
        let web = named("c2", "web", &[], None);
        routes.publish_parts(web.key(), names_of(&web), web.addresses().next(), None);
        let now = Instant::now();
        let up = Try {
            key: Arc::new(web.key()),
            generation: 2,
            target: SocketAddr::new(web.addresses().next().unwrap(), 80),
            limit: TRY_LIMIT,
            started: now,
        };
        routes.tried(up, true);
        // Two failures in a row make it down; it stays on the one-second recheck.
        assert_eq!(next_after_failure(&routes, &web, 2), RECHECK_EVERY);
        assert_eq!(next_after_failure(&routes, &web, 2), RECHECK_EVERY);
        let states: Vec<State> = routes.snapshot().1.iter().map(|r| r.state).collect();
        assert_eq!(states, [State::Down, State::Down], "db, web");
    }

    #[tokio::test]
    async fn many_routes_are_tried_by_one_scheduler_at_the_bounded_rate() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts (and counts) on a thread of its own, so the runtime only runs the scheduler.
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let routes = Arc::new(Routes::probing());
        let count = 400;
        let started = Instant::now();
        for i in 0..count {
            routes.publish(&named(
                &format!("c{i}"),
                &format!("web{i}"),
                &[],
                Some(port),
            ));
        }
        let all_up =
            |list: &[Route]| list.len() == count && list.iter().all(|r| r.state == State::Up);
        let mut list = routes.snapshot().1;
        while !all_up(&list) && started.elapsed() < Duration::from_secs(10) {
            list = routes
                .wait_past(routes.snapshot().0, Duration::from_secs(1))
                .await
                .1;
        }
        assert!(all_up(&list), "{list:?}");
        // 400 first tries at no more than 2,000 a second take at least 199.5 ms.
        let took = started.elapsed();
        let spacing = Duration::from_secs(1) / TRIES_PER_SECOND;
        assert!(took >= spacing * (count as u32 - 1), "{took:?}");
        // The connections were real (the counting thread may lag behind the handshakes).
        let counted = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while counted() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(counted() >= count, "{} accepted", counted());

        // A route published again is tried under its new publication, the old one's try dropped.
        let again = named("c0", "renamed", &[], Some(port));
        routes.publish(&again);
        let renamed = |list: &[Route]| {
            list.iter()
                .any(|r| r.name == "renamed" && r.state == State::Up)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut list = routes.snapshot().1;
        while !renamed(&list) && Instant::now() < deadline {
            list = routes
                .wait_past(routes.snapshot().0, Duration::from_secs(1))
                .await
                .1;
        }
        assert!(renamed(&list), "{list:?}");
        assert_eq!(list.len(), count, "{list:?}");
    }
}
