//! Compiles `paretopo/v1/*.proto` with `protox` (pure Rust, so no system `protoc` is needed),
//! writes the descriptor set for server reflection, and generates tonic/prost code.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("paretopo/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();

    // `compile_fds` prints no rerun-if-changed lines (DESIGN.md §9): name every input ourselves.
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("paretopo_descriptor.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        // Decode errors become INVALID_ARGUMENT instead of tonic's INTERNAL (see `codec.rs`).
        .codec_path("crate::codec::StrictCodec")
        // Weight chunks as `bytes::Bytes`: cloning one for each subscriber and decoding one out
        // of the receive buffer then share memory instead of copying megabytes.
        .bytes(".paretopo.v1.WeightChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
