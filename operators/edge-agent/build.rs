//! Generates the DMI v1beta1 gRPC code (server and client) from `proto/dmi_v1beta1.proto` with
//! the protoc binary vendored by `protoc-bin-vendored`: no system protoc on a fresh machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/dmi_v1beta1.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Ordered maps: a message encodes to the same bytes every time (its fingerprint is stable).
    config.btree_map(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[PathBuf::from("proto/dmi_v1beta1.proto")],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    Ok(())
}
