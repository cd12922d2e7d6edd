//! The route table the HTTP gateway follows: for each attached container, one route per name (its
//! name and its network aliases) to its address and port, with whether that port accepts TCP.
//!
//! The engine publishes an attachment when its ADD has committed and withdraws it as soon as its
//! record goes (on DEL before the container's interface is set aside, so a gateway never routes
//! to an interface that is going). A prober per attachment connects to the port from flatnetd's
//! namespace, where the gateway is: every 50 ms until the port first accepts a connection (up),
//! giving up after 30 s (down, then tried every second); once up, every second, two failures in a
//! row making it down. All probers together try at most [`TRIES_PER_SECOND`] connections a second
//! (so with more than 100 ports awaiting their first answer, each is tried less often than every
//! 50 ms, and 10,000 attachments made at once cost the host bounded work). Every change bumps the
//! table's revision, which a reader can wait past.

pub mod http;

use crate::ipam::{AllocKey, Allocation};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The port a route uses when the container named none.
pub const DEFAULT_PORT: u16 = 80;
/// How often a port that has not accepted a connection yet is tried.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long a new attachment's port may take to accept a connection before it is marked down.
pub const DOWN_AFTER: Duration = Duration::from_secs(30);
/// How often a port is tried once up, or once marked down.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How many connections all probers together try a second at most.
pub const TRIES_PER_SECOND: u32 = 2_000;

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
    network: String,
    container_id: String,
    address: IpAddr,
    port: u16,
    state: State,
    /// Which publication of the key this is, so a prober of an earlier one changes nothing.
    generation: u64,
    prober: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(p) = &self.prober {
            p.abort();
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<AllocKey, Entry>,
    generation: u64,
}

pub struct Routes {
    /// Whether ports are tried at all: only a daemon that serves real attachments tries them
    /// ([`Routes::probing`]); an engine on a fake kernel has no container to connect to, and its
    /// addresses must not be tried from the machine's own namespace.
    probes: bool,
    inner: Mutex<Inner>,
    revision: watch::Sender<u64>,
    /// When the next try may start (see [`TRIES_PER_SECOND`]).
    next_try: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            probes: false,
            inner: Mutex::default(),
            revision: watch::channel(1).0,
            next_try: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }
}

/// The names an attachment is routed by: its container's name and its aliases, without the short
/// container id Podman adds to the aliases. None at all for a container without a name.
pub fn names_of(a: &Allocation) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let own = a.container_name.iter().cloned();
    for name in own.chain(a.aliases.iter().cloned()) {
        let id_prefix = name.len() >= 12 && a.container_id.starts_with(&name);
        if !name.is_empty() && !id_prefix && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

impl Routes {
    /// A table whose routes are probed (flatnetd's own); [`Routes::default`] leaves every route
    /// `Probing`.
    pub fn probing() -> Routes {
        Routes {
            probes: true,
            ..Routes::default()
        }
    }

    /// Routes `a` (again, if it was), starting its prober. An attachment without a name or an
    /// address has nothing to be routed by.
    pub fn publish(self: &Arc<Self>, a: &Allocation) {
        self.publish_if(a, || true);
    }

    /// [`Routes::publish`], if `current()` still holds when the table is locked: a reader of older
    /// records (the start-up restore) asks whether the record is still there, since a DEL takes
    /// the routes away only after its record is gone.
    pub fn publish_if(self: &Arc<Self>, a: &Allocation, current: impl FnOnce() -> bool) {
        let names = names_of(a);
        let Some(address) = a.addresses().next().filter(|_| !names.is_empty()) else {
            return;
        };
        let port = a.port.unwrap_or(DEFAULT_PORT);
        let key = a.key();
        let mut inner = self.inner.lock().expect("routes poisoned");
        if !current() {
            return;
        }
        inner.generation += 1;
        let generation = inner.generation;
        let target = SocketAddr::new(address, port);
        let prober = self
            .probes
            .then(|| tokio::spawn(probe(Arc::downgrade(self), key.clone(), generation, target)));
        let entry = Entry {
            names,
            network: a.network.clone(),
            container_id: a.container_id.clone(),
            address,
            port,
            state: State::Probing,
            generation,
            prober,
        };
        // An entry it replaces stops its prober as it is dropped.
        let replaced = inner.entries.insert(key, entry);
        drop(inner);
        drop(replaced);
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
            .values()
            .flat_map(|e| {
                e.names.iter().map(|name| Route {
                    name: name.clone(),
                    network: e.network.clone(),
                    address: e.address,
                    port: e.port,
                    state: e.state,
                    container_id: e.container_id.clone(),
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

    /// Waits for this prober's turn to try a connection.
    async fn turn(&self) {
        let slot = {
            let mut next = self.next_try.lock().await;
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + Duration::from_secs(1) / TRIES_PER_SECOND;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    fn bump(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    /// Records what a prober found; `false` once its publication is gone (the prober stops).
    fn set_state(&self, key: &AllocKey, generation: u64, state: State) -> bool {
        let mut inner = self.inner.lock().expect("routes poisoned");
        let Some(entry) = inner
            .entries
            .get_mut(key)
            .filter(|e| e.generation == generation)
        else {
            return false;
        };
        let changed = entry.state != state;
        entry.state = state;
        drop(inner);
        if changed {
            tracing::info!(network = %key.network, container_id = %key.container_id, ?state, "route");
            self.bump();
        }
        true
    }
}

/// Whether `addr` accepts a TCP connection within `limit`.
async fn accepts(addr: SocketAddr, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// How often a route in `state` is tried.
fn interval(state: State) -> Duration {
    match state {
        State::Probing => PROBE_EVERY,
        State::Up | State::Down => RECHECK_EVERY,
    }
}

async fn probe(routes: Weak<Routes>, key: AllocKey, generation: u64, addr: SocketAddr) {
    let started = Instant::now();
    let mut state = State::Probing;
    let mut failures = 0;
    loop {
        let tried = Instant::now();
        match routes.upgrade() {
            Some(r) => r.turn().await,
            None => return,
        }
        let ok = accepts(addr, interval(state).min(Duration::from_millis(500))).await;
        state = match (state, ok) {
            (_, true) => {
                failures = 0;
                State::Up
            }
            (State::Probing, false) if started.elapsed() >= DOWN_AFTER => State::Down,
            (State::Up, false) => {
                failures += 1;
                if failures >= 2 {
                    State::Down
                } else {
                    State::Up
                }
            }
            (s, false) => s,
        };
        match routes.upgrade() {
            Some(r) if r.set_state(&key, generation, state) => {}
            _ => return,
        }
        tokio::time::sleep(interval(state).saturating_sub(tried.elapsed())).await;
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
}
