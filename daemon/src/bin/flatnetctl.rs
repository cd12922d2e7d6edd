//! `flatnetctl`: look at what flatnetd holds and does, over its socket (`flatnet.v1.Inspect`).
//! Human tables by default, `--json` for scripts; one place ([`connect`]) explains a daemon that
//! is not there, one place ([`explain`]) turns the daemon's errors into messages.

use anyhow::{bail, Context};
use flatnet_proto::v1::inspect_client::InspectClient;
use flatnet_proto::v1::{self, get_allocation_request::Key, Allocation, AllocationEvent};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

const USAGE: &str = "usage: flatnetctl [--socket PATH] [--json] COMMAND [ARGS]

commands:
  status                                   the daemon: version, uptime, boot id, allocations,
                                           pending releases, socket, state dir
  networks                                 networks with their addresses in use and free
  allocations [--network NAME] [--container ID|NAME]
                                           addresses held by containers (alias: ls)
  show IP|CONTAINER [--network NAME]       one address, or one container (id, id prefix or name)
  gc                                       sweep now: release addresses of containers that are
                                           gone, remove stray fn-* links, apply spooled DELs
  watch [--network NAME] [--count N]       allocation events as they happen, one line each, until
                                           interrupted (or after N events)

options:
  --socket PATH   flatnetd's socket (default /run/flatnet/flatnetd.sock)
  --json          machine-readable output (watch: one JSON object per line)";

/// How long a unary call may take; a sweep waits up to 10 s for requests in flight.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    socket: String,
    json: bool,
    command: Vec<String>,
}

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut opts = Options {
        socket: flatnet_proto::DEFAULT_SOCKET.to_string(),
        json: false,
        command: Vec::new(),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => opts.socket = args.next().context("--socket needs a path")?,
            "--json" => opts.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("flatnetctl {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => opts.command.push(arg),
        }
    }
    Ok(opts)
}

/// Takes `--flag VALUE` out of a command's arguments.
fn flag(args: &mut Vec<String>, name: &str) -> anyhow::Result<String> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(String::new());
    };
    if i + 1 >= args.len() {
        bail!("{name} needs a value");
    }
    let value = args.remove(i + 1);
    args.remove(i);
    Ok(value)
}

/// Fails on anything left after a command's flags were taken.
fn no_more(verb: &str, args: &[String]) -> anyhow::Result<()> {
    match args.first() {
        Some(extra) => bail!("{verb}: unexpected argument {extra:?}\n\n{USAGE}"),
        None => Ok(()),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A duration in seconds, short: `42s`, `5m`, `3h`, `2d`.
fn short_duration(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn age(created_unix: u64) -> String {
    short_duration(unix_now().saturating_sub(created_unix))
}

/// Seconds since the epoch as UTC ISO 8601 (`2024-05-01T12:00:00Z`).
fn iso8601(unix: u64) -> String {
    let ms = iso8601_ms(unix.saturating_mul(1000));
    format!("{}Z", &ms[..ms.len() - 5])
}

/// Milliseconds since the epoch as UTC ISO 8601 (`2024-05-01T12:00:00.123Z`).
fn iso8601_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Prints rows as left-aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let out: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `key  value` lines with the values aligned.
fn pairs(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn allocation_json(a: &Allocation) -> serde_json::Value {
    json!({
        "network": a.network,
        "address": a.address,
        "containerId": a.container_id,
        "containerName": a.container_name,
        "aliases": a.aliases,
        "ifname": a.ifname,
        "hostVeth": a.host_veth,
        "netns": a.netns,
        "createdUnix": a.created_unix,
        "bootId": a.boot_id,
    })
}

fn event_name(e: &AllocationEvent) -> &'static str {
    match v1::EventKind::try_from(e.kind) {
        Ok(v1::EventKind::Added) => "added",
        Ok(v1::EventKind::Released) => "released",
        _ => "unknown",
    }
}

/// One event as one JSON object: the kind and time, then the allocation's fields.
fn event_json(e: &AllocationEvent) -> serde_json::Value {
    let mut v = e
        .allocation
        .as_ref()
        .map(allocation_json)
        .unwrap_or_else(|| json!({}));
    v["event"] = json!(event_name(e));
    v["timeUnixMs"] = json!(e.time_unix_ms);
    v["time"] = json!(iso8601_ms(e.time_unix_ms));
    v
}

/// Connects to the daemon, or says why it cannot and what to do. Every command goes through here.
async fn connect(socket: &str) -> anyhow::Result<Channel> {
    let e = match flatnet_proto::uds::connect(socket, Duration::from_secs(3)).await {
        Ok(channel) => return Ok(channel),
        Err(e) => e,
    };
    let io = io_error(&e);
    if io.is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) {
        bail!(
            "cannot reach flatnetd at {socket}: permission denied; flatnetd answers root only, \
             so run flatnetctl as root (sudo flatnetctl ...)"
        )
    }
    let why = io.map_or_else(|| e.to_string(), |io| io.to_string());
    bail!(
        "cannot reach flatnetd at {socket} ({why}): is it running? start it with \
         `systemctl start flatnetd.socket` (or `flatnetd --socket {socket}`)"
    )
}

/// The first I/O error in an error's chain.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// The daemon's answer to a call as a message a person can act on.
fn explain(socket: &str, status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let msg = status.message();
    match status.code() {
        Code::NotFound | Code::InvalidArgument => anyhow::anyhow!("{msg}"),
        Code::PermissionDenied => anyhow::anyhow!("{msg} (run flatnetctl as root)"),
        Code::Unimplemented => anyhow::anyhow!(
            "flatnetd at {socket} does not know this command: it is older than flatnetctl; restart it after upgrading"
        ),
        Code::Unavailable if msg.contains("connect") || msg.contains("transport") => anyhow::anyhow!(
            "lost the connection to flatnetd at {socket}: {msg}"
        ),
        Code::DeadlineExceeded | Code::Cancelled => {
            anyhow::anyhow!("flatnetd at {socket} did not answer in time: {msg}")
        }
        _ => anyhow::anyhow!("flatnetd at {socket}: {msg}"),
    }
}

/// A unary request with the client-side deadline.
fn call<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

async fn status(client: &mut InspectClient<Channel>, opts: &Options) -> anyhow::Result<()> {
    let s = client
        .status(call(v1::StatusRequest {}))
        .await
        .map_err(|e| explain(&opts.socket, e))?
        .into_inner();
    if opts.json {
        let v = json!({
            "version": s.version,
            "uptimeSeconds": s.uptime_seconds,
            "startedUnix": s.started_unix,
            "bootId": s.boot_id,
            "allocations": s.allocations,
            "networks": s.networks,
            "pendingReleases": s.pending_releases,
            "socket": s.socket,
            "stateDir": s.state_dir,
            "spoolDir": s.spool_dir,
            "sweepIntervalSeconds": s.sweep_interval_seconds,
            "metricsListen": s.metrics_listen,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let sweep = match s.sweep_interval_seconds {
        0 => "off".to_string(),
        n => format!("every {n}s"),
    };
    let metrics = if s.metrics_listen.is_empty() {
        "off".to_string()
    } else {
        format!("http://{}/metrics", s.metrics_listen)
    };
    pairs(&[
        ("version", s.version),
        (
            "uptime",
            format!(
                "{} (since {})",
                short_duration(s.uptime_seconds),
                iso8601(s.started_unix)
            ),
        ),
        ("boot id", or_dash(&s.boot_id)),
        ("allocations", s.allocations.to_string()),
        ("networks", s.networks.to_string()),
        ("pending releases", s.pending_releases.to_string()),
        ("socket", s.socket),
        ("state dir", s.state_dir),
        ("spool dir", s.spool_dir),
        ("sweep", sweep),
        ("metrics", metrics),
    ]);
    Ok(())
}

async fn networks(client: &mut InspectClient<Channel>, opts: &Options) -> anyhow::Result<()> {
    let list = client
        .list_networks(call(v1::ListNetworksRequest {}))
        .await
        .map_err(|e| explain(&opts.socket, e))?
        .into_inner()
        .networks;
    if opts.json {
        let all: Vec<_> = list
            .iter()
            .map(|n| {
                json!({
                    "name": n.name,
                    "bridge": n.bridge,
                    "subnet": n.subnet,
                    "gateway": n.gateway,
                    "isGateway": n.is_gateway,
                    "rangeStart": n.range_start,
                    "rangeEnd": n.range_end,
                    "mtu": n.mtu,
                    "addressesInUse": n.addresses_in_use,
                    "addressesFree": n.addresses_free,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let range = if n.range_start.is_empty() {
                "-".to_string()
            } else {
                format!("{}-{}", n.range_start, n.range_end)
            };
            vec![
                n.name.clone(),
                n.bridge.clone(),
                n.subnet.clone(),
                n.gateway.clone(),
                range,
                n.addresses_in_use.to_string(),
                n.addresses_free.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NETWORK", "BRIDGE", "SUBNET", "GATEWAY", "RANGE", "IN USE", "FREE",
        ],
        &rows,
    );
    Ok(())
}

async fn allocations(
    client: &mut InspectClient<Channel>,
    opts: &Options,
    mut args: Vec<String>,
) -> anyhow::Result<()> {
    let network = flag(&mut args, "--network")?;
    let container = flag(&mut args, "--container")?;
    no_more("allocations", &args)?;
    let list = client
        .list_allocations(call(v1::ListAllocationsRequest { network, container }))
        .await
        .map_err(|e| explain(&opts.socket, e))?
        .into_inner()
        .allocations;
    if opts.json {
        let all: Vec<_> = list.iter().map(allocation_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.address.clone(),
                a.network.clone(),
                a.container_id.chars().take(12).collect(),
                a.container_name.clone(),
                a.ifname.clone(),
                a.host_veth.clone(),
                age(a.created_unix),
            ]
        })
        .collect();
    table(
        &[
            "ADDRESS",
            "NETWORK",
            "CONTAINER",
            "NAME",
            "IFNAME",
            "VETH",
            "AGE",
        ],
        &rows,
    );
    Ok(())
}

async fn show(
    client: &mut InspectClient<Channel>,
    opts: &Options,
    mut args: Vec<String>,
) -> anyhow::Result<()> {
    let network = flag(&mut args, "--network")?;
    if args.is_empty() {
        bail!("show needs an address or a container (id, id prefix or name)\n\n{USAGE}");
    }
    let what = args.remove(0);
    no_more("show", &args)?;
    let bare = what.split_once('/').map_or(what.as_str(), |(ip, _)| ip);
    let key = if bare.parse::<std::net::Ipv4Addr>().is_ok() {
        Key::Address(what)
    } else {
        Key::Container(what)
    };
    let list = client
        .get_allocation(call(v1::GetAllocationRequest {
            key: Some(key),
            network,
        }))
        .await
        .map_err(|e| explain(&opts.socket, e))?
        .into_inner()
        .allocations;
    if opts.json {
        let all: Vec<_> = list.iter().map(allocation_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for (i, a) in list.iter().enumerate() {
        if i > 0 {
            println!();
        }
        pairs(&[
            ("address", a.address.clone()),
            ("network", a.network.clone()),
            ("container", a.container_id.clone()),
            ("name", or_dash(&a.container_name)),
            ("aliases", or_dash(&a.aliases.join(", "))),
            ("ifname", a.ifname.clone()),
            ("host veth", a.host_veth.clone()),
            ("netns", a.netns.clone()),
            (
                "created",
                format!("{} ({} ago)", iso8601(a.created_unix), age(a.created_unix)),
            ),
            ("boot id", or_dash(&a.boot_id)),
        ]);
    }
    Ok(())
}

async fn gc(client: &mut InspectClient<Channel>, opts: &Options) -> anyhow::Result<()> {
    let g = client
        .gc(call(v1::GcRequest {}))
        .await
        .map_err(|e| explain(&opts.socket, e))?
        .into_inner();
    if opts.json {
        let v = json!({
            "kept": g.kept,
            "waiting": g.waiting,
            "released": g.released_gone + g.released_earlier_boot,
            "releasedGone": g.released_gone,
            "releasedEarlierBoot": g.released_earlier_boot,
            "linksRemoved": g.links_removed,
            "reattached": g.reattached,
            "spooledApplied": g.spooled_applied,
            "spooledStale": g.spooled_stale,
            "spooledRejected": g.spooled_rejected,
            "spooledPending": g.spooled_pending,
            "failures": g.failures,
            "durationMs": g.duration_ms,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    pairs(&[
        ("kept", g.kept.to_string()),
        (
            "released",
            format!(
                "{} (container gone: {}, earlier boot: {})",
                g.released_gone + g.released_earlier_boot,
                g.released_gone,
                g.released_earlier_boot
            ),
        ),
        (
            "waiting",
            if g.waiting == 0 {
                "0".to_string()
            } else {
                format!(
                    "{} (veth missing for less than 5 s: released by the next sweep if still missing)",
                    g.waiting
                )
            },
        ),
        ("links removed", g.links_removed.to_string()),
        ("reattached", g.reattached.to_string()),
        (
            "spooled DELs",
            format!(
                "applied {}, stale {}, rejected {}, pending {}",
                g.spooled_applied, g.spooled_stale, g.spooled_rejected, g.spooled_pending
            ),
        ),
        ("took", format!("{} ms", g.duration_ms)),
    ]);
    for f in &g.failures {
        println!("failure: {f}");
    }
    if !g.failures.is_empty() {
        bail!("the sweep finished with {} failure(s)", g.failures.len());
    }
    Ok(())
}

async fn watch(
    client: &mut InspectClient<Channel>,
    opts: &Options,
    mut args: Vec<String>,
) -> anyhow::Result<()> {
    let network = flag(&mut args, "--network")?;
    let count = match flag(&mut args, "--count")? {
        c if c.is_empty() => None,
        c => Some(
            c.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("--count takes a positive number, not {c:?}"))?,
        ),
    };
    no_more("watch", &args)?;
    let mut stream = client
        .watch(v1::WatchRequest { network })
        .await
        .map_err(|e| explain(&opts.socket, e))?
        .into_inner();
    // The daemon subscribed before it answered: from here on nothing is missed. Tests wait for
    // this line before they change anything.
    eprintln!(
        "flatnetctl: watching allocation events of flatnetd at {} (Ctrl-C stops)",
        opts.socket
    );
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let Some(event) = stream
            .message()
            .await
            .map_err(|e| explain(&opts.socket, e))?
        else {
            bail!(
                "flatnetd at {} ended the watch (it is stopping)",
                opts.socket
            );
        };
        seen += 1;
        if opts.json {
            println!("{}", event_json(&event));
        } else {
            let a = event.allocation.clone().unwrap_or_default();
            println!(
                "{}  {:<8}  {:<18}  {}  {}  {}  {}",
                iso8601_ms(event.time_unix_ms),
                event_name(&event),
                a.address,
                a.network,
                a.container_id.chars().take(12).collect::<String>(),
                or_dash(&a.container_name),
                a.ifname
            );
        }
    }
    Ok(())
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let mut args = opts.command.clone();
    if args.is_empty() {
        bail!("no command given\n\n{USAGE}");
    }
    let verb = args.remove(0);
    if ![
        "status",
        "networks",
        "allocations",
        "ls",
        "show",
        "gc",
        "watch",
    ]
    .contains(&verb.as_str())
    {
        bail!("unknown command {verb:?}\n\n{USAGE}");
    }
    let mut client = InspectClient::new(connect(&opts.socket).await?);
    match verb.as_str() {
        "status" => {
            no_more("status", &args)?;
            status(&mut client, &opts).await
        }
        "networks" => {
            no_more("networks", &args)?;
            networks(&mut client, &opts).await
        }
        "allocations" | "ls" => allocations(&mut client, &opts, args).await,
        "show" => show(&mut client, &opts, args).await,
        "gc" => {
            no_more("gc", &args)?;
            gc(&mut client, &opts).await
        }
        "watch" => watch(&mut client, &opts, args).await,
        _ => unreachable!("checked above"),
    }
}

fn main() {
    let result = parse(std::env::args().skip(1)).and_then(|opts| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(run(opts))
    });
    if let Err(e) = result {
        eprintln!("flatnetctl: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_iso8601() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(iso8601(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(86_400 * 3), "3d");
    }
}
