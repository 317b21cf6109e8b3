//! Bad requests end to end: each one must be answered with the exact status, an RFC 9457
//! `application/problem+json` body whose `type` ends in the documented slug, the offending field and
//! event index for validation errors, and must write nothing (`/v1/stats` unchanged, the orders named
//! in the body still unknown). Every case runs over HTTP/1.1; a selection also over HTTP/2 and HTTP/3,
//! where the problem must be the same as over HTTP/1.1.
//!
//! Failures are collected and reported together, so one run lists every case the server gets wrong.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::{
    Client, HOUR_MS, MINUTE_MS, Proto, Response, Server, base_time, event, now_ms, q, rfc3339, with,
};

/// What a case expects in the `errors` list of the problem.
#[derive(Clone, Debug)]
enum Fields {
    /// No requirement (not a validation error).
    Any,
    /// These (index, field) pairs must all be listed.
    Listed(Vec<(Option<u64>, String)>),
}

#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Accepted `type` slugs (one, except where the contract leaves a choice: see the case).
    slugs: &'static [&'static str],
    fields: Fields,
    /// Over HTTP/1.1, send the head with `Expect: 100-continue` and the body only after `100
    /// Continue`, as curl does for large bodies. Without it the server's early 413 races the upload:
    /// it closes the connection with the body unread, the kernel resets it, and the client may get a
    /// broken pipe instead of the response (HTTP/2 and HTTP/3 reset only the stream).
    expect_continue: bool,
}

fn json_body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialise JSON")
}

fn ndjson_body(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        serde_json::to_writer(&mut out, e).expect("serialise JSON");
        out.push(b'\n');
    }
    out
}

fn ingest(name: &'static str, body: Vec<u8>, status: u16, slug: &'static [&'static str]) -> Case {
    Case {
        name,
        method: "POST",
        path: "/v1/events".into(),
        content_type: Some("application/json"),
        body,
        status,
        slugs: slug,
        fields: Fields::Any,
        expect_continue: false,
    }
}

/// A single-event body that must fail validation on `field` (index 0).
fn invalid(name: &'static str, ev: Value, field: &str) -> Case {
    Case {
        fields: Fields::Listed(vec![(Some(0), field.to_owned())]),
        ..ingest(name, json_body(&ev), 400, &["invalid-event"])
    }
}

fn get(name: &'static str, path: String, status: u16, slug: &'static [&'static str]) -> Case {
    Case {
        name,
        method: "GET",
        path,
        content_type: None,
        body: Vec::new(),
        status,
        slugs: slug,
        fields: Fields::Any,
        expect_continue: false,
    }
}

const MALFORMED: &[&str] = &["malformed-json"];
const INVALID_PARAM: &[&str] = &["invalid-parameter"];
const BAD_CURSOR: &[&str] = &["bad-cursor"];

/// Cursors the server issued for the fixture, to be misused.
struct Cursors {
    timeline_asc: String,
    orders: String,
    range: String,
    range_query: String,
}

/// Orders and events present before the bad requests (so cursors exist and "unchanged" means
/// something).
async fn fixture(client: &mut Client, base: i64) -> Cursors {
    let mut events: Vec<Value> = ["created", "allocated", "picked", "dispatched", "in_transit"]
        .iter()
        .enumerate()
        .map(|(i, st)| {
            with(
                event(
                    &format!("fx-e-{i}"),
                    "fx-o-1",
                    st,
                    base + i as i64 * MINUTE_MS,
                ),
                &[("carrier", json!("fx-van"))],
            )
        })
        .collect();
    for o in ["fx-o-2", "fx-o-3"] {
        events.push(with(
            event(&format!("{o}-e"), o, "out_for_delivery", base),
            &[("carrier", json!("fx-van"))],
        ));
    }
    client
        .post_json("/v1/events", &json!(events))
        .await
        .expect_json(200, "fixture ingest");
    let cursor = |page: Value, what: &str| -> String {
        page["next_cursor"]
            .as_str()
            .unwrap_or_else(|| panic!("fixture: {what} has a next_cursor: {page}"))
            .to_owned()
    };
    let range_query = format!(
        "/v1/events?from={}&to={}&carrier=fx-van&limit=1",
        q(&rfc3339(base)),
        q(&rfc3339(base + HOUR_MS))
    );
    Cursors {
        timeline_asc: cursor(
            client
                .get_json("/v1/orders/fx-o-1/events?limit=2&order=asc")
                .await,
            "timeline",
        ),
        orders: cursor(
            client
                .get_json("/v1/orders?status=out_for_delivery&limit=1")
                .await,
            "orders by status",
        ),
        range: cursor(client.get_json(&range_query).await, "time range"),
        range_query,
    }
}

fn tamper(cursor: &str) -> String {
    let mut chars: Vec<char> = cursor.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

fn cases(base: i64, cursors: &Cursors) -> Vec<Case> {
    let ok = |id: &str| {
        with(
            event(
                &format!("bad-e-{id}"),
                &format!("bad-o-{id}"),
                "created",
                base,
            ),
            &[("carrier", json!("bad-van"))],
        )
    };
    let future = rfc3339(now_ms() + 10 * MINUTE_MS);
    let many = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                event(
                    &format!("many-e-{i}"),
                    &format!("many-o-{}", i % 7),
                    "created",
                    base,
                )
            })
            .collect()
    };
    let mut oversize = json_body(&ok("big"));
    oversize.pop(); // the closing brace, put back after 9 MiB of (valid) whitespace
    oversize.extend(std::iter::repeat_n(b' ', 9 * 1024 * 1024));
    oversize.push(b'}');
    let mut invalid_utf8 =
        br#"{"event_id":"bad-e-utf8","order_id":"bad-o-utf8","status":"created","occurred_at":""#
            .to_vec();
    invalid_utf8.extend_from_slice(rfc3339(base).as_bytes());
    invalid_utf8.extend_from_slice(b"\",\"source\":\"sh\xff\xfeop\"}");
    let mut invalid_utf8_ndjson = invalid_utf8.clone();
    invalid_utf8_ndjson.push(b'\n');
    let big_attrs: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("key_{i:03}"), json!("x".repeat(40))))
        .collect();
    let timeline = "/v1/orders/fx-o-1/events";
    let range = |from: &str, to: &str, rest: &str| {
        format!("/v1/events?from={}&to={}{rest}", q(from), q(to))
    };
    let (from, to) = (rfc3339(base), rfc3339(base + HOUR_MS));

    vec![
        // Bodies that are not JSON.
        ingest(
            "truncated JSON",
            br#"{"event_id": "bad-e-1", "#.to_vec(),
            400,
            MALFORMED,
        ),
        ingest(
            "trailing garbage after the object",
            [json_body(&ok("2")), b" x".to_vec()].concat(),
            400,
            MALFORMED,
        ),
        ingest("invalid UTF-8 in JSON", invalid_utf8, 400, MALFORMED),
        Case {
            content_type: Some("application/x-ndjson"),
            ..ingest(
                "invalid UTF-8 in NDJSON",
                invalid_utf8_ndjson,
                400,
                MALFORMED,
            )
        },
        Case {
            content_type: Some("application/x-ndjson"),
            ..ingest(
                "NDJSON with a malformed second line",
                [ndjson_body(&[ok("3")]), b"{\"event_id\":\n".to_vec()].concat(),
                400,
                MALFORMED,
            )
        },
        // Field errors.
        invalid(
            "status of the wrong type",
            with(ok("4"), &[("status", json!(5))]),
            "status",
        ),
        invalid(
            "unknown status",
            with(ok("5"), &[("status", json!("lost"))]),
            "status",
        ),
        invalid(
            "occurred_at 10 minutes in the future",
            with(ok("6"), &[("occurred_at", json!(future))]),
            "occurred_at",
        ),
        invalid(
            "missing occurred_at",
            with(ok("7"), &[("occurred_at", Value::Null)]),
            "occurred_at",
        ),
        invalid(
            "missing order_id",
            with(ok("8"), &[("order_id", Value::Null)]),
            "order_id",
        ),
        invalid(
            "event_id with a space and a slash",
            with(ok("9"), &[("event_id", json!("bad e/9"))]),
            "event_id",
        ),
        invalid(
            "event_id of 129 characters",
            with(ok("10"), &[("event_id", json!("e".repeat(129)))]),
            "event_id",
        ),
        invalid(
            "occurred_at not RFC 3339",
            with(ok("11"), &[("occurred_at", json!("yesterday at noon"))]),
            "occurred_at",
        ),
        invalid(
            "occurred_at with microseconds",
            with(
                ok("12"),
                &[("occurred_at", json!("2025-01-02T03:04:05.123456Z"))],
            ),
            "occurred_at",
        ),
        invalid(
            "occurred_at on February 30",
            with(
                ok("13"),
                &[("occurred_at", json!("2025-02-30T00:00:00.000Z"))],
            ),
            "occurred_at",
        ),
        invalid(
            "unknown field",
            with(ok("14"), &[("colour", json!("red"))]),
            "colour",
        ),
        invalid(
            "latitude out of range",
            with(ok("15"), &[("location", json!({"lat": 91.0, "lon": 0.0}))]),
            "location.lat",
        ),
        invalid(
            "longitude out of range",
            with(
                ok("16"),
                &[("location", json!({"lat": 0.0, "lon": -180.5}))],
            ),
            "location.lon",
        ),
        invalid(
            "latitude as a string",
            with(
                ok("17"),
                &[("location", json!({"lat": "51.5", "lon": 0.0}))],
            ),
            "location.lat",
        ),
        invalid(
            "attributes with a nested object",
            with(ok("18"), &[("attributes", json!({"slot": {"from": 9}}))]),
            "attributes.slot",
        ),
        invalid(
            "attributes not an object",
            with(ok("19"), &[("attributes", json!("van=17"))]),
            "attributes",
        ),
        invalid(
            "attributes over 4 KiB",
            with(ok("20"), &[("attributes", Value::Object(big_attrs))]),
            "attributes",
        ),
        invalid(
            "reason with capitals and spaces",
            with(ok("21"), &[("reason", json!("No One Home"))]),
            "reason",
        ),
        invalid(
            "source of 65 characters",
            with(ok("22"), &[("source", json!("s".repeat(65)))]),
            "source",
        ),
        invalid(
            "empty carrier",
            with(ok("23"), &[("carrier", json!(""))]),
            "carrier",
        ),
        invalid(
            "eta not a time",
            with(ok("24"), &[("eta", json!("soon"))]),
            "eta",
        ),
        Case {
            fields: Fields::Listed(vec![(Some(2), "status".into())]),
            ..ingest(
                "third event of an array invalid",
                json_body(&json!([
                    ok("25a"),
                    ok("25b"),
                    with(ok("25c"), &[("status", json!("lost"))])
                ])),
                400,
                &["invalid-event"],
            )
        },
        Case {
            fields: Fields::Listed(vec![
                (Some(0), "event_id".into()),
                (Some(2), "location.lon".into()),
            ]),
            ..ingest(
                "two invalid events of three, all listed",
                json_body(&json!([
                    with(ok("26a"), &[("event_id", json!(""))]),
                    ok("26b"),
                    with(
                        ok("26c"),
                        &[("location", json!({"lat": 1.0, "lon": 200.0}))]
                    ),
                ])),
                400,
                &["invalid-event"],
            )
        },
        Case {
            fields: Fields::Listed(vec![(None, "$".into())]),
            ..ingest("a JSON number", b"42".to_vec(), 400, &["invalid-event"])
        },
        Case {
            fields: Fields::Listed(vec![(Some(1), "$".into())]),
            ..ingest(
                "an array holding a non-object",
                json_body(&json!([ok("27"), 1])),
                400,
                &["invalid-event"],
            )
        },
        // Empty requests.
        ingest("empty array", b"[]".to_vec(), 400, &["bad-request"]),
        Case {
            content_type: Some("application/x-ndjson"),
            ..ingest("empty NDJSON", b"\n\n".to_vec(), 400, &["bad-request"])
        },
        // Limits.
        Case {
            expect_continue: true,
            ..ingest("body over 8 MiB", oversize, 413, &["payload-too-large"])
        },
        ingest(
            "10,001 events in an array",
            json_body(&json!(many(10_001))),
            413,
            &["too-many-events"],
        ),
        Case {
            content_type: Some("application/x-ndjson"),
            ..ingest(
                "10,001 events in NDJSON",
                ndjson_body(&many(10_001)),
                413,
                &["too-many-events"],
            )
        },
        // Content types.
        Case {
            content_type: Some("text/plain"),
            ..ingest(
                "text/plain",
                json_body(&ok("28")),
                415,
                &["unsupported-media-type"],
            )
        },
        Case {
            content_type: Some("application/xml"),
            ..ingest(
                "application/xml",
                json_body(&ok("29")),
                415,
                &["unsupported-media-type"],
            )
        },
        Case {
            content_type: None,
            ..ingest(
                "no content type",
                json_body(&ok("30")),
                415,
                &["unsupported-media-type"],
            )
        },
        // An id twice in one request with different content: the same rule as across requests.
        ingest(
            "one event_id twice in a request with different content",
            json_body(&json!([
                ok("31"),
                with(ok("31"), &[("status", json!("picked"))])
            ])),
            409,
            &["conflict"],
        ),
        ingest(
            "a stored event_id with different content",
            json_body(&with(
                event("fx-e-0", "fx-o-1", "cancelled", base),
                &[("carrier", json!("fx-van"))],
            )),
            409,
            &["conflict"],
        ),
        // Query parameters.
        get(
            "timeline limit=0",
            format!("{timeline}?limit=0"),
            400,
            INVALID_PARAM,
        ),
        get(
            "timeline limit=10001",
            format!("{timeline}?limit=10001"),
            400,
            INVALID_PARAM,
        ),
        get(
            "timeline limit=abc",
            format!("{timeline}?limit=abc"),
            400,
            INVALID_PARAM,
        ),
        get(
            "timeline limit=-1",
            format!("{timeline}?limit=-1"),
            400,
            INVALID_PARAM,
        ),
        get(
            "timeline order=sideways",
            format!("{timeline}?order=sideways"),
            400,
            INVALID_PARAM,
        ),
        get(
            "cursor not base64",
            format!("{timeline}?cursor=!!!"),
            400,
            BAD_CURSOR,
        ),
        get(
            "tampered cursor",
            format!(
                "{timeline}?limit=2&order=asc&cursor={}",
                tamper(&cursors.timeline_asc)
            ),
            400,
            BAD_CURSOR,
        ),
        get(
            "truncated cursor",
            format!(
                "{timeline}?limit=2&order=asc&cursor={}",
                &cursors.timeline_asc[..cursors.timeline_asc.len() - 4]
            ),
            400,
            BAD_CURSOR,
        ),
        get(
            "ascending cursor used descending",
            format!(
                "{timeline}?limit=2&order=desc&cursor={}",
                cursors.timeline_asc
            ),
            400,
            BAD_CURSOR,
        ),
        get(
            "timeline cursor used on another order",
            format!(
                "/v1/orders/fx-o-2/events?limit=2&order=asc&cursor={}",
                cursors.timeline_asc
            ),
            400,
            BAD_CURSOR,
        ),
        get(
            "orders cursor used on a timeline",
            format!("{timeline}?limit=2&cursor={}", cursors.orders),
            400,
            BAD_CURSOR,
        ),
        get(
            "time-range cursor with another filter",
            format!(
                "{}&cursor={}",
                cursors
                    .range_query
                    .replace("carrier=fx-van", "carrier=other-van"),
                cursors.range
            ),
            400,
            BAD_CURSOR,
        ),
        get(
            "cursor of 600 characters",
            format!("{timeline}?cursor={}", "A".repeat(600)),
            400,
            BAD_CURSOR,
        ),
        get(
            "orders with an unknown status",
            "/v1/orders?status=lost".into(),
            400,
            INVALID_PARAM,
        ),
        get(
            "orders limit=0",
            "/v1/orders?status=delivered&limit=0".into(),
            400,
            INVALID_PARAM,
        ),
        get(
            "time range with a bad time",
            range("yesterday", &to, ""),
            400,
            INVALID_PARAM,
        ),
        get(
            "time range with more than millisecond precision",
            range("2025-01-02T03:04:05.123456Z", &to, ""),
            400,
            INVALID_PARAM,
        ),
        // API.md does not name the slug for from > to; either of the two 400 slugs is accepted.
        get(
            "time range with from after to",
            range(&to, &from, ""),
            400,
            &["invalid-parameter", "bad-request"],
        ),
        get(
            "time range with an unknown status",
            range(&from, &to, "&status=lost"),
            400,
            INVALID_PARAM,
        ),
        get(
            "time range limit=10001",
            range(&from, &to, "&limit=10001"),
            400,
            INVALID_PARAM,
        ),
        // Routes and methods.
        get("unknown route", "/v1/nope".into(), 404, &["not-found"]),
        get(
            "unknown order",
            "/v1/orders/bad-o-none".into(),
            404,
            &["not-found"],
        ),
        get(
            "timeline of an unknown order",
            "/v1/orders/bad-o-none/events".into(),
            404,
            &["not-found"],
        ),
        Case {
            fields: Fields::Listed(vec![(None, "order_id".into())]),
            ..get(
                "order id that is not UTF-8 once percent-decoded",
                "/v1/orders/%FF%FE".into(),
                400,
                INVALID_PARAM,
            )
        },
        Case {
            method: "PUT",
            ..ingest(
                "PUT on /v1/events",
                json_body(&ok("32")),
                405,
                &["method-not-allowed"],
            )
        },
        Case {
            method: "POST",
            ..get(
                "POST on /v1/stats",
                "/v1/stats".into(),
                405,
                &["method-not-allowed"],
            )
        },
    ]
}

/// Order ids named in a request body (JSON or NDJSON), at most a few.
fn orders_named(body: &[u8]) -> BTreeSet<String> {
    let mut values: Vec<Value> = Vec::new();
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => values.extend(items),
        Ok(v) => values.push(v),
        Err(_) => {
            for line in body.split(|b| *b == b'\n') {
                if let Ok(v) = serde_json::from_slice::<Value>(line) {
                    values.push(v);
                }
            }
        }
    }
    values
        .iter()
        .filter_map(|v| v.get("order_id").and_then(Value::as_str))
        .filter(|id| {
            !id.is_empty()
                && !id.starts_with("fx-")
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_owned)
        .take(3)
        .collect()
}

/// Checks the answer to one case; returns the problem or why it is wrong.
fn check(case: &Case, resp: &Response) -> Result<Value, String> {
    let mut wrong = Vec::new();
    if resp.status.as_u16() != case.status {
        wrong.push(format!("status {} (want {})", resp.status, case.status));
    }
    if !resp.content_type().starts_with("application/problem+json") {
        wrong.push(format!(
            "content type {:?} (want application/problem+json)",
            resp.content_type()
        ));
    }
    let problem: Value = match serde_json::from_slice(&resp.body) {
        Ok(p) => p,
        Err(_) => {
            wrong.push(format!("body is not JSON: {:?}", resp.text()));
            return Err(wrong.join("; "));
        }
    };
    let ty = problem["type"].as_str().unwrap_or("");
    let slug = ty.rsplit('/').next().unwrap_or("");
    if !case.slugs.contains(&slug) {
        wrong.push(format!(
            "type {ty:?} (want a type ending in {:?})",
            case.slugs
        ));
    }
    if problem["status"] != json!(case.status) {
        wrong.push(format!(
            "problem status {} (want {})",
            problem["status"], case.status
        ));
    }
    for key in ["title", "detail"] {
        if !problem[key].is_string() {
            wrong.push(format!("no string `{key}`"));
        }
    }
    if let Fields::Listed(want) = &case.fields {
        let errors = problem["errors"].as_array().cloned().unwrap_or_default();
        for (index, field) in want {
            let found = errors.iter().any(|e| {
                e["field"].as_str() == Some(field.as_str())
                    && e.get("index").and_then(Value::as_u64) == *index
                    && e["message"].as_str().is_some_and(|m| !m.is_empty())
            });
            if !found {
                wrong.push(format!(
                    "no error for field {field:?} at index {index:?} in `errors`: {}",
                    problem["errors"]
                ));
            }
        }
    }
    if wrong.is_empty() {
        Ok(problem)
    } else {
        Err(format!(
            "{}; body: {}",
            wrong.join("; "),
            truncate(&resp.text())
        ))
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 600 {
        format!("{}...", s.chars().take(600).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Runs the cases over one client; returns the problems by case name and the list of failures.
async fn run(
    client: &mut Client,
    cases: &[Case],
    mut stats_before: Value,
) -> (Vec<(&'static str, Option<Value>)>, Vec<String>) {
    let mut failures = Vec::new();
    let mut problems = Vec::new();
    let proto = client.proto;
    for case in cases {
        let what = format!(
            "{proto:?} {} {} [{}]",
            case.method,
            case.path_short(),
            case.name
        );
        let sent = if case.expect_continue && matches!(proto, Proto::H1 | Proto::H1Tls) {
            client
                .request_expect_continue(
                    case.method,
                    &case.path,
                    case.content_type.unwrap_or("application/json"),
                    &case.body,
                )
                .await
        } else {
            client
                .try_request(
                    case.method,
                    &case.path,
                    case.content_type,
                    case.body.clone(),
                    &[],
                )
                .await
        };
        let checked = sent
            .map_err(|e| format!("no response: {e}"))
            .and_then(|resp| check(case, &resp));
        match checked {
            Ok(p) => problems.push((case.name, Some(p))),
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                problems.push((case.name, None));
            }
        }
        let stats = client.stats().await;
        if stats != stats_before {
            failures.push(format!(
                "{what}: wrote something: stats {stats_before} -> {stats}"
            ));
            // Compare the next cases with the new state, so that one failure is reported once.
            stats_before = stats;
        }
        for order in orders_named(&case.body) {
            let resp = client.get(&format!("/v1/orders/{order}")).await;
            if resp.status.as_u16() != 404 {
                failures.push(format!(
                    "{what}: order {order} exists after a rejected request: {} {}",
                    resp.status,
                    resp.text()
                ));
            }
        }
    }
    (problems, failures)
}

impl Case {
    fn path_short(&self) -> String {
        truncate(&self.path).chars().take(120).collect()
    }
}

fn report(failures: &[String], total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {total} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_over_http1_is_a_problem_and_writes_nothing() {
    let server = Server::start();
    let base = base_time(2 * HOUR_MS);
    let mut client = server.client(Proto::H1).await;
    let cursors = fixture(&mut client, base).await;
    let cases = cases(base, &cursors);
    assert!(cases.len() >= 25);
    let stats_before = client.stats().await;
    assert_eq!(stats_before["events"], json!(7), "fixture: {stats_before}");
    let (_, mut failures) = run(&mut client, &cases, stats_before).await;

    // The controls: the same server accepts the well-formed versions of these requests (run before
    // the report so that they are checked whatever failed above).
    let events_before = client.stats().await["events"].as_u64().expect("a count");
    let resp = client
        .request(
            "POST",
            "/v1/events",
            Some("application/json; charset=utf-8"),
            json_body(&event("ctl-e-1", "ctl-o-1", "created", base)),
            &[],
        )
        .await;
    resp.expect_json(200, "control: a valid event with a charset parameter");
    let resp = client
        .request(
            "POST",
            "/v1/events",
            Some("application/x-ndjson; charset=utf-8"),
            ndjson_body(&[event("ctl-e-2", "ctl-o-1", "picked", base)]),
            &[],
        )
        .await;
    resp.expect_json(200, "control: NDJSON with a charset parameter");
    let page = client
        .get_json(&format!(
            "/v1/orders/fx-o-1/events?limit=2&order=asc&cursor={}",
            cursors.timeline_asc
        ))
        .await;
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(2),
        "control: the untampered cursor works: {page}"
    );
    client
        .get_json("/v1/orders/fx-o-1/events?limit=10000")
        .await;
    let events_after = client.stats().await["events"].as_u64().expect("a count");
    if events_after != events_before + 2 {
        failures.push(format!(
            "controls: events {events_before} -> {events_after}, want two more"
        ));
    }
    report(&failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_same_problem_over_http2_and_http3() {
    let server = Server::start();
    let base = base_time(2 * HOUR_MS);
    let mut h1 = server.client(Proto::H1).await;
    let cursors = fixture(&mut h1, base).await;
    let selected = [
        "truncated JSON",
        "unknown status",
        "occurred_at 10 minutes in the future",
        "attributes with a nested object",
        "two invalid events of three, all listed",
        "empty array",
        "body over 8 MiB",
        "10,001 events in NDJSON",
        "text/plain",
        "one event_id twice in a request with different content",
        "timeline limit=0",
        "tampered cursor",
        "unknown route",
        "unknown order",
        "PUT on /v1/events",
    ];
    let cases: Vec<Case> = cases(base, &cursors)
        .into_iter()
        .filter(|c| selected.contains(&c.name))
        .collect();
    assert_eq!(cases.len(), selected.len(), "every selected case exists");
    let stats_before = h1.stats().await;
    let (reference, mut failures) = run(&mut h1, &cases, stats_before.clone()).await;
    for proto in [Proto::H2, Proto::H3, Proto::H2c, Proto::H1Tls] {
        let mut client = server.client(proto).await;
        let (problems, f) = run(&mut client, &cases, stats_before.clone()).await;
        failures.extend(f);
        // Same problem over every protocol (the free-text detail may differ).
        for ((name, a), (_, b)) in reference.iter().zip(&problems) {
            if let (Some(a), Some(b)) = (a, b) {
                let key = |p: &Value| json!([p["type"], p["title"], p["status"], p["errors"]]);
                if key(a) != key(b) {
                    failures.push(format!(
                        "{proto:?} [{name}]: problem {b} differs from HTTP/1.1's {a}"
                    ));
                }
            }
        }
    }
    report(&failures, cases.len() * 5);
}
