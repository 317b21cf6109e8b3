//! A deterministic generator of delivery events: orders walk through a realistic lifecycle, carry
//! locations, etas and attributes, and their events spread over a span of event time.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use trackstore_engine::{Attributes, Event, Location, Status, Timestamp};

/// The statuses an order passes through, in order; long orders repeat the transit part (location pings).
const LIFECYCLE: [Status; 10] = [
    Status::Created,
    Status::Allocated,
    Status::Picking,
    Status::Picked,
    Status::Dispatched,
    Status::InTransit,
    Status::OutForDelivery,
    Status::AttemptedDelivery,
    Status::OutForDelivery,
    Status::Delivered,
];

/// Shape of a generated store.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Events per order.
    pub events_per_order: u64,
    /// Event time of the first order's first event.
    pub start: Timestamp,
    /// Event time spread of the orders' start times.
    pub span_ms: i64,
    pub seed: u64,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            events_per_order: 20,
            // 2026-11-01T00:00:00Z: in the past, so nothing is "in the future".
            start: Timestamp::from_millis(1_793_491_200_000).expect("in range"),
            span_ms: 7 * 86_400_000,
            seed: 42,
        }
    }
}

impl Shape {
    pub fn order_id(&self, order: u64) -> String {
        format!("ord-{order:09}")
    }

    /// The `step`-th event of order `order` (global event number `order * events_per_order + step`).
    pub fn event(&self, order: u64, step: u64) -> Event {
        let mut rng =
            SmallRng::seed_from_u64(self.seed ^ order.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step);
        let order_start = self.start.as_millis()
            + (order.wrapping_mul(2_654_435_761) % self.span_ms as u64) as i64;
        let at = order_start + step as i64 * 90_000 + rng.random_range(0..60_000);
        let status = if step as usize >= LIFECYCLE.len() - 1 && step + 1 < self.events_per_order {
            Status::InTransit
        } else if step + 1 == self.events_per_order {
            Status::Delivered
        } else {
            LIFECYCLE[step as usize]
        };
        let mut attributes = Map::new();
        attributes.insert(
            "depot".into(),
            Value::from(format!("depot-{:02}", order % 40)),
        );
        attributes.insert(
            "slot".into(),
            Value::from(format!("{:02}-{:02}", 8 + order % 10, 10 + order % 10)),
        );
        if step == 0 {
            attributes.insert("crates".into(), Value::from(1 + order % 6));
        }
        let carrier = format!("van-{:03}", order % 300);
        Event {
            event_id: format!("evt-{order:09}-{step:03}"),
            order_id: self.order_id(order),
            status,
            occurred_at: Timestamp::from_millis(at).expect("in range"),
            source: Some(if step < 4 {
                "dms".into()
            } else {
                format!("carrier:{}", &carrier)
            }),
            carrier: (step >= 1).then_some(carrier),
            reason: (status == Status::AttemptedDelivery).then(|| "no_one_home".into()),
            location: (step >= 4).then(|| Location {
                lat: 51.3 + rng.random_range(0.0..0.4),
                lon: -0.4 + rng.random_range(0.0..0.6),
                name: None,
            }),
            eta: (step >= 4)
                .then(|| Timestamp::from_millis(order_start + 4 * 3_600_000).expect("in range")),
            attributes: Some(Attributes::from_map(&attributes)),
        }
    }

    /// Event number `n` of a store filled order after order.
    pub fn nth(&self, n: u64) -> Event {
        self.event(n / self.events_per_order, n % self.events_per_order)
    }

    /// Event number `n` of a store filled as a delivery day arrives: `in_flight` orders at a time
    /// (0: order after order, as `nth`), each step of them in a scattered order before the next
    /// step, so that consecutive events (and a batch's keys) belong to unrelated orders. Every
    /// order still gets its events generated in step order (several concurrent writers can swap
    /// neighbouring steps, as late events do).
    pub fn nth_interleaved(&self, n: u64, in_flight: u64) -> Event {
        if in_flight == 0 {
            return self.nth(n);
        }
        let per_block = in_flight * self.events_per_order;
        let (block, i) = (n / per_block, n % per_block);
        let (step, slot) = (i / in_flight, i % in_flight);
        // A bijection of 0..in_flight when the multiplier is coprime to it: see `scatter`.
        self.event(block * in_flight + scatter(slot, in_flight), step)
    }
}

/// `slot * 7919 mod n`: a bijection of `0..n`, since 7,919 is prime and so coprime to every `n` it
/// does not divide; for the `n` it divides, the identity. (It scatters nothing either for the few
/// `n` with 7919 ≡ 1 mod n: 2, 37, 74, 107, ...; use an in-flight count like 100,000.)
fn scatter(slot: u64, n: u64) -> u64 {
    const PRIME: u64 = 7_919;
    if n.is_multiple_of(PRIME) {
        slot
    } else {
        (slot as u128 * PRIME as u128 % n as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_fill_gives_every_order_its_events_in_step_order() {
        let shape = Shape {
            events_per_order: 4,
            ..Shape::default()
        };
        let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for n in 0..2 * 10 * 4 {
            let e = shape.nth_interleaved(n, 10);
            seen.entry(e.order_id).or_default().push(e.event_id);
        }
        assert_eq!(seen.len(), 20);
        for (order, ids) in &seen {
            let want: Vec<_> = (0..4)
                .map(|step| shape.event(order[4..].parse().expect("n"), step).event_id)
                .collect();
            assert_eq!(ids, &want, "{order}");
        }
        // Consecutive events belong to orders that are not neighbours (7919 mod 10 = 9).
        assert_eq!(shape.nth_interleaved(0, 10).order_id, shape.order_id(0));
        assert_eq!(shape.nth_interleaved(1, 10).order_id, shape.order_id(9));
        assert_eq!(shape.nth_interleaved(2, 10).order_id, shape.order_id(8));
        assert_eq!(shape.nth_interleaved(7, 0), shape.nth(7));
    }

    #[test]
    fn events_are_valid_and_deterministic() {
        let shape = Shape::default();
        let now = Timestamp::now();
        for n in 0..200 {
            let e = shape.nth(n);
            e.validate(now)
                .unwrap_or_else(|err| panic!("event {n}: {err}"));
            assert_eq!(e, shape.nth(n));
        }
        assert_eq!(shape.event(3, 19).status, Status::Delivered);
    }
}
