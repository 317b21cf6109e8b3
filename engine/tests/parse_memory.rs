//! Parsing an ingest body takes memory in proportion to the body, whatever it holds: measured with
//! a counting allocator, which is why this test has a binary of its own (and is its only test, so
//! that no other test allocates while it measures).
#![expect(
    unsafe_code,
    reason = "`GlobalAlloc` is an unsafe trait: the counter only wraps `System`"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use trackstore_engine::Timestamp;
use trackstore_engine::event::{BodyFormat, RequestError, parse_request};

/// `System`, counting the bytes allocated now and the most allocated at once.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    // (Wrapping as `fetch_add` does: an allocator must not panic.)
    let now = NOW.fetch_add(by, Ordering::Relaxed).wrapping_add(by);
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; the counters have no effect on it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(p, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                NOW.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The most memory `f` had allocated at once (beyond what was allocated before), with its result.
fn peak<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = f();
    (PEAK.load(Ordering::Relaxed) - before, result)
}

const IDS: &str =
    r#""event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z""#;
const MIB: usize = 1 << 20;

/// `item` repeated (comma-separated) to about `bytes`.
fn repeat(item: &str, bytes: usize) -> String {
    vec![item; bytes / (item.len() + 1)].join(",")
}

/// Distinct short keys, each `"<key>":0`, to about `bytes`.
fn distinct_keys(bytes: usize) -> String {
    const DIGITS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::with_capacity(bytes + 16);
    let mut n = 0usize;
    while out.len() < bytes {
        if n > 0 {
            out.push(',');
        }
        out.push('"');
        let mut i = n;
        loop {
            out.push(char::from(DIGITS[i % DIGITS.len()]));
            i /= DIGITS.len();
            if i == 0 {
                break;
            }
        }
        out.push_str("\":0");
        n += 1;
    }
    out
}

#[test]
fn parsing_takes_memory_in_proportion_to_the_body() {
    let now = Timestamp::parse("2026-06-01T00:00:00Z").expect("valid");
    let zeros = repeat("0", 4 * MIB);
    let token = "$serde_json::private::RawValue";
    // serde_json's raw-value token, nested: an object in the string of another, 17 deep, in a
    // body of 7.9 MiB. Reading each as the JSON text in it (as `Value` does) held a copy of the
    // text per level (~127 MiB); now it is one object, its string unescaped once, into serde's
    // scratch buffer (up to twice the string while that doubles; a `realloc` counts as in place).
    let mut nested = format!("[{}]", repeat("0", 7 * MIB + 2 * MIB / 5));
    for _ in 0..17 {
        let text = serde_json::to_string(&nested).expect("a string");
        nested = format!(r#"{{"{token}":{text}}}"#);
    }
    assert!(nested.len() < 8 * MIB, "within the default body size");
    // (body, what the parse must answer: the field of its error, or "" for a valid body, and the
    // most it may allocate per byte of body). As `Value`s, the arrays took 16 bytes per byte,
    // and the distinct keys 14.
    let ev = format!(
        r#"{{{IDS},"source":"dms","carrier":"van-017","location":{{"lat":51.5,"lon":-0.1}},{}}}"#,
        r#""eta":"2026-01-01T04:00:00Z","attributes":{"depot":"depot-07","slot":"08-10","crates":3}"#
    );
    let cases: Vec<(&str, String, &str, f64)> = vec![
        (
            "an array for a string",
            format!(r#"{{"source":[{zeros}],{IDS}}}"#),
            "source",
            0.01,
        ),
        (
            "an object for a string",
            format!(r#"{{{IDS},"event_id":{{"a":[{zeros}]}}}}"#),
            "event_id",
            0.01,
        ),
        (
            "an unknown location key",
            format!(r#"{{{IDS},"location":{{"alt":[{zeros}]}}}}"#),
            "location.alt",
            0.01,
        ),
        (
            "an array attribute",
            format!(r#"{{{IDS},"attributes":{{"a":[{zeros}]}}}}"#),
            "attributes.a",
            0.01,
        ),
        (
            "an unknown field",
            format!(r#"{{"x":[{zeros}],{IDS}}}"#),
            "x",
            0.01,
        ),
        (
            "a raw-value token",
            format!(r#"{{"source":{{"{token}":"[{zeros}]"}},{IDS}}}"#),
            "source",
            0.01,
        ),
        (
            "17 nested raw-value tokens",
            format!(r#"{{"source":{nested},{IDS}}}"#),
            "source",
            2.1,
        ),
        (
            "an escaped string",
            format!(r#"{{"source":"{}",{IDS}}}"#, "\\n".repeat(2 * MIB)),
            "source",
            1.1,
        ),
        (
            "distinct attribute keys",
            format!(r#"{{{IDS},"attributes":{{{}}}}}"#, distinct_keys(4 * MIB)),
            "attributes",
            6.0,
        ),
        (
            "a repeated attribute",
            format!(
                r#"{{{IDS},"attributes":{{{}}}}}"#,
                repeat(r#""":-0"#, 4 * MIB)
            ),
            "attributes",
            6.0,
        ),
        (
            "1,000 events",
            format!("[{}]", vec![ev.as_str(); 1_000].join(",")),
            "",
            4.0,
        ),
    ];
    for (name, body, field, per_byte) in cases {
        let (bytes, result) = peak(|| parse_request(body.as_bytes(), BodyFormat::Json, now));
        match result {
            Ok(events) if field.is_empty() => assert_eq!(events.len(), 1_000, "{name}"),
            Err(RequestError::Invalid { errors, .. }) => {
                assert_eq!(errors[0].error.field, field, "{name}: {:?}", errors[0]);
            }
            other => panic!("{name}: {other:?}"),
        }
        let limit = (body.len() as f64 * per_byte) as usize + 64 * 1024;
        assert!(
            bytes <= limit,
            "{name}: {bytes} bytes allocated for a body of {} (limit {limit})",
            body.len()
        );
    }
}
