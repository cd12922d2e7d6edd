//! The contract shared by the `flatnet` shim and `flatnetd`: the gRPC wire (`flatnet.v1`) and the CNI
//! rules both sides must agree on (error codes, supported versions, CNI_ARGS, the DEL spool).

pub mod cni;
pub mod fnv;
pub mod spool;
pub mod uds;
pub mod unary;

/// Generated from `proto/flatnet.proto`.
pub mod v1 {
    tonic::include_proto!("flatnet.v1");

    /// Encoded `FileDescriptorSet` of `flatnet.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/flatnet_descriptor.bin"));

    /// The one definition of the CNI commands flatnetd serves (VERSION is the shim's own).
    impl Command {
        /// Every command flatnetd serves, in the order the CNI spec lists them.
        pub const SERVED: [Command; 5] = [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Gc,
            Command::Status,
        ];

        /// The `CNI_COMMAND` spelling (`UNSPECIFIED` for none).
        pub fn cni_name(self) -> &'static str {
            match self {
                Command::Add => "ADD",
                Command::Del => "DEL",
                Command::Check => "CHECK",
                Command::Gc => "GC",
                Command::Status => "STATUS",
                Command::Unspecified => "UNSPECIFIED",
            }
        }

        /// The served command spelled `name` in `CNI_COMMAND`.
        pub fn from_cni_name(name: &str) -> Option<Command> {
            Command::SERVED.into_iter().find(|c| c.cni_name() == name)
        }

        /// The oldest `cniVersion` whose spec has this command.
        pub fn min_version(self) -> &'static str {
            match self {
                Command::Check => "0.4.0",
                Command::Gc | Command::Status => "1.1.0",
                Command::Add | Command::Del | Command::Unspecified => "0.3.0",
            }
        }
    }
}

/// Where the shim looks for the daemon unless the network config says otherwise (`socket` key).
pub const DEFAULT_SOCKET: &str = "/run/flatnet/flatnetd.sock";

/// gRPC metadata key carrying the request id the shim generates, so one request can be followed from
/// the runtime's call into the daemon's log.
pub const REQUEST_ID_HEADER: &str = "x-flatnet-request-id";

/// Largest gRPC message flatnetd decodes: a request is at most a 1 MiB config plus a few short
/// CNI values, so anything bigger is refused before it is buffered.
pub const MAX_MESSAGE_BYTES: usize = 2 << 20;
