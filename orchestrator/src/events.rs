//! The event log: what an operator cares about (a worker started, caught up,
//! crashed, a promotion, a scaling decision, a lost broker or ZooKeeper
//! session), kept as the last [`EVENTS_KEPT`] events and broadcast to live
//! subscribers (the status page's server-sent events).
//!
//! Invariant: event ids increase by one per event in this process, the ring
//! holds them oldest first, and a subscriber sees every event emitted after
//! it subscribed, in order (or learns that it lagged).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;
use wire::status::{Event, EventKind, EVENTS_KEPT};

pub struct Events {
    /// The ring and the next id, under one lock so ids and order agree.
    ring: Mutex<(VecDeque<Event>, u64)>,
    live: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events { ring: Mutex::new((VecDeque::with_capacity(EVENTS_KEPT), 1)), live: broadcast::channel(EVENTS_KEPT).0 }
    }
}

impl Events {
    /// Record an event now and hand it to every subscriber.
    pub fn emit(&self, what: EventKind) -> Event {
        let mut ring = self.ring.lock().expect("event ring lock");
        let event = Event { at_ms: wire::now_ms(), id: ring.1, what };
        ring.1 += 1;
        if ring.0.len() == EVENTS_KEPT {
            ring.0.pop_front();
        }
        ring.0.push_back(event.clone());
        // Sent under the lock, so subscribers see ids in order; no subscriber is fine.
        let _ = self.live.send(event.clone());
        event
    }

    /// The kept events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.ring.lock().expect("event ring lock").0.iter().cloned().collect()
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_latest_in_order_and_feeds_subscribers() {
        let events = Events::default();
        let mut sub = events.subscribe();
        for _ in 0..EVENTS_KEPT + 5 {
            events.emit(EventKind::BrokerRegained);
        }
        let kept = events.recent();
        assert_eq!(kept.len(), EVENTS_KEPT);
        assert_eq!(kept.first().unwrap().id, 6);
        assert_eq!(kept.last().unwrap().id, EVENTS_KEPT as u64 + 5);
        assert!(kept.windows(2).all(|w| w[1].id == w[0].id + 1));
        // The subscriber lagged (the channel holds EVENTS_KEPT), then reads on in order.
        let mut ids = Vec::new();
        loop {
            match sub.try_recv() {
                Ok(e) => ids.push(e.id),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        assert_eq!(ids.last(), Some(&(EVENTS_KEPT as u64 + 5)));
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    }
}
