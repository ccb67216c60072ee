//! Fails early, with the command that fixes it, when the eBPF linker is missing.
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_else(|_| {
        panic!(
            "bpf-linker not found in PATH. Install it with:\n  apt-get install -y llvm-22-dev && \
             LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked \
             --no-default-features --features llvm-22\n(or run scripts/setup.sh)"
        )
    });
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap_or_default());
}
