//! Builds the kernel programs (crate `flowgate-ebpf`, target bpfel-unknown-none, the pinned nightly +
//! rust-src + bpf-linker) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! This does what `aya_build::build_ebpf` does, with two differences: the nested cargo's progress lines
//! are kept, and shown only when that build fails (aya-build turns every one of them into a
//! `cargo:warning`, so each clean build of the agent printed about 40 warnings), and the toolchain is
//! checked first: the nightly's LLVM major must be the one bpf-linker was built against.

use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message, diagnostic::DiagnosticLevel};

/// The one nightly that builds the eBPF crate (rustc e50aa6fba, LLVM 22.1.4). Keep in step with
/// `EBPF_TOOLCHAIN` in scripts/setup.sh.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

/// The eBPF crate's package and binary name.
const EBPF_PACKAGE: &str = "flowgate-ebpf";

const INSTALL_LINKER: &str = "apt-get install -y llvm-22-dev && LLVM_PREFIX=/usr/lib/llvm-22 cargo install \
                              bpf-linker@0.13.0 --locked --no-default-features --features llvm-22";

/// The LLVM major version rustc of `toolchain` was built with (`LLVM version: 22.1.4` in `rustc -vV`).
fn rustc_llvm_major(toolchain: &str) -> anyhow::Result<u32> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output()
        .with_context(|| format!("running `rustup run {toolchain} rustc -vV`"))?;
    if !out.status.success() {
        bail!(
            "the eBPF toolchain {toolchain} is missing. Install it with:\n  rustup toolchain install \
             {toolchain} --profile minimal && rustup component add rust-src --toolchain {toolchain}\n\
             (scripts/setup.sh does all of this)"
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("`rustc -vV` of {toolchain} names no LLVM version:\n{text}"))?;
    major_of(version).ok_or_else(|| anyhow!("cannot read the LLVM major of {toolchain} from {version:?}"))
}

fn major_of(version: &str) -> Option<u32> {
    version.trim().split('.').next()?.parse().ok()
}

/// The LLVM major bpf-linker is linked against, read from the shared libLLVM it loads
/// (`libLLVM.so.22.1` or `libLLVM-22.so`); `None` when it cannot be told (a static build).
fn linker_llvm_major(linker: &Path) -> Option<u32> {
    let out = Command::new("ldd").arg(linker).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().find_map(|word| {
        let name = word.rsplit('/').next()?;
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            major_of(rest)
        } else {
            name.strip_prefix("libLLVM-")?.strip_suffix(".so").and_then(major_of)
        }
    })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| p.is_file())
}

fn check_toolchain() -> anyhow::Result<()> {
    let Some(linker) = find_in_path("bpf-linker") else {
        bail!("bpf-linker is missing. Install it with:\n  {INSTALL_LINKER}\n(scripts/setup.sh does all of this)");
    };
    println!("cargo:rerun-if-changed={}", linker.display());
    let rustc = rustc_llvm_major(EBPF_TOOLCHAIN)?;
    match linker_llvm_major(&linker) {
        Some(linked) if linked != rustc => bail!(
            "LLVM mismatch: {EBPF_TOOLCHAIN}'s rustc emits LLVM {rustc} bitcode, but {} is built against \
             LLVM {linked} and cannot link it. Rebuild bpf-linker against LLVM {rustc}, or pin a nightly \
             whose LLVM major is {linked} (EBPF_TOOLCHAIN in agent/build.rs and scripts/setup.sh)",
            linker.display()
        ),
        _ => Ok(()),
    }
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // Leave an empty object so that `include_bytes_aligned!` compiles (clippy, docs); loading it fails.
        fs::write(out_dir.join(EBPF_PACKAGE), b"").context("writing the empty eBPF object")?;
        return Ok(());
    }
    check_toolchain()?;

    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not found in the workspace"))?;
    let root_dir = ebpf.manifest_path.parent().context("the eBPF manifest has no parent directory")?;
    println!("cargo:rerun-if-changed={root_dir}");

    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let mut rustflags = OsString::new();
    for (i, flag) in [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()]
        .iter()
        .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    let target_dir = out_dir.join("ebpf-target");
    let mut child = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "cargo", "build", "--package", EBPF_PACKAGE, "--bins"])
        .args(["--message-format=json", "--release", "--target", target])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(root_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the eBPF build (rustup run ... cargo build)")?;

    // Progress lines go to stderr; keep them for a failure. Read on a thread so neither pipe fills.
    let mut stderr = child.stderr.take().context("eBPF build stderr")?;
    let progress = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut executables = Vec::new();
    let mut diagnostics = Vec::new();
    for line in BufReader::new(child.stdout.take().context("eBPF build stdout")?).lines() {
        let line = line.context("reading the eBPF build's output")?;
        match serde_json_message(&line) {
            Some(Message::CompilerArtifact(Artifact { executable: Some(exe), target, .. })) => {
                executables.push((target.name, exe.into_std_path_buf()));
            }
            Some(Message::CompilerMessage(CompilerMessage { message, .. })) => {
                let rendered = message.rendered.unwrap_or(message.message);
                // A warning in our own kernel code is worth seeing on every build; progress is not.
                if matches!(message.level, DiagnosticLevel::Warning) {
                    for l in rendered.lines() {
                        println!("cargo:warning={l}");
                    }
                }
                diagnostics.push(rendered);
            }
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the eBPF build")?;
    let progress = progress.join().unwrap_or_default();
    if !status.success() {
        eprintln!("{progress}");
        for d in &diagnostics {
            eprintln!("{d}");
        }
        bail!("building the eBPF programs with {EBPF_TOOLCHAIN} failed ({status}); its output is above");
    }
    for (name, binary) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&binary, &dst).with_context(|| format!("copying {} to {}", binary.display(), dst.display()))?;
    }
    Ok(())
}

fn serde_json_message(line: &str) -> Option<Message> {
    Message::parse_stream(line.as_bytes()).next()?.ok()
}
