//! Reserved security identities and where allocated ones start, as Cilium numbers them. The kernel
//! matches `ANY` and falls back to `WORLD`, the policy compiler and the agent allocate above the
//! reserved range, and the enricher and the CLI print the reserved labels: all from this one module.

/// Any peer: the identity of a policy key for a rule without `from`/`to`.
pub const ANY: u32 = 0;
/// Addresses outside the cluster that no CIDR rule names.
pub const WORLD: u32 = 2;
/// The first identity allocated for a set of pod labels; those below are reserved.
pub const FIRST_ALLOCATED: u32 = 256;
/// The first identity allocated for a CIDR (Cilium's local scope); pod identities stay below it.
pub const FIRST_CIDR: u32 = 1 << 24;

/// Label of [`ANY`], as `flowgate policy get` shows the peer of such an entry.
pub const ANY_LABEL: &str = "reserved:any";
/// Label of [`WORLD`], as Cilium and Hubble print it.
pub const WORLD_LABEL: &str = "reserved:world";

/// The label of a reserved identity, `None` for one that is not reserved here.
pub const fn reserved_label(identity: u32) -> Option<&'static str> {
    match identity {
        ANY => Some(ANY_LABEL),
        WORLD => Some(WORLD_LABEL),
        _ => None,
    }
}
