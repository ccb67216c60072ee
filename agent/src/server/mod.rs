//! The agent's unix socket: [`bind`] claims the socket path (refusing when a live agent holds it,
//! replacing a stale socket file) before the datapath loads, and [`serve`] accepts clients until shut
//! down, one task per client session. Peer credentials, the hello, limits and the protocol are in the
//! submodules; the protocol itself is described in `docs/protocol.md`.

pub mod frames;
mod listener;
mod peer;
mod session;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use log::{debug, info, warn};
use tokio::{sync::Semaphore, task::JoinSet};

pub use self::listener::{Listener, SocketGroup};
use crate::api::Api;

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = flowgate_proto::client::DEFAULT_SOCKET;
/// The socket's group when `--socket-group` is not given and this group exists.
pub const DEFAULT_SOCKET_GROUP: &str = "flowgate";
/// Mode of the socket file unless told otherwise: owner and group may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Clients served at once unless told otherwise.
pub const DEFAULT_MAX_CLIENTS: usize = 64;
/// How long a client has to send its hello.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may stay silent between requests while client slots run short.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the socket is set up and what it accepts.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub path: PathBuf,
    /// Group owning the socket whose members may connect. `None`: `flowgate` when that group exists,
    /// else no group (root only).
    pub group: Option<String>,
    /// Permission bits of the socket file (e.g. `0o660`).
    pub mode: u32,
    pub max_clients: usize,
    pub handshake_timeout: Duration,
    /// How long a client may say nothing between requests while the agent is short of client slots.
    pub idle_timeout: Duration,
    /// Group whose members may change the agent (endpoint configuration), besides root. `None`: root
    /// only. Every socket client may read.
    pub admin_group: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_SOCKET),
            group: None,
            mode: DEFAULT_SOCKET_MODE,
            max_clients: DEFAULT_MAX_CLIENTS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            admin_group: None,
        }
    }
}

/// Parses an octal mode as given on the command line (`0660`, `660`, `0o660`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 0660")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating the socket directory {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("taking the lock {} that guards the socket", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another flowgate-agent{} is already serving {}: stop it first, or give this one another --socket",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        path.display()
    )]
    AlreadyServing { path: PathBuf, pid: Option<u32> },
    #[error("{} exists and is not a socket: remove it or choose another --socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("removing the stale socket {} left by an agent that is gone", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting mode {mode:o} on the socket {}", path.display())]
    Mode {
        path: PathBuf,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("giving the socket {} to group `{group}`", path.display())]
    Chown {
        path: PathBuf,
        group: String,
        #[source]
        source: std::io::Error,
    },
    #[error("socket group `{group}` does not exist: create it (groupadd {group}) or pass another --socket-group")]
    UnknownGroup { group: String },
    #[error("looking up socket group `{group}`")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("listening on the socket {}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Claims the socket path and listens on it; call before loading the datapath so that a second agent
/// fails early with [`ServerError::AlreadyServing`]. Dropping the [`Listener`] removes the socket.
pub fn bind(config: &ServerConfig) -> Result<Listener, ServerError> {
    listener::bind(config)
}

/// What every session needs.
struct Shared {
    api: Arc<Api>,
    path: PathBuf,
    group: Option<SocketGroup>,
    /// Who besides root may change the agent.
    admin_group: Option<SocketGroup>,
    /// The agent's own uid: a client running as the same user is let in (an unprivileged agent).
    own_uid: u32,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    max_clients: usize,
    slots: Arc<Semaphore>,
    /// What the agent says it is in its hello.
    software: String,
}

/// Accepts and serves clients until `shutdown` completes; then stops accepting, ends the sessions and
/// removes the socket. Errors of one client end that client's session only.
pub async fn serve(listener: Listener, api: Arc<Api>, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let accept = listener.tokio()?;
    let shared = Arc::new(Shared {
        api,
        path: listener.path().to_owned(),
        group: listener.group().cloned(),
        admin_group: listener.admin_group().cloned(),
        own_uid: nix::unistd::geteuid().as_raw(),
        handshake_timeout: listener.config().handshake_timeout,
        idle_timeout: listener.config().idle_timeout,
        max_clients: listener.config().max_clients,
        slots: Arc::new(Semaphore::new(listener.config().max_clients)),
        software: format!("flowgate-agent {}", env!("CARGO_PKG_VERSION")),
    });
    info!("serving clients on {}", shared.path.display());
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = done
                    && e.is_panic() {
                        warn!("a client session panicked: {e}");
                    }
            }
            accepted = accept.accept() => match accepted {
                Ok((stream, _)) => {
                    let slot = Arc::clone(&shared.slots).try_acquire_owned().ok();
                    sessions.spawn(session::run(stream, Arc::clone(&shared), slot));
                }
                Err(e) => {
                    // Out of file descriptors and the like: the agent stays up and tries again.
                    warn!("accepting a client on {}: {e}", shared.path.display());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    debug!("closing {} client sessions", sessions.len());
    sessions.shutdown().await;
    drop(accept);
    drop(listener);
    Ok(())
}

#[cfg(test)]
mod tests;
