//! Compiles the project's .proto files with protox (pure Rust), so no protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/citadel/ca/v1/ca.proto",
        "proto/citadel/admin/v1/admin.proto",
        "proto/istio/v1/auth/ca.proto",
        "proto/spiffe/workload.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
