//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so
//! building Micro needs no system `protoc`, and keeps the descriptor set for
//! reflection, schemas and the gateway.
use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "store.proto",
    "config.proto",
    "registry.proto",
    "runtime.proto",
    "auth.proto",
    "cluster.proto",
    "events.proto",
    "broker.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("micro_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    Ok(())
}
