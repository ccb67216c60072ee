//! Builds the kernel programs (crate `flowgate-ebpf`, target bpfel-unknown-none, nightly + rust-src +
//! bpf-linker) with aya-build and leaves the object in OUT_DIR for `include_bytes_aligned!`.

use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

fn check_prerequisites() -> anyhow::Result<()> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if linker.map(|o| !o.status.success()).unwrap_or(true) {
        bail!(
            "bpf-linker is missing. Install it with:\n  apt-get install -y llvm-22-dev && \
             LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked \
             --no-default-features --features llvm-22\n(scripts/setup.sh does all of this)"
        );
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("running `rustup run nightly rustc --print sysroot`")?;
    if !sysroot.status.success() {
        bail!("the nightly toolchain is missing. Install it with:\n  rustup toolchain install nightly");
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let rust_src = std::path::Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !rust_src.exists() {
        bail!("rust-src for nightly is missing. Install it with:\n  rustup component add rust-src --toolchain nightly");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        check_prerequisites()?;
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "flowgate-ebpf")
        .ok_or_else(|| anyhow!("package flowgate-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("flowgate-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
