//! flatnetd: the Flatnet host daemon. `engine` is where requests become kernel work and addresses;
//! `config`, `result`, `ipam` and `netlink` are its parts; `server` is the gRPC edge.

pub mod config;
pub mod engine;
pub mod inspect;
pub mod ipam;
pub mod netlink;
pub mod result;
pub mod server;
