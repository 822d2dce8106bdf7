//! Lifecycle events: numbered, fanned out to every `GET /v1/events`
//! subscriber and logged to the daemon's stderr.
//!
//! Each subscriber has a bounded queue (`QUEUE` events); a subscriber that
//! falls that far behind is dropped (its stream ends) rather than letting
//! the daemon's memory grow. The last `HISTORY` events are kept so a new
//! subscriber can ask for what it missed (`?since=SEQ`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use rayos_api::{Event, EventKind, VmState};

const QUEUE: usize = 1024;
const HISTORY: usize = 256;

#[derive(Default)]
struct Inner {
    seq: u64,
    history: VecDeque<Event>,
    subscribers: Vec<SyncSender<Event>>,
}

/// The daemon's event fan-out: numbers events, keeps recent ones, and sends
/// each to every subscriber.
#[derive(Default)]
pub struct EventBus {
    inner: Mutex<Inner>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EventBus {
    /// Sends an event about VM `vm`, now in `state`, to every subscriber and
    /// logs it to stderr.
    pub fn emit(&self, vm: &str, event: EventKind, state: VmState, detail: impl Into<String>) {
        let detail = detail.into();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.seq += 1;
        let ev = Event {
            seq: g.seq,
            time_ms: now_ms(),
            vm: vm.to_string(),
            event,
            state,
            detail,
        };
        if ev.detail.is_empty() {
            eprintln!("rayosd: {} {} -> {}", ev.vm, ev.event, ev.state);
        } else {
            eprintln!(
                "rayosd: {} {} -> {}: {}",
                ev.vm, ev.event, ev.state, ev.detail
            );
        }
        g.subscribers.retain(|s| match s.try_send(ev.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        });
        if g.history.len() == HISTORY {
            g.history.pop_front();
        }
        g.history.push_back(ev);
    }

    /// A queue of events after `since` (kept history first, then live ones).
    pub fn subscribe(&self, since: Option<u64>) -> Receiver<Event> {
        let (tx, rx) = sync_channel(QUEUE);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = since {
            for ev in g.history.iter().filter(|e| e.seq > since) {
                let _ = tx.try_send(ev.clone());
            }
        }
        g.subscribers.push(tx);
        rx
    }

    /// Events still in the history, for tests and `?since=`.
    pub fn history(&self) -> Vec<Event> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.history.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_fanned_out_and_replayed() {
        let bus = EventBus::default();
        bus.emit("a", EventKind::Created, VmState::Stopped, "");
        let live = bus.subscribe(None);
        let replay = bus.subscribe(Some(0));
        bus.emit("a", EventKind::Starting, VmState::Starting, "cold");
        assert_eq!(live.recv().unwrap().seq, 2);
        assert_eq!(replay.recv().unwrap().event, EventKind::Created);
        assert_eq!(replay.recv().unwrap().event, EventKind::Starting);
        drop(live);
        bus.emit("a", EventKind::Started, VmState::Running, "");
        assert_eq!(bus.inner.lock().unwrap().subscribers.len(), 1);
    }
}
