//! Names of everything a lab creates: network namespaces and node-side interfaces. Pure; the one place that
//! knows that every namespace of lab `L` is called `fg-L-...`, which is how `down` finds them without state.

/// Every network namespace of every lab starts with this.
pub const NETNS_PREFIX: &str = "fg-";

/// Linux interface names hold at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The node namespace: the pods' veth peers, routes between pods, and where the agent attaches its programs.
pub fn node_netns(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-node")
}

/// The network namespace of node `node` of a lab with several nodes.
pub fn node_netns_of(lab: &str, node: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-{node}")
}

/// The namespace that links the nodes of a lab with several (a bridge, as the nodes' network).
pub fn fabric_netns(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-fabric")
}

/// A node's interface on the fabric, inside the node's namespace.
pub const NODE_FABRIC_IFNAME: &str = "fabric0";

/// The bridge inside the fabric namespace.
pub const FABRIC_BRIDGE: &str = "br0";

/// The fabric-side end of a node's link: `node` + 8 hex digits of a stable hash of the node's name.
pub fn fabric_port_ifname(node: &str) -> String {
    format!("node{:08x}", fnv1a32(node.as_bytes()))
}

/// A pod's network namespace.
pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-{namespace}-{pod}")
}

/// An external host's network namespace.
pub fn external_netns(lab: &str, name: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-ext-{name}")
}

/// Prefix shared by every network namespace of `lab`.
pub fn lab_netns_prefix(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-")
}

/// Whether network namespace `netns` belongs to `lab`, given the names of all labs that exist.
///
/// `fg-a-` is also a prefix of lab `a-b`'s namespaces (`fg-a-b-node`); those belong to the longer lab name when
/// that lab exists.
pub fn netns_belongs_to(netns: &str, lab: &str, existing_labs: &[String]) -> bool {
    netns.starts_with(&lab_netns_prefix(lab))
        && !existing_labs.iter().any(|other| {
            other.len() > lab.len() && other.starts_with(lab) && netns.starts_with(&lab_netns_prefix(other))
        })
}

/// Node-side veth of a pod: `lxc` + 8 hex digits of a stable hash of `namespace/pod`.
pub fn pod_host_ifname(namespace: &str, pod: &str) -> String {
    format!("lxc{:08x}", fnv1a32(format!("{namespace}/{pod}").as_bytes()))
}

/// Node-side veth of an external host: `ext` + 8 hex digits of a stable hash of its name.
pub fn external_host_ifname(name: &str) -> String {
    format!("ext{:08x}", fnv1a32(name.as_bytes()))
}

/// The interface inside every pod.
pub const POD_IFNAME: &str = "eth0";

/// FNV-1a, 32 bits: stable across builds and platforms, unlike `DefaultHasher`.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Root of the agent's pins on bpffs; each lab's maps and links are pinned under `<root>/<lab>`.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/flowgate";

/// Where the agent pins the maps and TCX links it uses for a lab.
pub fn bpf_pin_dir(lab: &str) -> std::path::PathBuf {
    std::path::Path::new(BPF_PIN_ROOT).join(lab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_the_fg_lab_scheme() {
        assert_eq!(node_netns("netpol"), "fg-netpol-node");
        assert_eq!(pod_netns("netpol", "x", "a"), "fg-netpol-x-a");
        assert_eq!(external_netns("netpol", "outside"), "fg-netpol-ext-outside");
        assert_eq!(node_netns_of("mn", "node-1"), "fg-mn-node-1");
        assert_eq!(fabric_netns("mn"), "fg-mn-fabric");
        assert!(fabric_port_ifname("node-1").len() <= MAX_IFNAME_LEN);
    }

    #[test]
    fn host_ifnames_are_stable_and_fit_ifnamsiz() {
        let name = pod_host_ifname("x", "a");
        assert_eq!(name, pod_host_ifname("x", "a"));
        assert_eq!(name.len(), 11);
        assert!(name.len() <= MAX_IFNAME_LEN);
        assert!(name.starts_with("lxc"));
        assert_ne!(name, pod_host_ifname("x", "b"));
        assert_ne!(name, pod_host_ifname("y", "a"));
        // Pinned: the agent and people's notes may rely on these names staying the same.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert!(external_host_ifname("outside").starts_with("ext"));
    }

    #[test]
    fn netns_ownership_does_not_confuse_labs_whose_names_share_a_prefix() {
        let labs = vec!["a".to_owned(), "a-b".to_owned()];
        assert!(netns_belongs_to("fg-a-node", "a", &labs));
        assert!(netns_belongs_to("fg-a-x-a", "a", &labs));
        assert!(!netns_belongs_to("fg-a-b-node", "a", &labs));
        assert!(netns_belongs_to("fg-a-b-node", "a-b", &labs));
        assert!(!netns_belongs_to("fg-ab-node", "a", &labs));
        // Without lab a-b existing, its leftovers are lab a's to clean (they cannot be told apart).
        assert!(netns_belongs_to("fg-a-b-node", "a", &["a".to_owned()]));
    }
}
