//! The agent's history ring: the last N flows, for subscribers that ask for `--last N`.

use std::{collections::VecDeque, sync::Arc};

use flowgate_proto::{Flow, filter};

/// Bounded ring of the most recent flows.
#[derive(Debug)]
pub struct History {
    flows: VecDeque<Arc<Flow>>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self { flows: VecDeque::with_capacity(capacity.min(1 << 16)), capacity }
    }

    pub fn push(&mut self, flow: Arc<Flow>) {
        if self.capacity == 0 {
            return;
        }
        if self.flows.len() == self.capacity {
            self.flows.pop_front();
        }
        self.flows.push_back(flow);
    }

    /// The last `n` flows that pass the filters, oldest first.
    pub fn last_matching(&self, n: usize, allow: &[filter::FlowFilter], deny: &[filter::FlowFilter]) -> Vec<Arc<Flow>> {
        let mut out: Vec<Arc<Flow>> =
            self.flows.iter().rev().filter(|f| filter::passes(allow, deny, f)).take(n).cloned().collect();
        out.reverse();
        out
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}
