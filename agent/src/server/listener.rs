//! Claiming the socket path. An exclusive `flock` on `<socket>.lock` (released by the kernel when its
//! agent dies) tells a live agent from a stale socket file: the second agent is refused, a stale file
//! is replaced. The socket gets its mode and group right after bind, before anyone is accepted.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::unix::{
        fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
        net::UnixListener as StdUnixListener,
    },
    path::{Path, PathBuf},
};

use log::info;
use nix::fcntl::{Flock, FlockArg};

use super::{DEFAULT_SOCKET_GROUP, ServerConfig, ServerError};

/// The group whose members may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

/// A bound socket, not yet accepting. Dropping it removes the socket file (when it is still ours).
pub struct Listener {
    std: Option<StdUnixListener>,
    config: ServerConfig,
    group: Option<SocketGroup>,
    admin_group: Option<SocketGroup>,
    /// Device and inode of the socket file we created, so we never remove another agent's socket.
    inode: (u64, u64),
    _lock: Flock<File>,
}

impl Listener {
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    pub fn group(&self) -> Option<&SocketGroup> {
        self.group.as_ref()
    }

    /// The group whose members may change the agent, besides root.
    pub fn admin_group(&self) -> Option<&SocketGroup> {
        self.admin_group.as_ref()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The tokio listener (needs a runtime).
    pub(super) fn tokio(&self) -> Result<tokio::net::UnixListener, ServerError> {
        let listen = |source| ServerError::Listen { path: self.config.path.clone(), source };
        let std = self.std.as_ref().ok_or_else(|| listen(std::io::ErrorKind::NotConnected.into()))?;
        let std = std.try_clone().map_err(listen)?;
        std.set_nonblocking(true).map_err(listen)?;
        tokio::net::UnixListener::from_std(std).map_err(listen)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        drop(self.std.take());
        let path = &self.config.path;
        if std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode)
            && let Err(e) = std::fs::remove_file(path)
        {
            log::warn!("removing the socket {}: {e}", path.display());
        }
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Resolves the configured group: an explicit one must exist; by default `flowgate` if it exists.
fn resolve_group(config: &ServerConfig) -> Result<Option<SocketGroup>, ServerError> {
    match &config.group {
        Some(name) => lookup_group(name, true),
        None => lookup_group(DEFAULT_SOCKET_GROUP, false),
    }
}

/// A group by name; one named explicitly must exist.
fn lookup_group(name: &str, explicit: bool) -> Result<Option<SocketGroup>, ServerError> {
    let group = nix::unistd::Group::from_name(name)
        .map_err(|source| ServerError::GroupLookup { group: name.to_owned(), source })?;
    match group {
        Some(g) => Ok(Some(SocketGroup { name: g.name, gid: g.gid.as_raw() })),
        None if explicit => Err(ServerError::UnknownGroup { group: name.to_owned() }),
        None => Ok(None),
    }
}

/// Takes the lock next to the socket, or reports the agent holding it.
fn take_lock(socket: &Path) -> Result<Flock<File>, ServerError> {
    let path = lock_path(socket);
    let lock_err = |source| ServerError::Lock { path: path.clone(), source };
    // Never through a symlink: a link planted at the lock's path would have the agent (root) write its
    // pid into whatever file the link names.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&path)
        .map_err(lock_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
            return Err(ServerError::AlreadyServing { path: socket.to_owned(), pid });
        }
        Err((_, errno)) => return Err(lock_err(errno.into())),
    };
    let wrote = lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| writeln!(lock, "{}", std::process::id()));
    wrote.map_err(lock_err)?;
    Ok(lock)
}

pub(super) fn bind(config: &ServerConfig) -> Result<Listener, ServerError> {
    let path = &config.path;
    let group = resolve_group(config)?;
    let admin_group = match &config.admin_group {
        Some(name) => lookup_group(name, true)?,
        None => None,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::CreateDir { dir: dir.to_owned(), source })?;
    }
    let lock = take_lock(path)?;
    // We hold the lock, so whatever socket is there was left by an agent that is gone.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale { path: path.clone(), source })?;
            info!("replaced the stale socket {}", path.display());
        }
        Ok(_) => return Err(ServerError::NotASocket { path: path.clone() }),
        Err(_) => {}
    }
    let socket = StdUnixListener::bind(path).map_err(|source| ServerError::Bind { path: path.clone(), source })?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| ServerError::Bind { path: path.clone(), source })?;
    // From here on, dropping the listener removes the socket, also on the errors below.
    let listener = Listener {
        std: Some(socket),
        config: config.clone(),
        group,
        admin_group,
        inode: (meta.dev(), meta.ino()),
        _lock: lock,
    };
    if let Some(group) = &listener.group {
        std::os::unix::fs::chown(path, None, Some(group.gid)).map_err(|source| ServerError::Chown {
            path: path.clone(),
            group: group.name.clone(),
            source,
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode))
        .map_err(|source| ServerError::Mode { path: path.clone(), mode: config.mode, source })?;
    Ok(listener)
}
