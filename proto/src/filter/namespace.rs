//! The namespace criterion: either side is in one of the namespaces named. A side that is not a pod
//! (the world, a CIDR) has no namespace and never matches.

use super::{Values, sides};
use crate::flow::Flow;

pub(super) fn matches(namespaces: &(impl Values<str> + ?Sized), flow: &Flow) -> bool {
    namespaces.is_empty()
        || sides(flow).iter().any(|p| !p.namespace.is_empty() && namespaces.contains(p.namespace.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        filter::tests::{flow, peer},
        flow::Verdict,
    };

    #[test]
    fn either_side() {
        let mut f = flow(1, 2, Verdict::Forwarded, 80);
        f.destination = peer(2, "y", "b", &[]);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        assert!(matches(names(&["default"]).as_slice(), &f), "source");
        assert!(matches(names(&["x", "y"]).as_slice(), &f), "destination");
        assert!(!matches(names(&["z"]).as_slice(), &f));
        f.destination = peer(0, "", "", &["reserved:world"]);
        assert!(!matches(names(&[""]).as_slice(), &f), "the world is in no namespace");
    }
}
