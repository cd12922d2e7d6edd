//! Sequential measurements: VERSION (plugin start-up cost), taking turns one call at a time, and
//! ADD / CHECK / DEL latency, taking turns in blocks (see [`blocks`]). All container namespaces
//! exist before the first timed call; every ADD is followed (untimed) by a check that its address
//! is on the interface, every DEL by a check that it is gone.

use super::cleanup::NetnsSet;
use super::cni::{with_prev_result, Added, Attachment, Plugin};
use super::phases::Sample;
use super::stats::{summarize, Summary};
use super::Ctx;
use serde_json::Value;
use std::time::Duration;

/// Untimed rounds before timing: creates the bridges, warms caches and the daemon.
const WARM_UP: usize = 3;

/// Which side goes first in round `i`: alternate, so neither always runs right after the other.
pub fn order(i: usize) -> [usize; 2] {
    if i % 2 == 1 {
        [1, 0]
    } else {
        [0, 1]
    }
}

/// Median-focused summary of `runs` VERSION calls of each plugin, alternating.
pub fn version(ctx: &Ctx, plugins: [&Plugin; 2], runs: usize) -> [Option<Summary>; 2] {
    for p in plugins {
        for _ in 0..WARM_UP {
            p.version();
        }
    }
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        ctx.check();
        for p in order(i) {
            if let Some(d) = plugins[p].version() {
                samples[p].push(d);
            }
        }
    }
    [summarize(&samples[0]), summarize(&samples[1])]
}

/// ADD, CHECK and DEL latency of each plugin.
/// The order of the timed ADDs, CHECKs and DELs of `n` containers per plugin: which plugin and
/// which container. In blocks of half each, Flatnet (0), reference (1), reference, Flatnet, as the
/// cycles are: taking turns call by call made each plugin's calls pay for the kernel work the
/// other one's previous call left behind. Measured both ways on one machine, the code otherwise
/// the same: Flatnet's ADD p50 1.15–1.16 ms call by call and 1.01–1.02 ms in blocks, the
/// reference's 5.12–5.21 ms and 5.11–5.13 ms. (Likely, not measured apart: the reference's veths
/// and containers have IPv6 on, so address detection and multicast reports follow each of its
/// ADDs, partly under the RTNL lock every link change waits for.)
pub fn blocks(n: usize) -> Vec<(usize, usize)> {
    let half = n / 2;
    let block = |p: usize, range: std::ops::Range<usize>| range.map(move |i| (p, i));
    block(0, 0..half)
        .chain(block(1, 0..half))
        .chain(block(1, half..n))
        .chain(block(0, half..n))
        .collect()
}

pub struct Latency {
    pub add: [Option<Summary>; 2],
    pub check: [Option<Summary>; 2],
    pub del: [Option<Summary>; 2],
}

/// `n` containers per plugin: all ADDs (taking turns), then all CHECKs, then all DELs, so up to
/// `n` attachments of each plugin exist at once, as on a busy host.
pub fn latency(ctx: &Ctx, plugins: [&Plugin; 2], confs: [&Value; 2], n: usize) -> Latency {
    let total = n + WARM_UP;
    let names: Vec<String> = (0..2)
        .flat_map(|p| (0..total).map(move |i| (p, i)))
        .map(|(p, i)| format!("{}s{p}-{i}", ctx.tag))
        .collect();
    let netns = NetnsSet::create(names);
    let attachment = |p: usize, i: usize| -> Attachment {
        let name = &netns.names()[p * total + i];
        ctx.attachment(name, "eth0")
    };
    let add_conf: [Vec<u8>; 2] = [confs[0].to_string().into(), confs[1].to_string().into()];

    // Warm-up: the last WARM_UP containers of each side, a full ADD/CHECK/DEL each, untimed.
    for i in n..total {
        ctx.check();
        for p in order(i) {
            let a = attachment(p, i);
            let plugin = plugins[p];
            if let Some((_, added)) = plugin.add(&a, &add_conf[p]) {
                plugin.verify_added(&a, &added);
                let prev = with_prev_result(confs[p], &added.result);
                plugin.quiet("CHECK", &a, &prev);
                if plugin.quiet("DEL", &a, &prev).is_some() {
                    plugin.verify_deleted(&a, &added);
                }
            }
        }
    }

    // Per container index, what each side's ADD handed out.
    let mut added: Vec<[Option<Added>; 2]> = vec![[None, None]; n];
    let mut add: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut check: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut del: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];

    let plan = blocks(n);
    for &(p, i) in &plan {
        ctx.check();
        let a = attachment(p, i);
        if let Some((d, result)) = plugins[p].add(&a, &add_conf[p]) {
            add[p].push(d);
            plugins[p].verify_added(&a, &result);
            added[i][p] = Some(result);
        }
    }
    for &(p, i) in &plan {
        ctx.check();
        let Some(result) = &added[i][p] else { continue };
        let prev = with_prev_result(confs[p], &result.result);
        if let Some(d) = plugins[p].quiet("CHECK", &attachment(p, i), &prev) {
            check[p].push(d);
        }
    }
    for &(p, i) in &plan {
        ctx.check();
        let Some(result) = &added[i][p] else { continue };
        let a = attachment(p, i);
        let prev = with_prev_result(confs[p], &result.result);
        if let Some(d) = plugins[p].quiet("DEL", &a, &prev) {
            del[p].push(d);
            plugins[p].verify_deleted(&a, result);
        }
    }
    drop(netns);
    Latency {
        add: [summarize(&add[0]), summarize(&add[1])],
        check: [summarize(&check[0]), summarize(&check[1])],
        del: [summarize(&del[0]), summarize(&del[1])],
    }
}

/// `n` ADDs of Flatnet one after another for [`super::phases`]: each in a namespace of its own,
/// run with `FLATNET_TIMINGS=1`, verified, then DELeted and verified (untimed) before the next.
pub fn timed_phases(ctx: &Ctx, flatnet: &Plugin, conf: &Value, n: usize) -> Vec<Sample> {
    let names: Vec<String> = (0..n).map(|i| format!("{}t-{i}", ctx.tag)).collect();
    let netns = NetnsSet::create(names);
    let mut samples = Vec::with_capacity(n);
    for name in netns.names() {
        ctx.check();
        let a = ctx.attachment(name, "eth0");
        let Some((wall, stderr)) = flatnet.add_then_del(&a, conf, &[("FLATNET_TIMINGS", "1")])
        else {
            continue;
        };
        samples.push(Sample {
            wall,
            container_id: a.container_id.clone(),
            stderr,
        });
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_give_each_container_of_each_plugin_one_turn_flatnet_first_and_last() {
        let plan = blocks(5);
        assert_eq!(
            plan,
            [
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3),
                (1, 4),
                (0, 2),
                (0, 3),
                (0, 4)
            ]
        );
        let mut seen = blocks(200);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 400);
    }
}
