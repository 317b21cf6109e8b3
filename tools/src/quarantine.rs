//! Quarantine files: NDJSON, one stored event per line exactly as `GET /v1/orders/{id}/events`
//! serves it (the event plus `lsn` and `received_at`). `show` summarises one; `reingest` sends its
//! events back with their original `event_id`s (see [`crate::input::ReadOptions`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use serde::Serialize;

use crate::Error;
use crate::input::{ReadOptions, read_batches};

/// Distinct order ids kept; a file with more is reported as "more than" this.
pub const ORDERS_MAX: usize = 100_000;
/// Unreadable lines listed; beyond, counted.
pub const BAD_LINES_LISTED_MAX: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub events: u64,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    pub orders: BTreeSet<String>,
    /// More distinct orders than [`ORDERS_MAX`]: `orders` holds the first ones.
    pub orders_truncated: bool,
    pub statuses: BTreeMap<String, u64>,
    /// Lines that are not stored events: (line number, why).
    pub bad_lines: Vec<(u64, String)>,
    pub bad_line_count: u64,
}

/// Reads a quarantine file and summarises it.
pub fn summarize<R: BufRead>(reader: R) -> Result<Summary, Error> {
    let mut s = Summary::default();
    let opts = ReadOptions {
        batch_size: 1_000,
        strip_stored_fields: false,
        max_line_bytes: crate::input::LINE_BYTES_MAX,
    };
    let bad = |s: &mut Summary, line: u64, why: String| {
        s.bad_line_count += 1;
        if s.bad_lines.len() < BAD_LINES_LISTED_MAX {
            s.bad_lines.push((line, why));
        }
    };
    read_batches(reader, &opts, &mut |_, items| {
        for item in items {
            let v = match item.event {
                Ok(v) => v,
                Err(why) => {
                    bad(&mut s, item.position, why);
                    continue;
                }
            };
            let lsn = v.get("lsn").and_then(serde_json::Value::as_u64);
            let order = v.get("order_id").and_then(serde_json::Value::as_str);
            let status = v.get("status").and_then(serde_json::Value::as_str);
            let (Some(lsn), Some(order), Some(status)) = (lsn, order, status) else {
                bad(
                    &mut s,
                    item.position,
                    "not a stored event (needs lsn, order_id and status)".into(),
                );
                continue;
            };
            s.events += 1;
            s.first_lsn = Some(s.first_lsn.map_or(lsn, |f| f.min(lsn)));
            s.last_lsn = Some(s.last_lsn.map_or(lsn, |l| l.max(lsn)));
            if s.orders.len() < ORDERS_MAX {
                s.orders.insert(order.to_owned());
            } else if !s.orders.contains(order) {
                s.orders_truncated = true;
            }
            *s.statuses.entry(status.to_owned()).or_default() += 1;
        }
        true
    })?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_file() {
        let text = r#"{"lsn":12,"event_id":"a","order_id":"o-2","status":"picked","occurred_at":"t","received_at":"t"}
{"lsn":10,"event_id":"b","order_id":"o-1","status":"created","occurred_at":"t","received_at":"t"}
{"event_id":"c"}
{"lsn":11,"event_id":"d","order_id":"o-1","status":"picked","occurred_at":"t","received_at":"t"}
"#;
        let s = summarize(text.as_bytes()).unwrap();
        assert_eq!(s.events, 3);
        assert_eq!((s.first_lsn, s.last_lsn), (Some(10), Some(12)));
        assert_eq!(s.orders.iter().collect::<Vec<_>>(), ["o-1", "o-2"]);
        assert_eq!(s.statuses["picked"], 2);
        assert_eq!(s.bad_line_count, 1);
        assert_eq!(s.bad_lines[0].0, 3);
    }
}
