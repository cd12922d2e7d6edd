//! `flatnetd [--socket PATH] [--state-dir DIR] [--sweep-interval SECS] [--log-format text|json]
//! [--metrics-listen ADDR:PORT] [--routes-listen ADDR:PORT [--routes-public]] [--flat-range CIDR]`:
//! opens the state database and the netlink socket once, binds the socket, reconciles the kernel
//! with the database, applies spooled DELs and writes the outbound NAT table, then serves CNI
//! requests, inspection (`flatnet.v1.Inspect`) and gRPC server reflection until SIGTERM or SIGINT,
//! sweeping periodically, keeping the NAT table in place, and Prometheus metrics and the route
//! table when asked to.
//!
//! The socket is bound before reconciling, so a request that arrives during start-up waits in the
//! listen queue instead of failing (the same as with systemd socket activation).
//!
//! Testing aid: `FLATNET_BOOT_ID` replaces the kernel's boot id (see `host::current_boot_id`).

use anyhow::{bail, Context};
use flatnet_daemon::engine::reconcile::Pass;
use flatnet_daemon::engine::Engine;
use flatnet_daemon::firewall::{Firewall, NftCommand, DEFAULT_FLAT_RANGE, DEFAULT_FLAT_RANGE6};
use flatnet_daemon::host::current_boot_id;
use flatnet_daemon::inspect::{network_usage, pending_releases, DaemonInfo, InspectService};
use flatnet_daemon::ipam::{SledStore, Store};
use flatnet_daemon::metrics::{self, Gauges, Metrics, NetworkGauge};
use flatnet_daemon::netlink::RtNetlink;
use flatnet_daemon::server::{CniService, REQUEST_TIMEOUT};
use flatnet_daemon::spool::Spool;
use flatnet_daemon::trim::{self, Trimmer};
use flatnet_proto::v1::cni_server::CniServer;
use flatnet_proto::v1::inspect_server::InspectServer;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The engine as flatnetd runs it: the sled store, wrapped so that Watch sees every change.
type DaemonEngine = Engine<RtNetlink, SledStore>;

/// Serves Flatnet's CNI requests and inspection on a Unix socket; owns the bridges, the veth pairs
/// and the address database.
#[derive(Debug, clap::Parser)]
#[command(name = "flatnetd", version)]
struct Options {
    /// Unix socket to serve on; ignored when systemd passes a socket (LISTEN_FDS), but its
    /// directory still holds the DEL spool (pending-del/)
    #[arg(long, value_name = "PATH", default_value = flatnet_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where the address database lives
    #[arg(long, value_name = "DIR", default_value = "/var/lib/flatnet")]
    state_dir: PathBuf,
    /// How often to release addresses of containers that are gone and remove stray fn-* links
    /// (0 turns the periodic sweep off)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SWEEP_INTERVAL_SECS, value_parser = sweep_secs)]
    sweep_interval: u64,
    /// Log format on stderr; filter with FLATNET_LOG=debug. Logs also go to journald when
    /// /run/systemd/journal/socket exists (then not to stderr if stderr is the journal already)
    #[arg(long, value_name = "FMT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Traffic from a network with ipMasq to an address in this range keeps its source address;
    /// to anywhere else it leaves with the host's
    #[arg(long, value_name = "CIDR", env = "FLATNET_FLAT_RANGE", default_value = DEFAULT_FLAT_RANGE)]
    flat_range: ipnetwork::Ipv4Network,
    /// The same for the IPv6 traffic of dual-stack networks with ipMasq
    #[arg(long, value_name = "CIDR", env = "FLATNET_FLAT_RANGE6", default_value = DEFAULT_FLAT_RANGE6)]
    flat_range6: ipnetwork::Ipv6Network,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (off by default; e.g. 127.0.0.1:9187)
    #[arg(long, value_name = "ADDR:PORT", value_parser = metrics_addr)]
    metrics_listen: Option<SocketAddr>,
    /// Serve the route table on http://ADDR:PORT/routes, for gateways that follow it themselves
    /// (off by default; a loopback address unless --routes-public)
    #[arg(long, value_name = "ADDR:PORT", value_parser = routes_addr)]
    routes_listen: Option<SocketAddr>,
    /// Let --routes-listen take an address other hosts reach (a Windows-side gateway of WSL2)
    #[arg(long)]
    routes_public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How often the periodic sweep runs unless `--sweep-interval` says otherwise.
const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 30;

fn sweep_secs(raw: &str) -> Result<u64, String> {
    raw.parse().ok().filter(|s| *s <= 86_400).ok_or_else(|| {
        format!("--sweep-interval must be whole seconds from 0 to 86400, not {raw:?}")
    })
}

fn metrics_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.parse()
        .map_err(|_| format!("--metrics-listen takes ADDR:PORT (e.g. 127.0.0.1:9187), not {raw:?}"))
}

fn routes_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.parse()
        .map_err(|_| format!("--routes-listen takes ADDR:PORT (e.g. 127.0.0.1:8787), not {raw:?}"))
}

impl Options {
    /// `None`: no periodic sweep.
    fn sweep_interval(&self) -> Option<Duration> {
        (self.sweep_interval > 0).then(|| Duration::from_secs(self.sweep_interval))
    }
}

/// Logs to stderr (text or JSON) and, when journald's socket exists, to journald with every field
/// as a journal field (`journalctl CONTAINER_ID=...`). When stderr is itself connected to the
/// journal (systemd sets `JOURNAL_STREAM` to its device and inode), stderr is left out, or every
/// line would be in the journal twice.
fn init_logging(json: bool) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("FLATNET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Fails when the socket is missing or nothing listens on it: then stderr only.
    let journald = tracing_journald::layer()
        .ok()
        .map(|l| l.with_field_prefix(None));
    let stderr = (journald.is_none() || !stderr_is_journal()).then(|| {
        let layer = fmt::layer().with_writer(std::io::stderr);
        if json {
            layer.json().boxed()
        } else {
            layer.with_ansi(false).boxed()
        }
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(journald)
        .init();
}

/// Whether fd 2 is the journal stream systemd connected (`JOURNAL_STREAM=<device>:<inode>`).
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The listening socket: the one systemd passed (socket activation), or one we bind ourselves.
/// Returns whether we own the socket file (and so remove it on exit).
fn listener(path: &Path) -> anyhow::Result<(tokio::net::UnixListener, bool)> {
    use std::os::fd::FromRawFd;
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if ours && fds >= 1 {
        // SAFETY: systemd passes the listening socket as fd 3 (SD_LISTEN_FDS_START) to this process
        // (LISTEN_PID is ours), and nothing else in this process has taken ownership of it.
        let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
        std_listener.set_nonblocking(true)?;
        tracing::info!("using the socket passed by systemd");
        return Ok((tokio::net::UnixListener::from_std(std_listener)?, false));
    }

    let dir = path.parent().context("socket path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to root", dir.display()))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another flatnetd is already serving {}", path.display());
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path)?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; remove it or choose another --socket",
            path.display()
        ),
        Err(_) => {}
    }
    // Bind with a umask that leaves the socket 0600 from its first moment.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, true))
}

/// Runs a sweep every `interval` until `stop` turns true; a pass in progress is finished first.
async fn sweeper(
    engine: Arc<DaemonEngine>,
    spool: Arc<Spool>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = engine.sweep(Pass::Periodic, Some(&spool)).await {
            tracing::warn!(error = %e, "periodic sweep skipped");
        }
    }
}

/// How often the NAT table is compared with what flatnetd wrote (one `nft list` while a network
/// has ipMasq), so a flushed ruleset is back within two seconds.
const FIREWALL_CHECK: Duration = Duration::from_secs(1);

/// Writes the NAT table again whenever something else removed or changed it, and says when
/// another table's forward chain drops what the NAT networks send (or stops doing so).
async fn firewall_healer(engine: Arc<DaemonEngine>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FIREWALL_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match engine.firewall().heal().await {
            Ok(true) => tracing::warn!(
                "the nftables table inet {} was removed or changed by something else; wrote it again",
                flatnet_daemon::firewall::TABLE
            ),
            Ok(false) => {}
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "cannot check the outbound NAT table");
                }
                last_error = Some(e);
                continue;
            }
        }
        last_error = None;
        match engine.firewall().check_forward_policy().await {
            Ok(Some(blocks)) if blocks.is_empty() => {
                tracing::info!(
                    "no other nftables table drops the NAT networks' forwarded traffic now"
                )
            }
            Ok(Some(_)) => {
                if let Some(warning) = engine.firewall().blocked(None).await {
                    tracing::warn!("{warning}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot check other tables' forward chains"),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop flatnetd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// The metrics page: the request counters plus gauges read from the store now.
fn metrics_page(
    engine: Arc<DaemonEngine>,
    metrics: Arc<Metrics>,
    spool_dir: PathBuf,
    started: std::time::Instant,
) -> Arc<dyn Fn() -> String + Send + Sync> {
    Arc::new(move || {
        let mut gauges = Gauges {
            pending_releases: pending_releases(&spool_dir),
            uptime_seconds: started.elapsed().as_secs(),
            ..Gauges::default()
        };
        match network_usage(engine.store()) {
            Ok(usage) => {
                gauges.networks = usage
                    .into_iter()
                    .flat_map(|u| {
                        let v6 = u.v6.map(|(in_use, free)| NetworkGauge {
                            network: u.record.name.clone(),
                            family: "ipv6",
                            in_use,
                            free,
                        });
                        let v4 = u.v4.map(|v4| NetworkGauge {
                            network: u.record.name.clone(),
                            family: "ipv4",
                            in_use: v4.in_use,
                            free: v4.free,
                        });
                        v4.into_iter().chain(v6)
                    })
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the address database");
                gauges.store_error = true;
            }
        }
        metrics.render(&gauges)
    })
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    std::fs::set_permissions(&opts.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let store = SledStore::open(&opts.state_dir).with_context(|| {
        format!(
            "opening the address database in {}",
            opts.state_dir.display()
        )
    })?;
    tracing::debug!(took = ?started.elapsed(), "opened the address database");
    let nl = RtNetlink::new().context("opening a netlink socket")?;
    let boot_id = current_boot_id();
    if boot_id.is_empty() {
        tracing::warn!(
            "cannot read the kernel's boot id; allocations cannot be told apart by boot"
        );
    }
    let firewall =
        Firewall::new(Arc::new(NftCommand), opts.flat_range).with_flat_range6(opts.flat_range6);
    let engine: Arc<DaemonEngine> = Arc::new(
        Engine::new(nl, store, boot_id)
            .with_firewall(firewall)
            .with_route_probes(),
    );
    // Bound before anything else is served, so a taken port stops the start with a clear error.
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics-listen {addr}"))?,
        ),
        None => None,
    };
    let routes_listener = match opts.routes_listen {
        Some(addr) if !addr.ip().is_loopback() && !opts.routes_public => anyhow::bail!(
            "--routes-listen {addr} is not a loopback address: the route table names every \
             container's address, so other hosts may read it only if you say so with --routes-public"
        ),
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --routes-listen {addr}"))?,
        ),
        None => None,
    };
    let (listener, owned) = listener(&opts.socket)?;
    let spool = Arc::new(Spool::for_socket(&opts.socket));

    // Before serving: the kernel and the database agree again, and DELs that arrived while the
    // daemon was away are applied. Requests wait in the listen queue meanwhile.
    let reconciling = std::time::Instant::now();
    let startup = engine
        .sweep(Pass::Startup, Some(&spool))
        .await
        .context("reconciling at start")?;
    // In the background: serving need not wait for nft; an ADD that needs the table waits.
    let restoring = engine.restore_firewall().await;
    tokio::spawn(async move {
        let failed = match restoring {
            Ok(task) => match task.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %failed, "cannot write the outbound NAT table; containers of \
            networks with ipMasq cannot reach beyond the host until it is written");
    });
    tracing::info!(socket = %opts.socket.display(), state_dir = %opts.state_dir.display(),
        spool = %spool.dir().display(), boot_id = %engine.boot_id(),
        sweep_interval_s = opts.sweep_interval,
        startup_ms = reconciling.elapsed().as_millis() as u64,
        ready_ms = started.elapsed().as_secs_f64() * 1e3,
        metrics_listen = opts.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
        routes_listen = opts.routes_listen.map(|a| a.to_string()).unwrap_or_default(),
        allocations = startup.kept, "flatnetd ready");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let sweeping = opts.sweep_interval().map(|interval| {
        tokio::spawn(sweeper(
            engine.clone(),
            spool.clone(),
            interval,
            stop_rx.clone(),
        ))
    });

    // The start-up pass read every allocation: what it freed goes back once things are quiet.
    let trimmer = Arc::new(Trimmer::default());
    trimmer.worked();
    tokio::spawn(
        trimmer
            .clone()
            .run(trim::malloc_trim, trim::QUIET, stop_rx.clone()),
    );
    let healing = tokio::spawn(firewall_healer(engine.clone(), stop_rx.clone()));

    let metrics = Arc::new(Metrics::default());
    let metrics_task = metrics_listener.map(|l| {
        let page = metrics_page(
            engine.clone(),
            metrics.clone(),
            spool.dir().to_path_buf(),
            started,
        );
        tokio::spawn(metrics::serve(l, page, stop_rx.clone()))
    });
    let routes_task = routes_listener.map(|l| {
        let handler = flatnet_daemon::routes::http::handler(engine.routes().clone());
        let max = flatnet_daemon::routes::http::MAX_CONNECTIONS;
        tokio::spawn(flatnet_daemon::http::serve(
            "routes",
            l,
            max,
            handler,
            stop_rx.clone(),
        ))
    });
    let info = DaemonInfo {
        socket: opts.socket.clone(),
        state_dir: opts.state_dir.clone(),
        started,
        started_unix,
        sweep_interval: opts.sweep_interval(),
        metrics_listen: opts.metrics_listen,
    };
    // Reflection describes the services to any client (grpcurl list/describe); it answers without
    // the root check, as it reveals only the schema. Each version also lists the other.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flatnet_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the gRPC reflection service (v1)")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flatnet_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the gRPC reflection service (v1alpha)")?;

    let max = flatnet_proto::MAX_MESSAGE_BYTES;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let mut stop = stop_rx.clone();
    let served = tonic::transport::Server::builder()
        // Bounds every handler; a client's shorter grpc-timeout wins.
        .timeout(REQUEST_TIMEOUT)
        // A client can hold at most this many calls open at once on one connection, and a header
        // block cannot grow without end.
        .max_concurrent_streams(64)
        .http2_max_header_list_size(16 * 1024)
        // Connections whose peer has gone silent are closed.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(
            CniServer::new(CniService::new(engine.clone(), metrics.clone()).with_trimmer(trimmer))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            InspectServer::new(InspectService::new(
                engine.clone(),
                spool.clone(),
                info,
                stop_rx.clone(),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Some(task) = sweeping {
        if *stop_rx.borrow() {
            // The sweeper saw the stop signal too; let a pass in progress finish.
            let _ = task.await;
        } else {
            // Serving failed on its own: nothing will tell the sweeper to stop.
            task.abort();
        }
    }
    healing.abort();
    for task in metrics_task.into_iter().chain(routes_task) {
        if *stop_rx.borrow() {
            let _ = task.await;
        } else {
            task.abort();
        }
    }
    if owned {
        let _ = std::fs::remove_file(&opts.socket);
    }
    // Veths of containers DEL has already answered for: delete them before going (a restart would
    // remove them too, but a daemon that is stopped for good must not leave them behind).
    engine.drain_deletions(Duration::from_secs(10)).await;
    engine
        .store()
        .flush()
        .await
        .context("flushing the address database")?;
    served.context("serving gRPC")?;
    tracing::info!("stopped");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // glibc gives each thread that allocates its own heap ("arena"), up to 8 per core, and keeps
    // what each one grew to. flatnetd's threads are two workers plus short-lived ones (blocking
    // reads, the thread that opens a socket in a container's namespace): two arenas serve them
    // all, which keeps the resident size with 10,000 allocations well below what one arena per
    // thread leaves behind.
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
    let opts = match <Options as clap::Parser>::try_parse() {
        Ok(opts) => opts,
        Err(e) => {
            let _ = e.print();
            // Help and version are answers; a bad option fails like any other start-up error.
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    init_logging(opts.log_format == LogFormat::Json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(run(opts));
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "flatnetd failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn options_take_both_spellings_and_refuse_bad_values() {
        let o = Options::try_parse_from(["flatnetd", "--sweep-interval=0", "--log-format", "json"])
            .unwrap();
        assert_eq!(o.sweep_interval(), None);
        assert_eq!(o.log_format, LogFormat::Json);
        assert_eq!(o.socket, PathBuf::from(flatnet_proto::DEFAULT_SOCKET));
        let o = Options::try_parse_from(["flatnetd"]).unwrap();
        assert_eq!(o.sweep_interval(), Some(Duration::from_secs(30)));
        assert_eq!(o.metrics_listen, None);
        for bad in [
            &["flatnetd", "--sweep-interval", "86401"][..],
            &["flatnetd", "--sweep-interval", "-1"],
            &["flatnetd", "--metrics-listen", "localhost"],
            &["flatnetd", "--log-format", "xml"],
            &["flatnetd", "--socket"],
            &["flatnetd", "extra"],
        ] {
            assert!(Options::try_parse_from(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_help_is_consistent() {
        use clap::CommandFactory;
        Options::command().debug_assert();
    }
}
