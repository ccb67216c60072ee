//! What the kernel has attached to an interface, per hook, as it answers: TCX programs
//! (`BPF_PROG_QUERY`) and `cls_bpf` filters (`tc -j filter show`). Tests use it to check that an agent
//! attached each endpoint once, in the mode it was asked for, and left nothing of another mode behind.

use std::process::Command;

use aya::programs::{SchedClassifier, TcAttachType};

/// Programs attached to one interface: (ingress, egress) counts of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub tcx: (usize, usize),
    pub tc: (usize, usize),
}

impl Attached {
    /// One program per hook as tc filters, no TCX program.
    pub const TC: Self = Self { tcx: (0, 0), tc: (1, 1) };
    /// One TCX program per hook, no tc filter.
    pub const TCX: Self = Self { tcx: (1, 1), tc: (0, 0) };
    /// Nothing.
    pub const NONE: Self = Self { tcx: (0, 0), tc: (0, 0) };
}

/// What is attached to `interface` in the network namespace `netns`.
pub fn attached(netns: &str, interface: &str) -> Attached {
    let tcx = flowgate_lab::in_netns(netns, || {
        let count = |attach_type| {
            SchedClassifier::query_tcx(interface, attach_type)
                .unwrap_or_else(|e| panic!("query the TCX programs of {interface} in {netns}: {e}"))
                .1
                .len()
        };
        (count(TcAttachType::Ingress), count(TcAttachType::Egress))
    })
    .expect("enter the namespace");
    let filters = |hook: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "tc", "-j", "filter", "show", "dev", interface, hook])
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc filter show dev {interface} {hook}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // No qdisc: tc prints nothing at all.
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return 0;
        }
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("tc -j filter show: {e}: {text}"));
        // Each filter comes with a line for its priority (no options) and one for itself.
        list.iter().filter(|f| f["kind"] == "bpf" && f.get("options").is_some()).count()
    };
    Attached { tcx, tc: (filters("ingress"), filters("egress")) }
}
