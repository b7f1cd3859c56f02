//! Build script: compiles the Envoy v3 API (the `.proto` sources that ship inside the `envoy-types`
//! crate) plus Remora's own `proto/` tree into one protobuf descriptor set. The bootstrap and xDS
//! decoders resolve `@type` URLs and JSON field names through it; the binary wire types themselves
//! come from `envoy-types`, so both always describe the same API version.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine needs no system package.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let envoy_proto = envoy_types_proto_dir();
    let local_proto = PathBuf::from("proto");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let wkt_include = protoc_bin_vendored::include_path().expect("vendored protoc include path");

    let roots: Vec<PathBuf> = [
        "data-plane-api",
        "xds",
        "googleapis",
        "protoc-gen-validate",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
        "ratelimit/api",
    ]
    .iter()
    .map(|d| envoy_proto.join(d))
    .collect();

    let mut files = Vec::new();
    collect_protos(&envoy_proto.join("data-plane-api/envoy"), &envoy_proto.join("data-plane-api"), &mut files);
    collect_protos(&envoy_proto.join("xds/udpa"), &envoy_proto.join("xds"), &mut files);
    collect_protos(&envoy_proto.join("xds/xds"), &envoy_proto.join("xds"), &mut files);
    if local_proto.is_dir() {
        collect_protos(&local_proto, &local_proto, &mut files);
    }
    files.sort();

    let descriptor = out_dir.join("api_descriptor.bin");
    let mut cmd = Command::new(&protoc);
    cmd.arg("--include_imports").arg(format!("--descriptor_set_out={}", descriptor.display()));
    cmd.arg(format!("-I{}", local_proto.display()));
    for r in &roots {
        cmd.arg(format!("-I{}", r.display()));
    }
    cmd.arg(format!("-I{}", wkt_include.display()));
    cmd.args(&files);
    let out = cmd.output().expect("run protoc");
    if !out.status.success() {
        panic!("protoc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    // Rust types and the tonic client/server for Istio's CA service (the only gRPC API Remora
    // speaks that envoy-types does not generate).
    let mut prost = prost_build::Config::new();
    prost.protoc_executable(protoc);
    tonic_prost_build::configure()
        .compile_with_config(
            prost,
            &[local_proto.join("istio/security/v1alpha1/ca.proto")],
            &[local_proto.clone(), wkt_include.clone()],
        )
        .expect("compile proto/istio/security/v1alpha1/ca.proto");
}

/// Paths of every `.proto` under `dir`, relative to the include root `root`.
fn collect_protos(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_protos(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// The `proto/` directory shipped inside the `envoy-types` package, found through `cargo metadata`.
fn envoy_types_proto_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1", "--manifest-path"]).arg(Path::new(&manifest).join("Cargo.toml"));
    if let Ok(target) = std::env::var("TARGET") {
        cmd.args(["--filter-platform", &target]);
    }
    let out = cmd.output().expect("run cargo metadata");
    if !out.status.success() {
        panic!("cargo metadata failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages array");
    let pkg = packages.iter().find(|p| p["name"] == "envoy-types").expect("envoy-types among the dependencies");
    let manifest_path = pkg["manifest_path"].as_str().expect("manifest_path");
    let dir = Path::new(manifest_path).parent().expect("package dir").join("proto");
    println!("cargo:rerun-if-changed={}", dir.display());
    dir
}
