//! The live side of `flowgate policy test`: the policy maps the agent's node enforces now, asked over its socket.

use crate::client::SocketArg;

pub(crate) fn scenario(_socket: &SocketArg) -> anyhow::Result<crate::policy_test::Scenario> {
    anyhow::bail!("give --policies DIR --topology FILE")
}
