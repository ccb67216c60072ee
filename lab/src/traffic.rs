//! Bounded traffic between lab hosts, sent from inside the source's namespace: a burst of UDP datagrams
//! (echoed back by the destination's server) or a series of short TCP connections. Every run stops by
//! itself after `count` sends or `time_limit`, whichever comes first. Used by tests, benchmarks and the
//! demo to drive real packets through the datapath.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use crate::{
    netns::{self, NetnsError},
    state::{Family, LabState, PodRef},
    topology::Protocol,
};

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("lab {lab} has no host {host}")]
    UnknownHost { lab: String, host: PodRef },
    #[error("{host} has no {family} address")]
    NoAddress { host: PodRef, family: Family },
    #[error("traffic over {0} is not supported (TCP and UDP are)")]
    Protocol(&'static str),
    #[error("entering the namespace of {host}")]
    Netns {
        host: PodRef,
        #[source]
        source: NetnsError,
    },
    #[error("opening a socket in {host}")]
    Socket {
        host: PodRef,
        #[source]
        source: std::io::Error,
    },
}

/// What to send.
#[derive(Clone, Debug)]
pub struct TrafficSpec {
    pub from: PodRef,
    pub to: PodRef,
    pub port: u16,
    pub protocol: Protocol,
    /// Over IPv4 or IPv6.
    pub family: Family,
    /// UDP datagrams or TCP connections to make.
    pub count: u64,
    /// Wall-clock bound on the whole run.
    pub time_limit: Duration,
    /// Pause between sends (zero: as fast as possible).
    pub interval: Duration,
}

/// What happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrafficReport {
    /// Datagrams sent, or connections attempted.
    pub sent: u64,
    /// Echoes received, or connections that succeeded.
    pub answered: u64,
    pub elapsed_ms: u64,
}

/// Runs the traffic on a thread inside the source's namespace and waits for it.
pub fn run(state: &LabState, spec: &TrafficSpec) -> Result<TrafficReport, TrafficError> {
    let unknown = |host: &PodRef| TrafficError::UnknownHost { lab: state.name.clone(), host: host.clone() };
    let src = state.host(&spec.from).ok_or_else(|| unknown(&spec.from))?;
    let dst = state.host(&spec.to).ok_or_else(|| unknown(&spec.to))?;
    let ip =
        dst.addr(spec.family).ok_or_else(|| TrafficError::NoAddress { host: spec.to.clone(), family: spec.family })?;
    let addr = SocketAddr::new(ip, spec.port);
    let spec2 = spec.clone();
    let result = match spec.protocol {
        Protocol::Udp => netns::in_netns(src.netns, move || udp_burst(addr, &spec2)),
        Protocol::Tcp => netns::in_netns(src.netns, move || tcp_connects(addr, &spec2)),
        Protocol::Sctp => return Err(TrafficError::Protocol(Protocol::Sctp.as_str())),
    };
    result
        .map_err(|source| TrafficError::Netns { host: spec.from.clone(), source })?
        .map_err(|source| TrafficError::Socket { host: spec.from.clone(), source })
}

fn udp_burst(addr: SocketAddr, spec: &TrafficSpec) -> std::io::Result<TrafficReport> {
    let any = if addr.is_ipv6() { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    let started = Instant::now();
    let mut report = TrafficReport::default();
    let mut buf = [0u8; 2048];
    let payload = b"flowgate-traffic";
    let mut drain = |report: &mut TrafficReport| {
        while socket.recv(&mut buf).is_ok() {
            report.answered += 1;
        }
    };
    while report.sent < spec.count && started.elapsed() < spec.time_limit {
        match socket.send(payload) {
            Ok(_) => report.sent += 1,
            // The socket buffer is full or the destination is unreachable: let it drain.
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
        drain(&mut report);
        if !spec.interval.is_zero() {
            std::thread::sleep(spec.interval);
        }
    }
    // Collect late echoes for a moment.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(300) && report.answered < report.sent {
        drain(&mut report);
        std::thread::sleep(Duration::from_millis(5));
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn tcp_connects(addr: SocketAddr, spec: &TrafficSpec) -> std::io::Result<TrafficReport> {
    let started = Instant::now();
    let mut report = TrafficReport::default();
    while report.sent < spec.count && started.elapsed() < spec.time_limit {
        report.sent += 1;
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut echo = [0u8; 5];
            if stream.write_all(b"hello").is_ok() && stream.read_exact(&mut echo).is_ok() {
                report.answered += 1;
            }
        }
        if !spec.interval.is_zero() {
            std::thread::sleep(spec.interval);
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
