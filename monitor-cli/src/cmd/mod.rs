//! One module per `flowgate` subcommand.

pub mod demo;
pub mod lab;
