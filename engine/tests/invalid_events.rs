//! A table of invalid events: each is rejected naming the right field, and nothing is written.

use std::fmt;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use trackstore_engine::event::{BodyFormat, RequestError, parse_request};
use trackstore_engine::{Engine, EngineOptions, Error, Event, Timestamp};

fn valid() -> Value {
    json!({
        "event_id": "e-valid", "order_id": "o-valid", "status": "created",
        "occurred_at": "2026-11-21T09:30:00.000Z",
        "source": "dms", "carrier": "van-17", "reason": "no_one_home",
        "location": {"lat": 51.5, "lon": -0.12, "name": "Depot"},
        "eta": "2026-11-21T12:00:00Z",
        "attributes": {"slot": "09-11", "crates": 3, "fragile": true}
    })
}

/// `valid()` with one field replaced (`Value::Null` in `set` removes nothing: it sets null).
fn with(field: &str, value: Value) -> Value {
    let mut v = valid();
    let obj = v.as_object_mut().expect("object");
    if value == json!("__remove__") {
        obj.remove(field);
    } else {
        obj.insert(field.to_owned(), value);
    }
    v
}

const NOW: &str = "2026-11-21T10:00:00.000Z";

fn cases() -> Vec<(&'static str, Value, &'static str)> {
    let long = "x".repeat(129);
    vec![
        (
            "missing event_id",
            with("event_id", json!("__remove__")),
            "event_id",
        ),
        ("null event_id", with("event_id", Value::Null), "event_id"),
        ("empty event_id", with("event_id", json!("")), "event_id"),
        (
            "event_id too long",
            with("event_id", json!(long)),
            "event_id",
        ),
        (
            "event_id bad char",
            with("event_id", json!("e 1")),
            "event_id",
        ),
        (
            "event_id not a string",
            with("event_id", json!(17)),
            "event_id",
        ),
        (
            "missing order_id",
            with("order_id", json!("__remove__")),
            "order_id",
        ),
        (
            "order_id bad char",
            with("order_id", json!("o/1")),
            "order_id",
        ),
        (
            "order_id non-ascii",
            with("order_id", json!("ordré")),
            "order_id",
        ),
        (
            "unknown status",
            with("status", json!("lost_in_space")),
            "status",
        ),
        (
            "status wrong case",
            with("status", json!("Delivered")),
            "status",
        ),
        (
            "status not a string",
            with("status", json!(["created"])),
            "status",
        ),
        (
            "missing occurred_at",
            with("occurred_at", json!("__remove__")),
            "occurred_at",
        ),
        (
            "occurred_at not RFC 3339",
            with("occurred_at", json!("21/11/2026 09:30")),
            "occurred_at",
        ),
        (
            "occurred_at microseconds",
            with("occurred_at", json!("2026-11-21T09:30:00.000001Z")),
            "occurred_at",
        ),
        (
            "occurred_at no offset",
            with("occurred_at", json!("2026-11-21T09:30:00")),
            "occurred_at",
        ),
        (
            "occurred_at far future",
            with("occurred_at", json!("2026-11-21T10:05:00.001Z")),
            "occurred_at",
        ),
        (
            "occurred_at a number",
            with("occurred_at", json!(1_763_717_400_000u64)),
            "occurred_at",
        ),
        (
            "occurred_at before 1970",
            with("occurred_at", json!("1969-07-20T20:17:00Z")),
            "occurred_at",
        ),
        (
            "source too long",
            with("source", json!("s".repeat(65))),
            "source",
        ),
        ("source empty", with("source", json!("")), "source"),
        (
            "carrier control char",
            with("carrier", json!("van\n17")),
            "carrier",
        ),
        (
            "carrier not a string",
            with("carrier", json!(17)),
            "carrier",
        ),
        (
            "reason upper case",
            with("reason", json!("No_One_Home")),
            "reason",
        ),
        (
            "reason with space",
            with("reason", json!("no one home")),
            "reason",
        ),
        (
            "location not an object",
            with("location", json!([51.5, -0.12])),
            "location",
        ),
        (
            "latitude out of range",
            with("location", json!({"lat": 91.0, "lon": 0.0})),
            "location.lat",
        ),
        (
            "longitude out of range",
            with("location", json!({"lat": 0.0, "lon": -180.5})),
            "location.lon",
        ),
        (
            "latitude missing",
            with("location", json!({"lon": 0.0})),
            "location.lat",
        ),
        (
            "latitude a string",
            with("location", json!({"lat": "51.5", "lon": 0.0})),
            "location.lat",
        ),
        (
            "location unknown field",
            with("location", json!({"lat": 1.0, "lon": 1.0, "alt": 3})),
            "location.alt",
        ),
        ("eta not a timestamp", with("eta", json!("soon")), "eta"),
        (
            "attributes not an object",
            with("attributes", json!("slot=9")),
            "attributes",
        ),
        (
            "attributes nested",
            with("attributes", json!({"slot": {"from": 9}})),
            "attributes.slot",
        ),
        (
            "attributes array value",
            with("attributes", json!({"tags": ["a"]})),
            "attributes.tags",
        ),
        (
            "attributes too large",
            with("attributes", json!({"blob": "x".repeat(4100)})),
            "attributes",
        ),
        (
            // serde_json's `Value` reads an object starting with this key (its text sorts it
            // first) as the JSON text in its value: reserved.
            "attributes reserved key",
            with(
                "attributes",
                json!({"slot": "09-11", "$serde_json::private::RawValue": "x"}),
            ),
            "attributes",
        ),
        (
            // An object, though serde_json's `Value` reads it as the string "dms".
            "source an object of serde_json's raw-value token",
            with(
                "source",
                json!({"$serde_json::private::RawValue": "\"dms\""}),
            ),
            "source",
        ),
        (
            "unknown field",
            with("customer_name", json!("Ada")),
            "customer_name",
        ),
        (
            "misspelt optional field",
            with("carier", json!("van-1")),
            "carier",
        ),
    ]
}

#[test]
fn every_invalid_event_names_its_field() {
    let now = Timestamp::parse(NOW).expect("now");
    let cases = cases();
    assert!(cases.len() >= 25);
    for (name, bad, field) in cases {
        let body = serde_json::to_vec(&json!([valid(), bad])).expect("json");
        match parse_request(&body, BodyFormat::Json, now) {
            Err(RequestError::Invalid { errors, omitted: 0 }) => {
                assert_eq!(errors.len(), 1, "{name}: {errors:?}");
                assert_eq!(errors[0].index, Some(1), "{name}");
                assert_eq!(errors[0].error.field, field, "{name}: {}", errors[0].error);
            }
            other => panic!("{name}: expected a field error, got {other:?}"),
        }
    }
}

/// Events that are well-formed JSON but break a value rule are refused by the engine itself too (it
/// validates again right before writing), and the valid event in the same request is not written.
#[test]
fn the_engine_rejects_invalid_events_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let mut checked = 0;
    for (name, mut bad, field) in cases() {
        if name == "occurred_at far future" {
            // The engine judges against its real clock, not the table's NOW.
            let future = Timestamp::from_millis(Timestamp::now().as_millis() + 5 * 60_000 + 1_000)
                .expect("in range");
            bad = with("occurred_at", json!(future.to_string()));
        }
        let Ok(event) = Event::from_json(&bad) else {
            continue;
        };
        let valid = Event::from_json(&valid()).expect("valid");
        match engine.append(vec![valid, event]) {
            Err(Error::Invalid { index: 1, error }) => assert_eq!(error.field, field, "{name}"),
            other => panic!("{name}: expected Invalid, got {other:?}"),
        }
        checked += 1;
        assert_eq!(engine.stats().events, 0, "{name}: something was written");
        assert!(
            engine.order_state("o-valid").expect("read").is_none(),
            "{name}"
        );
    }
    assert!(checked >= 15, "only {checked} cases reached the engine");
}

#[test]
fn request_level_errors() {
    let now = Timestamp::parse(NOW).expect("now");
    assert!(matches!(
        parse_request(b"[]", BodyFormat::Json, now),
        Err(RequestError::Empty)
    ));
    assert!(matches!(
        parse_request(b"", BodyFormat::Ndjson, now),
        Err(RequestError::Empty)
    ));
    assert!(matches!(
        parse_request(b"{\"event_id\":", BodyFormat::Json, now),
        Err(RequestError::MalformedJson { .. })
    ));
    assert!(matches!(
        parse_request(b"\xff\xfe", BodyFormat::Json, now),
        Err(RequestError::MalformedJson { .. })
    ));
    assert!(matches!(
        parse_request(b"42", BodyFormat::Json, now),
        Err(RequestError::Invalid { .. })
    ));
    let line = serde_json::to_string(&valid()).expect("json");
    let nd = format!("{line}\n\n{{oops\n");
    match parse_request(nd.as_bytes(), BodyFormat::Ndjson, now) {
        Err(RequestError::MalformedJson { line: Some(3), .. }) => {}
        other => panic!("expected malformed JSON on line 3, got {other:?}"),
    }
    let many = format!("[{}]", vec![line.as_str(); 10_001].join(","));
    assert!(matches!(
        parse_request(many.as_bytes(), BodyFormat::Json, now),
        Err(RequestError::TooManyEvents { count: 10_001 })
    ));
    let many_nd = vec![line.as_str(); 10_001].join("\n");
    assert!(matches!(
        parse_request(many_nd.as_bytes(), BodyFormat::Ndjson, now),
        Err(RequestError::TooManyEvents { count: 10_001 })
    ));
    // Every invalid event of a request is reported, not just the first.
    let body = serde_json::to_vec(&json!([
        with("status", json!("x")),
        valid(),
        with("eta", json!("y"))
    ]))
    .expect("json");
    match parse_request(&body, BodyFormat::Json, now) {
        Err(RequestError::Invalid { errors, .. }) => {
            assert_eq!(
                errors
                    .iter()
                    .map(|e| (e.index, e.error.field.as_ref()))
                    .collect::<Vec<_>>(),
                [(Some(0), "status"), (Some(2), "eta")]
            );
        }
        other => panic!("{other:?}"),
    }
    // Offsets are normalised: the same instant is the same event.
    let a = parse_request(br#"{"event_id":"a","order_id":"o","status":"created","occurred_at":"2026-11-21T10:30:00+01:00"}"#, BodyFormat::Json, now).expect("valid");
    let b = parse_request(br#"{"event_id":"a","order_id":"o","status":"created","occurred_at":"2026-11-21T09:30:00.000Z"}"#, BodyFormat::Json, now).expect("valid");
    assert_eq!(a, b);
}

/// A JSON text read as plain JSON: as `Value` reads it, but an object is an object whatever its
/// first key (with its `raw_value` feature, which the workspace enables, a `Value` reads one
/// starting with `RAW_VALUE_TOKEN` as the JSON text in its value; the request parser does not).
struct Plain(Value);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Plain, D::Error> {
        struct PlainVisitor;
        impl<'de> Visitor<'de> for PlainVisitor {
            type Value = Plain;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any valid JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Plain, E> {
                Ok(Plain(b.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Plain, E> {
                Ok(Plain(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Plain, E> {
                Ok(Plain(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Plain, E> {
                Ok(Plain(n.into()))
            }
            fn visit_str<E>(self, s: &str) -> Result<Plain, E> {
                Ok(Plain(s.into()))
            }
            fn visit_unit<E>(self) -> Result<Plain, E> {
                Ok(Plain(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Plain, A::Error> {
                let mut items = Vec::new();
                while let Some(Plain(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Plain(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Plain, A::Error> {
                let mut entries = Map::new();
                while let Some((key, Plain(value))) = map.next_entry()? {
                    entries.insert(key, value);
                }
                Ok(Plain(Value::Object(entries)))
            }
        }
        d.deserialize_any(PlainVisitor)
    }
}

/// What `parse_request` decided when it parsed a body to a `Value` first, then read each event with
/// `Event::from_json` (the parser before session 10), from public pieces: the same order of checks
/// and the same errors. The body is read as plain JSON (see `Plain`).
fn reference(body: &[u8], now: Timestamp) -> Result<Vec<Event>, RequestError> {
    let values = match serde_json::from_slice::<Plain>(body).map(|Plain(value)| value) {
        Ok(Value::Array(items)) => items,
        Ok(obj @ Value::Object(_)) => vec![obj],
        Ok(_) => return parse_request(b"1", BodyFormat::Json, now),
        Err(e) => {
            return Err(RequestError::MalformedJson {
                line: None,
                message: e.to_string(),
            });
        }
    };
    if values.is_empty() {
        return parse_request(b"[]", BodyFormat::Json, now);
    }
    if values.len() > trackstore_engine::limits::EVENTS_PER_REQUEST_MAX {
        return Err(RequestError::TooManyEvents {
            count: values.len(),
        });
    }
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let mut omitted = 0;
    for (index, value) in values.iter().enumerate() {
        match Event::from_json(value).and_then(|e| e.validate(now).map(|()| e)) {
            Ok(e) => events.push(e),
            Err(error) if errors.len() < trackstore_engine::limits::REQUEST_ERRORS_LISTED_MAX => {
                errors.push(trackstore_engine::event::IndexedFieldError {
                    index: Some(index),
                    error,
                })
            }
            Err(_) => omitted += 1,
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(RequestError::Invalid { errors, omitted })
    }
}

/// The request parser reads bodies straight into each event's fields; it must decide exactly as
/// parsing to a `Value` first and then `Event::from_json` did (the parser before session 10), for
/// valid bodies and for every kind of bad one.
#[test]
fn parse_request_decides_as_parsing_a_value_first_did() {
    let now = Timestamp::now();
    let ok = r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z"}"#;
    let full = r#"{"event_id":"e2","order_id":"o1","status":"delivered","occurred_at":"2026-01-01T01:00:00+01:00","source":"dms","carrier":"van-1","reason":"left_at_door","location":{"lat":51.5,"lon":-0.1,"name":"Depot"},"eta":"2026-01-01T02:00:00Z","attributes":{"slot":"am","bags":2,"cold":true}}"#;
    let mut bodies: Vec<String> = vec![
        ok.into(),
        full.into(),
        format!("[{ok},{full}]"),
        "[]".into(),
        "{}".into(),
        "[{}]".into(),
        "null".into(),
        "1".into(),
        "\"text\"".into(),
        "true".into(),
        "[1, \"x\", null, [], [1,[2]], {}]".into(),
        format!("[{ok}, 7]"),
        "{".into(),
        "[{\"event_id\":\"e1\"},".into(),
        format!("{ok} trailing"),
        r#"{"zeta":1,"alpha":2,"event_id":"e1"}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z","extra":{"deep":[1,2]}}"#.into(),
        r#"{"event_id":"first","event_id":"e9","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z"}"#.into(),
        r#"{"event_id":"e1","event_id":5,"order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z"}"#.into(),
        r#"{"event_id":null,"order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z"}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"teleported","occurred_at":"2026-01-01T00:00:00Z"}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"yesterday"}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"2999-01-01T00:00:00Z"}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z","location":{"lat":1,"lon":2,"alt":3}}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z","location":[1,2]}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z","attributes":{"a":{"b":1}}}"#.into(),
        r#"{"event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z","eta":5,"source":null}"#.into(),
        r#"{"event_id":"bad id!","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z"}"#.into(),
        "[\"\u{fffd}\"]".into(),
        "{\"event_id\":\"e\\u00e9\",\"order_id\":\"o1\",\"status\":\"created\",\"occurred_at\":\"2026-01-01T00:00:00Z\"}".into(),
        "{\"ev\\u0065nt_id\":\"e1\",\"order_id\":\"o1\",\"status\":\"created\",\"occurred_at\":\"2026-01-01T00:00:00Z\"}".into(),
    ];
    // Parts no event keeps (unknown fields, arrays as items, items past the limit) are still
    // checked in full: bad strings, out-of-range numbers and nesting past serde_json's limit.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let ids = r#""event_id":"e1","order_id":"o1","status":"created","occurred_at":"2026-01-01T00:00:00Z""#;
    bodies.push(format!(r#"{{"x":"\ud800",{ids}}}"#));
    bodies.push(format!(r#"{{"x":1e400,{ids}}}"#));
    bodies.push(format!(r#"{{"x":{deep},{ids}}}"#));
    bodies.push(format!(r#"{{"x":{{"y":"\ud800"}},{ids}}}"#));
    bodies.push(deep.clone());
    bodies.push(format!("[{deep}]"));
    bodies.push(r#"[["\ud800"]]"#.into());
    bodies.push(r#"[[1e400]]"#.into());
    bodies.push(format!("[{}, {deep}]", vec!["{}"; 10_001].join(",")));
    bodies.push(format!(r#"[{}, "\ud800"]"#, vec!["{}"; 10_001].join(",")));
    // Many invalid events (errors listed up to the bound, the rest counted), and too many events.
    bodies.push(format!("[{}]", vec!["{}"; 300].join(",")));
    bodies.push(format!("[{}]", vec!["{}"; 10_001].join(",")));
    bodies.push(format!("[{}, {{]", vec!["{}"; 10_001].join(",")));
    let mut bytes: Vec<Vec<u8>> = bodies.into_iter().map(String::into_bytes).collect();
    bytes.push(b"[\"\xff\"]".to_vec());
    bytes.push(b"{\"x\":\"\xff\",\"event_id\":\"e1\"}".to_vec());
    bytes.push(b"[[\"\xff\"]]".to_vec());
    for body in &bytes {
        assert_eq!(
            parse_request(body, BodyFormat::Json, now),
            reference(body, now),
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
}

/// `parse_request_decides_as_parsing_a_value_first_did` on random bodies: events whose fields hold
/// values of every type (objects and arrays where strings are expected, serde_json's raw-value
/// token, an ordinary key, repeated keys, escapes, attributes past the size bound), and some of
/// them cut or corrupted into malformed JSON.
#[test]
fn parse_request_decides_as_parsing_a_value_first_did_on_random_bodies() {
    let now = Timestamp::parse("2026-06-01T00:00:00Z").expect("valid");
    let mut g = Bodies(SmallRng::seed_from_u64(20_261_121));
    let mut seen = [0usize; 3];
    for _ in 0..3_000 {
        let valid_mostly = g.0.random_bool(0.5);
        let mut body = g.body(valid_mostly).into_bytes();
        let corrupt = !valid_mostly && g.0.random_bool(0.15);
        if corrupt {
            g.corrupt(&mut body);
        }
        let parsed = parse_request(&body, BodyFormat::Json, now);
        assert_eq!(
            parsed,
            reference(&body, now),
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(2_000)])
        );
        seen[match parsed {
            Ok(_) => 0,
            Err(RequestError::Invalid { .. }) => 1,
            Err(_) => 2,
        }] += 1;
    }
    // Each kind of answer is well represented.
    assert!(seen.iter().all(|&n| n > 300), "{seen:?}");
}

/// A generator of ingest bodies (see its use).
struct Bodies(SmallRng);

const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

impl Bodies {
    /// One of the space-separated `words`.
    fn pick<'a>(&mut self, words: &'a str) -> &'a str {
        let words: Vec<&str> = words.split(' ').collect();
        words[self.0.random_range(0..words.len())]
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }

    fn string(&mut self) -> String {
        if self.chance(0.01) {
            // Malformed: a lone surrogate, a raw control character, a bad escape.
            return self.pick("\"\\ud800\" \"raw\u{1}\" \"\\x\"").to_owned();
        }
        if self.chance(0.05) {
            return format!("\"{}\"", "s".repeat(self.0.random_range(60..140)));
        }
        if self.chance(0.02) {
            return format!("\"{}\"", "x".repeat(self.0.random_range(4_000..4_200)));
        }
        self.pick(concat!(
            r#""" "a" "e1" "created" "delivered" "dms" "van-1" "no_one_home" "\u00e9t\u00e9" "#,
            r#""a\nb" "\ud83d\ude00" "a\/b" "tab\there" "\u0000" "2026-01-01T00:00:00Z" "#,
            r#""2026-01-01T01:00:00+01:00" "2999-01-01T00:00:00Z" "soon" "é" "x\"y" "\\""#,
        ))
        .to_owned()
    }

    fn number(&mut self) -> String {
        if self.chance(0.01) {
            return self.pick("1e400 01 1. - nul tru").to_owned(); // malformed
        }
        self.pick(concat!(
            "0 -0 1 -1 51.5 -0.12 91 -180.5 1e15 1e1 2.50 -0.0 5e-324 1E2 0.1 1e308 ",
            "18446744073709551615 18446744073709551616 -9223372036854775808 ",
            "-9223372036854775809 123456789012345678901234567890",
        ))
        .to_owned()
    }

    fn key(&mut self) -> String {
        if self.chance(0.03) {
            return format!("\"{}\"", "k".repeat(100));
        }
        if self.chance(0.04) {
            return format!("\"{RAW_VALUE_TOKEN}\"");
        }
        self.pick(concat!(
            r#""a" "b" "slot" "" "a\u0001" "\u0061" "é" "z" "lat" "lon" "name" "alt" "tab\t" "#,
            "\"del\u{7f}\"",
        ))
        .to_owned()
    }

    fn value(&mut self, depth: u32) -> String {
        let kinds = if depth > 3 { 4 } else { 9 };
        match self.0.random_range(0..kinds) {
            0 => self.pick("null true false").to_owned(),
            1 => self.number(),
            2 | 3 => self.string(),
            4 | 5 => {
                let items: Vec<String> = (0..self.0.random_range(0..4))
                    .map(|_| self.value(depth + 1))
                    .collect();
                format!("[{}]", items.join(","))
            }
            6 | 7 => {
                let entries: Vec<String> = (0..self.0.random_range(0..4))
                    .map(|_| format!("{}:{}", self.key(), self.value(depth + 1)))
                    .collect();
                format!("{{{}}}", entries.join(","))
            }
            _ if self.chance(0.3) => self.raw_value(depth),
            _ => {
                let n = self.0.random_range(120..135);
                format!("{}{}", "[".repeat(n), "]".repeat(n))
            }
        }
    }

    /// An object serde_json's `Value` reads as the JSON text in it: to the parser, an object.
    fn raw_value(&mut self, depth: u32) -> String {
        let text = if self.chance(0.95) {
            self.value(depth + 1)
        } else {
            "[1".to_owned()
        };
        let text = if self.chance(0.97) {
            serde_json::to_string(&text).expect("a string")
        } else {
            "5".to_owned()
        };
        let more = if self.chance(0.1) { r#","b":1"# } else { "" };
        format!("{{\"{RAW_VALUE_TOKEN}\":{text}{more}}}")
    }

    fn location(&mut self, valid_mostly: bool) -> String {
        if valid_mostly && self.chance(0.9) {
            return self
                .pick(concat!(
                    r#"{"lat":51.5,"lon":-0.1} {"lon":1,"lat":2,"name":"x\u00e9"} "#,
                    r#"{"lat":1,"lat":2,"lon":0} {"lat":-0,"lon":1e1,"name":null}"#,
                ))
                .to_owned();
        }
        if self.chance(0.15) {
            return self.value(1);
        }
        let entries: Vec<String> = (0..self.0.random_range(0..5))
            .map(|_| {
                let key = self.pick("\"lat\" \"lon\" \"name\" \"alt\" \"zz\" \"l\\u0061t\"");
                let value = if key != "\"name\"" && self.chance(0.6) {
                    self.number()
                } else {
                    self.value(2)
                };
                format!("{key}:{value}")
            })
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    fn attributes(&mut self, valid_mostly: bool) -> String {
        if self.chance(0.1) {
            return self.value(1);
        }
        let many = self.chance(0.05);
        let n = if many {
            self.0.random_range(300..700)
        } else {
            self.0.random_range(0..6)
        };
        let entries: Vec<String> = (0..n)
            .map(|i| {
                let key = if many && self.chance(0.9) {
                    format!("\"k{}\"", i % 500)
                } else if valid_mostly && self.chance(0.97) {
                    self.pick(r#""a" "b" "slot" "\u0061" "é" "q\"uote""#)
                        .to_owned()
                } else {
                    self.key()
                };
                let value = if self.chance(if valid_mostly { 0.995 } else { 0.75 }) {
                    if self.chance(0.5) {
                        self.number()
                    } else {
                        self.string()
                    }
                } else {
                    self.value(2)
                };
                format!("{key}:{value}")
            })
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    fn event(&mut self, valid_mostly: bool) -> String {
        let fields = [
            ("event_id", 0.9),
            ("order_id", 0.9),
            ("status", 0.9),
            ("occurred_at", 0.9),
            ("source", 0.4),
            ("carrier", 0.4),
            ("reason", 0.3),
            ("location", 0.4),
            ("eta", 0.3),
            ("attributes", 0.5),
        ];
        let mut entries = Vec::new();
        for (field, p) in fields {
            let times = if self.chance(0.05) { 2 } else { 1 };
            for _ in 0..times {
                if !self.chance(if valid_mostly && p > 0.8 { 1.0 } else { p }) {
                    continue;
                }
                let good = valid_mostly || self.chance(0.75);
                let value = match field {
                    "location" => self.location(valid_mostly),
                    "attributes" => self.attributes(valid_mostly),
                    _ if !good => self.value(1),
                    "event_id" | "order_id" => self.pick(r#""e1" "o-1" "a.b:c""#).to_owned(),
                    "status" => self.pick(r#""created" "delivered""#).to_owned(),
                    "occurred_at" | "eta" => self
                        .pick(r#""2026-01-01T00:00:00Z" "2026-01-01T01:00:00.123+01:00""#)
                        .to_owned(),
                    "reason" => r#""no_one_home""#.to_owned(),
                    _ => self.pick(r#""dms" "van-17""#).to_owned(),
                };
                let key = if self.chance(0.03) {
                    field.replace('e', "\\u0065")
                } else {
                    field.to_owned()
                };
                entries.push(format!("\"{key}\":{value}"));
            }
        }
        if !valid_mostly && self.chance(0.1) {
            let entry = format!("{}:{}", self.key(), self.value(1));
            entries.push(entry);
        }
        for i in (1..entries.len()).rev() {
            entries.swap(i, self.0.random_range(0..=i));
        }
        format!("{{{}}}", entries.join(","))
    }

    fn body(&mut self, valid_mostly: bool) -> String {
        let n = if self.chance(0.05) {
            0
        } else {
            self.0.random_range(1..4)
        };
        let mut items: Vec<String> = (0..n)
            .map(|_| {
                if valid_mostly || self.chance(0.9) {
                    self.event(valid_mostly)
                } else {
                    self.value(1)
                }
            })
            .collect();
        if n == 1 && self.chance(0.5) {
            items.pop().expect("one item")
        } else {
            format!("[{}]", items.join(","))
        }
    }

    /// Cuts, inserts or removes a byte.
    fn corrupt(&mut self, body: &mut Vec<u8>) {
        if body.is_empty() {
            return;
        }
        let at = self.0.random_range(0..body.len());
        match self.0.random_range(0..3) {
            0 => body.truncate(at),
            1 => {
                let bytes = b"\",{}[]:\\\xff1 ";
                body.insert(at, bytes[self.0.random_range(0..bytes.len())]);
            }
            _ => {
                body.remove(at);
            }
        }
    }
}
