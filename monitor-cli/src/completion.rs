//! `flowgate completion bash|zsh|fish`: shell completion for every subcommand and flag, generated from the
//! same clap definitions that parse the command line (clap_complete), so it never falls behind. `make
//! install` puts the scripts where each shell looks for them; `source <(flowgate completion bash)` works too.

use std::io::Write;

use clap::{Args, ValueEnum};
use clap_complete::Shell as CompleteShell;

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells completion scripts are made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for CompleteShell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => CompleteShell::Bash,
            Shell::Zsh => CompleteShell::Zsh,
            Shell::Fish => CompleteShell::Fish,
        }
    }
}

/// Writes the completion script of `command` (the whole `flowgate` CLI) for `shell` to `out`.
pub fn write(shell: Shell, mut command: clap::Command, out: &mut dyn Write) {
    let name = command.get_name().to_owned();
    clap_complete::generate(CompleteShell::from(shell), &mut command, name, out);
}

/// Prints the completion script to standard output.
pub fn run(args: &CompletionArgs, command: clap::Command) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    write(args.shell, command, &mut stdout);
    stdout.flush()?;
    Ok(())
}
