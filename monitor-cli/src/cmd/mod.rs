//! One module per `flowgate` subcommand.

pub mod lab;
