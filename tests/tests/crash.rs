//! Crash safety: ADD/DEL churn through the real shim while flatnetd is SIGKILLed at random moments
//! and restarted on the same state dir. Afterwards: no address is live twice, no live allocation
//! was lost, a DEL that succeeded stays done, containers the runtime lost hold nothing, and once
//! every container is deleted nothing is left (no allocation, no `fn-*` link) and the whole range
//! can be handed out again. Without root (or a tool it needs) it fails, saying what is missing.
//!
//! The workers behave like a runtime: a container it believes detached gets ADD; one whose ADD
//! succeeded gets CHECK or DEL (now and then a repeated ADD, which must give the same address);
//! one whose ADD failed gets DEL, as a runtime cleans up after a failed ADD. A DEL must always
//! succeed, also while the daemon is down (the shim spools it). An ADD or CHECK that overlapped no
//! kill and no restart must succeed; one that did may fail, but only with code 11.
//!
//! Now and then the runtime loses a container instead: its namespace is deleted and no DEL ever
//! comes (a runtime that crashed, `podman rm -f` with broken state), either after a failed ADD or
//! while it is attached. Only flatnetd's reconcile can give such an address back; the container
//! is replaced by a fresh one so the churn goes on with the same number of containers.

use flatnet_tests::reliability::Rng;
use flatnet_tests::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Containers the workers churn on at any time.
const POOL: usize = 40;
const WORKERS: usize = 8;
/// The range holds 60 addresses: the pool plus every lost container's address that only the next
/// restart gives back, so the churn never runs dry unless addresses leak.
const RANGE_START: Ipv4Addr = Ipv4Addr::new(10, 87, 1, 10);
const RANGE_END: Ipv4Addr = Ipv4Addr::new(10, 87, 1, 69);
const RANGE_SIZE: usize = 60;
/// At most this many containers are lost while attached, and this many after a failed ADD.
const MAX_LOST_EACH: usize = 6;

/// What the runtime believes about one container.
#[derive(Debug, Clone)]
enum Belief {
    Detached,
    /// ADD succeeded with this result.
    Attached(Value),
    /// The last ADD failed: the runtime will DEL to clean up.
    Unknown,
}

/// The last call that succeeded for a container.
#[derive(Debug, Clone)]
enum LastOk {
    Add(String),
    Del,
}

/// One container as the runtime sees it.
struct Slot {
    c: Netns,
    belief: Belief,
    last_ok: Option<LastOk>,
    /// The latest events, for failure messages.
    history: Vec<String>,
}

impl Slot {
    fn new(c: Netns) -> Slot {
        Slot {
            c,
            belief: Belief::Detached,
            last_ok: None,
            history: Vec::new(),
        }
    }

    fn note(&mut self, event: String) {
        if self.history.len() >= 12 {
            self.history.remove(0);
        }
        self.history.push(event);
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}) history: {:#?}",
            self.c.label(),
            self.c.container_id(),
            self.history
        )
    }
}

/// A container the runtime lost: its namespace is gone and no DEL will come.
struct Lost {
    label: String,
    container_id: String,
    /// Its host veth when it had one (the kernel removes it with the namespace).
    host_veth: Option<String>,
    history: Vec<String>,
}

/// Counts for the summary line (and to show the churn really crossed kills).
#[derive(Debug, Default)]
struct Stats {
    adds_ok: AtomicU64,
    dels_ok: AtomicU64,
    checks_ok: AtomicU64,
    /// CHECKs that overlapped a kill or restart and got 11 (the only failure allowed to them).
    checks_try_again: AtomicU64,
    try_again: AtomicU64,
    disturbed: AtomicU64,
}

/// What the workers share.
struct Churn<'a> {
    host: &'a Host,
    conf: Value,
    /// Even: the daemon is up. Bumped before each kill and after each restart.
    epoch: AtomicU64,
    stats: Stats,
    violations: Mutex<Vec<String>>,
    lost: Mutex<Vec<Lost>>,
    /// Containers lost while attached, and after a failed ADD.
    lost_attached: AtomicUsize,
    lost_failed: AtomicUsize,
    /// Numbers the containers that replace lost ones.
    replacements: AtomicUsize,
}

/// Sets the flag when dropped, so the workers stop even if the kill loop panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn ipam() -> Value {
    json!({
        "subnet": "10.87.1.0/24",
        "rangeStart": RANGE_START.to_string(),
        "rangeEnd": RANGE_END.to_string(),
        "routes": [{"dst": "0.0.0.0/0"}],
    })
}

fn in_range(cidr: &str) -> bool {
    let ip = cidr.split('/').next().unwrap_or(cidr);
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|ip| ip >= RANGE_START && ip <= RANGE_END)
}

/// The host end of the container's eth0, found through the peer's ifindex.
fn host_end_of_eth0(host: &Host, c: &Netns) -> Option<String> {
    let peer = link(c.name(), "eth0")?["link_index"].as_u64()?;
    links(host.netns().name())
        .into_iter()
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| l["ifname"].as_str().map(str::to_string))
}

impl Churn<'_> {
    /// One runtime call for the container in `slot`, judged against the epochs it overlapped.
    fn step(&self, slot: &mut Slot, rng: &mut Rng) {
        let (host, conf) = (self.host, &self.conf);
        let belief = slot.belief.clone();
        if matches!(belief, Belief::Attached(_))
            && rng.chance(3)
            && self.lose(slot, &self.lost_attached, "attached")
        {
            return;
        }
        let e0 = self.epoch.load(Ordering::SeqCst);
        let (verb, out) = match &belief {
            Belief::Detached => ("ADD", host.add(&slot.c, conf)),
            Belief::Attached(_) if rng.chance(15) => ("ADD again", host.add(&slot.c, conf)),
            Belief::Attached(prev) if rng.chance(40) => {
                ("CHECK", host.check(&slot.c, &with_prev_result(conf, prev)))
            }
            Belief::Attached(prev) => ("DEL", host.del(&slot.c, &with_prev_result(conf, prev))),
            Belief::Unknown => ("DEL", host.del(&slot.c, conf)),
        };
        let e1 = self.epoch.load(Ordering::SeqCst);
        let undisturbed = e0 == e1 && e0.is_multiple_of(2);
        if !undisturbed {
            self.stats.disturbed.fetch_add(1, Ordering::Relaxed);
        }
        let violation = |slot: &mut Slot, why: String| {
            slot.note(format!("epochs {e0}->{e1} {verb}: VIOLATION {why}"));
            let entry = format!(
                "{why}\n  {}\n  {}",
                out.to_string().replace('\n', "\n  "),
                slot.describe()
            );
            self.violations
                .lock()
                .expect("no panic while held")
                .push(entry);
        };
        if out.status == 0 && verb == "DEL" {
            if !out.stdout.trim().is_empty() {
                violation(slot, "DEL succeeded but printed something".into());
            }
            self.stats.dels_ok.fetch_add(1, Ordering::Relaxed);
            slot.note(format!("epochs {e0}->{e1} DEL ok"));
            slot.belief = Belief::Detached;
            slot.last_ok = Some(LastOk::Del);
            return;
        }
        if verb == "CHECK" {
            // A healthy attachment passes CHECK whatever else the daemon is doing; only a CHECK
            // that overlapped a kill or restart may fail, and then only with "try again".
            if out.status == 0 && out.stdout.trim().is_empty() {
                self.stats.checks_ok.fetch_add(1, Ordering::Relaxed);
                slot.note(format!("epochs {e0}->{e1} CHECK ok"));
            } else if undisturbed {
                violation(slot, "CHECK of a healthy attachment failed".into());
            } else if out.code() != Some(11) {
                let why = format!(
                    "CHECK during a kill or restart failed with {:?}, not 11",
                    out.code()
                );
                violation(slot, why);
            } else {
                self.stats.checks_try_again.fetch_add(1, Ordering::Relaxed);
                slot.note(format!("epochs {e0}->{e1} CHECK got 11"));
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        if out.status == 0 {
            let Some(result) = out.json.clone() else {
                violation(slot, "ADD succeeded without a result".into());
                slot.belief = Belief::Unknown;
                return;
            };
            let cidr = result["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !in_range(&cidr) {
                violation(
                    slot,
                    format!("ADD gave {cidr:?}, not an address of the range"),
                );
            }
            if let Belief::Attached(prev) = &belief {
                if result_cidr(prev) != cidr {
                    let why = format!("a repeated ADD gave {cidr}, not {}", result_cidr(prev));
                    violation(slot, why);
                }
            }
            self.stats.adds_ok.fetch_add(1, Ordering::Relaxed);
            slot.note(format!("epochs {e0}->{e1} {verb} ok {cidr}"));
            slot.belief = Belief::Attached(result);
            slot.last_ok = Some(LastOk::Add(cidr));
            return;
        }
        let code = out.code();
        slot.note(format!("epochs {e0}->{e1} {verb} failed with {code:?}"));
        if verb == "DEL" {
            // DEL succeeds even while the daemon is down (the shim spools it).
            violation(slot, format!("DEL failed with {code:?}"));
        } else if undisturbed {
            violation(
                slot,
                format!("{verb} failed although no kill or restart overlapped it"),
            );
        } else if code != Some(11) {
            violation(
                slot,
                format!("{verb} during a kill or restart failed with {code:?}, not 11"),
            );
        }
        slot.belief = Belief::Unknown;
        if code == Some(11) {
            self.stats.try_again.fetch_add(1, Ordering::Relaxed);
            // A runtime backs off before it retries; spinning would only starve the restart.
            std::thread::sleep(Duration::from_millis(20));
        }
        // An ADD that was in flight when the daemon died may have left half an attachment: lose
        // such containers often, the others now and then.
        let in_flight_at_kill = e0.is_multiple_of(2) && e1 != e0;
        if verb == "ADD" && rng.chance(if in_flight_at_kill { 50 } else { 2 }) {
            self.lose(slot, &self.lost_failed, "after a failed ADD");
        }
    }

    /// The runtime loses the container: its namespace is deleted and no DEL follows. The slot gets
    /// a fresh container. `false` when enough containers were lost already.
    fn lose(&self, slot: &mut Slot, budget: &AtomicUsize, when: &str) -> bool {
        if budget.fetch_add(1, Ordering::SeqCst) >= MAX_LOST_EACH {
            return false;
        }
        let n = self.replacements.fetch_add(1, Ordering::SeqCst);
        let host_veth = host_end_of_eth0(self.host, &slot.c);
        slot.note(format!("lost {when} (host veth {host_veth:?})"));
        slot.c.delete();
        let fresh = Slot::new(self.host.container(&format!("crash-new{n}")));
        let old = std::mem::replace(slot, fresh);
        self.lost.lock().expect("no panic while held").push(Lost {
            label: old.c.label().to_string(),
            container_id: old.c.container_id().to_string(),
            host_veth,
            history: old.history,
        });
        true
    }
}

#[test]
fn sigkill_during_churn_loses_and_leaks_nothing() {
    require_root();
    let host = Host::start();
    let churn = Churn {
        host: &host,
        conf: host.conf(json!({"ipam": ipam()})),
        epoch: AtomicU64::new(0),
        stats: Stats::default(),
        violations: Mutex::new(Vec::new()),
        lost: Mutex::new(Vec::new()),
        lost_attached: AtomicUsize::new(0),
        lost_failed: AtomicUsize::new(0),
        replacements: AtomicUsize::new(0),
    };
    let conf = churn.conf.clone();
    let slots: Vec<Mutex<Slot>> = (0..POOL)
        .map(|i| Mutex::new(Slot::new(host.container(&format!("crash{i}")))))
        .collect();
    let mut rng = Rng::from_env_or_clock("FLATNET_CRASH_SEED");
    let worker_seeds: Vec<u64> = (0..WORKERS).map(|_| rng.next_u64()).collect();
    let stop = AtomicBool::new(false);

    // Churn, and kill the daemon at random moments.
    let kills = rng.range(6, 11);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for (w, seed) in worker_seeds.iter().enumerate() {
            let (churn, slots, stop) = (&churn, &slots, &stop);
            let mut rng = Rng::new(*seed);
            s.spawn(move || {
                // Each worker owns every WORKERS-th slot: one call per container at a time, as a
                // runtime does.
                let mine: Vec<usize> = (w..POOL).step_by(WORKERS).collect();
                while !stop.load(Ordering::SeqCst) {
                    let i = mine[rng.range(0, mine.len() as u64) as usize];
                    let mut slot = slots[i].lock().expect("each slot has one worker");
                    churn.step(&mut slot, &mut rng);
                }
            });
        }
        for k in 0..kills {
            std::thread::sleep(Duration::from_millis(rng.range(150, 900)));
            churn.epoch.fetch_add(1, Ordering::SeqCst);
            host.sigkill_daemon();
            let down = rng.range(0, 400);
            std::thread::sleep(Duration::from_millis(down));
            host.start_daemon_again();
            churn.epoch.fetch_add(1, Ordering::SeqCst);
            eprintln!("kill {}/{kills}: down for {down} ms", k + 1);
        }
        // Some undisturbed churn after the last restart.
        std::thread::sleep(Duration::from_millis(500));
    });
    let lost = churn.lost.into_inner().expect("workers finished");
    let stats = &churn.stats;
    eprintln!(
        "churn: {kills} kills, {} ADDs, {} CHECKs and {} DELs succeeded, {} ADDs and {} CHECKs \
         got 11, {} calls overlapped a kill or restart, {} containers lost ({} of them with a \
         host veth)",
        stats.adds_ok.load(Ordering::Relaxed),
        stats.checks_ok.load(Ordering::Relaxed),
        stats.dels_ok.load(Ordering::Relaxed),
        stats.try_again.load(Ordering::Relaxed),
        stats.checks_try_again.load(Ordering::Relaxed),
        stats.disturbed.load(Ordering::Relaxed),
        lost.len(),
        lost.iter().filter(|l| l.host_veth.is_some()).count(),
    );
    let violations = churn.violations.into_inner().expect("workers finished");
    assert!(
        violations.is_empty(),
        "{} calls broke the rules during churn:\n\n{}",
        violations.len(),
        violations.join("\n\n")
    );
    assert!(
        stats.adds_ok.load(Ordering::Relaxed) > 0
            && stats.dels_ok.load(Ordering::Relaxed) > 0
            && stats.checks_ok.load(Ordering::Relaxed) > 0,
        "the churn did no work"
    );

    // The kernel removes a deleted namespace's veth pair asynchronously: wait for the lost ones,
    // so the restart below sees them gone.
    let lost_veths: Vec<&str> = lost.iter().filter_map(|l| l.host_veth.as_deref()).collect();
    assert!(
        poll(Duration::from_secs(10), || {
            let now = host.host_veths();
            lost_veths.iter().all(|v| !now.iter().any(|n| n == v))
        }),
        "the host veths of deleted namespaces are still there: {lost_veths:?}"
    );

    // A final crash and restart, with nothing in flight.
    host.sigkill_daemon();
    host.start_daemon_again();

    let slots: Vec<Slot> = slots
        .into_iter()
        .map(|s| s.into_inner().expect("workers finished"))
        .collect();
    let eth0: Vec<Vec<String>> = slots.iter().map(|s| addrs(s.c.name(), "eth0")).collect();
    let allocations = ctl::allocations(&host, &[]);
    let allocated: HashMap<String, String> = allocations
        .iter()
        .map(|a| {
            (
                a["containerId"].as_str().unwrap_or_default().to_string(),
                a["address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();

    // (a) No address is live on two containers.
    let mut holders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, addrs) in eth0.iter().enumerate() {
        assert!(
            addrs.len() <= 1,
            "eth0 has several addresses: {addrs:?}\n{}",
            slots[i].describe()
        );
        for a in addrs {
            holders.entry(a.as_str()).or_default().push(i);
        }
    }
    for (addr, who) in &holders {
        assert!(
            who.len() == 1,
            "{addr} is live on {} containers:\n{}\nflatnetd allocations: {allocations:#?}",
            who.len(),
            who.iter()
                .map(|i| slots[*i].describe())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // (b) No live allocation lost: a container whose last successful call was ADD, and whose
    // eth0 still holds an address, is in the daemon's allocations with that very address.
    for (i, s) in slots.iter().enumerate() {
        let Some(LastOk::Add(cidr)) = &s.last_ok else {
            continue;
        };
        let Some(live) = eth0[i].first() else {
            continue;
        };
        assert_eq!(
            live,
            cidr,
            "eth0 holds another address than the last successful ADD gave\n{}",
            s.describe()
        );
        assert_eq!(
            allocated.get(s.c.container_id()),
            Some(cidr),
            "{cidr} is live after a successful ADD, but flatnetd lost its allocation\n{}\n\
             allocations: {allocations:#?}",
            s.describe()
        );
    }

    // A successful DEL is final (the runtime never repeats it), and a lost container never
    // comes back: neither may keep an address or an interface once the daemon has restarted.
    let settled = || {
        let allocated: HashSet<String> = ctl::allocations(&host, &[])
            .iter()
            .filter_map(|a| a["containerId"].as_str().map(str::to_string))
            .collect();
        let deleted: Vec<String> = slots
            .iter()
            .filter(|s| matches!(s.belief, Belief::Detached))
            .filter(|s| {
                allocated.contains(s.c.container_id()) || !non_lo_links(s.c.name()).is_empty()
            })
            .map(Slot::describe)
            .collect();
        let lost: Vec<String> = lost
            .iter()
            .filter(|l| allocated.contains(&l.container_id))
            .map(|l| format!("{} ({}) history: {:#?}", l.label, l.container_id, l.history))
            .collect();
        (deleted, lost)
    };
    if !poll(Duration::from_secs(5), || {
        let (d, l) = settled();
        d.is_empty() && l.is_empty()
    }) {
        let (deleted, lost) = settled();
        panic!(
            "after the restart, {} containers whose DEL succeeded and {} lost containers still \
             hold an address or an interface:\n{}\n{}\nallocations: {:#?}",
            deleted.len(),
            lost.len(),
            deleted.join("\n"),
            lost.join("\n"),
            ctl::allocations(&host, &[])
        );
    }

    // (c) DEL every container: all succeed, and nothing is left.
    let pool: Vec<&Netns> = slots.iter().map(|s| &s.c).collect();
    let dels = Mutex::new(Vec::new());
    for_each_parallel(&pool, WORKERS, |c| {
        let out = host.del(c, &conf);
        dels.lock().expect("no panic while held").push(out);
    });
    let failed: Vec<String> = dels
        .into_inner()
        .expect("workers finished")
        .iter()
        .filter(|o| o.status != 0 || !o.stdout.trim().is_empty())
        .map(|o| o.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "DEL after the churn failed:\n{}",
        failed.join("\n")
    );
    let clean = poll(Duration::from_secs(5), || {
        ctl::allocations(&host, &[]).is_empty() && host.host_veths().is_empty()
    });
    assert!(
        clean,
        "after every container was deleted, flatnetd still holds {:#?}\nand the host still has \
         fn-* links {:?}",
        ctl::allocations(&host, &[]),
        host.host_veths()
    );
    for c in &pool {
        assert_eq!(
            non_lo_links(c.name()),
            Vec::<String>::new(),
            "{} keeps an interface after DEL",
            c.label()
        );
    }

    // (d) No address leaked: the whole range can be handed out again, and not one more.
    let extra: Vec<Netns> = (POOL..RANGE_SIZE)
        .map(|i| host.container(&format!("crash{i}")))
        .collect();
    let all: Vec<&Netns> = pool.iter().copied().chain(extra.iter()).collect();
    let results = Mutex::new(Vec::new());
    for_each_parallel(&all, WORKERS, |c| {
        let out = host.add(c, &conf);
        results.lock().expect("no panic while held").push(out);
    });
    let results = results.into_inner().expect("workers finished");
    let failed: Vec<String> = results
        .iter()
        .filter(|o| o.status != 0)
        .map(|o| o.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {RANGE_SIZE} ADDs failed: addresses leaked\n{}\nallocations: {:#?}",
        failed.len(),
        failed.join("\n"),
        ctl::allocations(&host, &[])
    );
    let got: HashSet<String> = results.iter().map(|o| result_cidr(&o.result())).collect();
    assert_eq!(got.len(), RANGE_SIZE, "duplicate addresses: {got:?}");
    assert!(got.iter().all(|c| in_range(c)), "{got:?}");
    let one_more = host.container("crash-one-more");
    host.add(&one_more, &conf).assert_code(100);
}
