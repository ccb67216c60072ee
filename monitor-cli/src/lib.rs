//! The `flowgate` command as a library, so its benchmark can reach the monitor's pure parts. The binary
//! (`main.rs`) only parses arguments and dispatches. Nothing here touches the datapath: it speaks the
//! agent's socket protocol, reads verdict logs, or manages the lab.

pub mod client_cmd;
pub mod cmd;
pub mod export;
pub mod filter_args;
pub mod monitor;
