//! Empty library target: lets the agent declare a build-dependency on this crate so cargo rebuilds the
//! agent when the kernel programs change. The programs themselves are in `main.rs`.
#![no_std]
