//! networking.k8s.io/v1 NetworkPolicy for flowgate: load YAML sources ([`source`]), validate them as the API
//! server does ([`validate`]), evaluate label selectors ([`selector`]) and compile everything against the
//! node's endpoints into a [`PolicyPlan`] the agent writes into the eBPF maps ([`compile`]).
//!
//! Pure: no network, no async, no aya; the only IO is [`source::load_dir`] reading files.

pub mod cidr;
pub mod compile;
pub mod selector;
pub mod source;
pub mod validate;

pub use cidr::{CidrIdentities, Ipv4Prefix};
pub use compile::{
    Addr, CidrEntry, ClusterView, ContainerPort, DirectionPolicy, DirectionVerdict, EndpointPolicy,
    MatchKind, NamespaceInfo, PeerMatch, PodInfo, PolicyEntry, PolicyPlan, PolicyRef, Protocol,
    Verdict, compile,
};
pub use source::{LoadedPolicy, SourceError, load_dir};
pub use validate::{FieldError, validate};
