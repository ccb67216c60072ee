//! A pod is an attacker: real packets from inside lab pods that would get around the datapath if its
//! checks were missing, and the traffic those checks must not break. x/a takes ingress only from x/c.
//!
//! - x/b sends with x/c's address (a raw socket): nothing arrives, the drop says `INVALID_SOURCE_IP`.
//! - A 3000-byte UDP datagram (fragmented on the 1500-byte veths) from x/c arrives whole; from x/b none.
//! - x/a, isolated for ingress, pings out and gets its replies; an unsolicited ping into x/a is dropped.
//! - Path-MTU discovery: the node answers x/a's too-big packet with "fragmentation needed", which must
//!   reach x/a although x/a admits nothing from the node.
//!
//! Each again over IPv6 on the dual-stack lab: x/b sending from x/c's IPv6 address (a non-local bind), a
//! 3000-byte datagram fragmented by its sender, ping6 (ICMPv6 echo), and "packet too big". Neighbour
//! discovery works throughout (every IPv6 exchange needs it).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use flowgate_agent::craft::{checksum, ipv4_frame};
use flowgate_lab::netns::in_netns;
use flowgate_tests::{
    LabGuard, LabState, TempDir,
    agent::{AgentGuard, SocketDir},
    example, flowgate_ok, require_root,
};

const A_FROM_C: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: c}}}]
";

struct Setup {
    lab: LabGuard,
    agent: AgentGuard,
    verdicts: std::path::PathBuf,
    _tmp: TempDir,
    _sockets: SocketDir,
}

impl Setup {
    fn new(tag: &str) -> Self {
        require_root();
        let lab = LabGuard::up(tag, &example("lab-netpol.yaml"));
        let tmp = TempDir::new(tag);
        let policies = tmp.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("a.yaml"), A_FROM_C).unwrap();
        let verdicts = tmp.path().join("verdicts.jsonl");
        let sockets = SocketDir::new(tag);
        let agent = AgentGuard::start(
            &lab.name,
            &sockets.socket("agent.sock"),
            &["--policies", policies.to_str().unwrap(), "--verdict-log", verdicts.to_str().unwrap()],
        );
        let setup = Self { lab, agent, verdicts, _tmp: tmp, _sockets: sockets };
        setup.wait_for_policy();
        setup
    }

    fn status(&self) -> serde_json::Value {
        let out = flowgate_ok(&["status", "--socket", self.agent.socket.to_str().unwrap(), "-o", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    fn wait_for_policy(&self) {
        let started = Instant::now();
        while self.status()["policy"]["loaded"].as_array().is_none_or(Vec::is_empty) {
            assert!(started.elapsed() < Duration::from_secs(20), "the policy never loaded: {}", self.status());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state(&self) -> LabState {
        self.lab.saved_state()
    }

    fn pod(&self, name: &str) -> (String, Ipv4Addr) {
        let (ns, pod) = name.split_once('/').unwrap();
        let p = self.state().pods.into_iter().find(|p| p.namespace == ns && p.name == pod).unwrap();
        (p.netns, p.ip)
    }

    fn pod6(&self, name: &str) -> (String, Ipv6Addr) {
        let (ns, pod) = name.split_once('/').unwrap();
        let p = self.state().pods.into_iter().find(|p| p.namespace == ns && p.name == pod).unwrap();
        (p.netns, p.ipv6.expect("the lab is dual-stack"))
    }

    fn kernel_counter(&self, name: &str) -> u64 {
        self.status()["counters"]["kernel"][name].as_u64().unwrap_or(0)
    }

    /// Verdict-log lines with this drop reason, once the log has them (within a few seconds).
    fn drops_named(&self, reason: &str) -> Vec<serde_json::Value> {
        let started = Instant::now();
        loop {
            let found: Vec<serde_json::Value> = std::fs::read_to_string(&self.verdicts)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["flow"]["drop_reason_desc"] == reason)
                .collect();
            if !found.is_empty() || started.elapsed() > Duration::from_secs(5) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A UDP socket bound inside `netns` (it stays in that namespace), reading with a short timeout.
fn udp_socket(netns: &str, addr: SocketAddrV4) -> UdpSocket {
    let socket = in_netns(netns, || UdpSocket::bind(addr)).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    socket
}

/// Datagrams that reach `socket` within `within`.
fn received(socket: &UdpSocket, within: Duration) -> Vec<Vec<u8>> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while started.elapsed() < within {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

/// Sends one IPv4/UDP packet with a source address of our choosing, from inside `netns` (IPPROTO_RAW:
/// the header is ours).
fn send_spoofed(netns: &str, src: Ipv4Addr, dst: SocketAddrV4, payload: &[u8]) {
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    udp.extend_from_slice(payload);
    // The IP packet of a crafted frame, without its Ethernet header.
    let packet = ipv4_frame(src, *dst.ip(), 17, &udp, None)[14..].to_vec();
    in_netns(netns, || {
        // SAFETY: plain socket(2); the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `to` are valid for the lengths given; fd is the socket opened above.
        let sent = unsafe {
            libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        let error = std::io::Error::last_os_error();
        // SAFETY: closes the descriptor opened above, once.
        unsafe { libc::close(fd) };
        assert_eq!(sent, packet.len() as isize, "sendto: {error}");
    })
    .unwrap();
}

/// Sends `payload` as one UDP datagram from inside `netns`.
fn send_udp(netns: &str, to: SocketAddrV4, payload: &[u8]) {
    let socket = udp_socket(netns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    socket.send_to(payload, to).unwrap();
}

#[test]
fn a_pod_cannot_borrow_another_pods_address() {
    let s = Setup::new("hspoof");
    let (a_ns, a_ip) = s.pod("x/a");
    let (b_ns, _) = s.pod("x/b");
    let (c_ns, c_ip) = s.pod("x/c");
    let inbox = udp_socket(&a_ns, SocketAddrV4::new(a_ip, 7777));
    let to = SocketAddrV4::new(a_ip, 7777);

    // The real x/c is let in ...
    send_udp(&c_ns, to, b"from the real c");
    assert_eq!(received(&inbox, Duration::from_millis(500)), vec![b"from the real c".to_vec()]);
    // ... x/b with x/c's address is not.
    for _ in 0..3 {
        send_spoofed(&b_ns, c_ip, to, b"from b, claiming to be c");
    }
    assert!(received(&inbox, Duration::from_secs(1)).is_empty(), "a spoofed packet reached x/a");
    let drops = s.drops_named("INVALID_SOURCE_IP");
    assert!(drops.len() >= 3, "every spoofed packet has its drop record: {drops:?}");
    assert_eq!(drops[0]["flow"]["source"]["pod_name"], "b", "the drop names the sender, x/b: {}", drops[0]);
    assert!(s.kernel_counter("invalid_source") >= 3, "{}", s.status());
    // And x/c is not blamed: no verdict for x/c's address on port 7777 beyond the real one.
    let endpoints = flowgate_ok(&["endpoint", "list", "--socket", s.agent.socket.to_str().unwrap(), "-o", "json"]);
    let endpoints: serde_json::Value = serde_json::from_str(&endpoints).unwrap();
    let b = endpoints.as_array().unwrap().iter().find(|e| e["namespace"] == "x" && e["pod_name"] == "b").unwrap();
    assert!(b["invalid_source_drops"].as_u64().unwrap_or(0) >= 3, "counted for x/b: {b}");
}

#[test]
fn large_datagrams_of_allowed_flows_arrive_whole_and_of_denied_flows_not_at_all() {
    let s = Setup::new("hfrag");
    let (a_ns, a_ip) = s.pod("x/a");
    let (b_ns, _) = s.pod("x/b");
    let (c_ns, _) = s.pod("x/c");
    let inbox = udp_socket(&a_ns, SocketAddrV4::new(a_ip, 7778));
    let to = SocketAddrV4::new(a_ip, 7778);
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    send_udp(&c_ns, to, &big);
    send_udp(&c_ns, to, &big[..1000]);
    let got = received(&inbox, Duration::from_secs(1));
    assert_eq!(got, vec![big.clone(), big[..1000].to_vec()], "x/c's 3000-byte datagram arrives whole");
    send_udp(&b_ns, to, &big);
    assert!(received(&inbox, Duration::from_secs(1)).is_empty(), "x/b's fragments never arrive");
    assert_eq!(s.kernel_counter("fragments_without_first"), 0, "{}", s.status());
}

/// One ICMP (IPv4) or ICMPv6 echo from inside `netns` to `to`: whether the matching reply came back within a
/// second. A raw socket of the address's family; the kernel fills in ICMPv6 checksums, ICMP's is ours.
fn ping(netns: &str, to: IpAddr, id: u16) -> bool {
    in_netns(netns, || {
        let (domain, protocol, request, reply) = match to {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
        };
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, protocol) };
        assert!(fd >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let mut echo = vec![request, 0, 0, 0, 0, 0, 0, 1];
        echo[4..6].copy_from_slice(&id.to_be_bytes());
        echo.extend_from_slice(b"flowgate");
        if to.is_ipv4() {
            let c = checksum(&echo);
            echo[2..4].copy_from_slice(&c.to_be_bytes());
        }
        let to = socket2::SockAddr::from(SocketAddr::new(to, 0));
        // SAFETY: buffers valid for the lengths given; fd is the socket opened above.
        unsafe { libc::sendto(fd, echo.as_ptr().cast(), echo.len(), 0, to.as_ptr().cast(), to.len()) };
        let started = Instant::now();
        let mut buf = [0u8; 1500];
        let mut answered = false;
        while started.elapsed() < Duration::from_secs(1) && !answered {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            // A raw IPv4 socket delivers the IP header too; an ICMPv6 one the message alone.
            let skip = if domain == libc::AF_INET && n > 0 { usize::from(buf[0] & 0x0f) * 4 } else { 0 };
            if n >= skip + 8 {
                let icmp = &buf[skip..n];
                answered = icmp[0] == reply && u16::from_be_bytes([icmp[4], icmp[5]]) == id;
            }
        }
        // SAFETY: closes the descriptor opened above, once.
        unsafe { libc::close(fd) };
        answered
    })
    .unwrap()
}

#[test]
fn a_pod_isolated_for_ingress_can_ping_out_and_is_not_pinged_into() {
    let s = Setup::new("hping");
    let (a_ns, a_ip) = s.pod("x/a");
    let (_, ya_ip) = s.pod("y/a");
    let (yb_ns, _) = s.pod("y/b");
    let (c_ns, _) = s.pod("x/c");
    assert!(ping(&a_ns, ya_ip.into(), 0x4201), "x/a's ping to y/a gets its reply");
    assert!(!ping(&yb_ns, a_ip.into(), 0x4202), "y/b's ping into x/a is dropped (x/a admits only x/c)");
    assert!(ping(&c_ns, a_ip.into(), 0x4203), "x/c's ping is admitted by a rule without ports");
}

#[test]
fn path_mtu_discovery_works_for_a_pod_isolated_for_ingress() {
    let s = Setup::new("hpmtu");
    let state = s.state();
    let (a_ns, _) = s.pod("x/a");
    let ya = state.pods.iter().find(|p| p.namespace == "y" && p.name == "a").unwrap().clone();
    // The node's link to y/a takes at most 1000 bytes: forwarding x/a's 1400-byte packet with DF set, the
    // node answers "fragmentation needed" from its own address (which x/a's policy does not admit).
    let ok = Command::new("ip")
        .args(["-n", &state.node_netns, "link", "set", &ya.host_ifname, "mtu", "1000"])
        .status()
        .unwrap();
    assert!(ok.success());
    let mtu = in_netns(&a_ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect(SocketAddr::V4(SocketAddrV4::new(ya.ip, 9))).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: a valid int option of the size given, on an open socket.
        unsafe {
            libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, (&raw const on).cast(), 4);
        }
        let _ = socket.send(&[0u8; 1400]);
        std::thread::sleep(Duration::from_millis(300));
        let mut mtu: libc::c_int = 0;
        let mut len: libc::socklen_t = 4;
        // SAFETY: `mtu` and `len` are valid for writing; fd is open.
        unsafe { libc::getsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU, (&raw mut mtu).cast(), &raw mut len) };
        mtu
    })
    .unwrap();
    assert_eq!(mtu, 1000, "x/a learned the path MTU from the node's ICMP error");
    assert!(s.kernel_counter("icmp_related") >= 1, "{}", s.status());
}

// ---- IPv6 ----------------------------------------------------------------------------------------

/// A UDP socket bound inside `netns` to `addr`, reading with a short timeout. With `foreign`, the address
/// need not be the namespace's own (IPV6_FREEBIND): how a pod sends with a borrowed source.
fn udp6_socket(netns: &str, addr: SocketAddrV6, foreign: bool) -> UdpSocket {
    let socket = in_netns(netns, || {
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
        if foreign {
            let on: libc::c_int = 1;
            // SAFETY: a valid int option of the size given, on an open socket.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_FREEBIND,
                    (&raw const on).cast(),
                    4,
                )
            };
            assert_eq!(rc, 0, "IPV6_FREEBIND: {}", std::io::Error::last_os_error());
        }
        socket.bind(&SocketAddr::V6(addr).into())?;
        Ok::<_, std::io::Error>(UdpSocket::from(socket))
    })
    .unwrap()
    .unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    socket
}

#[test]
fn a_pod_cannot_borrow_another_pods_ipv6_address() {
    let s = Setup::new("hspoof6");
    let (a_ns, a_ip) = s.pod6("x/a");
    let (b_ns, _) = s.pod6("x/b");
    let (c_ns, c_ip) = s.pod6("x/c");
    let to = SocketAddrV6::new(a_ip, 7777, 0, 0);
    let inbox = udp6_socket(&a_ns, to, false);
    udp6_socket(&c_ns, SocketAddrV6::new(c_ip, 0, 0, 0), false).send_to(b"from the real c", to).unwrap();
    assert_eq!(received(&inbox, Duration::from_millis(500)), vec![b"from the real c".to_vec()]);
    // x/b binds x/c's address (not its own: IPV6_FREEBIND) and sends from it.
    let forged = udp6_socket(&b_ns, SocketAddrV6::new(c_ip, 40000, 0, 0), true);
    for _ in 0..3 {
        forged.send_to(b"from b, claiming to be c", to).unwrap();
    }
    assert!(received(&inbox, Duration::from_secs(1)).is_empty(), "a spoofed IPv6 packet reached x/a");
    let drops = s.drops_named("INVALID_SOURCE_IP");
    assert!(drops.len() >= 3, "every spoofed packet has its drop record: {drops:?}");
    assert_eq!(drops[0]["flow"]["source"]["pod_name"], "b", "the drop names the sender: {}", drops[0]);
    assert_eq!(drops[0]["flow"]["IP"]["ipVersion"], "IPv6", "{}", drops[0]);
    assert_eq!(drops[0]["flow"]["IP"]["source"], c_ip.to_string(), "the borrowed address is shown: {}", drops[0]);
}

#[test]
fn large_ipv6_datagrams_of_allowed_flows_arrive_whole_and_of_denied_flows_not_at_all() {
    let s = Setup::new("hfrag6");
    let (a_ns, a_ip) = s.pod6("x/a");
    let (b_ns, b_ip) = s.pod6("x/b");
    let (c_ns, c_ip) = s.pod6("x/c");
    let to = SocketAddrV6::new(a_ip, 7778, 0, 0);
    let inbox = udp6_socket(&a_ns, to, false);
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let c = udp6_socket(&c_ns, SocketAddrV6::new(c_ip, 0, 0, 0), false);
    c.send_to(&big, to).unwrap();
    c.send_to(&big[..1000], to).unwrap();
    let got = received(&inbox, Duration::from_secs(1));
    assert_eq!(got, vec![big.clone(), big[..1000].to_vec()], "x/c's fragmented datagram arrives whole");
    udp6_socket(&b_ns, SocketAddrV6::new(b_ip, 0, 0, 0), false).send_to(&big, to).unwrap();
    assert!(received(&inbox, Duration::from_secs(1)).is_empty(), "x/b's fragments never arrive");
    assert_eq!(s.kernel_counter("fragments_without_first"), 0, "{}", s.status());
}

#[test]
fn a_pod_isolated_for_ingress_can_ping6_out_and_is_not_pinged_into() {
    let s = Setup::new("hping6");
    let (a_ns, a_ip) = s.pod6("x/a");
    let (_, ya_ip) = s.pod6("y/a");
    let (yb_ns, _) = s.pod6("y/b");
    let (c_ns, _) = s.pod6("x/c");
    assert!(ping(&a_ns, ya_ip.into(), 0x6201), "x/a's ping6 to y/a gets its reply");
    assert!(!ping(&yb_ns, a_ip.into(), 0x6202), "y/b's ping6 into x/a is dropped (x/a admits only x/c)");
    assert!(ping(&c_ns, a_ip.into(), 0x6203), "x/c's ping6 is admitted by a rule without ports");
    assert!(s.kernel_counter("link_control") >= 1, "neighbour discovery passed: {}", s.status());
}

#[test]
fn ipv6_path_mtu_discovery_works_for_a_pod_isolated_for_ingress() {
    let s = Setup::new("hpmtu6");
    let state = s.state();
    let (a_ns, _) = s.pod6("x/a");
    let ya = state.pods.iter().find(|p| p.namespace == "y" && p.name == "a").unwrap().clone();
    let ya_ip = ya.ipv6.unwrap();
    // The node's link to y/a takes at most 1280 bytes (IPv6's minimum): forwarding x/a's 1400-byte
    // packet, the node answers "packet too big" from its own address (which x/a does not admit).
    let ok = Command::new("ip")
        .args(["-n", &state.node_netns, "link", "set", &ya.host_ifname, "mtu", "1280"])
        .status()
        .unwrap();
    assert!(ok.success());
    let mtu = in_netns(&a_ns, || {
        let socket = UdpSocket::bind("[::]:0").unwrap();
        socket.connect(SocketAddr::V6(SocketAddrV6::new(ya_ip, 9, 0, 0))).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let on: libc::c_int = libc::IPV6_PMTUDISC_DO;
        // SAFETY: a valid int option of the size given, on an open socket.
        unsafe {
            libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, (&raw const on).cast(), 4);
        }
        let _ = socket.send(&[0u8; 1400]);
        std::thread::sleep(Duration::from_millis(300));
        let mut mtu: libc::c_int = 0;
        let mut len: libc::socklen_t = 4;
        // SAFETY: `mtu` and `len` are valid for writing; fd is open.
        unsafe { libc::getsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU, (&raw mut mtu).cast(), &raw mut len) };
        mtu
    })
    .unwrap();
    assert_eq!(mtu, 1280, "x/a learned the IPv6 path MTU from the node's packet-too-big");
    assert!(s.kernel_counter("icmp_related") >= 1, "{}", s.status());
}
