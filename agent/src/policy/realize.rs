//! Realization of a compiled plan into map contents: [`flowgate_policy::realize`], pure and shared with the
//! `flowgate` command's what-if (`policy test`), re-exported here where the agent always found it.

pub use flowgate_policy::realize::*;
