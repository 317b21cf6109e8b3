//! trackctl's data protection commands against a real `trackstore` with access tokens: `erase`
//! (refused without --yes, refused without the admin scope, not-found for an unknown order, the
//! receipt as JSON and as a table), `erasure check` in each of its cases (valid, no erasure at the
//! LSN, another order, the order ingested again), and `purge` (the erased data leaves the disk, the
//! other order stays exactly as it was).

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{Output, Server, base_time, ctl, event, h1, ndjson, over, write};

const ERASED: &str = "erase-subject-9d41";
/// Only the erased order's events carry it: after the purge no file may hold it.
const SECRET: &str = "Quentin-Marlowe-5520";
const KEPT: &str = "erase-kept-order-3b7c";
const OTHER: &str = "erase-other-order-11";
const MINUTE_MS: i64 = 60_000;

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

fn erased_events(base: i64) -> Vec<Value> {
    ["created", "picked", "dispatched"]
        .iter()
        .enumerate()
        .map(|(i, status)| {
            let mut e = event(
                &format!("es-{i}"),
                ERASED,
                status,
                base + i as i64 * MINUTE_MS,
            );
            e["attributes"] = json!({ "recipient": SECRET });
            e
        })
        .collect()
}

/// A token with `scopes` and the `[[tokens]]` entry for the server's configuration.
fn token(scopes: &str, name: &str) -> (String, String) {
    let out = ctl(&["token", "create", "--scopes", scopes, "--name", name])
        .run()
        .expect_code(0, "token create");
    (out.stdout.trim().to_owned(), out.stderr)
}

fn line_value<'a>(out: &'a Output, key: &str) -> &'a str {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).filter(|rest| rest.starts_with(' ')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} line: {out:#?}"))
}

#[test]
fn erase_check_and_purge_through_trackctl() {
    let (admin, admin_entry) = token("read,ingest,admin", "auditor");
    let (app, app_entry) = token("read,ingest", "app");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "server.toml", &(admin_entry + &app_entry));
    let server = Server::start_with(&["--config", &config.display().to_string()]);
    let as_admin = |args: &[&str]| ctl(&h1(&server, args)).env("TRACKCTL_TOKEN", &admin).run();
    let as_app = |args: &[&str]| ctl(&h1(&server, args)).env("TRACKCTL_TOKEN", &app).run();
    // The same over HTTP/2 or HTTP/3 with TLS: DELETE and the bodiless POST on every protocol.
    let as_admin_over = |proto: &str, args: &[&str]| {
        let mut a = over(&server, proto, true);
        a.extend(args.iter().map(|s| (*s).to_owned()));
        ctl(&a).env("TRACKCTL_TOKEN", &admin).run()
    };

    let base = base_time(60 * MINUTE_MS);
    let mut events = erased_events(base);
    events.push(event("ek-0", KEPT, "created", base));
    events.push(event("ek-1", KEPT, "picked", base + MINUTE_MS));
    events.push(event("eo-0", OTHER, "created", base));
    let out = ctl(&h1(&server, &["ingest", "-"]))
        .env("TRACKCTL_TOKEN", &admin)
        .stdin(ndjson(&events))
        .run()
        .expect_code(0, "ingest");
    assert!(out.stdout.contains("created    6"), "{out:#?}");
    let kept_before = as_admin(&["--json", "events", KEPT])
        .expect_code(0, "the kept order's timeline")
        .json();
    let last_lsn = as_admin(&["--json", "stats"])
        .expect_code(0, "stats")
        .json()["last_lsn"]
        .as_u64()
        .expect("last_lsn");
    assert_eq!(last_lsn, 6);

    let data = server.data_dir();
    assert!(
        !files_containing(&data, SECRET).is_empty(),
        "the search must find the data before it is erased"
    );

    // Without --yes nothing is sent: the order is untouched.
    let out = as_admin(&["erase", ERASED]).expect_code(2, "erase without --yes");
    assert!(
        out.stderr.contains("cannot be undone") && out.stderr.contains("--yes"),
        "{out:#?}"
    );
    assert!(out.stdout.is_empty(), "{out:#?}");
    let state = as_admin(&["--json", "order", ERASED])
        .expect_code(0, "still there")
        .json();
    assert_eq!(state["event_count"], 3, "{state}");
    // Erasure needs the admin scope.
    let out = as_app(&["erase", ERASED, "--yes"]).expect_code(1, "no admin scope");
    assert!(out.stderr.contains("403"), "{out:#?}");

    let receipt = as_admin(&["--json", "erase", ERASED, "--yes"])
        .expect_code(0, "erase")
        .json();
    assert_eq!(receipt["order_id"], ERASED, "{receipt}");
    assert_eq!(receipt["events"], 3, "{receipt}");
    assert_eq!(
        receipt["lsn"],
        last_lsn + 1,
        "the erasure is the next log entry: {receipt}"
    );
    assert!(
        receipt["erased_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{receipt}"
    );
    let lsn = receipt["lsn"].as_u64().expect("lsn").to_string();
    let out = as_admin(&["order", ERASED]).expect_code(1, "the order is gone");
    assert!(out.stderr.contains("404"), "{out:#?}");

    // The receipt checks out; each way it can fail is named.
    let out = as_admin(&["erasure", "check", &lsn, ERASED]).expect_code(0, "a valid receipt");
    assert!(
        out.stdout.starts_with("receipt valid:") && out.stdout.contains("answers 404"),
        "{out:#?}"
    );
    let report = as_admin(&["--json", "erasure", "check", &lsn, ERASED])
        .expect_code(0, "a valid receipt, as JSON")
        .json();
    assert_eq!(report["verdict"], "valid", "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["events_erased"], 3, "{report}");
    assert_eq!(report["erased_at"], receipt["erased_at"], "{report}");
    let out = as_admin(&["erasure", "check", &lsn, KEPT]).expect_code(1, "another order");
    assert!(
        out.stdout.contains(&format!("was not of order \"{KEPT}\""))
            && out.stdout.contains("digest does not match"),
        "{out:#?}"
    );
    for (at, what) in [("9999", "past the log"), ("1", "an erased event's LSN")] {
        let out = as_admin(&["erasure", "check", at, ERASED]).expect_code(1, what);
        assert!(
            out.stdout
                .contains(&format!("there is no erasure at LSN {at}")),
            "{what}: {out:#?}"
        );
    }
    let out = as_admin(&["--json", "erasure", "check", "9999", ERASED]).expect_code(1, "json");
    assert_eq!(out.json()["verdict"], "no-erasure", "{out:#?}");
    let out = as_app(&["erasure", "check", &lsn, ERASED]).expect_code(1, "no admin scope");
    assert!(out.stderr.contains("403"), "{out:#?}");
    as_admin(&["erasure", "check", "x", ERASED]).expect_code(2, "an LSN is a number");

    // An order without events: nothing to erase, and the server says so.
    let out = as_admin(&["erase", "never-stored-order", "--yes"]).expect_code(1, "unknown order");
    assert!(
        out.stderr.contains("404") && out.stderr.contains("not-found"),
        "{out:#?}"
    );
    // The receipt as a table, with the hint to keep it on stderr.
    let out = as_admin_over("h3", &["erase", OTHER, "--yes"]).expect_code(0, "erase, table");
    assert_eq!(line_value(&out, "order_id"), OTHER, "{out:#?}");
    assert_eq!(line_value(&out, "events"), "1", "{out:#?}");
    let other_lsn = line_value(&out, "lsn").to_owned();
    assert_eq!(other_lsn, (last_lsn + 2).to_string(), "{out:#?}");
    assert!(
        out.stderr
            .contains(&format!("trackctl erasure check {other_lsn} {OTHER}")),
        "{out:#?}"
    );
    as_admin_over("h2", &["erasure", "check", &other_lsn, OTHER])
        .expect_code(0, "the second receipt");

    // The purge: the erased order's bytes leave every file, the kept order is exactly as before.
    let out = as_admin_over("h3", &["purge"]).expect_code(0, "purge");
    assert!(out.stdout.starts_with("purge done in "), "{out:#?}");
    let p = as_admin_over("h2", &["--json", "purge"])
        .expect_code(0, "purge, JSON")
        .json();
    assert_eq!(p["purged"], true, "{p}");
    assert!(p["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{p}");
    as_app(&["purge"]).expect_code(1, "purge needs the admin scope");
    for needle in [SECRET, ERASED, OTHER] {
        let found = files_containing(&data, needle);
        assert!(found.is_empty(), "{needle:?} is still on disk in {found:?}");
    }
    assert!(
        !files_containing(&data, KEPT).is_empty(),
        "the search must find the order that was not erased"
    );
    let kept_after = as_admin(&["--json", "events", KEPT])
        .expect_code(0, "the kept order's timeline")
        .json();
    assert_eq!(kept_after, kept_before, "the kept order is intact");
    let stats = as_admin(&["--json", "stats"]).json();
    assert_eq!(
        (&stats["orders"], &stats["events"]),
        (&json!(1), &json!(2)),
        "{stats}"
    );
    as_admin(&["erasure", "check", &lsn, ERASED]).expect_code(0, "the record outlives the purge");

    // The order id used again after the erasure: legitimate, reported as such with its own code.
    let out = ctl(&h1(&server, &["ingest", "-"]))
        .env("TRACKCTL_TOKEN", &admin)
        .stdin(ndjson(&erased_events(base)))
        .run()
        .expect_code(0, "ingest again");
    assert!(
        out.stdout.contains("created    3"),
        "erased event ids are forgotten: {out:#?}"
    );
    let out = as_admin(&["erasure", "check", &lsn, ERASED]).expect_code(3, "ingested again");
    assert!(
        out.stdout.contains("exists again")
            && out
                .stdout
                .contains("now holds 3 events ingested after the erasure"),
        "{out:#?}"
    );
    let report = as_admin(&["--json", "erasure", "check", &lsn, ERASED])
        .expect_code(3, "ingested again, JSON")
        .json();
    assert_eq!(report["verdict"], "reingested", "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["events_now"], 3, "{report}");
    assert!(
        report["first_lsn_now"]
            .as_u64()
            .is_some_and(|f| f > lsn.parse().expect("lsn")),
        "{report}"
    );
}
