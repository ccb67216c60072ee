//! The port criterion: the flow's source or destination port is one of those named.

use super::Values;
use crate::flow::Flow;

pub(super) fn matches(ports: &(impl Values<u16> + ?Sized), flow: &Flow) -> bool {
    ports.is_empty() || ports.contains(&flow.source_port) || ports.contains(&flow.destination_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{filter::tests::flow, flow::Verdict};

    #[test]
    fn either_port() {
        let f = flow(1, 2, Verdict::Forwarded, 5432);
        assert!(matches(&[5432u16][..], &f), "destination port");
        assert!(matches(&[40000u16, 1][..], &f), "source port");
        assert!(!matches(&[80u16][..], &f));
    }
}
