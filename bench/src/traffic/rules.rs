//! The one rule set every enforcer enforces, at a given size, and how each enforcer writes it. Pure: text for
//! the agent (a NetworkPolicy), for `iptables-restore` (plain, with the conntrack shortcut, and with ipset as
//! kube-router and Calico's iptables mode write it) and for `ipset restore`. Keeping every rendering here,
//! from one [`RuleSet`], is what makes the comparison like for like.
//!
//! The policy isolates the server pod for ingress and admits, on TCP and UDP port [`PORT`], `size` peers:
//! `size - 1` ipBlock peers (`/32` addresses in [`DECOY_RANGE`], which no pod holds, so none matches) and,
//! last, the client pod. A naive iptables writer emits one rule per peer and port, so every packet of the
//! client walks all of them before it is accepted.

use std::{fmt::Write as _, net::Ipv4Addr};

/// The server's port, for TCP and UDP alike.
pub const PORT: u16 = 5201;
/// Where the decoy peers' addresses come from (172.20.0.0/16: outside every lab range; nothing is ever sent
/// to or from them).
pub const DECOY_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 20, 0, 0), 16);
/// The Kubernetes namespace of the benchmark's pods and policy, and the labels that select them.
pub const NAMESPACE: &str = "bench";
pub const POLICY_NAME: &str = "bench-ingress";
pub const ROLE_LABEL: &str = "role";

/// The chains and sets written into the node namespace (names in the style of kube-router's).
pub const POD_FW_CHAIN: &str = "FG-POD-FW-SERVER";
pub const POLICY_CHAIN: &str = "FG-NWPLCY-INGRESS";
pub const SET_DECOYS: &str = "FG-SRC-IPBLOCKS";
pub const SET_CLIENTS: &str = "FG-SRC-PODS";
pub const SET_SERVERS: &str = "FG-DST-PODS";

/// The rules at one size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// Peers admitted, the client included (>= 1).
    pub size: usize,
    pub client: Ipv4Addr,
    pub server: Ipv4Addr,
}

impl RuleSet {
    pub fn new(size: usize, client: Ipv4Addr, server: Ipv4Addr) -> Self {
        assert!((1..=max_size()).contains(&size), "rule set size {size} out of range (1 to {})", max_size());
        Self { size, client, server }
    }

    /// The `size - 1` decoy peers, in order.
    pub fn decoys(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let base = u32::from(DECOY_RANGE.0);
        // .0.1, .0.2, ...: skip host number 0 of the range.
        (1..self.size as u32).map(move |i| Ipv4Addr::from(base + i))
    }

    /// The NetworkPolicy (YAML) that flowgate and kube-network-policies enforce.
    pub fn network_policy(&self) -> String {
        let mut out = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {POLICY_NAME}\n  \
             namespace: {NAMESPACE}\nspec:\n  podSelector:\n    matchLabels: {{{ROLE_LABEL}: server}}\n  \
             policyTypes: [Ingress]\n  ingress:\n    - from:\n"
        );
        for decoy in self.decoys() {
            let _ = writeln!(out, "        - ipBlock: {{cidr: {decoy}/32}}");
        }
        let _ = writeln!(out, "        - podSelector: {{matchLabels: {{{ROLE_LABEL}: client}}}}");
        let _ = writeln!(
            out,
            "      ports:\n        - {{protocol: TCP, port: {PORT}}}\n        - {{protocol: UDP, port: {PORT}}}"
        );
        out
    }

    /// `iptables-restore` input for the filter table: traffic to the server goes through its pod chain, which
    /// accepts what the policy chain accepts and drops the rest. The policy chain has one rule per peer and
    /// protocol (`2 * size` rules), the client's last. With `conntrack_shortcut`, the pod chain first accepts
    /// packets of established connections, so only a connection's first packet walks the policy chain.
    pub fn iptables_plain(&self, conntrack_shortcut: bool) -> String {
        let mut out = self.pod_chain(conntrack_shortcut);
        let peers = self.decoys().chain(std::iter::once(self.client));
        for peer in peers {
            for protocol in ["tcp", "udp"] {
                let _ = writeln!(
                    out,
                    "-A {POLICY_CHAIN} -s {peer}/32 -p {protocol} -m {protocol} --dport {PORT} -j ACCEPT"
                );
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    /// `iptables-restore` input for the ipset way (kube-router's `KUBE-POD-FW-*` / `KUBE-NWPLCY-*`, Calico's
    /// iptables mode alike): the conntrack shortcut first, then one rule per protocol and peer kind matching a
    /// source set and the destination set. Needs [`Self::ipset_restore`] loaded first.
    pub fn iptables_ipset(&self) -> String {
        let mut out = self.pod_chain(true);
        for set in [SET_DECOYS, SET_CLIENTS] {
            for protocol in ["tcp", "udp"] {
                let _ = writeln!(
                    out,
                    "-A {POLICY_CHAIN} -p {protocol} -m {protocol} --dport {PORT} -m set --match-set {set} src \
                     -m set --match-set {SET_SERVERS} dst -j ACCEPT"
                );
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    /// `ipset restore` input: the decoy blocks (`hash:net`), the client pods and the server pods (`hash:ip`).
    pub fn ipset_restore(&self) -> String {
        let max = self.size.max(1024).next_power_of_two();
        let mut out = format!("create {SET_DECOYS} hash:net family inet hashsize 1024 maxelem {max}\n");
        for decoy in self.decoys() {
            let _ = writeln!(out, "add {SET_DECOYS} {decoy}/32");
        }
        let _ = writeln!(out, "create {SET_CLIENTS} hash:ip family inet\nadd {SET_CLIENTS} {}", self.client);
        let _ = writeln!(out, "create {SET_SERVERS} hash:ip family inet\nadd {SET_SERVERS} {}", self.server);
        out
    }

    /// Rules per enforcer, as the docs count them: iptables rules in the policy chain, set entries.
    pub fn iptables_rule_count(&self) -> usize {
        2 * self.size
    }

    fn pod_chain(&self, conntrack_shortcut: bool) -> String {
        let mut out = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{POD_FW_CHAIN} - [0:0]\n\
             :{POLICY_CHAIN} - [0:0]\n-A FORWARD -d {}/32 -j {POD_FW_CHAIN}\n",
            self.server
        );
        if conntrack_shortcut {
            let _ = writeln!(out, "-A {POD_FW_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
        }
        let _ = writeln!(out, "-A {POD_FW_CHAIN} -j {POLICY_CHAIN}\n-A {POD_FW_CHAIN} -j DROP");
        out
    }
}

/// The largest size the decoy range holds.
pub fn max_size() -> usize {
    (1usize << (32 - DECOY_RANGE.1)) - 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(size: usize) -> RuleSet {
        RuleSet::new(size, Ipv4Addr::new(10, 200, 0, 10), Ipv4Addr::new(10, 200, 0, 11))
    }

    #[test]
    fn decoys_are_distinct_and_never_a_pod() {
        let r = rules(10_000);
        let decoys: std::collections::BTreeSet<_> = r.decoys().collect();
        assert_eq!(decoys.len(), 9_999);
        assert!(!decoys.contains(&r.client) && !decoys.contains(&r.server));
        assert!(decoys.iter().all(|d| d.octets()[..2] == [172, 20]));
    }

    #[test]
    fn the_policy_lists_every_peer_with_the_client_last() {
        let policy = rules(3).network_policy();
        assert_eq!(policy.matches("ipBlock").count(), 2);
        let client = policy.find("role: client").unwrap();
        assert!(policy.rfind("ipBlock").unwrap() < client, "{policy}");
        assert!(policy.contains("{protocol: UDP, port: 5201}"));
    }

    #[test]
    fn plain_iptables_has_a_rule_per_peer_and_protocol_and_the_client_last() {
        let text = rules(1000).iptables_plain(false);
        let policy_rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A FG-NWPLCY")).collect();
        assert_eq!(policy_rules.len(), rules(1000).iptables_rule_count());
        assert!(policy_rules.last().unwrap().contains("-s 10.200.0.10/32 -p udp"));
        assert!(!text.contains("conntrack"));
        let with = rules(1000).iptables_plain(true);
        let shortcut = with.find("--ctstate RELATED,ESTABLISHED").unwrap();
        assert!(shortcut < with.find(&format!("-A {POD_FW_CHAIN} -j {POLICY_CHAIN}")).unwrap());
    }

    #[test]
    fn the_ipset_way_holds_the_peers_in_sets() {
        let r = rules(10_000);
        let sets = r.ipset_restore();
        assert_eq!(sets.lines().filter(|l| l.starts_with(&format!("add {SET_DECOYS}"))).count(), 9_999);
        assert!(sets.contains("maxelem 16384"));
        let text = r.iptables_ipset();
        assert_eq!(text.lines().filter(|l| l.starts_with("-A FG-NWPLCY")).count(), 4);
        assert!(text.contains("--ctstate RELATED,ESTABLISHED"));
    }
}
