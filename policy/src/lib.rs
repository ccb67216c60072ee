//! networking.k8s.io/v1 NetworkPolicy for flowgate: load YAML sources ([`source`]), validate them as the API
//! server does ([`mod@validate`]), evaluate label selectors ([`selector`]) and compile everything against the
//! node's endpoints ([`mod@compile`]) into a [`PolicyPlan`] ([`plan`]), realize it into the exact contents of
//! the eBPF maps ([`realize`]), look connections up in those contents in the kernel's order ([`lookup`]) and
//! answer what-if questions from them ([`what_if`], `flowgate policy test`).
//!
//! Pure: no network, no async, no aya; the only IO is [`source::load_dir`] (and its cache) reading files.

pub mod cidr;
pub mod compile;
pub mod describe;
pub mod lookup;
pub mod plan;
pub mod realize;
pub mod selector;
pub mod source;
pub mod validate;
pub mod what_if;

pub use cidr::{CidrIdentities, IpPrefix};
pub use compile::{ClusterView, ContainerPort, NOT_AN_ENDPOINT, NamespaceInfo, PodInfo, PolicyCompiler, compile};
pub use plan::{
    Addr, CidrEntry, DirectionPolicy, DirectionVerdict, EndpointPolicy, MatchKind, PeerMatch, PolicyEntry, PolicyPlan,
    PolicyRef, Protocol, Verdict,
};
pub use source::{LoadedPolicy, SourceCache, SourceError, load_dir};
pub use validate::{FieldError, validate};
