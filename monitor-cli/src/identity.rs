//! `flowgate identity list`: the security identities the agent derived from labels, with their labels
//! and the endpoints that have them.

use clap::{Args, Subcommand, ValueEnum};
use flowgate_proto::{
    endpoint::Identity,
    message::{Request, Response},
};

use crate::{
    client::{SocketArg, Structured, render_structured, request},
    table::Table,
};

#[derive(Args, Debug)]
pub struct IdentityArgs {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Every identity with its labels and endpoints.
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = IdentityOutput::Table)]
        output: IdentityOutput,
        /// Leave out the header line.
        #[arg(long)]
        no_headers: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IdentityOutput {
    Table,
    Json,
}

pub fn run(args: &IdentityArgs) -> anyhow::Result<()> {
    match &args.command {
        IdentityCommand::List { socket, output, no_headers } => {
            let identities = match request(socket, Request::IdentityList)? {
                Response::Identities(ids) => ids,
                other => anyhow::bail!("the agent answered `identity list` with something else: {other:?}"),
            };
            match output {
                IdentityOutput::Table => print!("{}", render(&identities, !no_headers)),
                IdentityOutput::Json => {
                    print!("{}", render_structured(&identities, Structured::Json)?)
                }
            }
            Ok(())
        }
    }
}

/// `ID  LABELS  ENDPOINTS`, one label per line.
pub fn render(identities: &[Identity], headers: bool) -> String {
    let mut table = Table::new(&[&["ID"], &["LABELS"], &["ENDPOINTS"]]);
    for identity in identities {
        let endpoints: Vec<String> = identity.endpoints.iter().map(u16::to_string).collect();
        table.multiline_row(vec![vec![identity.id.to_string()], identity.labels.clone(), vec![endpoints.join(" ")]]);
    }
    table.render(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_label_per_line() {
        let ids = [
            Identity {
                id: 1001,
                labels: vec!["k8s:app=a".into(), "k8s:io.kubernetes.pod.namespace=x".into()],
                endpoints: vec![1, 4],
            },
            Identity { id: 1002, labels: vec!["k8s:app=b".into()], endpoints: vec![2] },
        ];
        assert_eq!(
            render(&ids, true),
            "\
ID     LABELS                              ENDPOINTS
1001   k8s:app=a                           1 4
       k8s:io.kubernetes.pod.namespace=x
1002   k8s:app=b                           2
"
        );
    }
}
