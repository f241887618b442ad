//! Generates the gRPC code for proto/samp/v1/samp.proto into OUT_DIR, with a vendored protoc
//! (no system protoc needed), plus the descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // prost behind a pre-decode bound on request size (src/server/wire.rs).
        .codec_path("crate::server::wire::SampCodec")
        .file_descriptor_set_path(out.join("samp_descriptor.bin"))
        .compile_protos(&["proto/samp/v1/samp.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
