//! `flatnetctl`: look at what flatnetd holds and does, over its socket (`flatnet.v1.Inspect`).
//! Human tables by default, `--json` for scripts. [`client`] reaches the daemon and explains its
//! errors, [`view`] renders each answer, [`text`] holds the table, date and duration formats.

use anyhow::Context;
use clap::{Parser, Subcommand};
use flatnet_proto::v1::{self, get_allocation_request::Key};

mod client;
mod gateway;
mod text;
mod view;

use client::Daemon;

/// Look at what flatnetd holds and does.
#[derive(Debug, Parser)]
#[command(name = "flatnetctl", version, disable_help_subcommand = true)]
struct Cli {
    /// flatnetd's socket
    #[arg(long, global = true, value_name = "PATH", default_value = flatnet_proto::DEFAULT_SOCKET)]
    socket: String,
    /// Machine-readable output (watch: one JSON object per line)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon: version, uptime, boot id, allocations, pending releases, socket, state dir
    Status,
    /// Networks with their addresses in use and free
    Networks,
    /// The route table the HTTP gateway follows: name, address, port and whether it is up
    Routes {
        /// Wait until the table changes after this revision (printed with --json) first
        #[arg(long, value_name = "REVISION", default_value_t = 0)]
        after: u64,
        /// How long to wait for that, in milliseconds
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        wait_ms: u32,
    },
    /// Addresses held by containers
    #[command(visible_alias = "ls")]
    Allocations {
        /// Only this network's
        #[arg(long, value_name = "NAME", default_value = "")]
        network: String,
        /// Only this container's (id, id prefix or name)
        #[arg(long, value_name = "ID|NAME", default_value = "")]
        container: String,
    },
    /// One address, or one container (id, id prefix or name)
    Show {
        #[arg(value_name = "IP|CONTAINER")]
        what: String,
        /// Only on this network
        #[arg(long, value_name = "NAME", default_value = "")]
        network: String,
    },
    /// Sweep now: release addresses of containers that are gone, remove stray fn-* links, apply
    /// spooled DELs
    Gc,
    /// Writes the HTTP gateway's configuration from the route table
    Gateway {
        #[command(subcommand)]
        server: GatewayServer,
    },
    /// Allocation events as they happen, one line each, until interrupted (or after N events)
    Watch {
        /// Only this network's
        #[arg(long, value_name = "NAME", default_value = "")]
        network: String,
        /// Stop after N events
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum GatewayServer {
    /// An nginx file to include in the http {} block: `Host: NAME.DOMAIN` and `/NAME/` to each
    /// container that is up
    Nginx {
        /// The file to write (atomically, 0644)
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// The address nginx listens on for these routes
        #[arg(long, value_name = "ADDR:PORT")]
        listen: String,
        /// The domain names are routed under
        #[arg(long, value_name = "DOMAIN", default_value = "flatnet.localhost")]
        domain: String,
        /// Run after the file changed ("" for nothing)
        #[arg(long, value_name = "CMD", default_value = "nginx -s reload")]
        reload: String,
        /// Follow the table until stopped (and flatnetd across restarts)
        #[arg(long)]
        watch: bool,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Gateway {
        server:
            GatewayServer::Nginx {
                out,
                listen,
                domain,
                reload,
                watch,
            },
    } = cli.command
    {
        let opts = gateway::Options {
            out,
            listen,
            domain,
            reload,
            watch,
        };
        return gateway::nginx(&cli.socket, &opts).await;
    }
    let mut daemon = Daemon::connect(&cli.socket).await?;
    let json = cli.json;
    match cli.command {
        Command::Status => view::status(&daemon.status().await?, json),
        Command::Networks => view::networks(&daemon.networks().await?, json),
        Command::Routes { after, wait_ms } => {
            let table = daemon
                .routes(v1::ListRoutesRequest {
                    after_revision: after,
                    wait_ms,
                })
                .await?;
            view::routes(&table, json)
        }
        Command::Allocations { network, container } => {
            let list = daemon
                .allocations(v1::ListAllocationsRequest { network, container })
                .await?;
            view::allocations(&list, json)
        }
        Command::Show { what, network } => {
            let bare = what.split_once('/').map_or(what.as_str(), |(ip, _)| ip);
            let key = if bare.parse::<std::net::IpAddr>().is_ok() {
                Key::Address(what)
            } else {
                Key::Container(what)
            };
            let list = daemon
                .allocation(v1::GetAllocationRequest {
                    key: Some(key),
                    network,
                })
                .await?;
            view::details(&list, json)
        }
        Command::Gc => view::gc(&daemon.gc().await?, json),
        Command::Gateway { .. } => unreachable!("answered above"),
        Command::Watch { network, count } => {
            let mut stream = daemon.watch(network).await?;
            // The daemon subscribed before it answered: from here on nothing is missed. Tests wait
            // for this line before they change anything.
            eprintln!(
                "flatnetctl: watching allocation events of flatnetd at {} (Ctrl-C stops)",
                cli.socket
            );
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let event = daemon.next_event(&mut stream).await?;
                seen += 1;
                view::event(&event, json);
            }
            Ok(())
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are answers; a usage error fails like any other error.
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("flatnetctl: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_the_same_wherever_they_stand() {
        let cli = Cli::try_parse_from(["flatnetctl", "ls", "--json", "--socket", "/s"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, "/s");
        assert!(matches!(cli.command, Command::Allocations { .. }));
        let cli = Cli::try_parse_from(["flatnetctl", "--json", "watch", "--count", "2"]).unwrap();
        assert!(matches!(cli.command, Command::Watch { count: Some(2), .. }));
        for bad in [
            vec!["flatnetctl"],
            vec!["flatnetctl", "frobnicate"],
            vec!["flatnetctl", "status", "extra"],
            vec!["flatnetctl", "show"],
            vec!["flatnetctl", "watch", "--count", "0"],
            vec!["flatnetctl", "ls", "--network"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_help_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
