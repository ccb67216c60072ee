//! What the commands that talk to the agent over its socket (`status`, `endpoint`, `identity`,
//! `policy`, `monitor`) share: the `--socket` argument, one-shot requests, structured output, and turning
//! protocol errors into one line for a person. Rendering lives in pure functions next to each command,
//! with [`crate::table`] for the tables.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use flowgate_proto::{
    client::{Client, ClientError, DEFAULT_SOCKET, SOCKET_ENV},
    message::{Request, Response},
};

/// Where the agent listens.
#[derive(Args, Clone, Debug)]
pub struct SocketArg {
    /// The agent's socket.
    #[arg(long, value_name = "PATH", env = SOCKET_ENV, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Output formats of the listing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// What this client calls itself in the agent's `status`.
pub fn software() -> String {
    format!("flowgate {}", env!("CARGO_PKG_VERSION"))
}

/// One line for a person: the client's own messages are complete sentences; for the others the causes
/// are appended.
pub fn describe(error: &ClientError) -> String {
    match error {
        ClientError::NotRunning { .. }
        | ClientError::PermissionDenied { .. }
        | ClientError::Refused { .. }
        | ClientError::VersionMismatch { .. }
        | ClientError::Agent { .. }
        | ClientError::Forbidden { .. } => error.to_string(),
        _ => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Connects, sends one request and returns its response.
pub fn request(socket: &SocketArg, request: Request) -> anyhow::Result<Response> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mut client =
            Client::connect(&socket.socket, &software()).await.map_err(|e| anyhow::anyhow!(describe(&e)))?;
        client.request(request).await.map_err(|e| anyhow::anyhow!(describe(&e)))
    })
}

/// Machine-readable output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Structured {
    Json,
    Yaml,
}

impl Output {
    /// JSON or YAML; `None` for a table.
    pub fn structured(self) -> Option<Structured> {
        match self {
            Output::Table => None,
            Output::Json => Some(Structured::Json),
            Output::Yaml => Some(Structured::Yaml),
        }
    }
}

/// Renders `value` as pretty JSON or YAML, ending with a newline.
pub fn render_structured<T: serde::Serialize>(value: &T, format: Structured) -> anyhow::Result<String> {
    Ok(match format {
        Structured::Json => serde_json::to_string_pretty(value).context("rendering JSON")? + "\n",
        Structured::Yaml => serde_yaml::to_string(value).context("rendering YAML")?,
    })
}

/// Runs a command; on error prints one line to stderr and exits non-zero.
pub fn exit_on_error(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("flowgate: {e:#}");
            std::process::exit(1);
        }
    }
}
