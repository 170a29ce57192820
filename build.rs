//! Compiles `proto/pubsub_api.proto` with protox (pure Rust, no system `protoc`) and
//! generates both the tonic client (daemon) and server (simulator).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pubsub_api.proto");
    let fds = protox::compile(["proto/pubsub_api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
