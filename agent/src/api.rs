//! Answers the socket's requests. The read side (status, endpoints, identities) comes from
//! [`AgentState`]; what needs the datapath and the policy engine (policy per endpoint, the policy maps,
//! endpoint configuration, conntrack entries) goes to a [`PolicyControl`], served by the controller. An [`Api`] is built once,
//! after everything it reports on exists, so nothing in it is set after construction.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use flowgate_proto::message::{PolicyStatus, Request, Response, Status};

use crate::{state::AgentState, verdict_log::VerdictLogStats};

/// Requests that need the datapath and the policy engine (served by the controller).
pub trait PolicyControl: Send + Sync {
    fn policy_get(&self, endpoint: Option<u16>) -> Response;
    fn endpoint_config(&self, id: u16, audit: Option<bool>) -> Response;
    fn policy_status(&self) -> PolicyStatus;
    /// Connection-tracking entries of one endpoint, or of all.
    fn conntrack_list(&self, endpoint: Option<u16>) -> Response;
    /// The policy maps in effect, read back from the kernel, and what they were compiled from.
    fn policy_maps(&self) -> Response;
}

/// What the socket's sessions ask.
pub struct Api {
    state: Arc<AgentState>,
    /// None when the agent has no datapath (tests of the socket alone).
    control: Option<Arc<dyn PolicyControl>>,
    /// None when the verdict log is off.
    verdict_log: Option<Arc<VerdictLogStats>>,
    /// Requests refused to clients that may read but not change the agent.
    refused: AtomicU64,
}

impl Api {
    pub fn new(
        state: Arc<AgentState>,
        control: Option<Arc<dyn PolicyControl>>,
        verdict_log: Option<Arc<VerdictLogStats>>,
    ) -> Arc<Self> {
        Arc::new(Self { state, control, verdict_log, refused: AtomicU64::new(0) })
    }

    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    /// The state's status with the verdict log's counters.
    pub fn status(&self) -> Status {
        let mut status = self.state.status();
        if let Some(log) = &self.verdict_log {
            status.counters.verdict_log_written = log.records_written.load(Ordering::Relaxed);
            status.counters.verdict_log_lost = log.records_lost.load(Ordering::Relaxed);
        }
        status.counters.requests_refused = self.refused.load(Ordering::Relaxed);
        status
    }

    /// Refuses a request that changes the agent to a client that may only read; counted in `status`.
    pub fn forbid(&self, message: String) -> Response {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Response::Forbidden { message }
    }

    /// Answers a request.
    pub fn handle(&self, request: &Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::EndpointList => Response::Endpoints(self.state.endpoints()),
            Request::EndpointGet { id } => match self.state.endpoint(*id) {
                Some(ep) => Response::Endpoint(ep),
                None => self.state.not_found_endpoint(*id),
            },
            Request::IdentityList => Response::Identities(self.state.identities()),
            Request::EndpointConfig { id, audit } => match &self.control {
                Some(control) => control.endpoint_config(*id, *audit),
                None => Response::NotFound { what: "a datapath to configure".into(), known: Vec::new() },
            },
            Request::PolicyGet { endpoint } => match &self.control {
                Some(control) => control.policy_get(*endpoint),
                None => Response::NotFound { what: "a datapath with policy".into(), known: Vec::new() },
            },
            Request::ConntrackList { endpoint } => match &self.control {
                Some(control) => control.conntrack_list(*endpoint),
                None => Response::NotFound { what: "a datapath with connection tracking".into(), known: Vec::new() },
            },
            Request::PolicyMaps => match &self.control {
                Some(control) => control.policy_maps(),
                None => Response::NotFound { what: "a datapath with policy maps".into(), known: Vec::new() },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flowgate_events::hub::{Hub, HubConfig};

    use super::*;
    use crate::state::{AgentInfo, tests::pod};

    #[test]
    fn requests_are_answered_from_the_state_and_the_log() {
        let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
        let ns = BTreeMap::new();
        let a = state.upsert_endpoint(pod("x", "a1", "a", 1), &ns).unwrap();
        let a2 = state.upsert_endpoint(pod("x", "a2", "a", 2), &ns).unwrap();
        state.upsert_endpoint(pod("x", "b", "b", 3), &ns).unwrap();
        let log = Arc::new(VerdictLogStats::default());
        log.records_written.store(7, Ordering::Relaxed);
        let api = Api::new(Arc::clone(&state), None, Some(log));
        let Response::Identities(ids) = api.handle(&Request::IdentityList) else { panic!() };
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.iter().find(|i| i.id == a.identity).unwrap().endpoints, vec![a.id, a2.id]);
        let Response::NotFound { known, .. } = api.handle(&Request::EndpointGet { id: 99 }) else { panic!() };
        assert_eq!(known.len(), 3);
        let Response::Status(status) = api.handle(&Request::Status) else { panic!() };
        assert_eq!(status.endpoints, 3);
        assert_eq!(status.counters.verdict_log_written, 7);
        let Response::NotFound { what, .. } = api.handle(&Request::PolicyGet { endpoint: None }) else { panic!() };
        assert!(what.contains("datapath"), "{what}");
    }
}
