//! Messages of the socket protocol. A connection starts with a [`Hello`] each way; then the client sends
//! [`Request`]s (one [`Response`] each) or one [`Subscription`], after which the server sends
//! [`ServerMessage::Events`] batches until either side closes.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    ProtocolVersion,
    endpoint::{Endpoint, Enforcement, Identity},
    filter::FlowFilter,
    flow::{Flow, PolicyName, Protocol},
};

/// First frame in each direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: ProtocolVersion,
    /// The sender's software, e.g. `flowgate 0.1.0` or `flowgate-agent 0.1.0`.
    pub software: String,
}

/// Client -> agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(Hello),
    Request(Request),
    Subscribe(Subscription),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Status,
    EndpointList,
    EndpointGet {
        id: u16,
    },
    IdentityList,
    /// Changes an endpoint's configuration; `audit: Some(true)` puts both directions in audit mode.
    EndpointConfig {
        id: u16,
        audit: Option<bool>,
    },
    /// The realized policy entries of one endpoint, or of all.
    PolicyGet {
        endpoint: Option<u16>,
    },
    /// Since 1.2: the connection-tracking entries of one endpoint, or of all (`Response::Conntrack`).
    ConntrackList {
        endpoint: Option<u16>,
    },
    /// Since 1.4: the policy maps of the generation in effect, as the kernel holds them, and what they
    /// were compiled from (`Response::PolicyMaps`): `flowgate policy test` and `policy describe NS/NAME`.
    PolicyMaps,
}

impl Request {
    /// Whether the request changes what the agent does (and so needs root or the admin group), rather
    /// than reading what it does. New requests that change anything belong here.
    pub fn changes_agent(&self) -> bool {
        match self {
            Request::EndpointConfig { audit, .. } => audit.is_some(),
            Request::Status
            | Request::EndpointList
            | Request::EndpointGet { .. }
            | Request::IdentityList
            | Request::PolicyGet { .. }
            | Request::ConntrackList { .. }
            | Request::PolicyMaps => false,
        }
    }
}

/// What a subscriber wants: flows matching any `allow` filter (all flows when empty) and no `deny`
/// filter, starting with up to `last` events from the agent's history, then live ones if `follow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    #[serde(default)]
    pub allow: Vec<FlowFilter>,
    #[serde(default)]
    pub deny: Vec<FlowFilter>,
    #[serde(default)]
    pub last: u32,
    #[serde(default = "yes")]
    pub follow: bool,
}

impl Default for Subscription {
    /// Everything, live, no history.
    fn default() -> Self {
        Self { allow: Vec::new(), deny: Vec::new(), last: 0, follow: true }
    }
}

fn yes() -> bool {
    true
}

/// Agent -> client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    Hello(Hello),
    /// The agent will not serve this client; the connection is closed after this frame.
    Refused {
        reason: Refusal,
        message: String,
    },
    /// The client sent something the agent could not use; the connection is closed after this frame.
    Error {
        message: String,
    },
    Response(Response),
    /// A batch of events for a subscription, in order.
    Events(Vec<Event>),
    /// Since 1.5, to clients that said 1.5 or later: a batch of events for a subscription, in order,
    /// with peers numbered per connection (encoded with structs as arrays).
    FlowBatch(crate::flow_batch::FlowBatch),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The peer is neither root nor a member of the socket's group.
    PermissionDenied,
    /// The client's protocol major version differs from the agent's.
    VersionMismatch,
    /// The agent already serves its maximum number of clients.
    TooManyClients,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Status(Box<Status>),
    Endpoints(Vec<Endpoint>),
    Endpoint(Endpoint),
    Identities(Vec<Identity>),
    /// The endpoint after a configuration change.
    EndpointConfigured(Endpoint),
    Policy(Vec<EndpointPolicy>),
    /// Since 1.2: connection-tracking entries, as `cilium bpf ct list global` shows them.
    Conntrack(Vec<ConntrackEntry>),
    /// Since 1.4: answer to [`Request::PolicyMaps`].
    PolicyMaps(Box<PolicyMaps>),
    /// The thing asked for does not exist (e.g. an unknown endpoint id); `known` lists what does.
    NotFound {
        what: String,
        known: Vec<String>,
    },
    /// The client may read but not change the agent: the request needs root or the agent's admin group.
    /// `message` says who may. The connection stays open.
    Forbidden {
        message: String,
    },
}

/// One event of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Flow(Arc<Flow>),
    /// Events this client did not get, and why. Sent in order, where the gap is.
    Lost(LostEvents),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    pub source: LossSource,
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossSource {
    /// The kernel could not write records into the events buffer (it was full).
    KernelBuffer,
    /// This client's queue in the agent was full: the client read too slowly.
    ClientQueue,
    /// Records the agent could not decode.
    DecodeError,
}

impl LossSource {
    pub fn describe(self) -> &'static str {
        match self {
            LossSource::KernelBuffer => "kernel buffer",
            LossSource::ClientQueue => "this client's queue",
            LossSource::DecodeError => "decode error",
        }
    }
}

/// Answer to [`Request::Status`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub agent_version: String,
    pub protocol: Option<ProtocolVersion>,
    pub uptime_seconds: f64,
    pub kernel: String,
    pub events_buffer: EventsBufferInfo,
    pub endpoints: usize,
    pub identities: usize,
    pub policy: PolicyStatus,
    pub counters: Counters,
    pub clients: Vec<ClientInfo>,
    /// Since 1.2: connection tracking (zeros from an older agent).
    #[serde(default)]
    pub conntrack: ConntrackStatus,
    /// How the programs are attached to the endpoints' interfaces: `tc` (cls_bpf filters on a clsact
    /// qdisc) or `tcx` (TCX links); empty from an agent before 1.5 that did not say.
    #[serde(default)]
    pub attach_mode: String,
}

/// Connection tracking in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    /// Entries in the conntrack map at the last garbage collection.
    pub entries: u64,
    /// The map's capacity (an LRU map: when full, the least recently used entry goes).
    pub capacity: u64,
    /// Expired entries the agent deleted since it started.
    pub gc_deleted: u64,
    /// The datapath's policy revision: bumped on every change applied to the maps (policies, labels,
    /// audit); entries of an older revision are re-checked, and a revoked connection's drop names it.
    pub revision: u64,
    /// `--keep-established`: connections are not re-checked when the policy changes.
    pub keep_established: bool,
    /// Idle lifetimes in seconds: answered TCP, other (UDP, ICMP, unanswered TCP), closed or revoked.
    pub lifetime_tcp_seconds: u64,
    pub lifetime_other_seconds: u64,
    pub lifetime_close_seconds: u64,
}

/// One connection-tracking entry, seen from the endpoint that tracks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConntrackEntry {
    pub protocol: Protocol,
    /// The opening packet's source and destination (ports: ICMP type and code).
    #[serde(with = "crate::ip_wire")]
    pub source: std::net::IpAddr,
    pub source_port: u16,
    #[serde(with = "crate::ip_wire")]
    pub destination: std::net::IpAddr,
    pub destination_port: u16,
    /// `ingress` or `egress` at the endpoint when the connection opened.
    pub direction: String,
    pub endpoint_id: u16,
    /// `namespace/pod` of the endpoint (empty when unknown).
    pub pod: String,
    /// Seconds until the entry expires unless a packet renews it (negative: expired, awaiting collection).
    pub expires_in_seconds: f64,
    /// Seconds since the connection opened.
    pub age_seconds: f64,
    /// `enforced`, `audit`, `reply-seen`, `closing`, `closed`, `revoked`.
    pub flags: Vec<String>,
    /// Policy revision the connection was last allowed under (`None`: revoked).
    pub revision: Option<u64>,
    /// Policies that allowed it (empty: not enforced, audit, or revoked).
    pub policies: Vec<PolicyName>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsBufferInfo {
    /// `ringbuf` or `perf`.
    pub kind: String,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Records read from the events buffer.
    pub records_read: u64,
    /// Records the kernel could not write (lost before the agent saw them).
    pub records_lost_kernel: u64,
    pub decode_errors: u64,
    /// Events dropped from client queues, all clients together.
    pub client_queue_losses: u64,
    /// Packets seen by the kernel programs.
    pub packets: u64,
    /// Every kernel counter by name (summed over CPUs; pinned, so they count across agent restarts):
    /// `records_written`, `records_lost`, `perf_buffer_full`, `policy_allowed`, `policy_denied`, ...
    #[serde(default)]
    pub kernel: std::collections::BTreeMap<String, u64>,
    /// Losses the perf buffers reported (lost-record notices), since this agent started.
    #[serde(default)]
    pub perf_lost: u64,
    /// Flow records written whole to the verdict log (0 when it is off).
    #[serde(default)]
    pub verdict_log_written: u64,
    /// Flow records meant for the verdict log that are not in it: its queue was full or a write failed.
    #[serde(default)]
    pub verdict_log_lost: u64,
    /// Requests refused because the client may read but not change the agent.
    #[serde(default)]
    pub requests_refused: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub id: u64,
    pub uid: u32,
    pub pid: i32,
    pub software: String,
    pub subscribed: bool,
    pub events_sent: u64,
    pub events_lost: u64,
}

/// Where policy stands, so a script can wait until a change is in effect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Increases each time a new set of policies is in effect in the datapath.
    pub revision: u64,
    /// Policies in effect, `namespace/name`.
    pub loaded: Vec<String>,
    /// Why the latest change of the policy sources was not applied (the last good set stays in
    /// effect), e.g. `policies/db.yaml: document 2: spec.ingress[0].ports[1].endPort: must be >= port`.
    pub errors: Vec<String>,
    /// Agent-wide audit mode.
    pub audit_mode: bool,
    /// How full the maps of the policy generation in effect are (`policy`, `ipcache`, `endpoint`). A
    /// set that would not fit is refused and named in `errors`.
    #[serde(default)]
    pub maps: Vec<MapFill>,
}

/// Entries used in one datapath map and how many it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    /// `policy`, `ipcache`, `endpoint`.
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

/// The realized policy of one endpoint, as `cilium bpf policy get` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub endpoint_id: u16,
    /// `namespace/pod`.
    pub pod: String,
    pub ingress: Enforcement,
    pub egress: Enforcement,
    /// Policies that select the endpoint, per direction.
    pub ingress_selected_by: Vec<PolicyName>,
    pub egress_selected_by: Vec<PolicyName>,
    pub entries: Vec<PolicyEntryView>,
}

/// One allow entry of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntryView {
    /// `ingress` or `egress`.
    pub direction: String,
    /// Peer identity; 0 for any peer.
    pub identity: u32,
    /// The peer's labels (`reserved:any` for any peer, `cidr:...` for CIDR identities).
    pub labels: Vec<String>,
    /// `None`: any protocol.
    pub protocol: Option<Protocol>,
    /// Inclusive port range; `None`: any port.
    pub ports: Option<(u16, u16)>,
    pub policies: Vec<PolicyName>,
    /// New connections this entry allowed, and their first packets' bytes.
    pub packets: u64,
    pub bytes: u64,
}

/// Answer to [`Request::PolicyMaps`]: the policy generation the node enforces now, read back from the
/// kernel's maps (keys and values as the datapath holds them), the names behind its rule ids, and the inputs
/// it was compiled from (policies, pods, namespaces, audit settings) so a client can compile a changed set
/// the same way (what-if).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMaps {
    /// The policy revision in effect.
    pub revision: u64,
    pub policy: Vec<PolicyMapEntry>,
    pub ipcache: Vec<IpcacheMapEntry>,
    /// Endpoint id and `flowgate_common::policy::enforcement` flags.
    pub enforcement: Vec<(u16, u32)>,
    /// Rule id -> the policies behind it.
    pub rules: Vec<(u32, Vec<PolicyName>)>,
    /// Endpoint id, `flowgate_common::policy::direction`, and the policies isolating it in that direction.
    pub isolation: Vec<(u16, u8, Vec<PolicyName>)>,
    /// The policies in effect, one manifest (YAML) each.
    pub policies: Vec<String>,
    /// Every pod the policies were compiled against: this node's endpoints and, in Kubernetes mode, the
    /// other nodes' pods (`endpoint_id` 0).
    pub pods: Vec<PolicyPod>,
    /// Namespaces and their labels.
    pub namespaces: Vec<(String, BTreeMap<String, String>)>,
    /// Agent-wide audit mode, and the endpoints in audit mode one by one.
    pub audit_all: bool,
    pub audited: Vec<u16>,
}

/// One entry of the policy trie: its prefix length and the fields of its key and value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMapEntry {
    pub prefix_len: u32,
    pub endpoint_id: u16,
    pub direction: u8,
    pub identity: u32,
    pub protocol: u8,
    pub port: u16,
    pub rule_id: u32,
    pub flags: u32,
}

/// One prefix of the ipcache: the LPM key (16 bytes, IPv4 mapped; length in that 128-bit space) and value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheMapEntry {
    pub addr: [u8; 16],
    pub prefix_len: u32,
    pub identity: u32,
    pub cidr_identity: u32,
}

/// A pod as policy compilation saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPod {
    pub endpoint_id: u16,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub identity: u32,
    pub ipv4: std::net::Ipv4Addr,
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Container ports: name (if any), number, protocol.
    pub ports: Vec<(Option<String>, u16, Protocol)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    /// A `PolicyMaps` answer (tuples, byte arrays, optional addresses, nested maps) survives the wire.
    #[test]
    fn policy_maps_round_trip_through_the_codec() {
        let name = PolicyName { namespace: "default".into(), name: "db".into() };
        let maps = PolicyMaps {
            revision: 7,
            policy: vec![PolicyMapEntry {
                prefix_len: 88,
                endpoint_id: 1,
                direction: 0,
                identity: 256,
                protocol: 6,
                port: 5432,
                rule_id: 1,
                flags: 1,
            }],
            ipcache: vec![IpcacheMapEntry { addr: [0xfd; 16], prefix_len: 128, identity: 256, cidr_identity: 1 << 24 }],
            enforcement: vec![(1, 1)],
            rules: vec![(1, vec![name.clone()])],
            isolation: vec![(1, 0, vec![name])],
            policies: vec!["apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n".into()],
            pods: vec![PolicyPod {
                endpoint_id: 1,
                namespace: "default".into(),
                name: "database".into(),
                labels: BTreeMap::from([("component".into(), "database".into())]),
                identity: 256,
                ipv4: std::net::Ipv4Addr::new(10, 200, 0, 10),
                ipv6: Some("fd00:10:200::a".parse().unwrap()),
                ports: vec![(Some("postgres".into()), 5432, Protocol::Tcp)],
            }],
            namespaces: vec![("default".into(), BTreeMap::new())],
            audit_all: false,
            audited: vec![1],
        };
        let message = ServerMessage::Response(Response::PolicyMaps(Box::new(maps)));
        let frame = encode("policy maps", &message).unwrap();
        assert_eq!(decode::<ServerMessage>("policy maps", &frame).unwrap(), message);
        let request = ClientMessage::Request(Request::PolicyMaps);
        assert_eq!(decode::<ClientMessage>("request", &encode("request", &request).unwrap()).unwrap(), request);
        assert!(!Request::PolicyMaps.changes_agent(), "reading the maps needs no admin rights");
    }
}
