//! Finds a pod's node-side interface the way the node itself reaches the pod: the interface of the host route
//! (`/32`) to the pod's address in the node's network namespace. Routed CNI plugins (and the lab) install one
//! such route per pod on its veth, so this needs no knowledge of how the pod was wired. Read from the
//! kernel's main routing table (`/proc/thread-self/net/route`, the table of the namespace the reading thread
//! is in); interface indexes come from the same namespace.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use flowgate_lab::netns::{InterfaceIndexes, NetnsError, in_netns_at};

/// A pod's node-side interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    pub ifindex: u32,
}

/// A problem reading the node's routes.
#[derive(Debug, thiserror::Error)]
pub enum PodRoutesError {
    #[error("entering the node's network namespace {}: {source}", netns.display())]
    Netns {
        netns: std::path::PathBuf,
        #[source]
        source: NetnsError,
    },
    #[error("reading the routes of {}: {source}", netns.display())]
    Read {
        netns: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Every host route (`/32`) of the node's namespace at `netns`, with its interface: pod address -> interface.
pub fn host_routes(netns: &Path) -> Result<BTreeMap<Ipv4Addr, PodInterface>, PodRoutesError> {
    let read = in_netns_at(netns, || {
        let table = std::fs::read_to_string("/proc/thread-self/net/route")?;
        let indexes = InterfaceIndexes::open().map_err(std::io::Error::from)?;
        Ok(parse_host_routes(&table)
            .into_iter()
            .filter_map(|(ip, name)| {
                let ifindex = indexes.of(&name).ok()?;
                Some((ip, PodInterface { name, ifindex }))
            })
            .collect())
    })
    .map_err(|source| PodRoutesError::Netns { netns: netns.to_owned(), source })?;
    read.map_err(|source| PodRoutesError::Read { netns: netns.to_owned(), source })
}

/// `RTF_GATEWAY` of a route's flags: the destination is reached through a router, not on the interface.
const RTF_GATEWAY: u32 = 0x2;

/// The `/32` routes of a `/proc/net/route` table that end on their interface: (destination, interface).
/// A host route through a gateway (a pod of another node, reached over the nodes' network) names no pod
/// interface and is left out. Addresses are printed as the kernel's network-order word in host byte order.
fn parse_host_routes(table: &str) -> Vec<(Ipv4Addr, String)> {
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, destination, flags, mask) =
                (fields.first()?, word(fields.get(1)?)?, word(fields.get(3)?)?, word(fields.get(7)?)?);
            (mask == u32::MAX && flags & RTF_GATEWAY == 0)
                .then(|| (Ipv4Addr::from(destination.to_ne_bytes()), (*iface).to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routes_are_taken_and_others_left() {
        // A pod's own veth route is taken; a subnet route and a route to another node's pod through that
        // node are not.
        let word = |ip: Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(ip.octets()));
        let table = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             fg1a2b\t{}\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
             eth0\t{}\t00000000\t0001\t0\t0\t0\t{}\t0\t0\t0\n\
             fabric0\t{}\t{}\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n",
            word(Ipv4Addr::new(10, 200, 0, 10)),
            word(Ipv4Addr::new(10, 200, 0, 0)),
            word(Ipv4Addr::new(255, 255, 255, 0)),
            word(Ipv4Addr::new(10, 200, 0, 12)),
            word(Ipv4Addr::new(10, 199, 0, 2)),
        );
        assert_eq!(parse_host_routes(&table), [(Ipv4Addr::new(10, 200, 0, 10), "fg1a2b".to_owned())]);
    }

    #[test]
    fn the_loopback_namespace_of_this_test_can_be_read() {
        // The test's own namespace: the read works (whatever routes it has), nothing is changed.
        assert!(host_routes(Path::new("/proc/self/ns/net")).is_ok());
    }
}
