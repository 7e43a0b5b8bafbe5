//! `rideshare-ctl events`: the orchestrator's events one per line, and the
//! pieces of `--follow` that need no network: a server-sent-events parser fed
//! whatever chunks arrive, and the rule that prints each event once across
//! reconnects.
//!
//! Invariant: an event line is `<UTC time>  <kind>  key=value ...` with every
//! field the event carries (worker, pid and role first, the rest by name), so
//! a kind added to `wire::status::EventKind` prints without a change here.

use chrono::{DateTime, Utc};
use serde_json::Value;
use wire::status::{ClusterStatus, Event};

/// `2023-11-14 22:13:57.123Z  crashed  worker=w-1 pid=4242 role=master detected=crash_endpoint`
pub fn event_line(e: &Event) -> String {
    let v = serde_json::to_value(e).unwrap_or(Value::Null);
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("?");
    let mut fields: Vec<(&String, &Value)> =
        v.as_object().into_iter().flatten().filter(|(k, _)| !matches!(k.as_str(), "at_ms" | "id" | "kind")).collect();
    fields.sort_by_key(|(k, _)| (FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()), k.as_str()));
    let mut line = format!("{}  {kind}", time(e.at_ms));
    for (k, v) in fields {
        line.push_str(&format!(" {k}={}", value(v)));
    }
    line
}

/// The fields that identify a worker lead every line that has them.
const FIRST: [&str; 3] = ["worker", "pid", "role"];

fn value(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('"') => s.clone(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmmZ` (UTC).
pub fn time(at_ms: u64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(at_ms as i64) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
        None => format!("@{at_ms}ms"),
    }
}

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field; `message` when absent.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    pub id: Option<String>,
}

/// An incremental `text/event-stream` parser: feed it chunks as they arrive
/// (split anywhere, even inside a UTF-8 character); it returns each event
/// once its blank line has arrived. Comments (`:keep-alive`) are skipped.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        self.pending.extend_from_slice(chunk);
        let mut out = vec![];
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push(SseMessage {
                        event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                        data,
                        id: self.id.clone(),
                    });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, val) = line.split_once(':').unwrap_or((line, ""));
            let val = val.strip_prefix(' ').unwrap_or(val);
            match field {
                "event" => self.event = Some(val.to_owned()),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(val);
                    }
                    None => self.data = Some(val.to_owned()),
                },
                "id" => self.id = Some(val.to_owned()),
                _ => {} // retry and unknown fields: nothing to do
            }
        }
        out
    }
}

/// What a feed message carries: events (one, or a status snapshot's recent
/// ones); anything else (unknown shape) carries none.
pub fn events_in(msg: &SseMessage) -> Vec<Event> {
    if let Ok(e) = serde_json::from_str::<Event>(&msg.data) {
        return vec![e];
    }
    if let Ok(s) = serde_json::from_str::<ClusterStatus>(&msg.data) {
        return s.events;
    }
    vec![]
}

/// Prints each event once: the recent events printed first, the feed's
/// replay after a reconnect and status snapshots all repeat events already
/// seen. Ids increase per orchestrator process and restart with a new one,
/// whose events are later in time: an event is new when its id is higher
/// than the last printed, or it happened after it.
#[derive(Debug, Default)]
pub struct Seen {
    last: Option<(u64, u64)>,
}

impl Seen {
    /// Whether `e` is new (and remember it as the last printed if so).
    pub fn first_time(&mut self, e: &Event) -> bool {
        let new = match self.last {
            None => true,
            Some((id, at_ms)) => e.id > id || e.at_ms > at_ms,
        };
        if new {
            self.last = Some((e.id, e.at_ms));
        }
        new
    }

    /// The id of the last event printed (the feed's `Last-Event-ID`).
    pub fn last_id(&self) -> Option<u64> {
        self.last.map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::status::{EventKind, WorkerRole};

    fn ev(id: u64, at_ms: u64, what: EventKind) -> Event {
        Event { at_ms, id, what }
    }

    #[test]
    fn each_kind_prints_on_one_line_with_its_fields() {
        let at = 1_700_000_037_123;
        for (what, text) in [
            (
                EventKind::Crashed {
                    worker: "w-1".into(),
                    pid: 4242,
                    role: WorkerRole::Master,
                    detected: "crash_endpoint".into(),
                },
                "2023-11-14 22:13:57.123Z  crashed worker=w-1 pid=4242 role=master detected=crash_endpoint",
            ),
            (
                EventKind::Promoted { worker: "w-2".into(), pid: 7, epoch: 4, seq: None, failover_ms: 31 },
                "2023-11-14 22:13:57.123Z  promoted worker=w-2 pid=7 epoch=4 failover_ms=31 seq=-",
            ),
            (
                EventKind::Scaled { window: 3, reads: 41, before: 1, after: 3, reason: None },
                "2023-11-14 22:13:57.123Z  scaled after=3 before=1 reads=41 window=3",
            ),
            (
                EventKind::Scaled { window: 4, reads: 9, before: 3, after: 1, reason: Some("idle".into()) },
                "2023-11-14 22:13:57.123Z  scaled after=1 before=3 reads=9 reason=idle window=4",
            ),
            (
                EventKind::BrokerLost { error: "connection reset by peer".into() },
                "2023-11-14 22:13:57.123Z  broker_lost error=\"connection reset by peer\"",
            ),
            (EventKind::ZookeeperRegained, "2023-11-14 22:13:57.123Z  zookeeper_regained"),
        ] {
            assert_eq!(event_line(&ev(1, at, what)), text);
        }
    }

    #[test]
    fn sse_chunks_split_anywhere_give_the_same_events() {
        let feed = "retry: 1000\n:keep-alive\n\nevent: event\nid: 7\ndata: {\"a\":\ndata: 1}\r\n\r\n\
                    data: caf\u{e9}\n\nevent: status\ndata: {}\n\n";
        let expected = vec![
            SseMessage { event: "event".into(), data: "{\"a\":\n1}".into(), id: Some("7".into()) },
            SseMessage { event: "message".into(), data: "caf\u{e9}".into(), id: Some("7".into()) },
            SseMessage { event: "status".into(), data: "{}".into(), id: Some("7".into()) },
        ];
        let whole = SseParser::default().push(feed.as_bytes());
        assert_eq!(whole, expected);
        let bytes = feed.as_bytes();
        for split in 1..bytes.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&bytes[..split]);
            got.extend(p.push(&bytes[split..]));
            assert_eq!(got, expected, "split at {split}");
        }
        // An event without its blank line is not dispatched yet.
        assert!(SseParser::default().push(b"data: x\n").is_empty());
    }

    #[test]
    fn feed_messages_carry_events_or_status_snapshots() {
        let e = ev(3, 10, EventKind::BrokerRegained);
        let msg = |data: String| SseMessage { event: "message".into(), data, id: None };
        assert_eq!(events_in(&msg(serde_json::to_string(&e).unwrap())), vec![e.clone()]);
        let mut s = crate::table::tests::two_workers();
        s.events = vec![e.clone(), ev(4, 11, EventKind::ZookeeperLost)];
        assert_eq!(events_in(&msg(serde_json::to_string(&s).unwrap())).len(), 2);
        assert!(events_in(&msg("not json".into())).is_empty());
    }

    #[test]
    fn each_event_is_printed_once_across_replays_and_restarts() {
        let mut seen = Seen::default();
        let kinds = || EventKind::BrokerRegained;
        let feed = [
            (ev(1, 100, kinds()), true),
            (ev(2, 150, kinds()), true),
            (ev(1, 100, kinds()), false), // replay after a reconnect
            (ev(2, 150, kinds()), false),
            (ev(3, 150, kinds()), true), // same millisecond, next id
            (ev(1, 900, kinds()), true), // a restarted orchestrator numbers from 1 again
            (ev(2, 950, kinds()), true),
            (ev(1, 900, kinds()), false),
        ];
        for (i, (e, new)) in feed.iter().enumerate() {
            assert_eq!(seen.first_time(e), *new, "event {i}: {e:?}");
        }
        assert_eq!(seen.last_id(), Some(2));
    }
}
