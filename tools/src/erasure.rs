//! Checking an erasure receipt (`trackctl erasure check LSN ORDER_ID`): the store's record of the
//! erasure at an LSN, matched against the order id by the server (it keeps only a salted digest),
//! and what the order answers now. The caller fetches; this decides, so every verdict is tested
//! without a server.

use serde::Serialize;
use trackstore_client::ErasureRecord;

/// The order as it answers now, when it answers at all (not 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderNow {
    /// Events the order holds.
    pub events: u64,
    /// The LSN of its oldest event.
    pub first_lsn: u64,
}

/// What a receipt check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The erasure at the LSN was of the order, and the order answers 404.
    Valid,
    /// No erasure was logged at the LSN.
    NoErasure,
    /// The erasure at the LSN was of another order: the digest does not match the order id.
    OtherOrder,
    /// The erasure was of the order and events of the order were ingested after it. Legitimate
    /// (an order id can be used again), but the order exists again.
    Reingested(OrderNow),
    /// The erasure was of the order, yet an event of it older than the erasure is still served:
    /// the erasure did not remove everything.
    Incomplete(OrderNow),
}

impl Verdict {
    /// Decides from the record at `erasure_lsn` (None: no erasure there) and the order now (None:
    /// 404). `record` must come from a request that named the order, so that it says whether it
    /// matches; a record that does not say counts as not matching.
    pub fn of(erasure_lsn: u64, record: Option<&ErasureRecord>, now: Option<OrderNow>) -> Verdict {
        let Some(record) = record else {
            return Verdict::NoErasure;
        };
        if record.order_id_matches != Some(true) {
            return Verdict::OtherOrder;
        }
        match now {
            None => Verdict::Valid,
            // Erased events leave the log, so whatever the order holds now came after the erasure,
            // unless the erasure missed some.
            Some(o) if o.first_lsn > erasure_lsn => Verdict::Reingested(o),
            Some(o) => Verdict::Incomplete(o),
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::NoErasure => "no-erasure",
            Verdict::OtherOrder => "other-order",
            Verdict::Reingested(_) => "reingested",
            Verdict::Incomplete(_) => "incomplete",
        }
    }

    /// 0 valid; 3 valid but the order was ingested again (so that a script can tell this
    /// legitimate case from a bad receipt); 1 for a receipt that does not hold.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::Reingested(_) => 3,
            Verdict::NoErasure | Verdict::OtherOrder | Verdict::Incomplete(_) => 1,
        }
    }
}

/// The outcome of a check, as `--json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `valid`, `no-erasure`, `other-order`, `reingested` or `incomplete`.
    pub verdict: &'static str,
    /// Whether the check passed (exit code 0).
    pub ok: bool,
    /// [`Verdict::exit_code`].
    #[serde(skip)]
    pub exit_code: u8,
    pub message: String,
    pub lsn: u64,
    pub order_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<String>,
    /// Events the erasure removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_erased: Option<u64>,
    /// Events the order holds now, when it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_now: Option<u64>,
    /// The LSN of the order's oldest event now, when it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_lsn_now: Option<u64>,
}

impl Report {
    pub fn new(
        lsn: u64,
        order_id: &str,
        record: Option<&ErasureRecord>,
        now: Option<OrderNow>,
    ) -> Report {
        let verdict = Verdict::of(lsn, record, now);
        let erased = record.map_or(String::new(), |r| {
            format!("{}, {} event{}", r.erased_at, r.events, plural(r.events))
        });
        let message = match verdict {
            Verdict::Valid => format!(
                "receipt valid: the erasure at LSN {lsn} ({erased}) was of order {order_id:?}, \
                 and the order answers 404"
            ),
            Verdict::NoErasure => format!("receipt invalid: there is no erasure at LSN {lsn}"),
            Verdict::OtherOrder => format!(
                "receipt invalid: the erasure at LSN {lsn} was not of order {order_id:?} (the \
                 digest does not match)"
            ),
            Verdict::Reingested(o) => format!(
                "receipt valid, but order {order_id:?} exists again: the erasure at LSN {lsn} \
                 ({erased}) was of it, and it now holds {} event{} ingested after the erasure \
                 (the first at LSN {})",
                o.events,
                plural(o.events),
                o.first_lsn
            ),
            Verdict::Incomplete(o) => format!(
                "erasure incomplete: the erasure at LSN {lsn} ({erased}) was of order \
                 {order_id:?}, but the order still holds an event from before it (LSN {})",
                o.first_lsn
            ),
        };
        let present = match verdict {
            Verdict::Reingested(o) | Verdict::Incomplete(o) => Some(o),
            _ => None,
        };
        Report {
            verdict: verdict.slug(),
            ok: verdict == Verdict::Valid,
            exit_code: verdict.exit_code(),
            message,
            lsn,
            order_id: order_id.to_owned(),
            erased_at: record.map(|r| r.erased_at.clone()),
            events_erased: record.map(|r| r.events),
            events_now: present.map(|o| o.events),
            first_lsn_now: present.map(|o| o.first_lsn),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(matches: Option<bool>) -> ErasureRecord {
        ErasureRecord {
            lsn: 10,
            erased_at: "2026-01-01T00:00:00.000Z".to_owned(),
            events: 3,
            order_id_matches: matches,
        }
    }

    #[test]
    fn each_case_has_its_verdict_and_exit_code() {
        let matching = record(Some(true));
        let now = |first_lsn| {
            Some(OrderNow {
                events: 2,
                first_lsn,
            })
        };
        let cases = [
            (Some(&matching), None, "valid", 0),
            (None, None, "no-erasure", 1),
            (Some(&record(Some(false))), None, "other-order", 1),
            (Some(&record(None)), None, "other-order", 1),
            (Some(&matching), now(11), "reingested", 3),
            (Some(&matching), now(4), "incomplete", 1),
        ];
        for (rec, order, slug, code) in cases {
            let v = Verdict::of(10, rec, order);
            assert_eq!((v.slug(), v.exit_code()), (slug, code), "{rec:?} {order:?}");
        }
        // The order answering does not matter when the receipt does not hold.
        assert_eq!(Verdict::of(10, None, now(11)), Verdict::NoErasure);
        assert_eq!(
            Verdict::of(10, Some(&record(Some(false))), now(11)),
            Verdict::OtherOrder
        );
    }

    #[test]
    fn reports_say_which_case_in_words_and_fields() {
        let r = Report::new(10, "o-1", Some(&record(Some(true))), None);
        assert!(r.ok);
        assert_eq!(
            r.message,
            "receipt valid: the erasure at LSN 10 (2026-01-01T00:00:00.000Z, 3 events) was of \
             order \"o-1\", and the order answers 404"
        );
        assert_eq!(r.events_now, None);

        let r = Report::new(10, "o-1", None, None);
        assert!(!r.ok);
        assert_eq!(r.message, "receipt invalid: there is no erasure at LSN 10");
        assert_eq!((r.erased_at.as_deref(), r.events_erased), (None, None));

        let r = Report::new(10, "o-2", Some(&record(Some(false))), None);
        assert!(
            r.message.contains("was not of order \"o-2\""),
            "{}",
            r.message
        );
        assert!(r.message.contains("digest does not match"), "{}", r.message);

        let again = OrderNow {
            events: 1,
            first_lsn: 12,
        };
        let r = Report::new(10, "o-1", Some(&record(Some(true))), Some(again));
        assert!(!r.ok);
        assert!(r.message.contains("exists again"), "{}", r.message);
        assert!(
            r.message
                .contains("now holds 1 event ingested after the erasure (the first at LSN 12)"),
            "{}",
            r.message
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verdict"], "reingested");
        assert_eq!(json["events_now"], 1);
        assert_eq!(json["first_lsn_now"], 12);
        assert_eq!(json["events_erased"], 3);
    }
}
