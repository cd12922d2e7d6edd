//! `flatnet`, the CNI plugin binary and, run with a subcommand, the netavark plugin (see
//! `netavark`): answers VERSION (or `info`) itself and forwards every other command to flatnetd as
//! one gRPC call. stdout carries exactly one protocol JSON document (or nothing, for a successful
//! DEL, GC, STATUS or teardown); short diagnostics go to stderr, and only on errors (and for a DEL
//! that was spooled because flatnetd could not take it, see `spool`; and the phase times with
//! `FLATNET_TIMINGS=1`, see `timings`).

// No Rust runtime start-up: the shim runs once per container start, and std's (finding the main
// thread's stack in /proc/self/maps, a signal stack mapped and unmapped) cost about a tenth of
// its CPU time. `main` below does the one part of it the shim relies on.
#![cfg_attr(not(test), no_main)]
// The unit tests' binary has the test harness's `main`, which calls none of the shim's own paths.
#![cfg_attr(test, allow(dead_code))]

mod client;
mod netavark;
mod request;
mod spool;
mod timings;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use flatnet_proto::cni::CniError;

use request::{Env, Invocation};
use timings::Timings;

/// The C entry point (see `no_main` above). Arguments are read through `std::env`, which gets
/// them from the C library as usual.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    process_setup();
    if run() == ExitCode::SUCCESS {
        0
    } else {
        1
    }
}

/// What std's start-up would otherwise have done that the shim relies on: writing to a pipe or
/// socket whose reader went away fails with EPIPE (reported, see [`print`]) instead of killing
/// the process.
#[cfg(not(test))]
fn process_setup() {
    // SAFETY: setting a signal's disposition to "ignore" touches no memory of this process; it
    // runs before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn run() -> ExitCode {
    let mut timings = Timings::from_env();
    let request_id = request_id();
    // A CNI runtime runs the plugin without arguments; netavark and Podman with a subcommand.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if !args.is_empty() {
        return netavark_main(&args, &request_id, &mut timings);
    }
    let env = cni_env();
    let parsed = request::parse(&env, io::stdin().lock());
    timings.mark("parse");
    let outcome = match parsed {
        Ok(Invocation::Version(json)) => Ok(json),
        Ok(Invocation::Exec(req)) => exec_or_spool(&req, &request_id, &mut timings),
        Err(err) => Err(err),
    };
    let code = match outcome {
        Ok(json) => answer(&json),
        Err(err) => {
            report(&env, &request_id, &err);
            print(&err.to_json());
            ExitCode::FAILURE
        }
    };
    timings.mark("print");
    timings.report(&request_id);
    code
}

/// One netavark plugin call: the reply on stdout, or `{"error": ...}` and exit status 1.
fn netavark_main(args: &[String], request_id: &str, timings: &mut Timings) -> ExitCode {
    use flatnet_proto::v1::Command;
    use netavark::Subcommand;
    let subcommand = netavark::subcommand(args);
    let what = args.first().cloned().unwrap_or_default();
    let reply = subcommand.and_then(|sub| match sub {
        Subcommand::Info => Ok(netavark::info()),
        Subcommand::Create => {
            let net = netavark::read_input(io::stdin().lock())?;
            let known = client::networks(&netavark::socket_of(&net), request_id)
                .map_err(|e| e.msg)?
                .into_iter()
                .map(netavark::Known::from)
                .collect::<Vec<_>>();
            netavark::create(net, &known).map(|n| serde_json::Value::Object(n).to_string())
        }
        Subcommand::Setup { netns } => {
            let attachment = netavark::attachment(&netavark::read_input(io::stdin().lock())?)?;
            let req = attachment.cni_request(Command::Add, &netns);
            timings.mark("parse");
            let result = client::exec(&req, request_id, timings).map_err(|e| e.msg)?;
            attachment.status_block(&result)
        }
        Subcommand::Teardown { netns } => {
            let attachment = netavark::attachment(&netavark::read_input(io::stdin().lock())?)?;
            // Like DEL: a teardown flatnetd cannot take now is recorded and applied later.
            let req = attachment.cni_request(Command::Del, &netns);
            timings.mark("parse");
            exec_or_spool(&req, request_id, timings)
                .map(|_| String::new())
                .map_err(|e| e.msg)
        }
    });
    let code = match reply {
        Ok(json) => answer(&json),
        Err(msg) => {
            // stderr failing as well leaves nothing to tell; stdout still carries the error.
            let _ = writeln!(
                io::stderr(),
                "flatnet {what} [request {request_id}]: error: {msg}"
            );
            print(&netavark::error_json(&msg));
            ExitCode::FAILURE
        }
    };
    timings.mark("print");
    timings.report(request_id);
    code
}

/// Runs `req` on flatnetd; a DEL it cannot take now is recorded for later instead (DEL must
/// succeed, see `spool`).
fn exec_or_spool(
    req: &request::Request,
    request_id: &str,
    timings: &mut Timings,
) -> Result<String, CniError> {
    match client::exec(req, request_id, timings) {
        Err(err) if spool::applies(req, &err) => spool::record(req, err),
        other => other,
    }
}

/// Prints a successful reply (nothing for an empty one); fails only if stdout is gone.
fn answer(json: &str) -> ExitCode {
    if json.is_empty() || print(json) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The CNI_* variables; other variables are none of the shim's business.
fn cni_env() -> Env {
    std::env::vars_os()
        .filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            key.starts_with("CNI_").then_some((key, value))
        })
        .collect()
}

/// Unique enough to find one call in the daemon's log: pid and nanoseconds since the epoch, in hex.
fn request_id() -> String {
    // A clock before 1970 only makes the id less unique; the pid still tells calls apart.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// Writes one JSON document to stdout; `false` if stdout is gone (nothing else can be done then).
fn print(json: &str) -> bool {
    let mut out = io::stdout().lock();
    match writeln!(out, "{json}").and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "flatnet: cannot write the reply to stdout: {e}"
            );
            false
        }
    }
}

/// One line on stderr naming the command, the container and the request id.
fn report(env: &Env, request_id: &str, err: &CniError) {
    let command = env
        .get("CNI_COMMAND")
        .map_or("(no command)".into(), |c| c.to_string_lossy());
    let container = env
        .get("CNI_CONTAINERID")
        .map(|c| c.to_string_lossy())
        .filter(|c| !c.is_empty())
        .map_or(String::new(), |c| {
            format!(" {}", c.chars().take(12).collect::<String>())
        });
    // stderr failing as well leaves nothing to tell; stdout still carries the error.
    let _ = writeln!(
        io::stderr(),
        "flatnet {command}{container} [request {request_id}]: error {}: {}",
        err.code,
        err.msg
    );
}
