//! A table of invalid events: each is rejected naming the right field, and nothing is written.

use serde_json::{Value, json};
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

/// The request parser reads bodies straight into each event's fields; it must decide exactly as
/// parsing to a `Value` first and then `Event::from_json` did (the parser before session 10), for
/// valid bodies and for every kind of bad one.
#[test]
fn parse_request_decides_as_parsing_a_value_first_did() {
    // The old path, from public pieces: the same order of checks and the same errors.
    fn reference(body: &[u8], now: Timestamp) -> Result<Vec<Event>, RequestError> {
        let values = match serde_json::from_slice::<Value>(body) {
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
                Err(error)
                    if errors.len() < trackstore_engine::limits::REQUEST_ERRORS_LISTED_MAX =>
                {
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
