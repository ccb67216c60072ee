//! The pods' servers: one background process per lab serves every declared TCP and UDP port of every pod and
//! external (TCP: accept and echo until EOF; UDP: echo each datagram to its sender). SCTP ports get no server.
//!
//! [`crate::lab::up`] starts it by re-executing the current binary with `FLOWGATE_LAB_SERVE=<lab>`; every
//! binary that may bring a lab up calls [`run_if_requested`] first thing in `main`. The server binds each
//! host's sockets on a thread inside that host's namespace, serves them with tokio, writes `server.ready`
//! once all are bound, logs to `server.log` in the lab directory, and exits on SIGTERM.

use std::{
    fs::OpenOptions,
    io::Write,
    net::{Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, UdpSocket},
    sync::Semaphore,
};

use crate::{
    netns,
    state::{self, LAB_DIR_ENV, LabState},
    topology::{ContainerPort, Protocol},
};

/// Set to a lab name, makes [`run_if_requested`] run that lab's server.
pub const SERVE_ENV: &str = "FLOWGATE_LAB_SERVE";
/// Written by the server once every socket is bound (contains its pid).
pub const READY_FILE: &str = "server.ready";
/// Written by the server when it starts (contains its pid), so `down` finds it even without a state file.
pub const PID_FILE: &str = "server.pid";
pub const LOG_FILE: &str = "server.log";

/// How long a TCP connection may stay open: probes and demos are short; nothing lingers.
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);
/// Connections served at once per listening socket; more are closed right away.
const MAX_CONNECTIONS: usize = 256;

/// Errors starting a lab's server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot find the current executable to start lab {lab}'s server")]
    CurrentExe {
        lab: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the server log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start lab {lab}'s server ({exe})")]
    Spawn {
        lab: String,
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "lab {lab}'s server exited before binding its ports ({status}); the end of {log}:\n{tail}\n\
         (a binary that brings labs up must call flowgate_lab::server::run_if_requested() first in main)"
    )]
    Exited { lab: String, status: String, log: PathBuf, tail: String },
    #[error("lab {lab}'s server did not bind its ports within {waited:?}; see {log}")]
    NotReady { lab: String, waited: Duration, log: PathBuf },
}

/// If this process was started as a lab's server, runs it and exits the process; otherwise returns at once.
pub fn run_if_requested() {
    let Some(lab) = std::env::var_os(SERVE_ENV) else {
        return;
    };
    let lab = lab.to_string_lossy().into_owned();
    let code = match serve(&lab) {
        Ok(()) => 0,
        Err(message) => {
            log_line(&format!("error: {message}"));
            1
        }
    };
    std::process::exit(code);
}

/// Starts lab `state.name`'s server and waits until it has bound every port. Returns its pid.
pub(crate) fn start(state: &LabState, ready_within: Duration) -> Result<u32, ServerError> {
    let lab = state.name.clone();
    let dir = state::lab_dir(&lab);
    let exe = std::env::current_exe().map_err(|source| ServerError::CurrentExe { lab: lab.clone(), source })?;
    let log = dir.join(LOG_FILE);
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| ServerError::Log { path: log.clone(), source })
    };
    let child = Command::new(&exe)
        .env(SERVE_ENV, &lab)
        .env(LAB_DIR_ENV, state::labs_dir())
        .env_remove("RUST_LOG")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?)
        .spawn()
        .map_err(|source| ServerError::Spawn { lab: lab.clone(), exe, source })?;
    wait_ready(child, &lab, &dir, &log, ready_within)
}

fn wait_ready(mut child: Child, lab: &str, dir: &Path, log: &Path, within: Duration) -> Result<u32, ServerError> {
    let pid = child.id();
    let ready = dir.join(READY_FILE);
    let deadline = Instant::now() + within;
    loop {
        if ready.exists() {
            // The server outlives this process; whoever ends it (down) reaps it if it is still our child.
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(ServerError::Exited {
                lab: lab.to_owned(),
                status: status.to_string(),
                log: log.to_owned(),
                tail,
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ServerError::NotReady { lab: lab.to_owned(), waited: within, log: log.to_owned() });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn log_line(message: &str) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    // stderr is the log file.
    let _ = writeln!(std::io::stderr(), "{secs:.3} [{}] {message}", std::process::id());
}

/// Sockets of one host, bound inside its namespace.
struct HostSockets {
    host: String,
    tcp: Vec<(u16, std::net::TcpListener)>,
    udp: Vec<(u16, std::net::UdpSocket)>,
}

/// A non-blocking socket bound to `[::]:port` that takes IPv4 too (IPv4-mapped), listening if a stream.
fn dual_stack(kind: Type, port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, kind, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    if kind == Type::STREAM {
        socket.listen(1024)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_host(host: String, netns_name: &str, ports: &[ContainerPort]) -> Result<HostSockets, String> {
    let ports = ports.to_vec();
    let h = host.clone();
    netns::in_netns(netns_name, move || -> Result<HostSockets, String> {
        let mut sockets = HostSockets { host: h.clone(), tcp: Vec::new(), udp: Vec::new() };
        for p in ports {
            match p.protocol {
                Protocol::Tcp => {
                    let l = dual_stack(Type::STREAM, p.port).map_err(|e| format!("{h}: bind {}/TCP: {e}", p.port))?;
                    sockets.tcp.push((p.port, l.into()));
                }
                Protocol::Udp => {
                    let s = dual_stack(Type::DGRAM, p.port).map_err(|e| format!("{h}: bind {}/UDP: {e}", p.port))?;
                    sockets.udp.push((p.port, s.into()));
                }
                // This kernel has no SCTP sockets; policies on SCTP ports can still be written and compiled.
                Protocol::Sctp => {}
            }
        }
        Ok(sockets)
    })
    .map_err(|e| format!("{host}: {e}"))?
}

fn serve(lab: &str) -> Result<(), String> {
    // Leave the caller's session so its terminal's signals and its exit do not end the pods' servers.
    let _ = nix::unistd::setsid();
    let dir = state::lab_dir(lab);
    std::fs::write(dir.join(PID_FILE), format!("{}\n", std::process::id()))
        .map_err(|e| format!("write {}: {e}", dir.join(PID_FILE).display()))?;
    let state = state::load(lab).map_err(|e| e.to_string())?;
    log_line(&format!("serving lab {lab}"));

    let hosts: Vec<(String, String, Vec<ContainerPort>)> = state
        .pods
        .iter()
        .map(|p| (format!("{}/{}", p.namespace, p.name), p.netns.clone(), p.ports.clone()))
        .chain(state.externals.iter().map(|e| (e.name.clone(), e.netns.clone(), e.ports.clone())))
        .collect();
    let mut bound = Vec::with_capacity(hosts.len());
    for (host, ns, ports) in hosts {
        bound.push(bind_host(host, &ns, &ports)?);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let mut count = 0usize;
        for host in bound {
            for (port, l) in host.tcp {
                let l = TcpListener::from_std(l).map_err(|e| format!("{}: {e}", host.host))?;
                tokio::spawn(serve_tcp(format!("{}:{port}/TCP", host.host), l));
                count += 1;
            }
            for (port, s) in host.udp {
                let s = UdpSocket::from_std(s).map_err(|e| format!("{}: {e}", host.host))?;
                tokio::spawn(serve_udp(format!("{}:{port}/UDP", host.host), s));
                count += 1;
            }
        }
        std::fs::write(dir.join(READY_FILE), format!("{}\n", std::process::id()))
            .map_err(|e| format!("write ready file: {e}"))?;
        log_line(&format!("ready: {count} sockets"));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| format!("SIGINT handler: {e}"))?;
        tokio::select! {
            _ = term.recv() => log_line("SIGTERM: exiting"),
            _ = int.recv() => log_line("SIGINT: exiting"),
        }
        Ok::<(), String>(())
    })?;
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

async fn serve_tcp(what: String, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                log_line(&format!("{what}: accept: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log_line(&format!("{what}: over {MAX_CONNECTIONS} connections, closing one"));
            continue;
        };
        tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            let _ = tokio::time::timeout(CONNECTION_LIMIT, async {
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            })
            .await;
            drop(permit);
        });
    }
}

async fn serve_udp(what: String, socket: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let _ = socket.send_to(&buf[..n], from).await;
            }
            Err(e) => {
                // ICMP errors from earlier replies surface here on some kernels; keep serving.
                log_line(&format!("{what}: recv: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
