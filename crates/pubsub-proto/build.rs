//! Compiles the workspace's `proto/pubsub_api.proto` with protox (pure Rust, no system `protoc`)
//! and generates both the tonic client (the daemon) and the server (the simulator).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: a compiled build script may be reused from a
    // shared target directory by a checkout at another path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let dir = std::path::Path::new(&manifest_dir).join("../../proto");
    let file = dir.join("pubsub_api.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
