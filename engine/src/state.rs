//! The read model: the current state of one order, and the rule that folds an event into it.
//!
//! DESIGN.md §1: `status` comes from the event with the greatest `occurred_at` (ties: greatest LSN);
//! `carrier`, `location` and `eta` are the latest non-null values by the same order. So a late event for
//! an earlier moment never overwrites what a newer event set.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::event::{Location, Lsn, Status, StoredEvent};
use crate::keys::TimePos;
use crate::time::Timestamp;

/// A value and the position (event time, LSN) of the event that set it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped<T> {
    pub value: T,
    pub pos: TimePos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OrderState {
    pub order_id: String,
    pub status: Stamped<Status>,
    /// `received_at` of the latest event applied (in LSN order).
    pub updated_at: Timestamp,
    pub event_count: u64,
    pub last_lsn: Lsn,
    pub carrier: Option<Stamped<String>>,
    pub location: Option<Stamped<Location>>,
    pub eta: Option<Stamped<Timestamp>>,
}

fn newer<T>(slot: &mut Option<Stamped<T>>, value: Option<&T>, pos: TimePos)
where
    T: Clone,
{
    if let Some(value) = value
        && slot.as_ref().is_none_or(|s| pos > s.pos)
    {
        *slot = Some(Stamped {
            value: value.clone(),
            pos,
        });
    }
}

impl OrderState {
    /// The state of an order whose first event (in LSN order) is `first`.
    pub fn new(first: &StoredEvent) -> OrderState {
        let e = &first.event;
        let pos = TimePos {
            at: e.occurred_at,
            lsn: first.lsn,
        };
        OrderState {
            order_id: e.order_id.clone(),
            status: Stamped {
                value: e.status,
                pos,
            },
            updated_at: first.received_at,
            event_count: 1,
            last_lsn: first.lsn,
            carrier: e.carrier.clone().map(|value| Stamped { value, pos }),
            location: e.location.clone().map(|value| Stamped { value, pos }),
            eta: e.eta.map(|value| Stamped { value, pos }),
        }
    }

    /// Folds in an event with a greater LSN than any applied so far.
    pub fn apply(&mut self, stored: &StoredEvent) {
        debug_assert!(
            stored.lsn > self.last_lsn,
            "events are applied in LSN order"
        );
        let e = &stored.event;
        let pos = TimePos {
            at: e.occurred_at,
            lsn: stored.lsn,
        };
        if pos > self.status.pos {
            self.status = Stamped {
                value: e.status,
                pos,
            };
        }
        newer(&mut self.carrier, e.carrier.as_ref(), pos);
        newer(&mut self.location, e.location.as_ref(), pos);
        newer(&mut self.eta, e.eta.as_ref(), pos);
        self.updated_at = stored.received_at;
        self.event_count += 1;
        self.last_lsn = stored.lsn;
    }

    /// The API's order object (see its `Serialize`), as a value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an order serialises to JSON")
    }
}

/// The API's order object (API.md, `GET /v1/orders/{order_id}`), keys in byte order like
/// `StoredEvent`'s, written straight to the output.
impl Serialize for OrderState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(c) = &self.carrier {
            m.serialize_entry("carrier", &c.value)?;
        }
        if let Some(eta) = &self.eta {
            m.serialize_entry("eta", &eta.value)?;
        }
        m.serialize_entry("event_count", &self.event_count)?;
        m.serialize_entry("last_lsn", &self.last_lsn.0)?;
        if let Some(l) = &self.location {
            m.serialize_entry("location", &l.value)?;
        }
        m.serialize_entry("order_id", &self.order_id)?;
        m.serialize_entry("status", self.status.value.as_str())?;
        m.serialize_entry("status_at", &self.status.pos.at)?;
        m.serialize_entry("updated_at", &self.updated_at)?;
        m.end()
    }
}

/// Store-wide counters, kept up to date on every commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub orders: u64,
    pub events: u64,
    pub last_lsn: Lsn,
    /// Orders currently in each status, indexed by `Status::to_byte() - 1`.
    pub by_status: [u64; 12],
}

impl Stats {
    pub fn orders_in(&self, status: Status) -> u64 {
        self.by_status[usize::from(status.to_byte() - 1)]
    }

    pub(crate) fn orders_in_mut(&mut self, status: Status) -> &mut u64 {
        &mut self.by_status[usize::from(status.to_byte() - 1)]
    }

    /// The API's stats object (API.md, `GET /v1/stats`).
    pub fn to_json(&self) -> Value {
        let by_status: Map<String, Value> = Status::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), self.orders_in(*s).into()))
            .collect();
        serde_json::json!({
            "orders": self.orders,
            "events": self.events,
            "last_lsn": self.last_lsn.0,
            "by_status": by_status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn ev(lsn: u64, at_ms: i64, status: Status, carrier: Option<&str>) -> StoredEvent {
        StoredEvent {
            lsn: Lsn(lsn),
            received_at: Timestamp::from_millis(1_000_000 + lsn as i64).expect("in range"),
            event: Event {
                event_id: format!("e{lsn}"),
                order_id: "o".into(),
                status,
                occurred_at: Timestamp::from_millis(at_ms).expect("in range"),
                source: None,
                carrier: carrier.map(str::to_owned),
                reason: None,
                location: None,
                eta: None,
                attributes: None,
            },
        }
    }

    #[test]
    fn a_late_event_does_not_overwrite_a_newer_status_or_carrier() {
        let mut s = OrderState::new(&ev(1, 100, Status::Created, Some("van-1")));
        s.apply(&ev(2, 300, Status::Delivered, None));
        s.apply(&ev(3, 200, Status::OutForDelivery, Some("van-2")));
        assert_eq!(s.status.value, Status::Delivered);
        assert_eq!(s.carrier.as_ref().map(|c| c.value.as_str()), Some("van-2"));
        s.apply(&ev(4, 150, Status::Picked, Some("van-3")));
        assert_eq!(s.carrier.as_ref().map(|c| c.value.as_str()), Some("van-2"));
        assert_eq!((s.event_count, s.last_lsn), (4, Lsn(4)));
        assert_eq!(s.updated_at.as_millis(), 1_000_004);
    }

    #[test]
    fn equal_event_times_are_broken_by_lsn() {
        let mut s = OrderState::new(&ev(1, 100, Status::Created, None));
        s.apply(&ev(2, 100, Status::Cancelled, None));
        assert_eq!(s.status.value, Status::Cancelled);
    }
}

#[cfg(test)]
mod json_tests {
    use serde_json::json;

    use super::*;
    use crate::event::Event;

    fn full_event() -> StoredEvent {
        let at = |s| Timestamp::parse(s).expect("valid");
        let mut attributes = Map::new();
        attributes.insert("slot".into(), json!("18-20"));
        attributes.insert("bags".into(), json!(3));
        StoredEvent {
            lsn: Lsn(42),
            received_at: at("2026-12-07T10:00:01.5Z"),
            event: Event {
                event_id: "e-1".into(),
                order_id: "o-\"1\"".into(),
                status: Status::OutForDelivery,
                occurred_at: at("2026-12-07T11:00:00+01:00"),
                source: Some("scanner".into()),
                carrier: Some("van-7".into()),
                reason: Some("late".into()),
                location: Some(Location {
                    lat: 51.5,
                    lon: -0.125,
                    name: Some("depot".into()),
                }),
                eta: Some(at("2026-12-07T12:30:00Z")),
                attributes: Some(crate::event::Attributes::from_map(&attributes)),
            },
        }
    }

    /// The exact bytes of the API's event and order objects: every field, keys in byte order, times
    /// in UTC with milliseconds, text escaped; and `to_json` holds the same value.
    #[test]
    fn events_and_orders_serialise_to_the_api_objects() {
        let e = full_event();
        let text = serde_json::to_string(&e).expect("serialises");
        assert_eq!(
            text,
            r#"{"attributes":{"bags":3,"slot":"18-20"},"carrier":"van-7","eta":"2026-12-07T12:30:00.000Z","event_id":"e-1","location":{"lat":51.5,"lon":-0.125,"name":"depot"},"lsn":42,"occurred_at":"2026-12-07T10:00:00.000Z","order_id":"o-\"1\"","reason":"late","received_at":"2026-12-07T10:00:01.500Z","source":"scanner","status":"out_for_delivery"}"#
        );
        assert_eq!(e.to_json(), serde_json::from_str::<Value>(&text).unwrap());

        let mut bare = e.clone();
        bare.event = Event {
            source: None,
            carrier: None,
            reason: None,
            location: None,
            eta: None,
            attributes: None,
            ..bare.event
        };
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"event_id":"e-1","lsn":42,"occurred_at":"2026-12-07T10:00:00.000Z","order_id":"o-\"1\"","received_at":"2026-12-07T10:00:01.500Z","status":"out_for_delivery"}"#
        );
        assert_eq!(
            serde_json::to_string(&e.event.to_json()).unwrap(),
            r#"{"attributes":{"bags":3,"slot":"18-20"},"carrier":"van-7","eta":"2026-12-07T12:30:00.000Z","event_id":"e-1","location":{"lat":51.5,"lon":-0.125,"name":"depot"},"occurred_at":"2026-12-07T10:00:00.000Z","order_id":"o-\"1\"","reason":"late","source":"scanner","status":"out_for_delivery"}"#
        );

        let order = OrderState::new(&e);
        let text = serde_json::to_string(&order).unwrap();
        assert_eq!(
            text,
            r#"{"carrier":"van-7","eta":"2026-12-07T12:30:00.000Z","event_count":1,"last_lsn":42,"location":{"lat":51.5,"lon":-0.125,"name":"depot"},"order_id":"o-\"1\"","status":"out_for_delivery","status_at":"2026-12-07T10:00:00.000Z","updated_at":"2026-12-07T10:00:01.500Z"}"#
        );
        assert_eq!(
            order.to_json(),
            serde_json::from_str::<Value>(&text).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&OrderState::new(&bare)).unwrap(),
            r#"{"event_count":1,"last_lsn":42,"order_id":"o-\"1\"","status":"out_for_delivery","status_at":"2026-12-07T10:00:00.000Z","updated_at":"2026-12-07T10:00:01.500Z"}"#
        );
    }
}
