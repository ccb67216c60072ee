//! Section "traffic" of the suite (issue 12, point 3): flowgate side by side with what people use instead, on
//! real traffic between lab pods, in one run, interleaved. The no-policy baseline; flowgate's agent; iptables
//! rules with and without the conntrack shortcut; iptables with ipset as policy controllers write them; and
//! kube-network-policies against a real API server. Each enforces the same policy ([`rules`]) at each size;
//! each must refuse a pod the policy does not admit before its figures count ([`load::probe`]); the loads are
//! short TCP connections, TCP request/response and UDP packets ([`load`]); every figure is a ratio to the
//! baseline (or to another enforcer) measured in the same round ([`run`]).

pub mod enforcer;
pub mod knp;
pub mod load;
pub mod profile;
pub mod rules;
pub mod run;

/// The benchmark's lab: a client the policy admits, the server it isolates, and an intruder it does not admit,
/// in one namespace, with no declared ports (the benchmark serves its own port, [`rules::PORT`]).
pub const TOPOLOGY: &str = "# flowgate-bench-traffic's lab: written by the benchmark, brought up and down by it.
name: bench-traffic
cidr: 10.231.0.0/24
namespaces:
  - name: bench
pods:
  - namespace: bench
    name: client
    labels: {role: client}
  - namespace: bench
    name: server
    labels: {role: server}
  - namespace: bench
    name: intruder
    labels: {role: intruder}
";
