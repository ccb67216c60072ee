//! Endpoint criteria, by local endpoint id: `related_to` (either side, or where the flow was
//! observed), `from_endpoint` (the source) and `to_endpoint` (the destination). Id 0 means "not an
//! endpoint of this node" and never matches.

use super::Values;
use crate::flow::Flow;

fn named(ids: &(impl Values<u16> + ?Sized), id: u16) -> bool {
    id != 0 && ids.contains(&id)
}

pub(super) fn related_to(ids: &(impl Values<u16> + ?Sized), flow: &Flow) -> bool {
    ids.is_empty()
        || [flow.endpoint_id, flow.source.endpoint_id, flow.destination.endpoint_id]
            .into_iter()
            .any(|id| named(ids, id))
}

pub(super) fn from_endpoint(ids: &(impl Values<u16> + ?Sized), flow: &Flow) -> bool {
    ids.is_empty() || named(ids, flow.source.endpoint_id)
}

pub(super) fn to_endpoint(ids: &(impl Values<u16> + ?Sized), flow: &Flow) -> bool {
    ids.is_empty() || named(ids, flow.destination.endpoint_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{filter::tests::flow, flow::Verdict};

    #[test]
    fn related_to_is_either_side_or_where_observed() {
        let mut f = flow(1, 2, Verdict::Forwarded, 80);
        assert!(related_to(&[1u16][..], &f) && related_to(&[2u16][..], &f));
        assert!(!related_to(&[3u16][..], &f));
        f.endpoint_id = 3;
        assert!(related_to(&[3u16][..], &f), "observed at endpoint 3");
        assert!(related_to(&[][..] as &[u16], &f), "no ids: any flow");
    }

    #[test]
    fn from_and_to_are_directional() {
        let f = flow(1, 2, Verdict::Forwarded, 80);
        assert!(from_endpoint(&[1u16][..], &f) && !from_endpoint(&[2u16][..], &f));
        assert!(to_endpoint(&[2u16][..], &f) && !to_endpoint(&[1u16][..], &f));
    }

    #[test]
    fn id_zero_is_no_endpoint() {
        let mut f = flow(1, 2, Verdict::Forwarded, 80);
        f.source = crate::filter::tests::peer(0, "", "", &["reserved:world"]);
        f.endpoint_id = 2;
        for ids in [&[0u16][..], &[0u16, 7][..]] {
            assert!(!related_to(ids, &f) && !from_endpoint(ids, &f));
        }
    }
}
