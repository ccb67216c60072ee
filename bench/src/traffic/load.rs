//! The traffic: servers on the server pod's [`PORT`] (TCP and UDP) and the three loads, each run on a thread
//! that has entered the client pod's namespace (setns through [`flowgate_lab::netns`]) and bounded in time and
//! count. Short-lived connections (connect, accept, server closes, client closes), request/response (one
//! connection, one byte each way), and UDP datagrams counted where they arrive. Plus the probe from a pod the
//! policy does not admit, which every enforcer must refuse before its figures count.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use flowgate_lab::netns;

use super::rules::PORT;

/// A load never sends more than this many connections, transactions or datagrams, whatever its duration.
const MAX_OPERATIONS: u64 = 50_000_000;
/// How long one connection attempt of a load may take before the load gives up on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the probe waits for a connection it expects to be refused.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Idle wake-up of the server threads, to notice the stop flag.
const SERVER_TICK: Duration = Duration::from_millis(100);

/// The CPU the client's threads run on, and the one the servers' threads run on (when there are two).
/// Pinned, because a request/response pair on one core or across two differs by 3x here, and the
/// scheduler's choice would otherwise decide the figure.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

/// Pins the calling thread to `cpu`, if the machine has it.
fn pin_to(cpu: usize) {
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) <= cpu {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it (cpu < the CPUs there are, far
    // below CPU_SETSIZE); sched_setaffinity(0, ...) changes the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Counters the servers keep.
#[derive(Debug, Default)]
struct ServerCounters {
    /// UDP datagrams from the client pod.
    udp_from_client: AtomicU64,
    /// UDP datagrams from any other address (the probe's).
    udp_from_others: AtomicU64,
    /// TCP connections accepted from addresses other than the client's.
    tcp_from_others: AtomicU64,
}

/// The servers of the server pod: TCP (accept, then close at once, or echo each byte of a request/response
/// connection) and UDP (count). Stopped and joined on drop.
pub struct Servers {
    client: Ipv4Addr,
    counters: Arc<ServerCounters>,
    /// Whether accepted TCP connections echo (request/response) or are closed at once (connection rate).
    echo: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    listener_fd: i32,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Binds `0.0.0.0:PORT` (TCP and UDP) inside `netns` and serves on background threads.
    pub fn start(netns_name: &str, client: Ipv4Addr) -> anyhow::Result<Self> {
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT));
        let (listener, udp) = netns::in_netns(netns_name, move || -> std::io::Result<_> {
            Ok((TcpListener::bind(any)?, UdpSocket::bind(any)?))
        })
        .with_context(|| format!("entering {netns_name} to bind the servers"))?
        .with_context(|| format!("binding TCP and UDP port {PORT} in {netns_name}"))?;
        udp.set_read_timeout(Some(SERVER_TICK))?;
        let counters = Arc::new(ServerCounters::default());
        let echo = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let listener_fd = listener.as_raw_fd();
        let mut threads = Vec::new();
        {
            let (counters, echo, stop) = (counters.clone(), echo.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("bench-tcp-server".into())
                    .spawn(move || serve_tcp(&listener, client, &counters, &echo, &stop))?,
            );
        }
        {
            let (counters, stop) = (counters.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("bench-udp-server".into())
                    .spawn(move || serve_udp(&udp, client, &counters, &stop))?,
            );
        }
        Ok(Self { client, counters, echo, stop, listener_fd, threads })
    }

    fn udp_from_client(&self) -> u64 {
        self.counters.udp_from_client.load(Ordering::Relaxed)
    }

    /// The client pod's address the counters are kept for.
    pub fn client(&self) -> Ipv4Addr {
        self.client
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept (it returns EINVAL on a shut-down listener).
        // SAFETY: the listener is owned by the TCP thread, which is still running (joined below).
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(
    listener: &TcpListener,
    client: Ipv4Addr,
    counters: &ServerCounters,
    echo: &AtomicBool,
    stop: &AtomicBool,
) {
    pin_to(SERVER_CPU);
    let mut echoes: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok((stream, from)) = listener.accept() else {
            continue;
        };
        if from.ip() != std::net::IpAddr::V4(client) {
            counters.tcp_from_others.fetch_add(1, Ordering::Relaxed);
        }
        if !echo.load(Ordering::Relaxed) {
            // Connection rate: the server closes first, so the client never holds TIME_WAIT.
            drop(stream);
            continue;
        }
        echoes.retain(|t| !t.is_finished());
        if let Ok(t) = std::thread::Builder::new().name("bench-tcp-echo".into()).spawn(move || echo_bytes(stream)) {
            echoes.push(t);
        }
    }
    for t in echoes {
        let _ = t.join();
    }
}

fn echo_bytes(mut stream: TcpStream) {
    pin_to(SERVER_CPU);
    let _ = stream.set_nodelay(true);
    // Bounded: a silent client is dropped after a while.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        if stream.write_all(&byte).is_err() {
            break;
        }
    }
}

fn serve_udp(socket: &UdpSocket, client: Ipv4Addr, counters: &ServerCounters, stop: &AtomicBool) {
    pin_to(SERVER_CPU);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((_, from)) if from.ip() == std::net::IpAddr::V4(client) => {
                counters.udp_from_client.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                counters.udp_from_others.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
}

/// Which load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Load {
    /// New TCP connections per second: connect, the server accepts and closes, the client reads the end and
    /// closes; one after another from one thread.
    Connections,
    /// TCP request/response per second: one connection, one byte each way, no Nagle.
    RequestResponse,
    /// UDP datagrams (1 byte of payload) per second received by the server, from one sending thread.
    UdpPackets,
}

impl Load {
    pub const ALL: [Self; 3] = [Self::Connections, Self::RequestResponse, Self::UdpPackets];

    pub fn name(self) -> &'static str {
        match self {
            Self::Connections => "new TCP connections",
            Self::RequestResponse => "TCP request/response",
            Self::UdpPackets => "UDP packets",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::Connections => "connections/s",
            Self::RequestResponse => "transactions/s",
            Self::UdpPackets => "packets/s",
        }
    }

    /// One operation of the load, as a per-operation figure names it.
    pub fn operation(self) -> &'static str {
        match self {
            Self::Connections => "connection",
            Self::RequestResponse => "transaction",
            Self::UdpPackets => "packet",
        }
    }
}

/// How many slices a window is cut into; the best one is the figure.
pub const SLICES: u32 = 8;

/// A load's rate over its whole window and over its best slice. The machine is shared: another process
/// taking a core for a moment lowers the mean of whatever runs then, much less the best slice, which is what
/// the figures use (every enforcer and the baseline alike).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub mean: f64,
    pub best_slice: f64,
}

/// A window of `duration` cut into [`SLICES`] slices, fed with a cumulative count.
struct Window {
    started: Instant,
    duration: Duration,
    slice: Duration,
    slice_started: Instant,
    slice_count: u64,
    best: f64,
    count: u64,
}

impl Window {
    fn start(duration: Duration) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            duration,
            slice: duration / SLICES,
            slice_started: now,
            slice_count: 0,
            best: 0.0,
            count: 0,
        }
    }

    /// Takes the cumulative count; false once the window is over.
    fn tick(&mut self, count: u64) -> bool {
        let now = Instant::now();
        let in_slice = now - self.slice_started;
        if in_slice >= self.slice {
            self.best = self.best.max((count - self.slice_count) as f64 / in_slice.as_secs_f64());
            (self.slice_started, self.slice_count) = (now, count);
        }
        self.count = count;
        now - self.started < self.duration && count < MAX_OPERATIONS
    }

    fn rate(&self) -> Rate {
        Rate { mean: self.count as f64 / self.started.elapsed().as_secs_f64(), best_slice: self.best }
    }
}

/// Runs `load` from the client pod's namespace to the server for `duration` (after a short warm-up that is
/// not counted) and returns its rate. Fails when nothing got through (the enforcer refused the client).
pub fn run(
    load: Load,
    client_netns: &str,
    servers: &Servers,
    server: Ipv4Addr,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let addr = SocketAddr::V4(SocketAddrV4::new(server, PORT));
    servers.echo.store(load == Load::RequestResponse, Ordering::Relaxed);
    let warm_up = (duration / 10).min(Duration::from_millis(200));
    let rate = match load {
        Load::Connections => {
            netns::in_netns(client_netns, move || connections(addr, warm_up, duration))?.context("connections")?
        }
        Load::RequestResponse => netns::in_netns(client_netns, move || request_response(addr, warm_up, duration))?
            .context("request/response")?,
        Load::UdpPackets => {
            netns::in_netns(client_netns, || udp_packets(addr, warm_up, duration, || servers.udp_from_client()))?
                .context("UDP packets")?
        }
    };
    anyhow::ensure!(rate.mean > 0.0, "{} from {client_netns} to {addr}: nothing got through", load.name());
    Ok(rate)
}

fn connections(addr: SocketAddr, warm_up: Duration, duration: Duration) -> anyhow::Result<Rate> {
    pin_to(CLIENT_CPU);
    let one = || -> std::io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        let mut byte = [0u8; 1];
        // The server closes first: wait for its end, then close.
        match stream.read(&mut byte)? {
            0 => Ok(()),
            _ => Err(std::io::Error::new(ErrorKind::InvalidData, "the server sent data")),
        }
    };
    let until = Instant::now() + warm_up;
    while Instant::now() < until {
        one().with_context(|| format!("warm-up connection to {addr}"))?;
    }
    let (mut window, mut done) = (Window::start(duration), 0u64);
    while window.tick(done) {
        one().with_context(|| format!("connection {} to {addr}", done + 1))?;
        done += 1;
    }
    Ok(window.rate())
}

fn request_response(addr: SocketAddr, warm_up: Duration, duration: Duration) -> anyhow::Result<Rate> {
    pin_to(CLIENT_CPU);
    let mut stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut byte = [7u8; 1];
    let mut transact = |stream: &mut TcpStream| -> std::io::Result<()> {
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)
    };
    let until = Instant::now() + warm_up;
    while Instant::now() < until {
        transact(&mut stream).context("warm-up transaction")?;
    }
    let (mut window, mut done) = (Window::start(duration), 0u64);
    // The clock is read once per 16 transactions.
    while window.tick(done) {
        for _ in 0..16 {
            transact(&mut stream).with_context(|| format!("transaction {} with {addr}", done + 1))?;
            done += 1;
        }
    }
    Ok(window.rate())
}

/// Sends for `warm_up`, then for `duration`, counting what the server received (`received`, cumulative).
fn udp_packets(
    addr: SocketAddr,
    warm_up: Duration,
    duration: Duration,
    received: impl Fn() -> u64,
) -> anyhow::Result<Rate> {
    pin_to(CLIENT_CPU);
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a UDP socket")?;
    socket.connect(addr).with_context(|| format!("connecting a UDP socket to {addr}"))?;
    let send = |socket: &UdpSocket| {
        // A full queue or an ICMP error surfaced here is not fatal: the count at the server is what counts.
        let _ = socket.send(b"x");
    };
    let until = Instant::now() + warm_up;
    while Instant::now() < until {
        send(&socket);
    }
    let before = received();
    let mut window = Window::start(duration);
    while window.tick(received() - before) {
        for _ in 0..16 {
            send(&socket);
        }
    }
    Ok(window.rate())
}

/// What the probe from a pod the policy does not admit saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The TCP connection was established.
    pub tcp_admitted: bool,
    /// At least one of the UDP datagrams reached the server.
    pub udp_admitted: bool,
}

impl ProbeOutcome {
    pub fn refused(self) -> bool {
        !self.tcp_admitted && !self.udp_admitted
    }
}

/// From `netns` (a pod the policy does not admit): one TCP connection (refused if not established within
/// [`PROBE_TIMEOUT`]) and 10 UDP datagrams (refused if none reaches the server within [`PROBE_TIMEOUT`] of
/// their sending). The datagrams go first, so their wait overlaps the connection's; an admitted one ends
/// the wait at once.
pub fn probe(netns_name: &str, servers: &Servers, server: Ipv4Addr) -> anyhow::Result<ProbeOutcome> {
    let addr = SocketAddr::V4(SocketAddrV4::new(server, PORT));
    let udp_count = || servers.counters.udp_from_others.load(Ordering::Relaxed);
    let udp_before = udp_count();
    let (tcp_admitted, sent) = netns::in_netns(netns_name, move || -> anyhow::Result<(bool, Instant)> {
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding the probe's UDP socket")?;
        for _ in 0..10 {
            let _ = udp.send_to(b"probe", addr);
        }
        let sent = Instant::now();
        Ok((TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok(), sent))
    })??;
    let deadline = sent + PROBE_TIMEOUT;
    while udp_count() == udp_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(ProbeOutcome { tcp_admitted, udp_admitted: udp_count() > udp_before })
}

/// Whether the client itself gets through (one connection and one datagram), the probe's other half.
pub fn client_admitted(client_netns: &str, servers: &Servers, server: Ipv4Addr) -> anyhow::Result<bool> {
    let addr = SocketAddr::V4(SocketAddrV4::new(server, PORT));
    servers.echo.store(false, Ordering::Relaxed);
    let before = servers.udp_from_client();
    let tcp = netns::in_netns(client_netns, move || -> anyhow::Result<bool> {
        let tcp = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok();
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding the client's UDP socket")?;
        let _ = udp.send_to(b"admitted?", addr);
        Ok(tcp)
    })??;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while servers.udp_from_client() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(tcp && servers.udp_from_client() > before)
}
