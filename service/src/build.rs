//! The build-script helper: compile a service's `.proto` files without a
//! system `protoc`, generate tonic code, and keep the descriptor set for
//! [`crate::include_descriptor!`].
//!
//! ```ignore
//! // build.rs
//! fn main() {
//!     micro::build::compile(&["proto/helloworld.proto"]).expect("compile protos");
//! }
//! ```

use std::path::{Path, PathBuf};

use prost::Message;

/// The file, in `OUT_DIR`, holding the descriptor set.
pub const DESCRIPTOR_FILE: &str = "micro_descriptor.bin";

/// Compiles `protos` (each file's folder is an include path).
pub fn compile(protos: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    let mut includes: Vec<PathBuf> = Vec::new();
    for p in protos {
        let dir = Path::new(p)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if !includes.contains(&dir) {
            includes.push(dir);
        }
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, &includes)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join(DESCRIPTOR_FILE), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
