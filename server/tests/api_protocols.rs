//! The HTTP API end to end, over every protocol the server speaks, against one running `trackstore`:
//! ingest (object, array, NDJSON), idempotency, conflicts, order state, timelines, orders by status,
//! time ranges, stats and the operational endpoints. Each protocol runs the same scenario on its own
//! ids and carriers; the transcripts (normalised for ids, LSNs and receive times) must be identical,
//! and the same resources read over every protocol must be identical byte for byte.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::{
    HOUR_MS, MINUTE_MS, Proto, Server, base_time, collect_pages, event, q, rfc3339, with,
};

/// One step of a protocol's transcript: a label and what the server answered, normalised.
type Transcript = Vec<(String, Value)>;

/// Rewrites what legitimately differs between two runs of the scenario: the protocol tag in ids and
/// carriers, LSNs (relative to the scenario's first), receive times and cursors.
fn normalise(v: &Value, tag: &str, lsn_base: u64) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace(&format!("{tag}-"), "P-")),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| normalise(i, tag, lsn_base)).collect())
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("lsn" | "last_lsn", Value::Number(n)) => {
                            json!(n.as_u64().expect("LSNs are u64").wrapping_sub(lsn_base))
                        }
                        ("received_at" | "updated_at", Value::String(_)) => json!("<time>"),
                        ("next_cursor", Value::String(_)) => json!("<cursor>"),
                        ("detail", Value::String(_)) => json!("<detail>"),
                        // Messages may quote LSNs: compare them without numbers.
                        ("message", Value::String(m)) => json!(
                            m.replace(&format!("{tag}-"), "P-")
                                .split(|c: char| c.is_ascii_digit())
                                .filter(|part| !part.is_empty())
                                .collect::<Vec<_>>()
                                .join("#")
                        ),
                        _ => normalise(v, tag, lsn_base),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["event_id"]
                .as_str()
                .or_else(|| e["order_id"].as_str())
                .expect("an id")
                .to_owned()
        })
        .collect()
}

fn lsn_of(result: &Value) -> u64 {
    result["lsn"].as_u64().expect("a result has a u64 lsn")
}

/// Checks an ingest response: one result per event in request order, with these outcomes; returns
/// the LSNs.
fn check_results(body: &Value, sent: &[&Value], outcomes: &[&str], what: &str) -> Vec<u64> {
    let results = body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no results array: {body}"));
    assert_eq!(
        results.len(),
        sent.len(),
        "{what}: one result per event: {body}"
    );
    for ((r, e), outcome) in results.iter().zip(sent).zip(outcomes) {
        assert_eq!(
            r["event_id"], e["event_id"],
            "{what}: results in request order: {body}"
        );
        assert_eq!(r["outcome"], json!(outcome), "{what}: outcome: {body}");
        assert!(lsn_of(r) > 0, "{what}: LSNs start at 1: {body}");
    }
    results.iter().map(lsn_of).collect()
}

fn by_status_count(stats: &Value, status: &str) -> i64 {
    stats["by_status"][status].as_i64().unwrap_or(0)
}

/// The scenario one protocol runs on its own orders (`{tag}-o-N`) and carriers (`{tag}-van-N`), with
/// the same event times as every other protocol. Returns its normalised transcript.
async fn scenario(client: &mut support::Client, base: i64) -> Transcript {
    let tag = client.proto.tag();
    let t = |s: &str| format!("{tag}-{s}");
    let (c1, c2) = (t("van-1"), t("van-2"));
    let (o1, o2, o3, o4) = (t("o-1"), t("o-2"), t("o-3"), t("o-4"));
    let mut tr: Transcript = Vec::new();
    let stats_before = client.stats().await;

    // A. One event object, with a content-type parameter.
    let e1 = with(
        event(&t("e-1"), &o1, "created", base),
        &[("carrier", json!(c1)), ("source", json!("shop"))],
    );
    let resp = client
        .request(
            "POST",
            "/v1/events",
            Some("application/json; charset=utf-8"),
            serde_json::to_vec(&e1).expect("JSON"),
            &[],
        )
        .await;
    let body = resp.expect_json(200, &format!("{tag}: ingest one object"));
    let lsn1 = check_results(&body, &[&e1], &["created"], "ingest one object")[0];
    let lsn_base = lsn1 - 1;
    let norm = |v: &Value| normalise(v, tag, lsn_base);
    tr.push(("ingest object".into(), norm(&body)));

    // B. An array.
    let e2 = with(
        event(&t("e-2"), &o1, "allocated", base + 10 * MINUTE_MS),
        &[("carrier", json!(c1))],
    );
    let e3 = with(
        event(&t("e-3"), &o1, "picked", base + 20 * MINUTE_MS),
        &[("carrier", json!(c1))],
    );
    let e4 = with(
        event(&t("e-4"), &o1, "dispatched", base + 30 * MINUTE_MS),
        &[
            ("carrier", json!(c1)),
            ("location", json!({"lat": 51.5, "lon": -0.12})),
        ],
    );
    let body = client
        .post_json("/v1/events", &json!([e2, e3, e4]))
        .await
        .expect_json(200, &format!("{tag}: ingest an array"));
    let lsns = check_results(&body, &[&e2, &e3, &e4], &["created"; 3], "ingest an array");
    assert!(
        lsn1 < lsns[0] && lsns[0] < lsns[1] && lsns[1] < lsns[2],
        "{tag}: LSNs increase in request order: {lsn1} then {lsns:?}"
    );
    let (lsn2, lsn3, lsn4) = (lsns[0], lsns[1], lsns[2]);
    tr.push(("ingest array".into(), norm(&body)));

    // C. NDJSON, several orders.
    let eta = rfc3339(base + 4 * HOUR_MS);
    let e5 = with(
        event(&t("e-5"), &o1, "out_for_delivery", base + 40 * MINUTE_MS),
        &[
            ("carrier", json!(c1)),
            ("source", json!(format!("carrier:{c1}"))),
            (
                "location",
                json!({"lat": 51.51, "lon": -0.13, "name": "Depot 3"}),
            ),
            ("eta", json!(eta)),
            (
                "attributes",
                json!({"van": "v-17", "slot": 3, "fragile": true, "weight_kg": 1.25}),
            ),
        ],
    );
    let f1 = with(
        event(&t("f-1"), &o2, "created", base + 5 * MINUTE_MS),
        &[("carrier", json!(c2))],
    );
    let f2 = with(
        event(&t("f-2"), &o2, "delivered", base + 50 * MINUTE_MS),
        &[
            ("carrier", json!(c2)),
            ("reason", json!("left_with_neighbour")),
        ],
    );
    let g1 = with(
        event(&t("g-1"), &o3, "out_for_delivery", base + 42 * MINUTE_MS),
        &[("carrier", json!(c1))],
    );
    let h1 = with(
        event(&t("h-1"), &o4, "out_for_delivery", base + 44 * MINUTE_MS),
        &[("carrier", json!(c2))],
    );
    let resp = client
        .post_ndjson(&[e5.clone(), f1.clone(), f2.clone(), g1.clone(), h1.clone()])
        .await;
    let body = resp.expect_json(200, &format!("{tag}: ingest NDJSON"));
    let lsns = check_results(
        &body,
        &[&e5, &f1, &f2, &g1, &h1],
        &["created"; 5],
        "ingest NDJSON",
    );
    let lsn5 = lsns[0];
    assert!(lsns.windows(2).all(|w| w[0] < w[1]) && lsn4 < lsn5);
    tr.push(("ingest ndjson".into(), norm(&body)));

    // D. Duplicates: same content answers `duplicate` with the original LSN, alone, mixed with a new
    // event, and twice inside one request.
    let body = client
        .post_json("/v1/events", &e1)
        .await
        .expect_json(200, &format!("{tag}: duplicate"));
    let dup = check_results(&body, &[&e1], &["duplicate"], "duplicate");
    assert_eq!(
        dup,
        vec![lsn1],
        "{tag}: a duplicate answers the original LSN"
    );
    tr.push(("duplicate".into(), norm(&body)));

    let n1 = with(
        event(&t("h-2"), &o4, "dispatched", base + 20 * MINUTE_MS),
        &[("carrier", json!(c2))],
    );
    let n2 = with(
        event(&t("f-3"), &o2, "in_transit", base + 30 * MINUTE_MS),
        &[("carrier", json!(c2))],
    );
    let body = client
        .post_json("/v1/events", &json!([e3, n1, n2, n2]))
        .await
        .expect_json(200, &format!("{tag}: duplicates mixed with new events"));
    let r = check_results(
        &body,
        &[&e3, &n1, &n2, &n2],
        &["duplicate", "created", "created", "duplicate"],
        "duplicates mixed with new events",
    );
    assert_eq!(r[0], lsn3, "{tag}: duplicate answers the original LSN");
    assert_eq!(
        r[2], r[3],
        "{tag}: a duplicate inside one request answers the LSN of the first"
    );
    assert!(r[1] > lsns[4] && r[2] > r[1]);
    tr.push(("duplicates mixed".into(), norm(&body)));
    let created_count = 1 + 3 + 5 + 2;

    // E. Conflicts: same id, other content. Atomic: the new event in the same request is not written.
    let stats_mid = client.stats().await;
    let resp = client
        .post_json(
            "/v1/events",
            &with(e1.clone(), &[("status", json!("picked"))]),
        )
        .await;
    let p = resp.expect_problem(409, "conflict", &format!("{tag}: conflict"));
    tr.push(("conflict".into(), norm(&p)));
    let lone = event(&t("e-9"), &t("o-9"), "created", base);
    let resp = client
        .post_json(
            "/v1/events",
            &json!([lone, with(e2.clone(), &[("carrier", json!(c2))])]),
        )
        .await;
    let p = resp.expect_problem(409, "conflict", &format!("{tag}: conflict in an array"));
    tr.push(("conflict in array".into(), norm(&p)));
    let resp = client.get(&format!("/v1/orders/{}", t("o-9"))).await;
    resp.expect_problem(
        404,
        "not-found",
        &format!("{tag}: order of a rejected request"),
    );
    assert_eq!(
        client.stats().await,
        stats_mid,
        "{tag}: a rejected request writes nothing"
    );

    // F. Timeline: asc and desc, paged by 2 over the 5 events of o1, and whole.
    let path = format!("/v1/orders/{o1}/events?limit=100");
    let whole = client.get_json(&path).await;
    let events = whole["events"].as_array().expect("events").clone();
    assert_eq!(
        whole["next_cursor"],
        Value::Null,
        "{tag}: one page holds all"
    );
    assert_eq!(
        ids(&events),
        [&e1, &e2, &e3, &e4, &e5].map(|e| e["event_id"].as_str().expect("id").to_owned()),
        "{tag}: timeline in occurred_at order"
    );
    for (stored, (sent, lsn)) in events.iter().zip([
        (&e1, lsn1),
        (&e2, lsn2),
        (&e3, lsn3),
        (&e4, lsn4),
        (&e5, lsn5),
    ]) {
        let stored_obj = stored.as_object().expect("an event object");
        for (k, v) in sent.as_object().expect("an event object") {
            assert_eq!(&stored[k], v, "{tag}: stored {k} of {}", sent["event_id"]);
        }
        assert_eq!(stored["lsn"], json!(lsn), "{tag}: stored lsn");
        let received = stored["received_at"].as_str().expect("received_at");
        assert!(
            received.len() == 24 && received.ends_with('Z'),
            "{tag}: received_at in UTC with millis: {received}"
        );
        let extra: BTreeSet<&str> = stored_obj
            .keys()
            .map(String::as_str)
            .filter(|k| !sent.as_object().expect("object").contains_key(*k))
            .collect();
        assert_eq!(
            extra,
            BTreeSet::from(["lsn", "received_at"]),
            "{tag}: the stored event adds lsn and received_at only"
        );
    }
    tr.push(("timeline".into(), norm(&whole)));
    let (asc, sizes) = collect_pages(
        client,
        &format!("/v1/orders/{o1}/events?limit=2&order=asc"),
        "events",
        2,
    )
    .await;
    assert_eq!(sizes, [2, 2, 1], "{tag}: 5 events by pages of 2");
    assert_eq!(
        asc, events,
        "{tag}: pages ascending equal the whole timeline"
    );
    let (desc, sizes) = collect_pages(
        client,
        &format!("/v1/orders/{o1}/events?limit=2&order=desc"),
        "events",
        2,
    )
    .await;
    assert_eq!(
        sizes,
        [2, 2, 1],
        "{tag}: 5 events by pages of 2, descending"
    );
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(desc, reversed, "{tag}: descending is the reverse");
    tr.push(("timeline desc pages".into(), norm(&json!(desc))));
    let resp = client
        .get(&format!("/v1/orders/{}/events", t("o-unknown")))
        .await;
    let p = resp.expect_problem(
        404,
        "not-found",
        &format!("{tag}: timeline of an unknown order"),
    );
    tr.push(("timeline of an unknown order".into(), norm(&p)));
    let resp = client.get(&format!("/v1/orders/{}", t("o-unknown"))).await;
    let p = resp.expect_problem(404, "not-found", &format!("{tag}: unknown order"));
    tr.push(("unknown order".into(), norm(&p)));

    // G. Order state.
    let state = client.get_json(&format!("/v1/orders/{o1}")).await;
    let expect_state = |state: &Value, count: u64, last: u64, updated: &Value| {
        assert_eq!(state["order_id"], json!(o1), "{tag}: state {state}");
        assert_eq!(state["status"], json!("out_for_delivery"), "{tag}: {state}");
        assert_eq!(state["status_at"], e5["occurred_at"], "{tag}: {state}");
        assert_eq!(state["carrier"], json!(c1), "{tag}: {state}");
        assert_eq!(state["location"], e5["location"], "{tag}: {state}");
        assert_eq!(state["eta"], json!(eta), "{tag}: {state}");
        assert_eq!(state["event_count"], json!(count), "{tag}: {state}");
        assert_eq!(state["last_lsn"], json!(last), "{tag}: {state}");
        assert_eq!(&state["updated_at"], updated, "{tag}: updated_at: {state}");
    };
    expect_state(&state, 5, lsn5, &events[4]["received_at"]);
    tr.push(("order state".into(), norm(&state)));

    // H. A late event for an earlier moment enters the timeline in its place and changes no status.
    let e6 = with(
        event(&t("e-6"), &o1, "in_transit", base + 35 * MINUTE_MS),
        &[
            ("carrier", json!(c1)),
            ("location", json!({"lat": 52.0, "lon": 0.1})),
        ],
    );
    let body = client
        .post_json("/v1/events", &e6)
        .await
        .expect_json(200, &format!("{tag}: late event"));
    let lsn6 = check_results(&body, &[&e6], &["created"], "late event")[0];
    let whole = client.get_json(&path).await;
    let events = whole["events"].as_array().expect("events").clone();
    assert_eq!(
        ids(&events),
        [&e1, &e2, &e3, &e4, &e6, &e5].map(|e| e["event_id"].as_str().expect("id").to_owned()),
        "{tag}: the late event in its place"
    );
    let state = client.get_json(&format!("/v1/orders/{o1}")).await;
    expect_state(&state, 6, lsn6, &events[4]["received_at"]);
    tr.push(("order state after late event".into(), norm(&state)));
    let created_count = created_count + 1;

    // I. Orders by current status, with a carrier filter, paged by 1.
    for (status, carrier, want) in [
        ("out_for_delivery", &c1, vec![o1.clone(), o3.clone()]),
        ("out_for_delivery", &c2, vec![o4.clone()]),
        ("delivered", &c2, vec![o2.clone()]),
        ("created", &c1, vec![]),
    ] {
        let first = format!("/v1/orders?status={status}&carrier={carrier}&limit=1");
        let (orders, _) = collect_pages(client, &first, "orders", 1).await;
        let got: BTreeSet<String> = ids(&orders).into_iter().collect();
        assert_eq!(
            got,
            want.iter().cloned().collect(),
            "{tag}: {first}: {orders:?}"
        );
        for o in &orders {
            let id = o["order_id"].as_str().expect("order_id");
            assert_eq!(
                o,
                &client.get_json(&format!("/v1/orders/{id}")).await,
                "{tag}: {first}: items are order states"
            );
        }
        tr.push((format!("orders {status} {carrier}"), norm(&json!(orders))));
        let one_page = client
            .get_json(&format!(
                "/v1/orders?status={status}&carrier={carrier}&limit=100"
            ))
            .await;
        assert_eq!(one_page["orders"], json!(orders), "{tag}: one page or many");
    }

    // J. Time range: from inclusive, to exclusive, (occurred_at, lsn) order, filters, paging.
    let range = |from: i64, to: i64, filters: &str, limit: usize| {
        format!(
            "/v1/events?from={}&to={}{filters}&limit={limit}",
            q(&rfc3339(from)),
            q(&rfc3339(to))
        )
    };
    let name = |e: &Value| e["event_id"].as_str().expect("id").to_owned();
    for (from, to, filters, want) in [
        (
            base,
            base + 45 * MINUTE_MS,
            format!("&carrier={c1}"),
            vec![&e1, &e2, &e3, &e4, &e6, &e5, &g1],
        ),
        (
            base + 10 * MINUTE_MS,
            base + 40 * MINUTE_MS,
            format!("&carrier={c1}"),
            vec![&e2, &e3, &e4, &e6],
        ),
        (
            base,
            base + HOUR_MS,
            format!("&carrier={c1}&status=out_for_delivery"),
            vec![&e5, &g1],
        ),
        (
            base,
            base + HOUR_MS,
            format!("&status=delivered&carrier={c2}"),
            vec![&f2],
        ),
        (
            base + 5 * MINUTE_MS,
            base + 50 * MINUTE_MS,
            format!("&carrier={c2}"),
            vec![&f1, &n1, &n2, &h1],
        ),
    ] {
        let first = range(from, to, &filters, 2);
        let (events, _) = collect_pages(client, &first, "events", 2).await;
        assert_eq!(
            ids(&events),
            want.iter().map(|e| name(e)).collect::<Vec<_>>(),
            "{tag}: {first}"
        );
        let whole = client.get_json(&range(from, to, &filters, 1000)).await;
        assert_eq!(
            whole["events"],
            json!(events),
            "{tag}: {first}: one page or many"
        );
        tr.push((
            format!("range {}", filters.replace(tag, "P")),
            norm(&json!(events)),
        ));
    }

    // K. Stats moved by exactly what this scenario created.
    let stats = client.stats().await;
    let delta =
        |k: &str| stats[k].as_i64().expect("a count") - stats_before[k].as_i64().expect("a count");
    assert_eq!(
        delta("events"),
        created_count,
        "{tag}: events created: {stats}"
    );
    assert_eq!(delta("orders"), 4, "{tag}: orders created: {stats}");
    assert_eq!(
        stats["last_lsn"],
        json!(lsn6.max(r[2])),
        "{tag}: last_lsn: {stats}"
    );
    for (status, n) in [("out_for_delivery", 3), ("delivered", 1), ("created", 0)] {
        assert_eq!(
            by_status_count(&stats, status) - by_status_count(&stats_before, status),
            n,
            "{tag}: by_status.{status}: {stats_before} -> {stats}"
        );
    }

    // L. Operations.
    for path in ["/healthz", "/readyz"] {
        let resp = client.get(path).await;
        assert_eq!(resp.status.as_u16(), 200, "{tag}: {path}: {}", resp.text());
        tr.push((path.into(), json!(resp.status.as_u16())));
    }
    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status.as_u16(), 200, "{tag}: /metrics");
    assert!(
        metrics.content_type().starts_with("text/plain")
            || metrics
                .content_type()
                .starts_with("application/openmetrics-text"),
        "{tag}: /metrics content type {:?}",
        metrics.content_type()
    );
    let text = metrics.text();
    assert!(
        text.lines().any(|l| l.starts_with("trackstore_")),
        "{tag}: /metrics has trackstore_ samples:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE trackstore_")),
        "{tag}: /metrics in the text exposition format (# TYPE lines):\n{text}"
    );
    let repl = client.get_json("/v1/admin/replication").await;
    assert_eq!(repl["role"], json!("primary"), "{tag}: {repl}");
    assert_eq!(
        repl["last_lsn"], stats["last_lsn"],
        "{tag}: {repl} vs {stats}"
    );
    assert!(repl["epoch"].is_u64(), "{tag}: epoch: {repl}");
    let api = client.get("/v1/openapi.json").await;
    let doc = api.expect_json(200, &format!("{tag}: openapi"));
    let paths = doc["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("{tag}: openapi has a paths object"));
    for p in ["/v1/events", "/v1/orders", "/v1/stats"] {
        assert!(paths.contains_key(p), "{tag}: openapi documents {p}");
    }
    tr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_api_same_answers_over_every_protocol() {
    let server = Server::start();
    // Every protocol's events happen at the same times, three hours ago.
    let base = base_time(3 * HOUR_MS);
    let mut transcripts: Vec<(Proto, Transcript)> = Vec::new();
    for proto in Proto::ALL {
        let mut client = server.client(proto).await;
        transcripts.push((proto, scenario(&mut client, base).await));
    }
    let (first_proto, first) = &transcripts[0];
    for (proto, tr) in &transcripts[1..] {
        assert_eq!(tr.len(), first.len());
        for ((label, a), (_, b)) in first.iter().zip(tr) {
            assert_eq!(
                a, b,
                "{label}: {first_proto:?} and {proto:?} answered differently"
            );
        }
    }

    // The same resources read over every protocol are identical, byte for byte.
    let from = q(&rfc3339(base));
    let to = q(&rfc3339(base + HOUR_MS));
    let paths = [
        "/v1/orders/h1-o-1".to_owned(),
        "/v1/orders/h3-o-2".to_owned(),
        "/v1/orders/h2-o-1/events?limit=100".to_owned(),
        "/v1/orders/h2-o-1/events?limit=3&order=desc".to_owned(),
        "/v1/orders?status=out_for_delivery&limit=100".to_owned(),
        format!("/v1/events?from={from}&to={to}&limit=10000"),
        format!("/v1/events?from={from}&to={to}&status=delivered&limit=2"),
        "/v1/stats".to_owned(),
        "/v1/admin/replication".to_owned(),
        "/v1/openapi.json".to_owned(),
    ];
    let mut clients = Vec::new();
    for proto in Proto::ALL {
        clients.push(server.client(proto).await);
    }
    for path in &paths {
        let mut answers = Vec::new();
        for c in &mut clients {
            let resp = c.get(path).await;
            assert_eq!(
                resp.status.as_u16(),
                200,
                "{:?} GET {path}: {}",
                c.proto,
                resp.text()
            );
            answers.push((c.proto, resp));
        }
        let (p0, r0) = &answers[0];
        for (p, r) in &answers[1..] {
            assert_eq!(
                r0.content_type(),
                r.content_type(),
                "GET {path}: content type over {p0:?} and {p:?}"
            );
            assert!(
                r0.body == r.body,
                "GET {path}: bodies differ over {p0:?} and {p:?}:\n{}\n{}",
                r0.text(),
                r.text()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_responses_advertise_http3() {
    let server = Server::start();
    let want = format!("h3=\":{}\"", server.addrs.h3.port());
    for proto in [Proto::H2, Proto::H1Tls] {
        let mut client = server.client(proto).await;
        for path in ["/healthz", "/v1/stats", "/v1/orders/nope"] {
            let resp = client.get(path).await;
            let alt = resp.header("alt-svc").unwrap_or_else(|| {
                panic!(
                    "{proto:?} GET {path}: no alt-svc header: {:?}",
                    resp.headers
                )
            });
            assert!(
                alt.contains(&want),
                "{proto:?} GET {path}: alt-svc {alt:?} does not advertise {want}"
            );
        }
    }
    // The advertised endpoint really is HTTP/3 (the client asserts the response version).
    let mut h3 = server.client(Proto::H3).await;
    assert_eq!(h3.get("/healthz").await.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_on_multiplexed_connections() {
    let server = Server::start();
    let base = base_time(HOUR_MS);
    // One task per request on separate clients for HTTP/2 and HTTP/3 each: the server must keep
    // the results apart and commit every event.
    let mut tasks = Vec::new();
    for proto in [Proto::H2, Proto::H3, Proto::H1] {
        for i in 0..8 {
            let mut client = server.client(proto).await;
            let tag = proto.tag();
            tasks.push(tokio::spawn(async move {
                let e = event(
                    &format!("{tag}-c-{i}"),
                    &format!("{tag}-co-{}", i % 3),
                    "created",
                    base + i64::from(i) * MINUTE_MS,
                );
                let body = client
                    .post_json("/v1/events", &e)
                    .await
                    .expect_json(200, &format!("{tag}: concurrent ingest {i}"));
                assert_eq!(body["results"][0]["event_id"], e["event_id"]);
                assert_eq!(body["results"][0]["outcome"], json!("created"));
                lsn_of(&body["results"][0])
            }));
        }
    }
    let mut lsns = BTreeSet::new();
    for t in tasks {
        assert!(lsns.insert(t.await.expect("task")), "LSNs are never reused");
    }
    let mut client = server.client(Proto::H1).await;
    let stats = client.stats().await;
    assert_eq!(stats["events"], json!(24), "{stats}");
    assert_eq!(stats["orders"], json!(9), "{stats}");
    assert_eq!(
        stats["last_lsn"],
        json!(lsns.last().copied().expect("24 LSNs")),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_acknowledged_events_survive_a_restart() {
    let mut server = Server::start();
    let base = base_time(HOUR_MS);
    let e = with(
        event("s-1", "s-o-1", "dispatched", base),
        &[("carrier", json!("van-9"))],
    );
    let (state_before, timeline_before) = {
        let mut client = server.client(Proto::H2).await;
        client
            .post_json("/v1/events", &e)
            .await
            .expect_json(200, "ingest before SIGTERM");
        (
            client.get_json("/v1/orders/s-o-1").await,
            client.get_json("/v1/orders/s-o-1/events").await,
        )
    };
    let status = server.stop();
    assert!(
        status.success(),
        "trackstore exits 0 on SIGTERM, got {status:?}; stderr:\n{}",
        server.stderr()
    );
    server.restart();
    let mut client = server.client(Proto::H3).await;
    assert_eq!(client.get("/readyz").await.status.as_u16(), 200);
    // The first reads after the restart find nothing cached (the memtables were flushed at
    // shutdown): they take the blocking path.
    assert_eq!(
        client.get_json("/v1/orders/s-o-1/events").await,
        timeline_before
    );
    assert_eq!(client.get_json("/v1/orders/s-o-1").await, state_before);
    let metrics = client.get("/metrics").await.text();
    for query in ["order_state", "timeline"] {
        let sample = format!("trackstore_reads_from_disk_total{{query=\"{query}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&sample))
            .unwrap_or_else(|| panic!("no {sample:?} in /metrics:\n{metrics}"))
            .parse()
            .expect("a count");
        assert!(
            count >= 1,
            "the {query} read after the restart came from disk"
        );
    }
    let body = client
        .post_json("/v1/events", &e)
        .await
        .expect_json(200, "the same event after a restart");
    assert_eq!(body["results"][0]["outcome"], json!("duplicate"), "{body}");
    assert_eq!(
        body["results"][0]["lsn"], state_before["last_lsn"],
        "{body}"
    );
    client
        .post_json(
            "/v1/events",
            &json!([
                event("s-2", "s-o-1", "picked", base),
                event("s-2", "s-o-1", "picking", base)
            ]),
        )
        .await
        .expect_problem(
            409,
            "conflict",
            "an id twice in one request with different content",
        );
    assert_eq!(
        client.get_json("/v1/orders/s-o-1").await,
        state_before,
        "a rejected request writes nothing"
    );
}
