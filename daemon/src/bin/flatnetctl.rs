//! `flatnetctl`: look at what flatnetd holds, over its socket. Human tables by default, `--json` for
//! scripts.

use anyhow::{bail, Context};
use flatnet_proto::v1::inspect_client::InspectClient;
use flatnet_proto::v1::{Allocation, ListAllocationsRequest};
use serde_json::json;
use std::time::Duration;

const USAGE: &str = "usage: flatnetctl [--socket PATH] [--json] COMMAND

commands:
  allocations [--network NAME] [--container ID|NAME]   addresses held by containers (alias: ls)

options:
  --socket PATH   flatnetd's socket (default /run/flatnet/flatnetd.sock)
  --json          machine-readable output";

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

fn age(created_unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(created_unix);
    let s = now.saturating_sub(created_unix);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
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

fn allocation_json(a: &Allocation) -> serde_json::Value {
    json!({
        "network": a.network,
        "address": a.address,
        "containerId": a.container_id,
        "containerName": a.container_name,
        "ifname": a.ifname,
        "hostVeth": a.host_veth,
        "netns": a.netns,
        "createdUnix": a.created_unix,
        "bootId": a.boot_id,
    })
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let mut command = opts.command.clone();
    if command.is_empty() {
        bail!("no command given\n\n{USAGE}");
    }
    let verb = command.remove(0);
    let channel = flatnet_proto::uds::connect(&opts.socket, Duration::from_secs(3))
        .await
        .with_context(|| {
            format!(
                "cannot reach flatnetd at {}: is it running? start it with `systemctl start flatnetd.socket` \
                 (or `flatnetd --socket {}`)",
                opts.socket, opts.socket
            )
        })?;
    let mut client = InspectClient::new(channel);
    match verb.as_str() {
        "allocations" | "ls" => {
            let network = flag(&mut command, "--network")?;
            let container = flag(&mut command, "--container")?;
            if let Some(extra) = command.first() {
                bail!("allocations: unexpected argument {extra:?}");
            }
            let list = client
                .list_allocations(ListAllocationsRequest { network, container })
                .await?
                .into_inner()
                .allocations;
            if opts.json {
                let all: Vec<_> = list.iter().map(allocation_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
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
            }
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
    Ok(())
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
