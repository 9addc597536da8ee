//! Generates the gRPC code from `haven/v1/*.proto` with the system `protoc`
//! (Debian's `protobuf-compiler`, installed by `scripts/install-deps.sh`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=haven/v1/coordinator.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["haven/v1/coordinator.proto"], &["."])?;
    Ok(())
}
