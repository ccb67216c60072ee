//! Fan-out of flows to subscribers. Each subscriber has its own filters and a bounded queue; the hub
//! never waits for a subscriber. When a queue is full the batch is dropped for that subscriber only,
//! counted, and the count is delivered to it, in order, as a lost-events record ahead of the next batch
//! that fits. Kernel-side losses reach every subscriber the same way.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use flowgate_proto::{
    Flow,
    filter::FilterSet,
    message::{Event, LossSource, LostEvents, Subscription},
};
use tokio::sync::mpsc;

use crate::history::History;

/// How long a subscriber that does not need each batch the moment it is published (the verdict log, the
/// metrics count: [`LiveEvents::recv_paced`]) lets batches pile up after taking one. Under a stream the hub publishes a batch for
/// each of the reader's drains, thousands a second; each would wake such a subscriber's thread, and on
/// the machine the benchmarks run on a wake-up costs the pods' traffic far more than the work it wakes
/// for (docs/benchmarks.md, "Subscribers that woke for every batch"). After a batch, such a subscriber
/// waits this long before it looks again: at most one wake-up per interval under a stream, none when
/// idle, and a lone batch still taken at once. A queue holds 65,536 events by default: 20 ms of 1M
/// events/s fit in a third of it.
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(20);

/// Sizes of the hub's buffers.
#[derive(Clone, Copy, Debug)]
pub struct HubConfig {
    /// Flows kept for `--last N`.
    pub history: usize,
    /// Events a subscriber's queue holds before the hub drops for it.
    pub queue_events: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self { history: 4096, queue_events: 65536 }
    }
}

/// The receiving end of a subscriber's queue; it gives the queue's room back as batches are taken.
pub struct LiveEvents {
    rx: mpsc::UnboundedReceiver<Vec<Event>>,
    queued: Arc<AtomicUsize>,
    /// When [`LiveEvents::recv_paced`] last took a batch.
    paced_at: Option<std::time::Instant>,
}

impl LiveEvents {
    fn taken(&self, batch: &[Event]) {
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
    }

    /// The next batch; `None` once the hub dropped the subscription.
    pub async fn recv(&mut self) -> Option<Vec<Event>> {
        let batch = self.rx.recv().await?;
        self.taken(&batch);
        Some(batch)
    }

    /// The next batch, at most one per [`COALESCE`]: under a stream it waits out the rest of the
    /// interval since the last one it took (what piled up meanwhile is there for `try_recv`); after a
    /// quiet spell it takes a lone batch at once.
    pub async fn recv_paced(&mut self) -> Option<Vec<Event>> {
        if let Some(rest) = self.paced_at.and_then(|at| COALESCE.checked_sub(at.elapsed())) {
            tokio::time::sleep(rest).await;
        }
        let batch = self.recv().await;
        self.paced_at = Some(std::time::Instant::now());
        batch
    }

    /// A batch if one is queued.
    pub fn try_recv(&mut self) -> Result<Vec<Event>, mpsc::error::TryRecvError> {
        let batch = self.rx.try_recv()?;
        self.taken(&batch);
        Ok(batch)
    }
}

/// Per-subscriber counters, shared with the session that serves it (for `status`).
#[derive(Debug, Default)]
pub struct SubscriberStats {
    /// Events handed to the subscriber's queue.
    pub events_queued: AtomicU64,
    /// Events the subscriber missed because its queue was full.
    pub events_lost: AtomicU64,
}

/// One subscriber as the hub sees it. Shared (`Arc`) between the hub's list and a publish in progress,
/// so flows are filtered and queued without the hub's lock held.
struct Slot {
    id: u64,
    /// The subscription's allow and deny lists, compiled into sets once at subscription time, so the
    /// cost per event does not grow with the number of pods or endpoints named.
    filters: FilterSet,
    tx: mpsc::UnboundedSender<Vec<Event>>,
    /// Events in the queue now, and how many it may hold.
    queued: Arc<AtomicUsize>,
    limit: usize,
    /// Losses not yet delivered, by source, in the order they happened. The lock also makes each
    /// delivery to this subscriber whole: a loss never lands inside another delivery's batch.
    undelivered: Mutex<Vec<LostEvents>>,
    stats: Arc<SubscriberStats>,
}

fn note_loss(undelivered: &mut Vec<LostEvents>, source: LossSource, count: u64) {
    match undelivered.last_mut() {
        Some(last) if last.source == source => last.count += count,
        _ => undelivered.push(LostEvents { source, count }),
    }
}

impl Slot {
    fn undelivered(&self) -> std::sync::MutexGuard<'_, Vec<LostEvents>> {
        self.undelivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `events`, preceded by any undelivered loss and by `loss` (a loss that happened before
    /// them). Returns how many flows were dropped for lack of room, or `None` when the subscriber is gone.
    fn deliver(&self, events: Vec<Event>, loss: Option<(LossSource, u64)>) -> Option<u64> {
        let mut undelivered = self.undelivered();
        if let Some((source, count)) = loss {
            note_loss(&mut undelivered, source, count);
        }
        if events.is_empty() && undelivered.is_empty() {
            return Some(0);
        }
        if self.tx.is_closed() {
            return None;
        }
        let flows = events.len();
        let size = undelivered.len() + flows;
        if self.queued.load(Ordering::Relaxed) + size > self.limit {
            // No room: losses already undelivered stay there; these flows join them.
            if flows > 0 {
                note_loss(&mut undelivered, LossSource::ClientQueue, flows as u64);
                self.stats.events_lost.fetch_add(flows as u64, Ordering::Relaxed);
            }
            return Some(flows as u64);
        }
        let mut batch = Vec::with_capacity(size);
        batch.extend(undelivered.drain(..).map(Event::Lost));
        batch.extend(events);
        self.queued.fetch_add(size, Ordering::Relaxed);
        self.stats.events_queued.fetch_add(flows as u64, Ordering::Relaxed);
        self.tx.send(batch).ok().map(|()| 0)
    }
}

struct Inner {
    history: History,
    slots: Vec<Arc<Slot>>,
    next_id: u64,
}

/// The fan-out point between the event pipeline and the subscribers. Its lock guards only the history
/// and the list of subscribers: filtering and queueing happen outside it, so neither the reader nor a
/// `status` request waits for subscribers' filters.
pub struct Hub {
    inner: Mutex<Inner>,
    config: HubConfig,
    queue_losses: AtomicU64,
}

/// A live subscription. Dropping it unsubscribes.
pub struct Subscriber {
    pub id: u64,
    /// Matching flows from history, sent before anything from `rx`.
    pub initial: Vec<Event>,
    /// Live batches; `None` when the subscription did not ask to follow.
    pub rx: Option<LiveEvents>,
    pub stats: Arc<SubscriberStats>,
    hub: Arc<Hub>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

impl Hub {
    pub fn new(config: HubConfig) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner { history: History::new(config.history), slots: Vec::new(), next_id: 1 }),
            config,
            queue_losses: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a subscriber. History and registration happen under one lock, so the subscriber sees
    /// no gap and no duplicate between its history and its live flows.
    pub fn subscribe(self: &Arc<Self>, subscription: &Subscription) -> Subscriber {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let initial = inner
            .history
            .last_matching(subscription.last as usize, &subscription.allow, &subscription.deny)
            .into_iter()
            .map(Event::Flow)
            .collect();
        let stats = Arc::new(SubscriberStats::default());
        let rx = subscription.follow.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            inner.slots.push(Arc::new(Slot {
                id,
                filters: FilterSet::compile(&subscription.allow, &subscription.deny),
                tx,
                queued: Arc::clone(&queued),
                limit: self.config.queue_events.max(1),
                undelivered: Mutex::new(Vec::new()),
                stats: Arc::clone(&stats),
            }));
            LiveEvents { rx, queued, paced_at: None }
        });
        Subscriber { id, initial, rx, stats, hub: Arc::clone(self) }
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().slots.retain(|s| s.id != id);
    }

    /// The subscribers now, for a delivery outside the lock.
    fn slots(&self) -> Vec<Arc<Slot>> {
        self.lock().slots.clone()
    }

    /// Drops subscribers whose receiving end is gone.
    fn forget(&self, gone: &[u64]) {
        if !gone.is_empty() {
            self.lock().slots.retain(|s| !gone.contains(&s.id));
        }
    }

    /// Publishes one batch of flows from the pipeline: into history, and to every subscriber whose
    /// filters they pass, as one queued batch per subscriber. The lock is held only to add the batch to
    /// the history and to take the list of subscribers (together, so a new subscriber gets this batch
    /// either in its history or live, never both, never neither); filters run after it is released.
    pub fn publish(&self, flows: &[Arc<Flow>]) {
        if flows.is_empty() {
            return;
        }
        let slots = {
            let mut inner = self.lock();
            for flow in flows {
                inner.history.push(Arc::clone(flow));
            }
            inner.slots.clone()
        };
        let mut gone = Vec::new();
        for slot in &slots {
            let events: Vec<Event> =
                flows.iter().filter(|f| slot.filters.matches(f)).map(|f| Event::Flow(Arc::clone(f))).collect();
            match slot.deliver(events, None) {
                Some(lost) => {
                    self.queue_losses.fetch_add(lost, Ordering::Relaxed);
                }
                None => gone.push(slot.id),
            }
        }
        self.forget(&gone);
    }

    /// Tells every subscriber that `count` events were lost before reaching the hub.
    pub fn publish_loss(&self, source: LossSource, count: u64) {
        if count == 0 {
            return;
        }
        let gone: Vec<u64> = self
            .slots()
            .iter()
            .filter(|s| s.deliver(Vec::new(), Some((source, count))).is_none())
            .map(|s| s.id)
            .collect();
        self.forget(&gone);
    }

    /// Delivers losses still waiting for room in their subscriber's queue (called when no new flows
    /// arrived, so a loss is not held back until the next flow).
    pub fn flush_losses(&self) {
        let gone: Vec<u64> = self
            .slots()
            .iter()
            .filter(|s| !s.undelivered().is_empty())
            .filter(|s| s.deliver(Vec::new(), None).is_none())
            .map(|s| s.id)
            .collect();
        self.forget(&gone);
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.lock().slots.len()
    }

    /// Events dropped from subscriber queues, all subscribers together, since start.
    pub fn queue_losses(&self) -> u64 {
        self.queue_losses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use flowgate_proto::{filter::FlowFilter, flow::fixtures::flow_between};

    use super::*;

    fn flows(n: u16, src: u16, dst: u16) -> Vec<Arc<Flow>> {
        (0..n).map(|i| Arc::new(flow_between(src, dst, 1000 + i))).collect()
    }

    fn drain(rx: &mut LiveEvents) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            out.extend(batch);
        }
        out
    }

    #[test]
    fn a_paced_subscriber_takes_a_lone_batch_at_once_and_then_one_per_interval() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let hub = Hub::new(HubConfig::default());
        let follow = Subscription { follow: true, ..Default::default() };
        let mut sub = hub.subscribe(&follow);
        let rx = sub.rx.as_mut().unwrap();
        rt.block_on(async {
            hub.publish(&flows(1, 1, 2));
            let first = tokio::time::timeout(COALESCE / 2, rx.recv_paced()).await;
            assert_eq!(first.expect("a lone batch is taken at once").unwrap().len(), 1);
            let taken = std::time::Instant::now();
            hub.publish(&flows(2, 1, 2));
            hub.publish(&flows(3, 1, 2));
            // The next one waits out the interval (a sleep never ends early), and what piled up is there.
            assert_eq!(rx.recv_paced().await.unwrap().len(), 2);
            assert!(taken.elapsed() >= COALESCE, "taken {:?} after the last", taken.elapsed());
            assert_eq!(drain(rx).len(), 3);
        });
    }

    #[test]
    fn each_subscriber_gets_only_its_flows() {
        let hub = Hub::new(HubConfig::default());
        let only = |id| Subscription {
            allow: vec![FlowFilter { related_to: vec![id], ..Default::default() }],
            ..Default::default()
        };
        let mut a = hub.subscribe(&only(1));
        let mut b = hub.subscribe(&only(3));
        hub.publish(&flows(5, 1, 2));
        hub.publish(&flows(2, 3, 4));
        assert_eq!(drain(a.rx.as_mut().unwrap()).len(), 5);
        assert_eq!(drain(b.rx.as_mut().unwrap()).len(), 2);
    }

    #[test]
    fn a_full_queue_loses_only_its_own_events_and_is_told_in_order() {
        let hub = Hub::new(HubConfig { history: 16, queue_events: 20 });
        let mut slow = hub.subscribe(&Subscription::default());
        let mut fast = hub.subscribe(&Subscription::default());
        for _ in 0..5 {
            hub.publish(&flows(10, 1, 2));
            drain(fast.rx.as_mut().unwrap());
        }
        // slow's queue took 20 flows and lost the other 30.
        assert_eq!(slow.stats.events_lost.load(Ordering::Relaxed), 30);
        assert_eq!(fast.stats.events_lost.load(Ordering::Relaxed), 0);
        let first = drain(slow.rx.as_mut().unwrap());
        assert_eq!(first.len(), 20);
        // Once it reads again, the loss arrives before the next flows.
        hub.publish(&flows(1, 1, 2));
        let next = drain(slow.rx.as_mut().unwrap());
        assert_eq!(next[0], Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 30 }));
        assert!(matches!(next[1], Event::Flow(_)));
        assert_eq!(hub.queue_losses(), 30);
    }

    #[test]
    fn a_pending_loss_is_delivered_without_waiting_for_new_flows() {
        let hub = Hub::new(HubConfig { history: 16, queue_events: 3 });
        let mut slow = hub.subscribe(&Subscription::default());
        hub.publish(&flows(3, 1, 2));
        hub.publish(&flows(4, 1, 2));
        assert_eq!(drain(slow.rx.as_mut().unwrap()).len(), 3);
        hub.flush_losses();
        assert_eq!(
            drain(slow.rx.as_mut().unwrap()),
            vec![Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 4 })]
        );
        hub.flush_losses();
        assert!(drain(slow.rx.as_mut().unwrap()).is_empty(), "told once");
    }

    #[test]
    fn kernel_loss_reaches_every_subscriber() {
        let hub = Hub::new(HubConfig::default());
        let mut a = hub.subscribe(&Subscription::default());
        let mut b = hub.subscribe(&Subscription::default());
        hub.publish_loss(LossSource::KernelBuffer, 7);
        let lost = Event::Lost(LostEvents { source: LossSource::KernelBuffer, count: 7 });
        assert_eq!(drain(a.rx.as_mut().unwrap()), vec![lost.clone()]);
        assert_eq!(drain(b.rx.as_mut().unwrap()), vec![lost]);
    }

    #[test]
    fn history_then_live_without_gap() {
        let hub = Hub::new(HubConfig { history: 4, queue_events: 8 });
        hub.publish(&flows(6, 1, 2));
        let mut sub = hub.subscribe(&Subscription { last: 3, ..Default::default() });
        assert_eq!(sub.initial.len(), 3);
        let Event::Flow(last) = &sub.initial[2] else { panic!() };
        assert_eq!(last.source_port, 1005);
        hub.publish(&flows(1, 1, 2));
        assert_eq!(drain(sub.rx.as_mut().unwrap()).len(), 1);
    }

    #[test]
    fn dropped_subscriber_is_removed() {
        let hub = Hub::new(HubConfig::default());
        let sub = hub.subscribe(&Subscription::default());
        assert_eq!(hub.subscribers(), 1);
        drop(sub);
        assert_eq!(hub.subscribers(), 0);
        let mut sub = hub.subscribe(&Subscription::default());
        drop(sub.rx.take());
        hub.publish(&flows(1, 1, 2));
        assert_eq!(hub.subscribers(), 0, "a closed queue is noticed on the next publish");
        drop(sub);
    }
}
