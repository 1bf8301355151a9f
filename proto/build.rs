//! Generates osgate.v1 with a vendored protoc, so a fresh machine needs no protobuf compiler.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("osgate_v1.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &["osgate/v1/osgate.proto"], &["."])?;
    Ok(())
}
