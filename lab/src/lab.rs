//! Bringing a lab up and down. `up` carries out a [`crate::plan`]: namespaces, veths created directly inside the
//! node namespace (each pod's node's, in a lab with several nodes, which a bridge in a fabric namespace links
//! and whose routes lead to the other nodes' pods), addresses, routes and sysctls only inside lab namespaces
//! (the machine's own namespace is never touched), then the pods' server. `down` removes everything named `fg-<lab>-*`, with or without state.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};

use crate::{
    naming::{self, FABRIC_BRIDGE, NODE_FABRIC_IFNAME, POD_IFNAME},
    netns::{self, NetnsError},
    plan,
    server::{self, PID_FILE, SERVE_ENV, ServerError},
    state::{self, LabState, StateError},
    topology::{self, Problem, Topology},
};

/// How long `up` waits for the server to bind every port.
const SERVER_READY_WITHIN: Duration = Duration::from_secs(10);
/// How long `down` waits after SIGTERM before SIGKILL.
const SERVER_STOP_WITHIN: Duration = Duration::from_secs(2);

/// Errors bringing a lab up or down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "cannot plan lab {lab}{}: {problem}",
        file.as_deref().map(|p| format!(" from {}", p.display())).unwrap_or_default()
    )]
    Plan { lab: String, file: Option<std::path::PathBuf>, problem: Box<Problem> },
    #[error(
        "lab {lab} already exists{}; run `flowgate lab down {lab}` first or pick another name with --name",
        from.as_deref().map(|p| format!(" (from {})", p.display())).unwrap_or_default()
    )]
    Exists { lab: String, from: Option<std::path::PathBuf> },
    #[error("cannot create lab directory {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab {lab}: {step}")]
    Netns {
        lab: String,
        step: String,
        #[source]
        source: NetnsError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("lab {lab} is not fully down: {}", problems.join("; "))]
    Down { lab: String, problems: Vec<String> },
}

/// What `down` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DownReport {
    pub name: String,
    /// False when nothing of that lab was found (down is idempotent).
    pub existed: bool,
    /// Pid of the server that was stopped, if one was running.
    pub server_stopped: Option<u32>,
    pub netns_deleted: Vec<String>,
    pub dir_removed: bool,
    /// Whether the agent's pins for this lab were removed.
    pub pins_removed: bool,
}

/// Brings lab `name` up from `topology` and returns its state (also saved as `state.json`).
///
/// An existing lab of that name is returned as is when it was brought up from an identical topology and is
/// healthy; otherwise this fails. On a failure halfway, everything created so far is removed.
pub fn up(topology: &Topology, name: &str, source_path: Option<&Path>) -> Result<LabState, LabError> {
    let mut planned = plan::plan(topology, name).map_err(|problem| LabError::Plan {
        lab: name.to_owned(),
        file: source_path.map(Path::to_owned),
        problem: Box::new(problem),
    })?;
    planned.topology_path = source_path.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()));

    let labs_dir = state::labs_dir();
    std::fs::create_dir_all(&labs_dir).map_err(|source| LabError::Dir { path: labs_dir.clone(), source })?;
    let dir = state::lab_dir(name);
    // Creating the directory claims the name, also against another `up` running at the same time.
    if let Err(source) = std::fs::create_dir(&dir) {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            return reuse_if_identical(&planned);
        }
        return Err(LabError::Dir { path: dir, source });
    }
    let mut cleanup = CleanupOnError { lab: name.to_owned(), armed: true };

    // Leftovers of an earlier lab of this name whose directory is gone (e.g. /run was cleared).
    let others: Vec<String> = state::list().into_iter().filter(|l| l != name).collect();
    for ns in netns::list().into_iter().filter(|ns| naming::netns_belongs_to(ns, name, &others)) {
        log::warn!("lab {name}: removing leftover network namespace {ns}");
        netns::delete(&ns).map_err(|source| netns_err(name, format!("remove leftover {ns}"), source))?;
    }

    let state = build(planned)?;
    cleanup.armed = false;
    Ok(state)
}

fn netns_err(lab: &str, step: String, source: NetnsError) -> LabError {
    LabError::Netns { lab: lab.to_owned(), step, source }
}

fn build(mut state: LabState) -> Result<LabState, LabError> {
    let lab = state.name.clone();
    for ns in state.netns_names() {
        netns::add(&ns).map_err(|source| netns_err(&lab, format!("create network namespace {ns}"), source))?;
    }

    // Dual-stack inside the lab only. No duplicate address detection (addresses are planned unique, and
    // DAD would hold them back for a second) and no router advertisements to learn from: routes are set.
    const COMMON: [(&str, &str); 10] = [
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv6.conf.all.disable_ipv6", "0"),
        ("net.ipv6.conf.default.disable_ipv6", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_ra", "0"),
        ("net.ipv6.conf.default.accept_ra", "0"),
        ("net.ipv6.conf.all.autoconf", "0"),
        ("net.ipv6.conf.default.autoconf", "0"),
    ];
    let mut node_sysctls = COMMON.to_vec();
    node_sysctls.push(("net.ipv4.ip_forward", "1"));
    node_sysctls.push(("net.ipv6.conf.all.forwarding", "1"));
    let node_namespaces: Vec<String> = if state.nodes.is_empty() {
        vec![state.node_netns.clone()]
    } else {
        state.nodes.iter().map(|n| n.netns.clone()).collect()
    };
    for ns in &node_namespaces {
        netns::sysctls(ns, &node_sysctls).map_err(|source| netns_err(&lab, format!("configure node {ns}"), source))?;
    }
    let hosts = hosts(&state);
    for host in &hosts {
        netns::sysctls(&host.netns, &COMMON)
            .map_err(|source| netns_err(&lab, format!("configure {}", host.netns), source))?;
    }
    if let Some(fabric) = &state.fabric_netns {
        wire_fabric(&state, fabric).map_err(|source| netns_err(&lab, format!("wire the fabric {fabric}"), source))?;
    }

    // The veths are created inside the node namespace with their pod end moved straight into the pod's
    // namespace: no link ever exists in the machine's own namespace.
    let (gateway, gateway6) = (state.gateway, state.gateway6);
    for node_ns in &node_namespaces {
        let mut node = vec!["link set lo up".to_owned()];
        for Host { netns: ns, ifname, ip, ipv6, .. } in hosts.iter().filter(|h| h.node_netns == *node_ns) {
            node.push(format!("link add {ifname} type veth peer name {POD_IFNAME} netns {ns}"));
            node.push(format!("addr add {gateway}/32 dev {ifname}"));
            if let Some(gateway6) = gateway6 {
                node.push(format!("addr add {gateway6}/128 dev {ifname} nodad"));
            }
            node.push(format!("link set {ifname} up"));
            node.push(format!("route add {ip}/32 dev {ifname}"));
            if let Some(ipv6) = ipv6 {
                node.push(format!("route add {ipv6}/128 dev {ifname}"));
            }
        }
        node.extend(fabric_routes(&state, node_ns, &hosts));
        netns::batch(node_ns, &node)
            .map_err(|source| netns_err(&lab, format!("wire the node namespace {node_ns}"), source))?;
    }
    for Host { netns: ns, ip, ipv6, .. } in &hosts {
        let mut pod = vec![
            "link set lo up".to_owned(),
            format!("addr add {ip}/32 dev {POD_IFNAME}"),
            format!("link set {POD_IFNAME} up"),
            format!("route add {gateway} dev {POD_IFNAME} scope link"),
            format!("route add default via {gateway} dev {POD_IFNAME}"),
        ];
        if let (Some(ipv6), Some(gateway6)) = (ipv6, gateway6) {
            pod.push(format!("addr add {ipv6}/128 dev {POD_IFNAME} nodad"));
            pod.push(format!("route add {gateway6}/128 dev {POD_IFNAME}"));
            pod.push(format!("route add ::/0 via {gateway6} dev {POD_IFNAME}"));
        }
        netns::batch(ns, &pod).map_err(|source| netns_err(&lab, format!("wire {ns}"), source))?;
    }

    let mut indexes = Vec::with_capacity(hosts.len());
    for host in &hosts {
        let index = netns::ifindexes(&host.node_netns, vec![host.ifname.clone()])
            .map_err(|source| netns_err(&lab, "look up node-side interfaces".to_owned(), source))?;
        indexes.extend(index);
    }
    let (pod_idx, ext_idx) = indexes.split_at(state.pods.len());
    for (pod, &i) in state.pods.iter_mut().zip(pod_idx) {
        pod.host_ifindex = i;
    }
    for (ext, &i) in state.externals.iter_mut().zip(ext_idx) {
        ext.host_ifindex = i;
    }

    // The server reads the state to know what to serve.
    state::save(&state)?;
    state.server_pid = Some(server::start(&state, SERVER_READY_WITHIN)?);
    state::save(&state)?;
    Ok(state)
}

/// A pod or external as the wiring sees it: its namespace, its veth on its node, its addresses.
struct Host {
    netns: String,
    ifname: String,
    ip: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
    /// The namespace of the node its veth is on.
    node_netns: String,
}

/// The nodes' network: a bridge in the fabric namespace with one veth to each node (its `fabric0`).
/// The host side of every pod and external host: its namespace, node-side interface, addresses, node.
fn hosts(state: &LabState) -> Vec<Host> {
    state
        .pods
        .iter()
        .map(|p| Host {
            netns: p.netns.clone(),
            ifname: p.host_ifname.clone(),
            ip: p.ip,
            ipv6: p.ipv6,
            node_netns: state.pod_node_netns(p).to_owned(),
        })
        .chain(state.externals.iter().map(|e| Host {
            netns: e.netns.clone(),
            ifname: e.host_ifname.clone(),
            ip: e.ip,
            ipv6: e.ipv6,
            node_netns: state.node_netns.clone(),
        }))
        .collect()
}

fn wire_fabric(state: &LabState, fabric: &str) -> Result<(), NetnsError> {
    let mut commands = vec![
        "link set lo up".to_owned(),
        format!("link add {FABRIC_BRIDGE} type bridge"),
        format!("link set {FABRIC_BRIDGE} up"),
    ];
    for node in &state.nodes {
        let port = naming::fabric_port_ifname(&node.name);
        commands.push(format!("link add {port} type veth peer name {NODE_FABRIC_IFNAME} netns {}", node.netns));
        commands.push(format!("link set {port} master {FABRIC_BRIDGE}"));
        commands.push(format!("link set {port} up"));
    }
    netns::batch(fabric, &commands)
}

/// A node's side of the fabric: its addresses on `fabric0`, a route to each other node, and a route to every
/// host of the other nodes through that node (as a routed CNI plugin programs it). Nothing for a one-node lab.
fn fabric_routes(state: &LabState, node_ns: &str, hosts: &[Host]) -> Vec<String> {
    let Some(me) = state.nodes.iter().find(|n| n.netns == node_ns) else {
        return Vec::new();
    };
    let mut commands = vec![
        format!("addr add {}/32 dev {NODE_FABRIC_IFNAME}", me.ip),
        format!("addr add {}/128 dev {NODE_FABRIC_IFNAME} nodad", me.ipv6),
        format!("link set {NODE_FABRIC_IFNAME} up"),
    ];
    for other in state.nodes.iter().filter(|n| n.netns != node_ns) {
        commands.push(format!("route add {}/32 dev {NODE_FABRIC_IFNAME} scope link", other.ip));
        commands.push(format!("route add {}/128 dev {NODE_FABRIC_IFNAME}", other.ipv6));
        for host in hosts.iter().filter(|h| h.node_netns == other.netns) {
            commands.push(format!("route add {}/32 via {} dev {NODE_FABRIC_IFNAME}", host.ip, other.ip));
            if let Some(ipv6) = host.ipv6 {
                commands.push(format!("route add {ipv6}/128 via {} dev {NODE_FABRIC_IFNAME}", other.ipv6));
            }
        }
    }
    commands
}

/// `up` of a name that exists: fine when it is the same lab and it is healthy.
fn reuse_if_identical(planned: &LabState) -> Result<LabState, LabError> {
    let exists = |from| LabError::Exists { lab: planned.name.clone(), from };
    let Ok(current) = state::load(&planned.name) else {
        return Err(exists(None));
    };
    let comparable = |s: &LabState| {
        let mut s = s.clone();
        s.server_pid = None;
        s.topology_path = None;
        for p in &mut s.pods {
            p.host_ifindex = 0;
        }
        for e in &mut s.externals {
            e.host_ifindex = 0;
        }
        s
    };
    let healthy = current.server_pid.is_some_and(|pid| is_lab_server(pid, &planned.name))
        && current.netns_names().iter().all(|ns| netns::exists(ns));
    if healthy && comparable(&current) == comparable(planned) {
        Ok(current)
    } else {
        Err(exists(current.topology_path))
    }
}

/// Removes a half-built lab when `up` fails.
struct CleanupOnError {
    lab: String,
    armed: bool,
}

impl Drop for CleanupOnError {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = down(&self.lab)
        {
            log::warn!("cleaning up after a failed `up`: {e}");
        }
    }
}

/// Removes lab `name`: stops its server (SIGTERM, then SIGKILL after 2 s), deletes every network namespace named
/// `fg-<name>-*` (even without a state file) and the lab directory. Down of a lab that does not exist is fine.
pub fn down(name: &str) -> Result<DownReport, LabError> {
    topology::validate_lab_name(name).map_err(|problem| LabError::Plan {
        lab: name.to_owned(),
        file: None,
        problem: Box::new(problem),
    })?;
    let mut report = DownReport { name: name.to_owned(), ..DownReport::default() };
    let mut problems = Vec::new();
    let dir = state::lab_dir(name);

    let mut pids: Vec<u32> = Vec::new();
    if let Ok(s) = state::load(name) {
        pids.extend(s.server_pid);
    }
    if let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE)).ok().and_then(|t| t.trim().parse().ok()) {
        pids.push(pid);
    }
    pids.dedup();
    for pid in pids {
        // Only a process that is this lab's server: pids get reused.
        if is_lab_server(pid, name) {
            match stop(pid) {
                Ok(()) => report.server_stopped = Some(pid),
                Err(e) => problems.push(format!("server {pid}: {e}")),
            }
        }
    }

    let others: Vec<String> = state::list().into_iter().filter(|l| l != name).collect();
    for ns in netns::list().into_iter().filter(|ns| naming::netns_belongs_to(ns, name, &others)) {
        match netns::delete(&ns) {
            Ok(()) => report.netns_deleted.push(ns),
            Err(e) => problems.push(e.to_string()),
        }
    }

    if dir.exists() {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => report.dir_removed = true,
            Err(e) => problems.push(format!("remove {}: {e}", dir.display())),
        }
    }
    // The agent's pins for this lab (maps, links of interfaces that are gone now).
    let pins = naming::bpf_pin_dir(name);
    if pins.exists() {
        match std::fs::remove_dir_all(&pins) {
            Ok(()) => report.pins_removed = true,
            Err(e) => problems.push(format!("remove {}: {e}", pins.display())),
        }
    }
    report.existed = report.dir_removed || report.server_stopped.is_some() || !report.netns_deleted.is_empty();
    if problems.is_empty() { Ok(report) } else { Err(LabError::Down { lab: name.to_owned(), problems }) }
}

/// Whether `pid` is a live process started as lab `lab`'s server.
pub fn is_lab_server(pid: u32, lab: &str) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let wanted = format!("{SERVE_ENV}={lab}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == wanted.as_bytes()))
}

/// Alive and not a zombie.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

fn stop(pid: u32) -> Result<(), nix::Error> {
    let target = Pid::from_raw(i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?);
    for (signal, within) in [(Signal::SIGTERM, SERVER_STOP_WITHIN), (Signal::SIGKILL, Duration::from_secs(1))] {
        match kill(target, signal) {
            Ok(()) => {}
            Err(nix::Error::ESRCH) => return Ok(()),
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            // Reap it when it is our child (a lab brought up by this process); ECHILD otherwise.
            let _ = waitpid(target, Some(WaitPidFlag::WNOHANG));
            if !is_alive(pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if is_alive(pid) { Err(nix::Error::ETIMEDOUT) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_routes_to_the_other_nodes_hosts_through_their_fabric_address() {
        let topology = Topology::parse(
            "namespaces: [{name: x}]\nnodes: [{name: n1}, {name: n2}]\n\
             pods: [{namespace: x, name: a}, {namespace: x, name: b, node: n2}]\n",
            "t.yaml",
        )
        .unwrap();
        let state = plan::plan(&topology, "mn").unwrap();
        let hosts = hosts(&state);
        assert_eq!(
            fabric_routes(&state, "fg-mn-n1", &hosts),
            [
                "addr add 10.199.0.1/32 dev fabric0",
                "addr add fd00:10:199::1/128 dev fabric0 nodad",
                "link set fabric0 up",
                "route add 10.199.0.2/32 dev fabric0 scope link",
                "route add fd00:10:199::2/128 dev fabric0",
                "route add 10.200.0.11/32 via 10.199.0.2 dev fabric0",
                "route add fd00:10:200::b/128 via fd00:10:199::2 dev fabric0",
            ]
        );
        let one = plan::plan(&Topology::parse("namespaces: [{name: x}]\n", "t.yaml").unwrap(), "one").unwrap();
        assert!(fabric_routes(&one, &one.node_netns, &[]).is_empty(), "a lab of one node has no fabric");
    }
}
