//! The contract between whatever drains the kernel's events buffer (the agent's reader, a benchmark, a
//! test feeding bytes) and the event path: raw records in, batch ends and kernel losses marked.

pub trait RecordSink {
    /// One raw record.
    fn on_record(&mut self, bytes: &[u8]);
    /// The buffer is empty for now: the end of a batch.
    fn on_batch_end(&mut self);
    /// The kernel reported `count` records it could not write (perf buffers only).
    fn on_lost(&mut self, count: u64);
}
