//! Compiles `eventstream.proto` with the pure-Rust `protox` compiler (no system `protoc`), then
//! generates the Rust types with `prost-build`. Writes into `OUT_DIR`:
//!
//! * `eventstream.v1.rs`: the generated types, `include!`d by `src/lib.rs`;
//! * `eventstream.v1.fds.bin`: the encoded `FileDescriptorSet` (with source info), exposed as
//!   `FILE_DESCRIPTOR_SET`.

use std::{env, fs, path::PathBuf};

const PROTO: &str = "eventstream.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_file(PROTO)?;

    fs::write(
        out_dir.join("eventstream.v1.fds.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    prost_build::Config::new()
        // Ordered maps: deterministic encoding and `Debug` output, stable golden bytes.
        .btree_map(["."])
        .out_dir(&out_dir)
        .compile_fds(compiler.file_descriptor_set())?;

    Ok(())
}
