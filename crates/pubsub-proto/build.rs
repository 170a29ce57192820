//! Compiles the workspace's `proto/pubsub_api.proto` with protox (pure Rust, no system `protoc`)
//! and generates both the tonic client (the daemon) and the server (the simulator).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = dir.join("pubsub_api.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
