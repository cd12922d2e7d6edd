//! Attach+detach cycles per second with P in parallel: each cycle is ADD then DEL of one fresh
//! container namespace, with the address checked after the ADD and its absence after the DEL (an
//! in-process netlink dump, about a tenth of a millisecond, inside the cycle for both plugins).
//! The two plugins take turns in blocks ordered Flatnet, reference, reference, Flatnet, so drift
//! in the machine's load hits both alike.

use super::cleanup::NetnsSet;
use super::cni::{with_prev_result, Attachment, Plugin};
use super::Ctx;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Completed cycles and the wall time they took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    pub cycles: usize,
    pub wall: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.cycles as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs `f` on every item with `threads` workers (spawned from the calling thread, so in its
/// network namespace); stops handing out items on SIGINT or at the run's deadline.
pub fn parallel<T: Sync>(ctx: &Ctx, items: &[T], threads: usize, f: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                ctx.check();
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                f(item);
            });
        }
    });
}

/// `total` cycles per plugin at `threads` in parallel; returns [Flatnet, reference].
pub fn cycles(
    ctx: &Ctx,
    plugins: [&Plugin; 2],
    confs: [&Value; 2],
    threads: usize,
    total: usize,
) -> [Rate; 2] {
    let half = total / 2;
    let blocks = [(0, half), (1, half), (1, total - half), (0, total - half)];
    let names: Vec<String> = blocks
        .iter()
        .enumerate()
        .flat_map(|(b, &(_, count))| (0..count).map(move |i| (b, i)))
        .map(|(b, i)| format!("{}t{threads}b{b}-{i}", ctx.tag))
        .collect();
    let netns = NetnsSet::create(names);
    let add_conf: [Vec<u8>; 2] = [confs[0].to_string().into(), confs[1].to_string().into()];

    let mut rates = [Rate::default(); 2];
    let mut offset = 0;
    for &(p, count) in &blocks {
        let plugin = plugins[p];
        let attachments: Vec<Attachment> = netns.names()[offset..offset + count]
            .iter()
            .map(|name| ctx.attachment(name, "eth0"))
            .collect();
        offset += count;
        let rate = timed_cycles(ctx, &attachments, threads, |a| {
            let Some((_, added)) = plugin.add(a, &add_conf[p]) else {
                return false;
            };
            let ok = plugin.verify_added(a, &added);
            let prev = with_prev_result(confs[p], &added.result);
            plugin.quiet("DEL", a, &prev).is_some() && plugin.verify_deleted(a, &added) && ok
        });
        rates[p].wall += rate.wall;
        rates[p].cycles += rate.cycles;
    }
    drop(netns);
    rates
}

/// `total` cycles at `threads` in parallel made without any plugin process: the benchmark's
/// threads send flatnetd the gRPC calls the shim would (see [`Plugin::add_without_process`]),
/// with the same checks after ADD and DEL. What flatnetd and the kernel manage by themselves,
/// beside [`cycles`], where two processes start per cycle.
pub fn cycles_without_process(
    ctx: &Ctx,
    plugin: &Plugin,
    conf: &Value,
    threads: usize,
    total: usize,
) -> Rate {
    let socket = conf["socket"]
        .as_str()
        .expect("Flatnet's config names its socket");
    let names: Vec<String> = (0..total)
        .map(|i| format!("{}t{threads}g-{i}", ctx.tag))
        .collect();
    let netns = NetnsSet::create(names);
    let add_conf: Vec<u8> = conf.to_string().into();
    let attachments: Vec<Attachment> = netns
        .names()
        .iter()
        .map(|name| ctx.attachment(name, "eth0"))
        .collect();
    let rate = timed_cycles(ctx, &attachments, threads, |a| {
        let Some(added) = plugin.add_without_process(socket, a, &add_conf) else {
            return false;
        };
        let ok = plugin.verify_added(a, &added);
        let prev = with_prev_result(conf, &added.result);
        plugin.del_without_process(socket, a, &prev) && plugin.verify_deleted(a, &added) && ok
    });
    drop(netns);
    rate
}

/// Runs `cycle` on every attachment with `threads` workers: the cycles that succeeded (`cycle`
/// returned `true`: both calls and both checks) and the wall time of them all.
fn timed_cycles(
    ctx: &Ctx,
    attachments: &[Attachment],
    threads: usize,
    cycle: impl Fn(&Attachment) -> bool + Sync,
) -> Rate {
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    parallel(ctx, attachments, threads, |a| {
        if cycle(a) {
            done.fetch_add(1, Ordering::SeqCst);
        }
    });
    Rate {
        cycles: done.load(Ordering::SeqCst),
        wall: started.elapsed(),
    }
}
