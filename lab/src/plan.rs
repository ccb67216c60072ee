//! From a validated topology and a lab name to the lab's intended state: addresses (fixed ones first, then
//! `.10`, `.11`, ... in file order), namespace and interface names. Pure; [`crate::lab::up`] carries it out.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::Ipv4Addr,
};

use crate::{
    naming,
    state::{ExternalState, LabState, NamespaceState, NodeState, PodState, STATE_VERSION},
    topology::{self, Problem, Topology},
};

/// First host number handed out automatically (`.1` is the gateway; `.2`-`.9` are left for people).
pub const FIRST_AUTO_HOST: u32 = 10;

/// Plans a lab. `host_ifindex` is 0 and `server_pid` is `None` until the lab is up.
pub fn plan(topology: &Topology, lab: &str) -> Result<LabState, Problem> {
    topology::validate_lab_name(lab)?;
    topology.validate()?;
    let cidr = topology.cidr;
    let ipv6_cidr = topology.ipv6_cidr;

    // Fixed addresses first, so automatic ones go around them.
    let mut taken: HashMap<Ipv4Addr, String> = HashMap::new();
    let claim = |owner: String, ip: Ipv4Addr, taken: &mut HashMap<Ipv4Addr, String>| {
        if !cidr.contains(ip) {
            return Err(Problem::IpOutsideCidr { owner, ip, cidr });
        }
        if cidr.is_reserved(ip) {
            return Err(Problem::IpReserved { owner, ip, cidr });
        }
        if let Some(other) = taken.get(&ip) {
            return Err(Problem::DuplicateIp { owner, ip, other: other.clone() });
        }
        taken.insert(ip, owner);
        Ok(())
    };
    for pod in &topology.pods {
        if let Some(ip) = pod.ip {
            claim(format!("pod {}/{}", pod.namespace, pod.name), ip, &mut taken)?;
        }
    }
    for ext in &topology.externals {
        if let Some(ip) = ext.ip {
            claim(format!("external {}", ext.name), ip, &mut taken)?;
        }
    }
    let mut next = FIRST_AUTO_HOST;
    let mut assign = |owner: String, fixed: Option<Ipv4Addr>, taken: &mut HashMap<Ipv4Addr, String>| {
        if let Some(ip) = fixed {
            return Ok(ip);
        }
        loop {
            let ip = cidr.nth(next);
            if !cidr.contains(ip) || ip == cidr.broadcast() {
                return Err(Problem::RangeExhausted { owner, cidr });
            }
            next += 1;
            if let Entry::Vacant(slot) = taken.entry(ip) {
                slot.insert(owner);
                return Ok(ip);
            }
        }
    };

    // Several nodes: each its own namespace and fabric address (`.1` the first); a pod without `node:` is on
    // the first.
    let nodes: Vec<NodeState> = (0u32..)
        .zip(&topology.nodes)
        .map(|(i, node)| {
            let ip = topology.node_cidr.nth(i + 1);
            NodeState {
                name: node.name.clone(),
                netns: naming::node_netns_of(lab, &node.name),
                ip,
                ipv6: topology.node_ipv6_cidr.counterpart(topology.node_cidr, ip),
            }
        })
        .collect();
    let mut pods = Vec::with_capacity(topology.pods.len());
    for pod in &topology.pods {
        let owner = format!("pod {}/{}", pod.namespace, pod.name);
        let ip = assign(owner.clone(), pod.ip, &mut taken)?;
        pods.push(PodState {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            ports: topology::container_ports(&owner, &pod.ports)?,
            ip,
            ipv6: Some(ipv6_cidr.counterpart(cidr, ip)),
            netns: naming::pod_netns(lab, &pod.namespace, &pod.name),
            host_ifname: naming::pod_host_ifname(&pod.namespace, &pod.name),
            host_ifindex: 0,
            node: pod.node.clone().or_else(|| nodes.first().map(|n| n.name.clone())),
        });
    }
    let mut externals = Vec::with_capacity(topology.externals.len());
    for ext in &topology.externals {
        let owner = format!("external {}", ext.name);
        let ip = assign(owner.clone(), ext.ip, &mut taken)?;
        externals.push(ExternalState {
            name: ext.name.clone(),
            ports: topology::container_ports(&owner, &ext.ports)?,
            ip,
            ipv6: Some(ipv6_cidr.counterpart(cidr, ip)),
            netns: naming::external_netns(lab, &ext.name),
            host_ifname: naming::external_host_ifname(&ext.name),
            host_ifindex: 0,
        });
    }

    let state = LabState {
        version: STATE_VERSION,
        name: lab.to_owned(),
        cidr,
        gateway: cidr.gateway(),
        ipv6_cidr: Some(ipv6_cidr),
        gateway6: Some(ipv6_cidr.gateway()),
        node_netns: nodes.first().map_or_else(|| naming::node_netns(lab), |n| n.netns.clone()),
        fabric_netns: (!nodes.is_empty()).then(|| naming::fabric_netns(lab)),
        nodes,
        namespaces: topology
            .namespaces
            .iter()
            .map(|ns| NamespaceState { name: ns.name.clone(), labels: Topology::namespace_labels(ns) })
            .collect(),
        pods,
        externals,
        server_pid: None,
        topology_path: None,
    };
    check_name_clashes(&state)?;
    Ok(state)
}

/// Names are built from parts that may contain '-', so two hosts can end up with one namespace or (rarely)
/// one interface name; say so instead of failing halfway through `up`.
fn check_name_clashes(state: &LabState) -> Result<(), Problem> {
    let node_hosts: Vec<(String, String, String)> = if state.nodes.is_empty() {
        vec![("the node".to_owned(), state.node_netns.clone(), String::new())]
    } else {
        state
            .nodes
            .iter()
            .map(|n| (format!("node {}", n.name), n.netns.clone(), String::new()))
            .chain(state.fabric_netns.clone().map(|ns| ("the fabric".to_owned(), ns, String::new())))
            .collect()
    };
    let hosts = node_hosts
        .into_iter()
        .chain(
            state
                .pods
                .iter()
                .map(|p| (format!("pod {}/{}", p.namespace, p.name), p.netns.clone(), p.host_ifname.clone())),
        )
        .chain(
            state.externals.iter().map(|e| (format!("external {}", e.name), e.netns.clone(), e.host_ifname.clone())),
        );
    let mut netns: HashMap<String, String> = HashMap::new();
    let mut ifnames: HashMap<String, String> = HashMap::new();
    for (owner, ns, ifname) in hosts {
        if let Some(other) = netns.insert(ns.clone(), owner.clone()) {
            return Err(Problem::NameClash { owner, other, what: "network namespace", name: ns });
        }
        if !ifname.is_empty()
            && let Some(other) = ifnames.insert(ifname.clone(), owner.clone())
        {
            return Err(Problem::NameClash { owner, other, what: "interface name", name: ifname });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(text: &str) -> Topology {
        Topology::parse(text, "t.yaml").unwrap()
    }

    const NS: &str = "namespaces:\n  - name: x\n";

    #[test]
    fn every_host_gets_the_ipv6_counterpart_of_its_ipv4_address() {
        let state = plan(&topo(include_str!("../../examples/lab-netpol.yaml")), "netpol").unwrap();
        let v6: Vec<String> = state.pods.iter().map(|p| p.ipv6.unwrap().to_string()).collect();
        assert_eq!((v6[0].as_str(), v6[8].as_str()), ("fd00:10:200::a", "fd00:10:200::12"));
        assert_eq!(state.gateway6.unwrap().to_string(), "fd00:10:200::1");
        let custom =
            plan(&topo(&format!("{NS}ipv6_cidr: 2001:db8:1::/112\npods:\n  - {{namespace: x, name: a}}\n")), "v6");
        assert_eq!(custom.unwrap().pods[0].ipv6.unwrap().to_string(), "2001:db8:1::a");
    }

    #[test]
    fn bad_ipv6_ranges_are_refused() {
        for bad in ["fd00::1/64", "fd00::/48", "fd00::/121", "::ffff:0:0/96", "10.0.0.0/8"] {
            let e = Topology::parse(&format!("ipv6_cidr: \"{bad}\"\n"), "t.yaml").unwrap_err();
            assert!(e.to_string().contains("is not an IPv6 prefix"), "{bad}: {e}");
        }
        // A /24 IPv4 range needs 8 host bits in the IPv6 range.
        let e = Topology::parse("cidr: 10.0.0.0/16\nipv6_cidr: fd00::/120\n", "t.yaml").unwrap_err();
        assert!(e.to_string().contains("more hosts than the IPv6 range"), "{e}");
    }

    #[test]
    fn pods_get_addresses_from_dot_ten_in_file_order() {
        let state = plan(&topo(include_str!("../../examples/lab-netpol.yaml")), "netpol").unwrap();
        let ips: Vec<String> = state.pods.iter().map(|p| p.ip.to_string()).collect();
        assert_eq!(ips[0], "10.200.0.10");
        assert_eq!(ips[8], "10.200.0.18");
        assert_eq!(state.gateway.to_string(), "10.200.0.1");
        assert_eq!(state.node_netns, "fg-netpol-node");
        assert_eq!(state.pods[0].netns, "fg-netpol-x-a");
        assert_eq!(state.pods[4].netns, "fg-netpol-y-b");
        assert_eq!(state.namespaces[1].labels["kubernetes.io/metadata.name"], "y");
    }

    #[test]
    fn automatic_addresses_skip_fixed_ones() {
        let state = plan(
            &topo(&format!(
                "{NS}pods:\n  - {{namespace: x, name: a}}\n  - {{namespace: x, name: b, ip: 10.200.0.10}}\n\
                 externals:\n  - {{name: outside}}\n"
            )),
            "lab",
        )
        .unwrap();
        assert_eq!(state.pods[0].ip.to_string(), "10.200.0.11");
        assert_eq!(state.pods[1].ip.to_string(), "10.200.0.10");
        assert_eq!(state.externals[0].ip.to_string(), "10.200.0.12");
        assert_eq!(state.externals[0].netns, "fg-lab-ext-outside");
    }

    #[test]
    fn fixed_address_outside_the_range_is_rejected() {
        let err = plan(&topo(&format!("{NS}pods:\n  - {{namespace: x, name: a, ip: 10.9.0.5}}\n")), "lab").unwrap_err();
        assert!(matches!(err, Problem::IpOutsideCidr { .. }), "{err}");
        assert_eq!(err.to_string(), "pod x/a: address 10.9.0.5 is outside the lab range 10.200.0.0/24");
    }

    #[test]
    fn gateway_network_and_broadcast_cannot_be_given_to_pods() {
        for ip in ["10.200.0.0", "10.200.0.1", "10.200.0.255"] {
            let err = plan(&topo(&format!("{NS}pods:\n  - {{namespace: x, name: a, ip: {ip}}}\n")), "lab").unwrap_err();
            assert!(matches!(err, Problem::IpReserved { .. }), "{ip}: {err}");
        }
    }

    #[test]
    fn duplicate_address_is_rejected_naming_both_owners() {
        let err = plan(
            &topo(&format!(
                "{NS}pods:\n  - {{namespace: x, name: a, ip: 10.200.0.50}}\nexternals:\n  - {{name: o, ip: 10.200.0.50}}\n"
            )),
            "lab",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "external o: address 10.200.0.50 is already used by pod x/a");
    }

    #[test]
    fn a_full_range_is_reported() {
        // /29: .0 network, .1 gateway, .7 broadcast; automatic addresses start at .10, outside the range.
        let err =
            plan(&topo(&format!("cidr: 10.1.0.0/29\n{NS}pods:\n  - {{namespace: x, name: a}}\n")), "lab").unwrap_err();
        assert!(matches!(err, Problem::RangeExhausted { .. }), "{err}");
    }

    #[test]
    fn namespace_name_clash_between_hosts_is_rejected() {
        let err = plan(
            &topo("namespaces:\n  - name: x-y\n  - name: x\npods:\n  - {namespace: x-y, name: z}\n  - {namespace: x, name: y-z}\n"),
            "lab",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod x/y-z and pod x-y/z would get the same network namespace \"fg-lab-x-y-z\"; rename one of them"
        );
    }

    #[test]
    fn several_nodes_get_namespaces_fabric_addresses_and_their_pods() {
        let state = plan(
            &topo(&format!(
                "{NS}nodes:\n  - {{name: node-1}}\n  - {{name: node-2}}\n\
                 pods:\n  - {{namespace: x, name: a}}\n  - {{namespace: x, name: b, node: node-2}}\n"
            )),
            "mn",
        )
        .unwrap();
        let nodes: Vec<(&str, &str, String, String)> = state
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.netns.as_str(), n.ip.to_string(), n.ipv6.to_string()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("node-1", "fg-mn-node-1", "10.199.0.1".into(), "fd00:10:199::1".into()),
                ("node-2", "fg-mn-node-2", "10.199.0.2".into(), "fd00:10:199::2".into()),
            ]
        );
        assert_eq!(state.node_netns, "fg-mn-node-1", "externals and one-node tools use the first node");
        assert_eq!(state.fabric_netns.as_deref(), Some("fg-mn-fabric"));
        assert_eq!(state.pods[0].node.as_deref(), Some("node-1"), "no `node:` is the first node");
        assert_eq!(state.pod_node_netns(&state.pods[1]), "fg-mn-node-2");
        assert_eq!(state.netns_names()[..3], ["fg-mn-node-1", "fg-mn-node-2", "fg-mn-fabric"]);
        let one = plan(&topo(&format!("{NS}pods:\n  - {{namespace: x, name: a}}\n")), "one").unwrap();
        assert_eq!((one.nodes.len(), one.pods[0].node.clone(), one.fabric_netns), (0, None, None));
    }

    #[test]
    fn a_node_named_like_a_pod_namespace_clash_is_reported() {
        let err =
            plan(&topo("namespaces:\n  - name: x\nnodes:\n  - {name: x-a}\npods:\n  - {namespace: x, name: a}\n"), "l")
                .unwrap_err();
        assert!(matches!(err, Problem::NameClash { .. }), "{err}");
    }

    #[test]
    fn bad_lab_name_is_rejected_before_anything_else() {
        let err = plan(&topo(NS), "Bad_Name").unwrap_err();
        assert!(matches!(err, Problem::BadLabName { .. }));
    }
}
