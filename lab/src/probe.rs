//! Connectivity probes between lab hosts, tried from inside the source's namespace, all in parallel, each
//! within a timeout (TCP: the connection is established; UDP: the echo server's reply arrives), and the
//! truth-table ([`Reachability`]) and JSON reports of the results (pure formatters).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

use crate::{
    netns::{self, NetnsError},
    reachability::Reachability,
    state::{Family, LabState, PodRef},
    topology::Protocol,
};

/// What a UDP probe sends; the echo server sends it back.
const UDP_PAYLOAD: &[u8] = b"flowgate-probe";
/// A UDP probe sends at most this many datagrams, evenly spread over its timeout.
const UDP_TRIES: u32 = 3;

/// Errors that stop a probe run (a blocked connection is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("lab {lab} has no pod or external {host}; `flowgate lab show {lab}` lists them")]
    UnknownHost { lab: String, host: PodRef },
    #[error("cannot probe over SCTP: this kernel has no SCTP sockets")]
    Sctp,
    #[error("{host} has no {family} address (the lab was brought up before labs were dual-stack)")]
    NoAddress { host: PodRef, family: Family },
    #[error("cannot create probe sockets in {host}'s namespace")]
    Netns {
        host: PodRef,
        #[source]
        source: NetnsError,
    },
    #[error("probe task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// The destination port as given: a number, or a container port name resolved per destination (as Kubernetes
/// resolves named ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortArg {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(s) => f.write_str(s),
        }
    }
}

impl FromStr for PortArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
            s.parse::<u16>()
                .ok()
                .filter(|&n| n != 0)
                .map(Self::Number)
                .ok_or_else(|| format!("port {s} is not in 1-65535"))
        } else if !s.is_empty() {
            Ok(Self::Name(s.to_owned()))
        } else {
            Err("empty port".to_owned())
        }
    }
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub from: PodRef,
    pub to: PodRef,
    /// The numeric port tried; `None` when a named port does not exist on the destination (not connected).
    pub port: Option<u16>,
    pub connected: bool,
}

/// The outcomes of a probe run, with rows (sources) and columns (destinations) in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeMatrix {
    pub port: PortArg,
    pub protocol: Protocol,
    /// The IP version probed over.
    pub family: Family,
    pub from: Vec<PodRef>,
    pub to: Vec<PodRef>,
    pub results: Vec<ProbeResult>,
}

/// Every pair of `hosts`, self included: the full matrix.
pub fn all_pairs(hosts: &[PodRef]) -> Vec<(PodRef, PodRef)> {
    hosts.iter().flat_map(|a| hosts.iter().map(move |b| (a.clone(), b.clone()))).collect()
}

/// Probes every pair in parallel, each within `timeout`.
pub async fn probe(
    state: &LabState,
    pairs: &[(PodRef, PodRef)],
    port: &PortArg,
    protocol: Protocol,
    family: Family,
    timeout: Duration,
) -> Result<ProbeMatrix, ProbeError> {
    if protocol == Protocol::Sctp {
        return Err(ProbeError::Sctp);
    }
    let unknown = |host: &PodRef| ProbeError::UnknownHost { lab: state.name.clone(), host: host.clone() };
    // Resolve every pair first: an unknown host is an error before anything is sent.
    let mut planned = Vec::with_capacity(pairs.len());
    for (from, to) in pairs {
        let src = state.host(from).ok_or_else(|| unknown(from))?;
        let dst = state.host(to).ok_or_else(|| unknown(to))?;
        let dst_ip = dst.addr(family).ok_or_else(|| ProbeError::NoAddress { host: to.clone(), family })?;
        let dst_port = match port {
            PortArg::Number(n) => Some(*n),
            PortArg::Name(name) => dst
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
                .map(|p| p.port),
        };
        planned.push((from.clone(), to.clone(), src.netns.to_owned(), dst_ip, dst_port));
    }

    // Sockets are created on one thread per source namespace, then driven together on this runtime.
    let mut by_source: HashMap<String, (PodRef, Vec<usize>)> = HashMap::new();
    for (i, (from, _, ns, _, port)) in planned.iter().enumerate() {
        if port.is_some() {
            by_source.entry(ns.clone()).or_insert_with(|| (from.clone(), Vec::new())).1.push(i);
        }
    }
    let mut creators = tokio::task::JoinSet::new();
    for (ns, (host, indexes)) in by_source {
        creators.spawn_blocking(move || {
            let count = indexes.len();
            let sockets =
                netns::in_netns(&ns, move || (0..count).map(|_| new_socket(protocol, family)).collect::<Vec<_>>())
                    .map_err(|source| ProbeError::Netns { host, source })?;
            Ok::<_, ProbeError>(indexes.into_iter().zip(sockets).collect::<Vec<_>>())
        });
    }
    let mut probes = tokio::task::JoinSet::new();
    while let Some(created) = creators.join_next().await {
        for (i, socket) in created.map_err(ProbeError::Join)?? {
            let (_, _, _, ip, port) = &planned[i];
            let addr = SocketAddr::new(*ip, port.unwrap_or_default());
            probes.spawn(async move {
                let connected = match socket {
                    Ok(socket) => try_connect(socket, protocol, addr, timeout).await,
                    Err(e) => {
                        log::warn!("probe socket: {e}");
                        false
                    }
                };
                (i, connected)
            });
        }
    }
    let mut connected = vec![false; planned.len()];
    while let Some(done) = probes.join_next().await {
        let (i, ok) = done.map_err(ProbeError::Join)?;
        connected[i] = ok;
    }

    let results = planned
        .into_iter()
        .zip(connected)
        .map(|((from, to, _, _, port), connected)| ProbeResult { from, to, port, connected })
        .collect();
    Ok(ProbeMatrix {
        port: port.clone(),
        protocol,
        family,
        from: unique(pairs.iter().map(|(f, _)| f)),
        to: unique(pairs.iter().map(|(_, t)| t)),
        results,
    })
}

fn unique<'a>(refs: impl Iterator<Item = &'a PodRef>) -> Vec<PodRef> {
    let mut out: Vec<PodRef> = Vec::new();
    for r in refs {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

fn new_socket(protocol: Protocol, family: Family) -> std::io::Result<Socket> {
    let (domain, any) = match family {
        Family::Ipv4 => (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Family::Ipv6 => (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    let socket = match protocol {
        Protocol::Udp => {
            let s = Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?;
            s.bind(&SocketAddr::new(any, 0).into())?;
            s
        }
        _ => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?,
    };
    socket.set_nonblocking(true)?;
    Ok(socket)
}

async fn try_connect(socket: Socket, protocol: Protocol, addr: SocketAddr, timeout: Duration) -> bool {
    match protocol {
        Protocol::Udp => udp_echo(socket, addr, timeout).await,
        _ => {
            let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
            matches!(tokio::time::timeout(timeout, socket.connect(addr)).await, Ok(Ok(_)))
        }
    }
}

async fn udp_echo(socket: Socket, addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket)) else {
        return false;
    };
    if socket.connect(addr).await.is_err() {
        return false;
    }
    let interval = timeout / UDP_TRIES;
    let attempt = async {
        let mut buf = [0u8; 64];
        for _ in 0..UDP_TRIES {
            if socket.send(UDP_PAYLOAD).await.is_err() {
                return false;
            }
            match tokio::time::timeout(interval, socket.recv(&mut buf)).await {
                Ok(Ok(n)) => return &buf[..n] == UDP_PAYLOAD,
                // ICMP port unreachable (no server) arrives as ECONNREFUSED on a connected socket.
                Ok(Err(_)) => return false,
                Err(_) => {}
            }
        }
        false
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(false)
}

impl ProbeMatrix {
    pub fn connected(&self, from: &PodRef, to: &PodRef) -> Option<bool> {
        self.results.iter().find(|r| &r.from == from && &r.to == to).map(|r| r.connected)
    }

    /// The results as a [`Reachability`] table, rows and columns in the order of the probed pairs.
    pub fn reachability(&self) -> Reachability {
        let names = |hosts: &[PodRef]| hosts.iter().map(ToString::to_string).collect();
        let mut table = Reachability::unknown(names(&self.from), names(&self.to));
        for r in &self.results {
            table.set(&r.from.to_string(), &r.to.to_string(), r.connected);
        }
        table
    }

    /// The Kubernetes netpol e2e truth table: rows are sources, columns destinations, `.` connected, `X` blocked
    /// (`?` for a pair that was not probed). Rows and columns keep the order of the probed pairs.
    pub fn truth_table(&self) -> String {
        self.reachability().truth_table()
    }

    /// `{"port":80,"protocol":"TCP","family":"ipv4","results":{"x/a":{"x/b":true,...},...}}`, keys sorted
    /// by name.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Report<'a> {
            port: &'a PortArg,
            protocol: Protocol,
            family: Family,
            results: BTreeMap<String, BTreeMap<String, bool>>,
        }
        let mut results: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        for r in &self.results {
            results.entry(r.from.to_string()).or_default().insert(r.to.to_string(), r.connected);
        }
        serde_json::to_string(&Report { port: &self.port, protocol: self.protocol, family: self.family, results })
            .expect("a map of strings and bools always serializes")
    }

    /// How many probes connected, out of how many.
    pub fn summary(&self) -> (usize, usize) {
        (self.results.iter().filter(|r| r.connected).count(), self.results.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> PodRef {
        s.parse().unwrap()
    }

    fn matrix() -> ProbeMatrix {
        let hosts = vec![r("x/a"), r("x/b"), r("y/a")];
        let results = all_pairs(&hosts)
            .into_iter()
            .map(|(from, to)| {
                let connected = !(from == r("x/a") && to == r("y/a")) && to != r("x/b");
                ProbeResult { from, to, port: Some(80), connected }
            })
            .collect();
        ProbeMatrix {
            port: PortArg::Number(80),
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            from: hosts.clone(),
            to: hosts,
            results,
        }
    }

    #[test]
    fn truth_table_has_sources_as_rows_and_destinations_as_columns() {
        assert_eq!(matrix().truth_table(), "\tx/a\tx/b\ty/a\nx/a\t.\tX\tX\nx/b\t.\tX\t.\ny/a\t.\tX\t.\n");
    }

    #[test]
    fn truth_table_marks_pairs_that_were_not_probed() {
        let mut m = matrix();
        m.results.retain(|p| p.from != r("y/a"));
        assert!(m.truth_table().ends_with("y/a\t?\t?\t?\n"));
    }

    #[test]
    fn json_report_has_the_e2e_shape_with_sorted_keys() {
        assert_eq!(
            matrix().to_json(),
            r#"{"port":80,"protocol":"TCP","family":"ipv4","results":{"x/a":{"x/a":true,"x/b":false,"y/a":false},"x/b":{"x/a":true,"x/b":false,"y/a":true},"y/a":{"x/a":true,"x/b":false,"y/a":true}}}"#
        );
    }

    #[test]
    fn json_report_keeps_a_named_port_as_a_string() {
        let mut m = matrix();
        m.port = PortArg::Name("serve-80-tcp".into());
        m.protocol = Protocol::Udp;
        assert!(m.to_json().starts_with(r#"{"port":"serve-80-tcp","protocol":"UDP","family":"ipv4","results":"#));
    }

    #[test]
    fn port_argument_is_a_number_or_a_name() {
        assert_eq!("80".parse::<PortArg>().unwrap(), PortArg::Number(80));
        assert_eq!("serve-80-tcp".parse::<PortArg>().unwrap(), PortArg::Name("serve-80-tcp".into()));
        assert!("0".parse::<PortArg>().is_err());
        assert!("70000".parse::<PortArg>().is_err());
        assert!("".parse::<PortArg>().is_err());
    }

    #[test]
    fn all_pairs_includes_self_probes_in_row_order() {
        let pairs = all_pairs(&[r("x/a"), r("x/b")]);
        assert_eq!(pairs, vec![(r("x/a"), r("x/a")), (r("x/a"), r("x/b")), (r("x/b"), r("x/a")), (r("x/b"), r("x/b"))]);
    }

    #[test]
    fn summary_counts_connected_probes() {
        assert_eq!(matrix().summary(), (5, 9));
    }
}
