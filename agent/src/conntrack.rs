//! Connection tracking as the agent sees it: the garbage collector that deletes expired entries (the
//! programs never resume one, but an LRU map full of dead entries would evict live ones), and the view of
//! an entry that `flowgate conntrack list` shows.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use flowgate_common::{
    conntrack::{CtEntry, CtKey, REVISION_REVOKED, ct_flag},
    ip,
    policy::direction,
};
use flowgate_proto::{
    flow::{PolicyName, Protocol},
    message::ConntrackEntry,
};
use log::warn;

use crate::{
    controller::Controller,
    datapath::{CtLifetimes, monotonic_now_ns},
    state::AgentState,
};

/// Default interval of the garbage collector.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(10);

/// Names of the `ct_flag` bits, in the order `conntrack list` prints them.
const FLAG_NAMES: [(u8, &str); 6] = [
    (ct_flag::ENFORCED, "enforced"),
    (ct_flag::AUDIT, "audit"),
    (ct_flag::REPLY_SEEN, "reply-seen"),
    (ct_flag::CLOSING, "closing"),
    (ct_flag::CLOSED, "closed"),
    (ct_flag::REVOKED, "revoked"),
];

/// The names of the flags set in `flags`.
pub fn flag_names(flags: u8) -> Vec<String> {
    FLAG_NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| (*name).to_owned()).collect()
}

fn seconds(from_ns: u64, to_ns: u64) -> f64 {
    if to_ns >= from_ns { (to_ns - from_ns) as f64 / 1e9 } else { -((from_ns - to_ns) as f64 / 1e9) }
}

/// An entry as `conntrack list` shows it, at `now_ns` (CLOCK_MONOTONIC).
pub fn entry_view(
    key: &CtKey,
    entry: &CtEntry,
    now_ns: u64,
    lifetimes: &CtLifetimes,
    pod: String,
    policies: Vec<PolicyName>,
) -> ConntrackEntry {
    ConntrackEntry {
        protocol: Protocol::from_number(key.protocol),
        source: ip::to_ip(&key.saddr),
        source_port: key.sport,
        destination: ip::to_ip(&key.daddr),
        destination_port: key.dport,
        direction: if key.direction == direction::INGRESS { "ingress" } else { "egress" }.into(),
        endpoint_id: key.endpoint_id,
        pod,
        expires_in_seconds: seconds(now_ns, lifetimes.expires_ns(key, entry)),
        age_seconds: seconds(entry.created_ns, now_ns).max(0.0),
        flags: flag_names(entry.flags),
        revision: (entry.revision != REVISION_REVOKED).then_some(u64::from(entry.revision)),
        policies,
        packets: entry.packets,
        bytes: entry.bytes,
    }
}

/// Every `interval`: deletes expired entries, and puts the count left and the deletions into `status`.
pub async fn collect_garbage(controller: Arc<Mutex<Controller>>, state: Arc<AgentState>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let controller = Arc::clone(&controller);
        // A walk of a full map takes a while: off the runtime's workers.
        let result = tokio::task::spawn_blocking(move || {
            let mut c = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            c.datapath().conntrack_gc(monotonic_now_ns())
        })
        .await;
        match result {
            Ok(Ok((deleted, left))) => state.update_conntrack(|s| {
                s.gc_deleted += deleted;
                s.entries = left;
            }),
            Ok(Err(e)) => warn!("collecting expired conntrack entries: {e}"),
            Err(e) => warn!("conntrack garbage collector: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use flowgate_common::ip::protocol;

    use super::*;

    #[test]
    fn an_entry_is_shown_with_its_expiry_flags_and_revision() {
        let key = CtKey {
            saddr: ip::v4_mapped([10, 0, 0, 1]),
            daddr: ip::v4_mapped([10, 0, 0, 2]),
            sport: 40000,
            dport: 53,
            protocol: protocol::UDP,
            direction: direction::EGRESS,
            endpoint_id: 4,
        };
        let entry = CtEntry {
            created_ns: 1_000_000_000,
            last_seen_ns: 5_000_000_000,
            flags: ct_flag::ENFORCED | ct_flag::REPLY_SEEN,
            packets: 3,
            bytes: 300,
            revision: 7,
            ..CtEntry::default()
        };
        let lifetimes = CtLifetimes::default();
        let view = entry_view(&key, &entry, 6_000_000_000, &lifetimes, "x/a".into(), Vec::new());
        assert_eq!((view.source, view.destination_port), (std::net::Ipv4Addr::new(10, 0, 0, 1).into(), 53));
        assert_eq!(view.direction, "egress");
        assert!((view.expires_in_seconds - 59.0).abs() < 1e-6, "{}", view.expires_in_seconds);
        assert!((view.age_seconds - 5.0).abs() < 1e-6);
        assert_eq!(view.flags, ["enforced", "reply-seen"]);
        assert_eq!(view.revision, Some(7));

        let revoked = CtEntry { flags: ct_flag::REVOKED, revision: REVISION_REVOKED, ..entry };
        let view = entry_view(&key, &revoked, 20_000_000_000, &lifetimes, String::new(), Vec::new());
        assert_eq!(view.revision, None);
        // Revoked: the close lifetime (10 s) from the last packet at 5 s, 15 s ago.
        assert!((view.expires_in_seconds + 5.0).abs() < 1e-6, "{}", view.expires_in_seconds);
    }
}
