//! `flatnetd [--socket PATH] [--state-dir DIR] [--log-format text|json]`: opens the state database
//! and the netlink socket once, then serves CNI requests on a Unix socket until SIGTERM or SIGINT.

use anyhow::{bail, Context};
use flatnet_daemon::engine::{current_boot_id, Engine};
use flatnet_daemon::inspect::InspectService;
use flatnet_daemon::ipam::{SledStore, Store};
use flatnet_daemon::netlink::RtNetlink;
use flatnet_daemon::server::CniService;
use flatnet_proto::v1::cni_server::CniServer;
use flatnet_proto::v1::inspect_server::InspectServer;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const USAGE: &str = "usage: flatnetd [--socket PATH] [--state-dir DIR] [--log-format text|json]

  --socket PATH       Unix socket to serve on (default /run/flatnet/flatnetd.sock);
                      ignored when systemd passes a socket (LISTEN_FDS)
  --state-dir DIR     where the address database lives (default /var/lib/flatnet)
  --log-format FMT    text (default) or json, written to stderr; filter with FLATNET_LOG=debug";

#[derive(Debug)]
struct Options {
    socket: PathBuf,
    state_dir: PathBuf,
    json_logs: bool,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut opts = Options {
        socket: PathBuf::from(flatnet_proto::DEFAULT_SOCKET),
        state_dir: PathBuf::from("/var/lib/flatnet"),
        json_logs: false,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--socket" => opts.socket = PathBuf::from(value("--socket")?),
            "--state-dir" => opts.state_dir = PathBuf::from(value("--state-dir")?),
            "--log-format" => match value("--log-format")?.as_str() {
                "text" => opts.json_logs = false,
                "json" => opts.json_logs = true,
                other => bail!("--log-format must be text or json, not {other:?}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("flatnetd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(opts)
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLATNET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
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

async fn run(opts: Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    std::fs::set_permissions(&opts.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let store = SledStore::open(&opts.state_dir).with_context(|| {
        format!(
            "opening the address database in {}",
            opts.state_dir.display()
        )
    })?;
    let nl = RtNetlink::new().context("opening a netlink socket")?;
    let engine = Arc::new(Engine::new(nl, store, current_boot_id()));
    let (listener, owned) = listener(&opts.socket)?;
    tracing::info!(socket = %opts.socket.display(), state_dir = %opts.state_dir.display(),
        allocations = engine.store().list(None).map(|l| l.len()).unwrap_or(0), "flatnetd ready");

    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_service(CniServer::new(CniService::new(engine.clone())))
        .add_service(InspectServer::new(InspectService::new(engine.clone())))
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await;
    if owned {
        let _ = std::fs::remove_file(&opts.socket);
    }
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
    let opts = parse_options(std::env::args().skip(1))?;
    init_logging(opts.json_logs);
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
