//! Endpoints as people name them: wherever a command asks for an endpoint (`--related-to`, `--from`, `--to`,
//! `endpoint get/config`, `policy get --endpoint`, the monitor's endpoint prompt) it takes the id `endpoint
//! list` shows, `namespace/pod`, or a pod name that only one namespace has. Names are resolved against the
//! agent's endpoint list, fetched over its socket; an unknown or ambiguous name is an error that lists the
//! candidates, as `kubectl` would name them.

use std::{fmt, str::FromStr};

use flowgate_proto::{
    endpoint::Endpoint,
    message::{Request, Response},
};

use crate::client::{SocketArg, request};

/// An endpoint as given on the command line: its id, `namespace/pod`, or a bare pod name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EndpointRef {
    Id(u16),
    Pod { namespace: Option<String>, name: String },
}

impl FromStr for EndpointRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(EndpointRef::Id).map_err(|_| format!("{s:?}: endpoint ids go up to {}", u16::MAX));
        }
        let (namespace, name) = match s.split_once('/') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, s),
        };
        let bad = |what: &str| format!("{s:?}: {what}; give an endpoint id, NAMESPACE/POD or POD");
        match namespace {
            _ if name.is_empty() => Err(bad("no pod name")),
            Some("") => Err(bad("empty namespace")),
            _ if name.contains('/') => Err(bad("more than one '/'")),
            _ => Ok(EndpointRef::Pod { namespace: namespace.map(str::to_owned), name: name.to_owned() }),
        }
    }
}

impl fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointRef::Id(id) => write!(f, "{id}"),
            EndpointRef::Pod { namespace: Some(namespace), name } => write!(f, "{namespace}/{name}"),
            EndpointRef::Pod { namespace: None, name } => f.write_str(name),
        }
    }
}

/// Why a name does not give one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// No endpoint has this id or name; `candidates` are the likely ones (`1 (default/database)`), or every
    /// endpoint when none is alike.
    Unknown { given: EndpointRef, candidates: Vec<String>, alike: bool },
    /// A bare pod name that several namespaces have.
    Ambiguous { given: EndpointRef, candidates: Vec<String> },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Unknown { given: EndpointRef::Id(id), candidates, .. } if candidates.is_empty() => {
                write!(f, "no endpoint {id} on this agent; it has no endpoints")
            }
            ResolveError::Unknown { given: EndpointRef::Id(id), candidates, .. } => {
                write!(f, "no endpoint {id} on this agent; known endpoints: {}", candidates.join(", "))
            }
            ResolveError::Unknown { given, candidates, .. } if candidates.is_empty() => {
                write!(f, "no endpoint named {:?} on this agent; it has no endpoints", given.to_string())
            }
            ResolveError::Unknown { given, candidates, alike: true } => {
                write!(
                    f,
                    "no endpoint named {:?} on this agent; did you mean {}?",
                    given.to_string(),
                    candidates.join(", ")
                )
            }
            ResolveError::Unknown { given, candidates, alike: false } => {
                write!(
                    f,
                    "no endpoint named {:?} on this agent; known endpoints: {}",
                    given.to_string(),
                    candidates.join(", ")
                )
            }
            ResolveError::Ambiguous { given, candidates } => write!(
                f,
                "endpoint name {:?} is ambiguous: {}; give it as NAMESPACE/POD or by id",
                given.to_string(),
                candidates.join(", ")
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

/// `1 (default/database)`.
pub fn endpoint_label(endpoint: &Endpoint) -> String {
    format!("{} ({})", endpoint.id, endpoint.pod_ref())
}

impl EndpointRef {
    /// Whether this needs the agent's endpoint list to become an id.
    pub fn is_name(&self) -> bool {
        matches!(self, EndpointRef::Pod { .. })
    }

    /// The endpoint id this names among `endpoints`.
    pub fn resolve(&self, endpoints: &[Endpoint]) -> Result<u16, ResolveError> {
        let labels = |matching: &mut dyn Iterator<Item = &Endpoint>| matching.map(endpoint_label).collect::<Vec<_>>();
        let matches: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| match self {
                EndpointRef::Id(id) => e.id == *id,
                EndpointRef::Pod { namespace: Some(ns), name } => e.namespace == *ns && e.pod_name == *name,
                EndpointRef::Pod { namespace: None, name } => e.pod_name == *name,
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.id),
            [] => {
                let needle = match self {
                    EndpointRef::Id(_) => String::new(),
                    EndpointRef::Pod { name, .. } => name.to_lowercase(),
                };
                let alike = labels(&mut endpoints.iter().filter(|e| {
                    !needle.is_empty()
                        && (e.pod_name.to_lowercase().contains(&needle) || needle.contains(&e.pod_name.to_lowercase()))
                }));
                let (candidates, alike) =
                    if alike.is_empty() { (labels(&mut endpoints.iter()), false) } else { (alike, true) };
                Err(ResolveError::Unknown { given: self.clone(), candidates, alike })
            }
            several => {
                Err(ResolveError::Ambiguous { given: self.clone(), candidates: labels(&mut several.iter().copied()) })
            }
        }
    }
}

/// Resolves every reference against `endpoints`, in order.
pub fn resolve_all(refs: &[EndpointRef], endpoints: &[Endpoint]) -> Result<Vec<u16>, ResolveError> {
    refs.iter().map(|r| r.resolve(endpoints)).collect()
}

/// The agent's endpoints, asked over its socket.
pub fn fetch(socket: &SocketArg) -> anyhow::Result<Vec<Endpoint>> {
    match request(socket, Request::EndpointList)? {
        Response::Endpoints(endpoints) => Ok(endpoints),
        other => anyhow::bail!("the agent answered `endpoint list` with something else: {other:?}"),
    }
}

/// The id of `endpoint`: an id as it is (the agent says when it does not know it), a name resolved against
/// the agent's endpoint list.
pub fn id_over_socket(endpoint: &EndpointRef, socket: &SocketArg) -> anyhow::Result<u16> {
    match endpoint {
        EndpointRef::Id(id) => Ok(*id),
        name => Ok(name.resolve(&fetch(socket)?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::tests::endpoint;

    fn endpoints() -> Vec<Endpoint> {
        let mut web_y = endpoint(4, "web");
        web_y.namespace = "y".into();
        vec![endpoint(1, "database"), endpoint(2, "backend"), endpoint(3, "web"), web_y]
    }

    fn parse(s: &str) -> EndpointRef {
        s.parse().unwrap()
    }

    #[test]
    fn ids_names_and_bad_ones_parse() {
        assert_eq!(parse("12"), EndpointRef::Id(12));
        assert_eq!(parse("default/db"), EndpointRef::Pod { namespace: Some("default".into()), name: "db".into() });
        assert_eq!(parse("db"), EndpointRef::Pod { namespace: None, name: "db".into() });
        assert_eq!(parse("web-1"), EndpointRef::Pod { namespace: None, name: "web-1".into() });
        for (bad, why) in [("70000", "go up to"), ("x/", "no pod name"), ("/a", "empty namespace"), ("a/b/c", "more")] {
            let e = bad.parse::<EndpointRef>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(parse("x/web").to_string(), "x/web");
    }

    #[test]
    fn names_resolve_to_their_endpoint() {
        let eps = endpoints();
        assert_eq!(parse("default/database").resolve(&eps), Ok(1));
        assert_eq!(parse("backend").resolve(&eps), Ok(2), "a pod name only one namespace has");
        assert_eq!(parse("y/web").resolve(&eps), Ok(4));
        assert_eq!(parse("3").resolve(&eps), Ok(3));
        assert_eq!(resolve_all(&[parse("1"), parse("default/web")], &eps), Ok(vec![1, 3]));
    }

    #[test]
    fn ambiguous_and_unknown_names_list_the_candidates() {
        let eps = endpoints();
        assert_eq!(
            parse("web").resolve(&eps).unwrap_err().to_string(),
            "endpoint name \"web\" is ambiguous: 3 (default/web), 4 (y/web); give it as NAMESPACE/POD or by id"
        );
        assert_eq!(
            parse("default/databse").resolve(&eps).unwrap_err().to_string(),
            "no endpoint named \"default/databse\" on this agent; known endpoints: 1 (default/database), \
             2 (default/backend), 3 (default/web), 4 (y/web)"
        );
        assert_eq!(
            parse("data").resolve(&eps).unwrap_err().to_string(),
            "no endpoint named \"data\" on this agent; did you mean 1 (default/database)?"
        );
        assert_eq!(
            parse("x/web").resolve(&eps).unwrap_err().to_string(),
            "no endpoint named \"x/web\" on this agent; did you mean 3 (default/web), 4 (y/web)?"
        );
        assert_eq!(
            parse("99").resolve(&eps).unwrap_err().to_string(),
            "no endpoint 99 on this agent; known endpoints: 1 (default/database), 2 (default/backend), \
             3 (default/web), 4 (y/web)"
        );
        assert_eq!(
            parse("db").resolve(&[]).unwrap_err().to_string(),
            "no endpoint named \"db\" on this agent; it has no endpoints"
        );
    }
}
