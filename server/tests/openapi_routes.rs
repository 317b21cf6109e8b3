//! The OpenAPI document kept in the repo (`server/openapi.json`, served at `/v1/openapi.json`) lists
//! exactly the routes of the router, and every listed route reaches a handler.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;
use trackstore_engine::{Engine, EngineOptions};
use trackstore_server::api::{self, App, OPENAPI, ROUTES};
use trackstore_server::config::{Config, Limits};
use trackstore_server::hub::Hub;
use trackstore_server::maintenance::Maintenance;
use trackstore_server::metrics::Metrics;

fn documented() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let doc = documented();
    let missing: Vec<_> = routes.difference(&doc).collect();
    let extra: Vec<_> = doc.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.json lists routes that do not exist: {extra:?}"
    );
}

#[tokio::test]
async fn every_route_reaches_a_handler() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let (_tx, shutdown) = watch::channel(false);
    let limits = Limits::default();
    let metrics = Arc::new(Metrics::new());
    let app = Arc::new(App {
        replication: trackstore_server::replication::Replication::standalone(engine.clone()),
        hub: Arc::new(Hub::new(engine.last_lsn())),
        maintenance: Arc::new(Maintenance::new(
            engine.clone(),
            metrics.clone(),
            Config::default().maintenance,
        )),
        engine,
        metrics,
        inflight: Arc::new(Semaphore::new(limits.max_inflight_requests)),
        body_budget: Arc::new(Semaphore::new(api::body_budget_permits(
            limits.max_inflight_body_bytes,
        ))),
        limits,
        shutdown,
        shutting_down: AtomicBool::new(false),
        h3_port: None,
    });
    let router = api::router(app);
    for (method, path) in ROUTES {
        let path = path.replace("{order_id}", "o-1").replace("{lsn}", "1");
        // The stream never ends by itself: check its head only.
        let req = Request::builder()
            .method(method)
            .uri(&path)
            .header("content-type", "application/json")
            .body(Body::from(if method == "POST" { "[]" } else { "" }))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        if path == "/v1/stream" {
            assert_eq!(status, StatusCode::OK);
            continue;
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("no route for") && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status} {text}"
        );
    }
    // And the fallbacks answer with problems.
    let resp = router
        .clone()
        .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = router
        .oneshot(Request::delete("/v1/stats").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}
