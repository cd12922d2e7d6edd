//! flatnetd: the Flatnet host daemon. `engine` is where requests become kernel work and addresses
//! (`engine::reconcile` is the work done without a request); `config`, `result`, `ipam` and
//! `netlink` are its parts; `error` is the one place a CNI code is chosen; `spool` reads the DELs
//! the shim recorded while the daemon was away; `server` and `inspect` are the gRPC edge; `events` announces allocation changes (for
//! `Inspect.Watch`), `routes` is the route table the HTTP gateway follows, and `metrics` counts requests for Prometheus; `veth` names the host veth ends, `bridges` the bridges they go on,
//! `host` reads the boot id, the clock and IPv4 forwarding, and `trim` gives freed memory back
//! after a burst of work.

pub mod bridges;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod firewall;
pub mod host;
pub mod http;
pub mod inspect;
pub mod ipam;
pub mod metrics;
pub mod netlink;
pub mod result;
pub mod routes;
pub mod server;
pub mod spool;
pub mod trim;
pub mod veth;
