//! The contract shared by the `flatnet` shim and `flatnetd`: the gRPC wire (`flatnet.v1`) and the CNI
//! rules both sides must agree on (error codes, supported versions, CNI_ARGS, the DEL spool).

pub mod cni;
pub mod fnv;
pub mod spool;
pub mod uds;

/// Generated from `proto/flatnet.proto`.
pub mod v1 {
    tonic::include_proto!("flatnet.v1");

    /// Encoded `FileDescriptorSet` of `flatnet.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/flatnet_descriptor.bin"));
}

/// Where the shim looks for the daemon unless the network config says otherwise (`socket` key).
pub const DEFAULT_SOCKET: &str = "/run/flatnet/flatnetd.sock";

/// gRPC metadata key carrying the request id the shim generates, so one request can be followed from
/// the runtime's call into the daemon's log.
pub const REQUEST_ID_HEADER: &str = "x-flatnet-request-id";

/// Largest gRPC message flatnetd decodes: a request is at most a 1 MiB config plus a few short
/// CNI values, so anything bigger is refused before it is buffered.
pub const MAX_MESSAGE_BYTES: usize = 2 << 20;
