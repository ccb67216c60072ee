//! Network namespaces and links, through iproute2 (`ip netns add`, `ip -n NS -batch -`), and
//! [`in_netns`]: run a closure on a thread that has entered a namespace with `setns`, so sockets it creates
//! live there and interface names resolve there. `ip netns exec` is not used: it remounts /sys and would
//! hide bpffs from the agent. This is the one implementation of entering a namespace: the lab's probes and
//! servers use it, and so does the agent, which attaches its TC programs from a thread inside the node
//! namespace (interface lookups and TCX attachment resolve names in the caller's namespace).

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::sched::{CloneFlags, setns};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors creating, entering or configuring namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run `{command}` (is iproute2 installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot open network namespace {netns} ({path})")]
    Open {
        netns: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {netns}")]
    Enter {
        netns: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot start a thread to enter network namespace {netns}")]
    Thread {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread running inside network namespace {netns} panicked")]
    Panicked { netns: String },
    #[error("cannot set sysctl {key} in network namespace {netns}")]
    Sysctl {
        netns: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {ifname} not found in network namespace {netns}")]
    NoInterface {
        netns: String,
        ifname: String,
        #[source]
        source: nix::Error,
    },
}

/// Path of a named network namespace.
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(netns)
}

/// Runs `f` on a fresh thread that has entered network namespace `netns` (by name, `/run/netns/NAME`) and
/// returns its value. Only that thread changes namespace; sockets it creates stay in `netns` wherever they are
/// used afterwards.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    in_netns_at(&netns_path(netns), f)
}

/// [`in_netns`] for the namespace at `path` (a bind mount such as `/run/netns/NAME`, or `/proc/PID/ns/net`).
/// The thread is scoped, so `f` may borrow from the caller; the caller's thread is untouched.
pub fn in_netns_at<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let netns = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let file =
        File::open(path).map_err(|source| NetnsError::Open { netns: netns.clone(), path: path.to_owned(), source })?;
    std::thread::scope(|scope| {
        let name = netns.clone();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{netns}"))
            .spawn_scoped(scope, move || -> Result<T, NetnsError> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { netns: name, source })?;
                drop(file);
                Ok(f())
            })
            .map_err(|source| NetnsError::Thread { netns: netns.clone(), source })?;
        handle.join().map_err(|_| NetnsError::Panicked { netns: netns.clone() })?
    })
}

/// Moves the calling thread into `netns` for good. Meant for a process about to `exec` a command there
/// (`flowgate lab exec`); everything else should use [`in_netns`].
pub fn enter_current_thread(netns: &str) -> Result<(), NetnsError> {
    let path = netns_path(netns);
    let file =
        File::open(&path).map_err(|source| NetnsError::Open { netns: netns.to_owned(), path: path.clone(), source })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { netns: netns.to_owned(), source })
}

/// Names of every network namespace on the machine (`/run/netns`).
pub fn list() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    names
}

pub fn exists(netns: &str) -> bool {
    netns_path(netns).exists()
}

/// `ip netns add NAME`.
pub fn add(netns: &str) -> Result<(), NetnsError> {
    ip(&["netns", "add", netns], None)
}

/// `ip netns delete NAME`. The namespace goes away once no process or socket holds it.
pub fn delete(netns: &str) -> Result<(), NetnsError> {
    ip(&["netns", "delete", netns], None)
}

/// Runs `ip -n NETNS -batch -` with one command per line (without the leading `ip`), in one process.
pub fn batch(netns: &str, commands: &[String]) -> Result<(), NetnsError> {
    let script = commands.join("\n") + "\n";
    ip(&["-n", netns, "-batch", "-"], Some(&script))
}

fn ip(args: &[&str], stdin: Option<&str>) -> Result<(), NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Spawn { command: command.clone(), source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|source| NetnsError::Spawn { command: command.clone(), source })?;
    }
    let output = child.wait_with_output().map_err(|source| NetnsError::Spawn { command: command.clone(), source })?;
    if output.status.success() {
        Ok(())
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if let Some(script) = stdin {
            // `ip -batch` says "Command failed -:LINE"; show the line.
            stderr = format!("{stderr}\n  batch was:\n    {}", script.trim_end().replace('\n', "\n    "));
        }
        Err(NetnsError::Command { command, stderr })
    }
}

/// Sets sysctls (`net.ipv4.ip_forward` style keys) inside `netns`. `/proc/sys/net` shows the namespace of the
/// thread that opens it, so this goes through [`in_netns`].
pub fn sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
    let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let name = netns.to_owned();
    in_netns(netns, move || {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, &value).map_err(|source| NetnsError::Sysctl { netns: name.clone(), key, source })?;
        }
        Ok(())
    })?
}

/// Ifindex of each named interface inside `netns`, in the same order.
pub fn ifindexes(netns: &str, ifnames: Vec<String>) -> Result<Vec<u32>, NetnsError> {
    let name = netns.to_owned();
    in_netns(netns, move || {
        let indexes = InterfaceIndexes::open().map_err(|source| NetnsError::NoInterface {
            netns: name.clone(),
            ifname: String::new(),
            source,
        })?;
        ifnames
            .into_iter()
            .map(|ifname| {
                indexes.of(&ifname).map_err(|source| NetnsError::NoInterface { netns: name.clone(), ifname, source })
            })
            .collect()
    })?
}

/// Interface indexes of the network namespace the calling thread was in when it opened this (run it inside
/// [`in_netns`]), asked of one socket (`SIOCGIFINDEX`). `if_nametoindex` opens, asks and closes a socket per
/// name: at 500 pods 3-4 ms of every read of a node's routes; a dump of every link (`if_nameindex`, netlink)
/// took 9 ms there, each link's message carrying all its attributes.
pub struct InterfaceIndexes(std::os::fd::OwnedFd);

impl InterfaceIndexes {
    pub fn open() -> nix::Result<Self> {
        // SAFETY: plain socket(2) with constant arguments; the descriptor is owned below, or the error read.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(nix::Error::last());
        }
        // SAFETY: `fd` was just returned by socket(2), is open, and nothing else owns it.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// The index of the interface named `name`: `ENODEV` when there is none, `EINVAL` when the name cannot
    /// be one (empty, longer than the kernel's 15 bytes, or with a NUL).
    pub fn of(&self, name: &str) -> nix::Result<u32> {
        // SAFETY: `ifreq` is plain old data, valid as all zeroes.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.is_empty() || name.len() >= request.ifr_name.len() || name.as_bytes().contains(&0) {
            return Err(nix::Error::EINVAL);
        }
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: SIOCGIFINDEX reads the NUL-terminated name (the zeroed tail ends it) and writes the index
        // into the union of the `ifreq` it is given, which lives for the call; the descriptor is open.
        let done =
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&self.0), libc::SIOCGIFINDEX, &raw mut request) };
        if done != 0 {
            return Err(nix::Error::last());
        }
        // SAFETY: the call succeeded, so the kernel wrote `ifru_ifindex`, the union member read here.
        u32::try_from(unsafe { request.ifr_ifru.ifru_ifindex }).map_err(|_| nix::Error::EOVERFLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_indexes_are_the_kernels_and_no_name_is_guessed() {
        // Every interface of the test's namespace: the one socket's answer is if_nametoindex's.
        let indexes = InterfaceIndexes::open().unwrap();
        let interfaces = nix::net::if_::if_nameindex().unwrap();
        assert!(interfaces.iter().count() > 0, "a namespace has at least its loopback");
        for interface in &interfaces {
            let name = interface.name().to_str().unwrap();
            assert_eq!(indexes.of(name), Ok(interface.index()), "{name}");
            assert_eq!(indexes.of(name), nix::net::if_::if_nametoindex(name), "{name}");
        }
        // A name with no interface; one longer than the kernel's 15 bytes, one with a NUL in it, none at all.
        assert_eq!(indexes.of("fg-no-such-if"), Err(nix::Error::ENODEV));
        for name in ["fg-sixteen-bytes", "lo\0ther", ""] {
            assert_eq!(indexes.of(name), Err(nix::Error::EINVAL), "{name:?}");
        }
    }
}
