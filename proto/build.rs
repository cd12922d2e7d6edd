//! Compiles `flatnet.proto` with protox (pure Rust), so no system `protoc` is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=flatnet.proto");

    let fds = protox::compile(["flatnet.proto"], [&dir])?;
    // Kept for gRPC server reflection.
    std::fs::write(out.join("flatnet_descriptor.bin"), prost_encode(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}

fn prost_encode(fds: &prost_types::FileDescriptorSet) -> Vec<u8> {
    use prost::Message;
    fds.encode_to_vec()
}
