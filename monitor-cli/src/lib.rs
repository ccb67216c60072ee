//! The `flowgate` command as a library, so its benchmark can reach the monitor's pure parts. The binary
//! (`main.rs`) only parses arguments and dispatches. One module per subcommand (`lab`, `demo`, `status`,
//! `endpoint`, `identity`, `policy`, `conntrack`, `monitor`, `verdicts`), plus what several share:
//! [`client`] (the socket), [`endpoint_ref`] (endpoints by name), [`table`], [`filter_args`]; and for
//! installation [`completion`] and [`manual`]. Nothing here
//! touches the datapath: it speaks the agent's socket protocol, reads verdict logs, or manages the lab.

pub mod client;
pub mod completion;
pub mod conntrack;
pub mod demo;
pub mod describe;
pub mod endpoint;
pub mod endpoint_ref;
pub mod filter_args;
pub mod identity;
pub mod lab;
pub mod manual;
pub mod monitor;
pub mod policy;
pub mod policy_test;
pub mod status;
pub mod table;
pub mod verdicts;
