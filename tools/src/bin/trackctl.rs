//! trackctl: trackstore's command-line client (over HTTP/1.1, HTTP/2 or HTTP/3) and admin tools:
//! ingest, reads, the live stream, replication and quarantine, erasure and purge, certificates and
//! tokens, and the offline `verify` and `checkpoint` of a data directory. See docs/trackctl.md.
//!
//! Exit codes: 0 success; 1 the server said no (4xx/5xx, not found), an event was rejected,
//! `verify` found a problem or an erasure receipt does not hold; 2 usage, configuration or
//! connection errors; 3 an erasure receipt holds but its order was ingested again.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use trackstore_client::{
    Client, Connection, ErasureReceipt, Error as ClientError, EventPage, OrderPage, OrderState,
    OrdersQuery, RangeQuery, ReplicationState, StoredEvent, StreamItem, StreamQuery, TimelineQuery,
};
use trackstore_engine::{Engine, EngineOptions, Status};
use trackstore_tools::erasure::{OrderNow, Report};
use trackstore_tools::ingest::{Encoding, Ingester, Summary};
use trackstore_tools::input::{Format, Item, LINE_BYTES_MAX, ReadOptions, read_batches};
use trackstore_tools::table::Table;
use trackstore_tools::{certs, quarantine, settings, token};

/// The largest page the server serves.
const PAGE_LIMIT_MAX: usize = 10_000;
/// `--all` without `--limit` stops after this many items.
const ALL_ITEMS_DEFAULT_MAX: usize = 100_000;
/// Pages followed at most by one `--all` (filtered pages can be short, even empty).
const PAGES_MAX: usize = 100_000;
/// The most events per ingest request the server accepts by default.
const BATCH_MAX: usize = 10_000;
/// Batches read ahead of the sender.
const READ_AHEAD_BATCHES: usize = 2;
/// Reconnect backoff of `tail`.
const TAIL_BACKOFF_FIRST: Duration = Duration::from_millis(200);
const TAIL_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "trackctl",
    version,
    about = "trackstore command-line client and admin tools",
    after_help = "Exit codes: 0 ok; 1 the server said no (or an event was rejected, verify found a \
                  problem, or an erasure receipt does not hold); 2 usage, configuration or \
                  connection error; 3 an erasure receipt holds but its order was ingested again."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Debug)]
struct Global {
    /// The server: http://HOST:PORT (HTTP/1.1 or h2c) or https://HOST:PORT (TLS, and HTTP/3).
    /// Default http://127.0.0.1:8080.
    #[arg(long, global = true, env = "TRACKCTL_SERVER", value_name = "URL")]
    server: Option<String>,
    /// h1, h2 or h3 (default h1 for http://, h2 for https://).
    #[arg(long, global = true, env = "TRACKCTL_PROTO", value_name = "PROTO")]
    proto: Option<String>,
    /// PEM file of the CA (or the server's self-signed certificate, DATA/tls/cert.pem) to trust.
    #[arg(long, global = true, env = "TRACKCTL_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (loopback testing only).
    #[arg(long, global = true)]
    insecure: bool,
    /// Bearer token sent on every request.
    #[arg(
        long,
        global = true,
        env = "TRACKCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Config file (TOML: server, proto, ca, insecure, token). Default ~/.config/trackctl.toml
    /// when present.
    #[arg(long, global = true, env = "TRACKCTL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds one request may take.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
}

#[derive(Args, Debug, Clone, Copy)]
struct PageArgs {
    /// Follow `next_cursor` to the end (bounded by --limit, default 100000).
    #[arg(long)]
    all: bool,
    /// At most this many items in total.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Items per request (1–10000; default: the server's).
    #[arg(long, value_name = "N")]
    page_size: Option<usize>,
}

#[derive(Args, Debug, Clone, Copy)]
struct SendArgs {
    /// Events per request (1–10000).
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    batch_size: usize,
    /// Attempts after the first for a request that fails with a connection error, 429 or 503.
    #[arg(long, default_value_t = 8, value_name = "N")]
    retries: u32,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send events from FILE (or - for stdin): a JSON array or NDJSON. Prints created / duplicate /
    /// rejected with reasons; exit code 1 if any event was rejected.
    Ingest {
        /// The input file, or - for standard input.
        file: PathBuf,
        #[command(flatten)]
        send: SendArgs,
    },
    /// An order's current state.
    Order { order_id: String },
    /// An order's timeline.
    Events {
        order_id: String,
        /// Newest first.
        #[arg(long)]
        desc: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Events with FROM <= occurred_at < TO.
    Range {
        /// RFC 3339 time.
        #[arg(long)]
        from: String,
        /// RFC 3339 time.
        #[arg(long)]
        to: String,
        /// Status, or several separated by commas.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        carrier: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Orders whose current status is STATUS.
    Orders {
        #[arg(long)]
        status: String,
        #[arg(long)]
        carrier: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Store-wide counts.
    Stats,
    /// Follow the live stream, one line per event (NDJSON with --json); reconnects with backoff
    /// and resumes after the last LSN seen.
    Tail {
        #[arg(long = "order", value_name = "ORDER_ID")]
        order_id: Option<String>,
        /// Status, or several separated by commas.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        carrier: Option<String>,
        /// Replay from this LSN first (default: only new events).
        #[arg(long, value_name = "LSN")]
        from_lsn: Option<u64>,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        max_events: Option<u64>,
        /// Give up (exit code 2) after this many seconds without a connection.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        give_up_after: u64,
    },
    /// Replication state.
    Replication {
        #[command(subcommand)]
        command: ReplicationCmd,
    },
    /// Make this node (a replica) the primary, with a new epoch.
    Promote {
        /// A planned switchover (the old primary stepped down cleanly), not a failover.
        #[arg(long)]
        planned: bool,
    },
    /// Erase every event and all state of an order (GDPR); irreversible, so it needs --yes.
    /// Prints the receipt (LSN, time, events removed) that `erasure check` verifies later. The
    /// data leaves the disk at the next purge.
    Erase {
        order_id: String,
        /// Confirm the erasure: it cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Erasure receipts.
    Erasure {
        #[command(subcommand)]
        command: ErasureCmd,
    },
    /// Make erased and expired data leave the disk now (flush, full compaction, MANIFEST
    /// rollover); prints how long it took. Heavy: one runs at a time.
    Purge,
    /// Quarantine files: NDJSON of stored events set aside by replication.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCmd,
    },
    /// Certificates for mutual TLS between nodes.
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Check a stopped store offline: every index entry against the log, order states against a
    /// recomputation from the events, gap-free LSNs, decodable values. Exit code 1 on any problem.
    Verify {
        /// The data directory (as given to `trackstore --data`).
        data_dir: PathBuf,
    },
    /// Write a consistent copy of a stopped store to DEST, which `trackstore --data DEST` opens.
    Checkpoint { data_dir: PathBuf, dest: PathBuf },
}

#[derive(Subcommand, Debug)]
enum ReplicationCmd {
    /// GET /v1/admin/replication.
    Status,
}

#[derive(Subcommand, Debug)]
enum ErasureCmd {
    /// Check a receipt: exit 0 when the erasure at LSN was of ORDER_ID and the order answers 404;
    /// 1 when there is no erasure at LSN, it was of another order, or it left events behind; 3
    /// when the order was ingested again after the erasure.
    Check { lsn: u64, order_id: String },
}

#[derive(Subcommand, Debug)]
enum QuarantineCmd {
    /// Count, LSN range, orders and statuses of a quarantine file.
    Show { file: PathBuf },
    /// Ingest a quarantine file's events again, with their original event ids (idempotent).
    Reingest {
        file: PathBuf,
        #[command(flatten)]
        send: SendArgs,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Write OUT_DIR/ca.pem, ca.key and NODE.pem, NODE.key per node (serverAuth and clientAuth).
    Init {
        out_dir: PathBuf,
        /// Node names, comma-separated (each becomes a DNS name in its certificate).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Print a new token on stdout, and on stderr the [[tokens]] entry for the server config.
    Create {
        /// Comma-separated: ingest, read, admin.
        #[arg(long)]
        scopes: String,
        #[arg(long)]
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            exit_code(&e)
        }
    }
}

fn client_error(e: &anyhow::Error) -> Option<&ClientError> {
    e.chain().find_map(|c| c.downcast_ref::<ClientError>())
}

/// 1 when the server answered no, 2 for everything else (usage, configuration, connection).
fn exit_code(e: &anyhow::Error) -> ExitCode {
    match client_error(e) {
        Some(ClientError::Api(_)) => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}

/// Prints the error; a server refusal shows the problem's title, detail and field errors.
fn report(e: &anyhow::Error) {
    let Some(ClientError::Api(api)) = client_error(e) else {
        eprintln!("trackctl: {e:#}");
        return;
    };
    // The contexts above the client error say what was being done.
    let doing: Vec<String> = e
        .chain()
        .take_while(|c| c.downcast_ref::<ClientError>().is_none())
        .map(ToString::to_string)
        .collect();
    let prefix = if doing.is_empty() {
        String::new()
    } else {
        format!("{}: ", doing.join(": "))
    };
    match &api.problem {
        Some(p) => {
            eprintln!(
                "trackctl: {prefix}the server answered {} {}",
                api.status.as_u16(),
                p.title
            );
            if !p.detail.is_empty() {
                eprintln!("  {}", p.detail);
            }
            for fe in &p.errors {
                match fe.index {
                    Some(i) => eprintln!("  - event {i}, {}: {}", fe.field, fe.message),
                    None => eprintln!("  - {}: {}", fe.field, fe.message),
                }
            }
            eprintln!("  ({})", p.type_uri);
        }
        None => eprintln!("trackctl: {prefix}the server answered {api}"),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.global.json;
    // Refused before any connection: nothing reaches the server without the confirmation.
    if let Cmd::Erase {
        order_id,
        yes: false,
    } = &cli.command
    {
        anyhow::bail!(
            "erase removes every event of order {order_id:?} and cannot be undone: add --yes to \
             confirm"
        );
    }
    match cli.command {
        Cmd::Verify { data_dir } => verify(&data_dir),
        Cmd::Checkpoint { data_dir, dest } => checkpoint(&data_dir, &dest),
        Cmd::Certs {
            command:
                CertsCmd::Init {
                    out_dir,
                    nodes,
                    force,
                },
        } => certs_init(&out_dir, &nodes, force, json),
        Cmd::Token {
            command: TokenCmd::Create { scopes, name },
        } => token_create(&scopes, name.as_deref(), json),
        Cmd::Quarantine {
            command: QuarantineCmd::Show { file },
        } => quarantine_show(&file, json),
        online => {
            let client = client(&cli.global)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            rt.block_on(run_online(client, online, json))
        }
    }
}

fn client(g: &Global) -> Result<Client> {
    let flags = settings::Flags {
        server: g.server.clone(),
        proto: g.proto.clone(),
        ca: g.ca.clone(),
        insecure: g.insecure,
        token: g.token.clone(),
        config: g.config.clone(),
    };
    let default_path = settings::default_config_path(
        std::env::var_os("XDG_CONFIG_HOME")
            .as_deref()
            .map(Path::new),
        std::env::var_os("HOME").as_deref().map(Path::new),
    );
    let file = settings::load_file(flags.config.as_deref(), default_path.as_deref())?;
    let mut config = settings::resolve(&flags, &file)?;
    config.request_timeout = Duration::from_secs(g.timeout.max(1));
    Ok(Client::new(config)?)
}

async fn run_online(client: Client, cmd: Cmd, json: bool) -> Result<ExitCode> {
    if let Cmd::Tail {
        order_id,
        status,
        carrier,
        from_lsn,
        max_events,
        give_up_after,
    } = cmd
    {
        let q = StreamQuery {
            order_id,
            statuses: split_list(status.as_deref()),
            carrier,
            from_lsn,
            last_event_id: None,
        };
        let give_up = Duration::from_secs(give_up_after);
        return tail(&client, q, max_events, give_up, json).await;
    }
    let conn = client.connect().await?;
    match cmd {
        Cmd::Ingest { file, send } => ingest(&conn, &file, send, false, json).await,
        Cmd::Quarantine {
            command: QuarantineCmd::Reingest { file, send },
        } => ingest(&conn, &file, send, true, json).await,
        Cmd::Order { order_id } => {
            let state = conn
                .order(&order_id)
                .await
                .with_context(|| format!("get order {order_id:?}"))?;
            if json {
                print_json(&state)?;
            } else {
                print!("{}", order_table(&state).render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Events {
            order_id,
            desc,
            page,
        } => {
            let what = Listing::Timeline { order_id, desc };
            list(&conn, &what, page, json).await
        }
        Cmd::Range {
            from,
            to,
            status,
            carrier,
            page,
        } => {
            let q = RangeQuery {
                from,
                to,
                statuses: split_list(status.as_deref()),
                carrier,
                ..RangeQuery::default()
            };
            list(&conn, &Listing::Range(q), page, json).await
        }
        Cmd::Orders {
            status,
            carrier,
            page,
        } => {
            let q = OrdersQuery {
                status,
                carrier,
                ..OrdersQuery::default()
            };
            list(&conn, &Listing::Orders(q), page, json).await
        }
        Cmd::Stats => {
            let stats = conn.stats().await.context("get stats")?;
            if json {
                print_json(&stats)?;
            } else {
                let mut t = Table::plain();
                t.row(["orders".to_owned(), stats.orders.to_string()]);
                t.row(["events".to_owned(), stats.events.to_string()]);
                t.row(["last_lsn".to_owned(), stats.last_lsn.to_string()]);
                print!("{}", t.render());
                println!();
                let mut t = Table::new(&["STATUS", "ORDERS"]);
                // In lifecycle order, then any status this trackctl does not know.
                let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                for status in &known {
                    if let Some(n) = stats.by_status.get(*status) {
                        t.row([(*status).to_owned(), n.to_string()]);
                    }
                }
                for (status, n) in &stats.by_status {
                    if !known.contains(&status.as_str()) {
                        t.row([status.clone(), n.to_string()]);
                    }
                }
                print!("{}", t.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replication {
            command: ReplicationCmd::Status,
        } => {
            let state = conn
                .replication()
                .await
                .context("get the replication state")?;
            print_replication(&state, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Promote { planned } => {
            let state = conn.promote(planned).await.context("promote")?;
            print_replication(&state, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Erase { order_id, .. } => {
            let receipt = conn
                .erase_order(&order_id)
                .await
                .with_context(|| format!("erase order {order_id:?}"))?;
            print_receipt(&receipt, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Erasure {
            command: ErasureCmd::Check { lsn, order_id },
        } => erasure_check(&conn, lsn, &order_id, json).await,
        Cmd::Purge => {
            let report = conn.purge().await.context("purge")?;
            anyhow::ensure!(report.purged, "the server answered 200 without purging");
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "purge done in {:.3} s: erased and expired data is off the disk",
                    report.seconds
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        other => unreachable!("{other:?} is an offline command"),
    }
}

fn split_list(s: Option<&str>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encode JSON")?
    );
    Ok(())
}

fn dash(s: Option<&str>) -> String {
    s.unwrap_or("-").to_owned()
}

// ---- reads -----------------------------------------------------------------------------------

fn order_table(s: &OrderState) -> Table {
    let mut t = Table::plain();
    let mut kv = |k: &str, v: String| t.row([k.to_owned(), v]);
    kv("order_id", s.order_id.clone());
    kv("status", s.status.clone());
    kv("status_at", s.status_at.clone());
    kv("updated_at", s.updated_at.clone());
    kv("carrier", dash(s.carrier.as_deref()));
    kv(
        "location",
        s.location.as_ref().map_or("-".into(), |l| match &l.name {
            Some(n) => format!("{},{} ({n})", l.lat, l.lon),
            None => format!("{},{}", l.lat, l.lon),
        }),
    );
    kv("eta", dash(s.eta.as_deref()));
    kv("event_count", s.event_count.to_string());
    kv("last_lsn", s.last_lsn.to_string());
    t
}

fn events_table(events: &[StoredEvent]) -> Table {
    let mut t = Table::new(&[
        "LSN",
        "OCCURRED_AT",
        "ORDER",
        "STATUS",
        "CARRIER",
        "REASON",
        "EVENT_ID",
    ]);
    for e in events {
        let ev = &e.event;
        t.row([
            e.lsn.to_string(),
            ev.occurred_at.clone(),
            ev.order_id.clone(),
            ev.status.clone(),
            dash(ev.carrier.as_deref()),
            dash(ev.reason.as_deref()),
            ev.event_id.clone(),
        ]);
    }
    t
}

fn orders_table(orders: &[OrderState]) -> Table {
    let mut t = Table::new(&[
        "ORDER",
        "STATUS",
        "STATUS_AT",
        "CARRIER",
        "EVENTS",
        "LAST_LSN",
    ]);
    for o in orders {
        t.row([
            o.order_id.clone(),
            o.status.clone(),
            o.status_at.clone(),
            dash(o.carrier.as_deref()),
            o.event_count.to_string(),
            o.last_lsn.to_string(),
        ]);
    }
    t
}

/// The paginated reads.
enum Listing {
    Timeline { order_id: String, desc: bool },
    Range(RangeQuery),
    Orders(OrdersQuery),
}

/// Events or orders gathered from one or more pages.
enum Items {
    Events(Vec<StoredEvent>),
    Orders(Vec<OrderState>),
}

impl Items {
    fn len(&self) -> usize {
        match self {
            Items::Events(v) => v.len(),
            Items::Orders(v) => v.len(),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Items::Events(v) => v.truncate(n),
            Items::Orders(v) => v.truncate(n),
        }
    }

    fn extend(&mut self, other: Items) {
        match (self, other) {
            (Items::Events(a), Items::Events(b)) => a.extend(b),
            (Items::Orders(a), Items::Orders(b)) => a.extend(b),
            _ => unreachable!("one listing yields one kind of item"),
        }
    }
}

async fn fetch_page(
    conn: &Connection,
    what: &Listing,
    cursor: Option<String>,
    limit: Option<u32>,
) -> Result<(Items, Option<String>)> {
    Ok(match what {
        Listing::Timeline { order_id, desc } => {
            let q = TimelineQuery {
                limit,
                cursor,
                descending: *desc,
            };
            let EventPage {
                events,
                next_cursor,
            } = conn
                .timeline(order_id, &q)
                .await
                .with_context(|| format!("get the events of order {order_id:?}"))?;
            (Items::Events(events), next_cursor)
        }
        Listing::Range(q) => {
            let q = RangeQuery {
                cursor,
                limit,
                ..q.clone()
            };
            let EventPage {
                events,
                next_cursor,
            } = conn.range(&q).await.context("get the events in range")?;
            (Items::Events(events), next_cursor)
        }
        Listing::Orders(q) => {
            let q = OrdersQuery {
                cursor,
                limit,
                ..q.clone()
            };
            let OrderPage {
                orders,
                next_cursor,
            } = conn.orders(&q).await.context("get the orders")?;
            (Items::Orders(orders), next_cursor)
        }
    })
}

/// One page, or with `--all` every page up to `--limit` items; printed as a table or as the API's
/// page document (`next_cursor` says where it stopped).
async fn list(conn: &Connection, what: &Listing, page: PageArgs, json: bool) -> Result<ExitCode> {
    for (name, v) in [("--limit", page.limit), ("--page-size", page.page_size)] {
        if v == Some(0) || (name == "--page-size" && v.is_some_and(|n| n > PAGE_LIMIT_MAX)) {
            anyhow::bail!("{name} must be from 1 to {PAGE_LIMIT_MAX}");
        }
    }
    let max_items = match (page.all, page.limit) {
        (_, Some(n)) => n,
        (true, None) => ALL_ITEMS_DEFAULT_MAX,
        (false, None) => usize::MAX,
    };
    let mut items: Option<Items> = None;
    let mut cursor: Option<String> = None;
    for _ in 0..PAGES_MAX {
        let got = items.as_ref().map_or(0, Items::len);
        let want = max_items - got;
        let size = page
            .page_size
            .or(page.limit)
            .map(|s| s.min(want).min(PAGE_LIMIT_MAX));
        let size = size.map(|s| u32::try_from(s).unwrap_or(u32::MAX));
        let (batch, next) = fetch_page(conn, what, cursor.take(), size).await?;
        match &mut items {
            None => items = Some(batch),
            Some(i) => i.extend(batch),
        }
        cursor = next;
        let got = items.as_ref().map_or(0, Items::len);
        if !page.all || cursor.is_none() || got >= max_items {
            break;
        }
    }
    let mut items = items.unwrap_or(Items::Events(Vec::new()));
    items.truncate(max_items);
    if json {
        let doc = match &items {
            Items::Events(e) => json!({"events": e, "next_cursor": cursor}),
            Items::Orders(o) => json!({"orders": o, "next_cursor": cursor}),
        };
        print_json(&doc)?;
    } else {
        let table = match &items {
            Items::Events(e) => events_table(e),
            Items::Orders(o) => orders_table(o),
        };
        print!("{}", table.render());
        if let Some(c) = &cursor {
            if page.all {
                eprintln!("(stopped at --limit {max_items}; more remain after cursor {c})");
            } else {
                eprintln!("(more remain: add --all to follow them; next cursor {c})");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---- live stream -----------------------------------------------------------------------------

fn event_line(e: &StoredEvent) -> String {
    let ev = &e.event;
    format!(
        "{}  {}  {}  {}  {}  {}",
        e.lsn,
        ev.occurred_at,
        ev.order_id,
        ev.status,
        dash(ev.carrier.as_deref()),
        ev.event_id
    )
}

/// Follows the stream; reconnects with backoff and resumes with `Last-Event-ID` after the last LSN
/// seen (or the position the server said it stopped at), so no event is missed or repeated.
async fn tail(
    client: &Client,
    mut q: StreamQuery,
    max_events: Option<u64>,
    give_up: Duration,
    json: bool,
) -> Result<ExitCode> {
    if q.from_lsn.is_none() {
        // Start exactly after the current head, so that a reconnect before the first event still
        // resumes without a gap.
        let conn = client.connect().await?;
        let head = conn
            .stats()
            .await
            .context("get the head of the log")?
            .last_lsn;
        q.from_lsn = Some(head + 1);
    }
    let mut printed = 0u64;
    let mut backoff = TAIL_BACKOFF_FIRST;
    let mut down_since: Option<Instant> = None;
    loop {
        let outcome: Result<(), ClientError> = async {
            let conn = client.connect().await?;
            let mut stream = conn.subscribe(&q).await?;
            down_since = None;
            while let Some(item) = stream.next().await? {
                backoff = TAIL_BACKOFF_FIRST;
                match item {
                    StreamItem::Event(e) => {
                        if json {
                            println!("{}", serde_json::to_string(&e).unwrap_or_default());
                        } else {
                            println!("{}", event_line(&e));
                        }
                        q.last_event_id = Some(e.lsn);
                        printed += 1;
                        if max_events.is_some_and(|m| printed >= m) {
                            return Ok(());
                        }
                    }
                    StreamItem::End(end) => {
                        eprintln!(
                            "trackctl: the server ended the stream ({}): {}",
                            end.reason, end.detail
                        );
                        if let Some(next) = end.next_lsn.filter(|&n| n > 0) {
                            q.last_event_id = Some(q.last_event_id.unwrap_or(0).max(next - 1));
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        .await;
        if max_events.is_some_and(|m| printed >= m) {
            return Ok(ExitCode::SUCCESS);
        }
        match outcome {
            Err(e) if !e.is_retryable() && !matches!(e, ClientError::Stream(_)) => {
                return Err(anyhow::Error::new(e).context("follow the stream"));
            }
            Err(e) => {
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() > give_up {
                    return Err(anyhow::Error::new(e)
                        .context(format!("no stream for {}s: giving up", give_up.as_secs())));
                }
                eprintln!("trackctl: {e}; reconnecting in {backoff:?}");
            }
            Ok(()) => eprintln!("trackctl: the stream closed; reconnecting in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(TAIL_BACKOFF_MAX);
    }
}

// ---- ingest ----------------------------------------------------------------------------------

/// Counts the bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A one-line progress bar on stderr, drawn only on a terminal.
struct Progress {
    tty: bool,
    total_bytes: Option<u64>,
}

impl Progress {
    fn draw(&self, events: u64, bytes: u64) {
        if !self.tty {
            return;
        }
        let bar = match self.total_bytes.filter(|&t| t > 0) {
            Some(t) => {
                let done = bytes.min(t);
                let filled = usize::try_from(done * 30 / t).unwrap_or(30);
                let pct = done * 100 / t;
                format!(
                    "[{}{}] {pct:>3}%  ",
                    "#".repeat(filled),
                    ".".repeat(30 - filled)
                )
            }
            None => String::new(),
        };
        eprint!("\r{bar}{events} events\x1b[K");
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

fn open_input(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    if path == Path::new("-") {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    Ok((Box::new(f), len))
}

/// `ingest` and `quarantine reingest`: a reader thread parses the input into batches (bounded
/// read-ahead), this task sends them one at a time.
async fn ingest(
    conn: &Connection,
    path: &Path,
    send: SendArgs,
    strip_stored_fields: bool,
    json: bool,
) -> Result<ExitCode> {
    anyhow::ensure!(
        (1..=BATCH_MAX).contains(&send.batch_size),
        "--batch-size must be from 1 to {BATCH_MAX}"
    );
    let (input, total_bytes) = open_input(path)?;
    let bytes = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: input,
        bytes: Arc::clone(&bytes),
    };
    let opts = ReadOptions {
        batch_size: send.batch_size,
        strip_stored_fields,
        max_line_bytes: LINE_BYTES_MAX,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Format, Vec<Item>)>(READ_AHEAD_BATCHES);
    let reader = std::thread::spawn(move || {
        let buffered = BufReader::with_capacity(256 * 1024, counting);
        read_batches(buffered, &opts, &mut |format, batch| {
            tx.blocking_send((format, batch)).is_ok()
        })
    });
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total_bytes,
    };
    let mut ingester = Ingester {
        conn,
        encoding: Encoding::Array,
        retries: send.retries,
        summary: Summary::default(),
        on_retry: Box::new(|e, wait| {
            eprintln!("\rtrackctl: {e}; retrying in {wait:.1?}\x1b[K");
        }),
    };
    let mut failure: Option<anyhow::Error> = None;
    while let Some((format, batch)) = rx.recv().await {
        ingester.encoding = match format {
            Format::Array => Encoding::Array,
            Format::Ndjson => Encoding::Ndjson,
        };
        if let Err(e) = ingester.send(batch).await {
            failure = Some(anyhow::Error::new(e).context("send events"));
            break;
        }
        progress.draw(ingester.summary.sent(), bytes.load(Ordering::Relaxed));
    }
    // Closing the channel stops the reader at its next batch.
    drop(rx);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the input reader panicked"))?;
    progress.clear();
    let summary = ingester.summary;
    print_summary(&summary, json)?;
    if let Some(e) = failure {
        return Err(e);
    }
    read.with_context(|| format!("read {}", path.display()))?;
    Ok(if summary.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    if json {
        return print_json(s);
    }
    let mut t = Table::plain();
    t.row(["created".to_owned(), s.created.to_string()]);
    t.row(["duplicate".to_owned(), s.duplicate.to_string()]);
    t.row(["rejected".to_owned(), s.rejected.to_string()]);
    if s.retries > 0 {
        t.row(["retries".to_owned(), s.retries.to_string()]);
    }
    print!("{}", t.render());
    for r in &s.rejections {
        let id = r
            .event_id
            .as_deref()
            .map_or(String::new(), |id| format!(" {id:?}"));
        println!("  rejected #{}{id}: {}", r.position, r.reasons.join("; "));
    }
    let unlisted = s.rejected - s.rejections.len() as u64;
    if unlisted > 0 {
        println!("  ... and {unlisted} more rejected");
    }
    Ok(())
}

// ---- replication and quarantine --------------------------------------------------------------

fn print_replication(s: &ReplicationState, json: bool) -> Result<()> {
    if json {
        return print_json(s);
    }
    let mut t = Table::plain();
    t.row(["role".to_owned(), s.role.clone()]);
    t.row(["epoch".to_owned(), s.epoch.to_string()]);
    t.row(["last_lsn".to_owned(), s.last_lsn.to_string()]);
    if let Some(p) = &s.primary {
        t.row(["primary".to_owned(), p.clone()]);
    }
    if let Some(l) = s.lag_lsn {
        t.row(["lag_lsn".to_owned(), l.to_string()]);
    }
    if let Some(l) = s.lag_seconds {
        t.row(["lag_seconds".to_owned(), format!("{l:.3}")]);
    }
    // Members this trackctl does not know yet, as they came (strings without quotes).
    for (k, v) in &s.extra {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        t.row([k.clone(), text]);
    }
    print!("{}", t.render());
    if !s.replicas.is_empty() {
        println!();
        let mut t = Table::new(&["REPLICA", "ADDR", "ACKED_LSN", "LAG_LSN", "LAG_SECONDS"]);
        for r in &s.replicas {
            let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            let node = r.extra.get("node").and_then(Value::as_str).unwrap_or("-");
            t.row([
                node.to_owned(),
                r.addr.clone(),
                opt(r.acked_lsn),
                opt(r.lag_lsn),
                r.lag_seconds.map_or("-".to_owned(), |l| format!("{l:.3}")),
            ]);
        }
        print!("{}", t.render());
    }
    Ok(())
}

fn quarantine_show(file: &Path, json: bool) -> Result<ExitCode> {
    let f = File::open(file).with_context(|| format!("open {}", file.display()))?;
    let s = quarantine::summarize(BufReader::new(f))
        .with_context(|| format!("read {}", file.display()))?;
    if json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    const ORDERS_SHOWN: usize = 20;
    let mut t = Table::plain();
    t.row(["events".to_owned(), s.events.to_string()]);
    let range = match (s.first_lsn, s.last_lsn) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "-".to_owned(),
    };
    t.row(["lsn range".to_owned(), range]);
    let mut orders: Vec<&str> = s
        .orders
        .iter()
        .take(ORDERS_SHOWN)
        .map(String::as_str)
        .collect();
    let more = s.orders.len().saturating_sub(ORDERS_SHOWN);
    let more_text = format!(
        "... and {more}{} more",
        if s.orders_truncated { "+" } else { "" }
    );
    if more > 0 || s.orders_truncated {
        orders.push(&more_text);
    }
    t.row([
        "orders".to_owned(),
        format!("{}: {}", s.orders.len(), orders.join(", ")),
    ]);
    let statuses: Vec<String> = s.statuses.iter().map(|(k, v)| format!("{k} {v}")).collect();
    t.row(["statuses".to_owned(), statuses.join(", ")]);
    if s.bad_line_count > 0 {
        t.row(["bad lines".to_owned(), s.bad_line_count.to_string()]);
    }
    print!("{}", t.render());
    for (line, why) in &s.bad_lines {
        println!("  line {line}: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

// ---- erasure ---------------------------------------------------------------------------------

fn print_receipt(r: &ErasureReceipt, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    let mut t = Table::plain();
    t.row(["order_id".to_owned(), r.order_id.clone()]);
    t.row(["lsn".to_owned(), r.lsn.to_string()]);
    t.row(["erased_at".to_owned(), r.erased_at.clone()]);
    t.row(["events".to_owned(), r.events.to_string()]);
    print!("{}", t.render());
    eprintln!(
        "Keep this receipt: `trackctl erasure check {} {}` verifies it. The data leaves the disk \
         at the next purge.",
        r.lsn, r.order_id
    );
    Ok(())
}

fn is_not_found(e: &ClientError) -> bool {
    e.status().map(|s| s.as_u16()) == Some(404)
}

/// The order as it answers now: None for 404, else its event count and oldest LSN.
async fn order_now(conn: &Connection, order_id: &str) -> Result<Option<OrderNow>> {
    let state = match conn.order(order_id).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("get order {order_id:?}"))),
    };
    let q = TimelineQuery {
        limit: Some(1),
        ..TimelineQuery::default()
    };
    // Not found, or an empty timeline: the order was erased again between the two requests.
    let page = match conn.timeline(order_id, &q).await {
        Ok(page) => page,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("get the oldest event of order {order_id:?}")));
        }
    };
    Ok(page.events.first().map(|e| OrderNow {
        events: state.event_count,
        first_lsn: e.lsn,
    }))
}

async fn erasure_check(
    conn: &Connection,
    lsn: u64,
    order_id: &str,
    json: bool,
) -> Result<ExitCode> {
    let record = match conn.erasure_record(lsn, Some(order_id)).await {
        Ok(r) => Some(r),
        Err(e) if is_not_found(&e) => None,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("get the erasure at LSN {lsn}")));
        }
    };
    // The order's state matters only for a receipt that holds (and needs the `read` scope).
    let now = if record.as_ref().and_then(|r| r.order_id_matches) == Some(true) {
        order_now(conn, order_id).await?
    } else {
        None
    };
    let report = Report::new(lsn, order_id, record.as_ref(), now);
    if json {
        print_json(&report)?;
    } else {
        println!("{}", report.message);
    }
    Ok(ExitCode::from(report.exit_code))
}

// ---- certificates and tokens -----------------------------------------------------------------

fn certs_init(dir: &Path, nodes: &[String], force: bool, json: bool) -> Result<ExitCode> {
    let written = certs::init(dir, nodes, force)?;
    if json {
        let files: Vec<Value> = written
            .iter()
            .map(|w| json!({"path": w.path, "private": w.private}))
            .collect();
        print_json(&json!({ "files": files }))?;
    } else {
        for w in &written {
            let note = if w.private { " (mode 0600)" } else { "" };
            println!("wrote {}{note}", w.path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token_create(scopes: &str, name: Option<&str>, json: bool) -> Result<ExitCode> {
    let scopes = token::parse_scopes(scopes)?;
    let tok = token::generate()?;
    let hash = token::hash(&tok);
    let default_name = format!("token-{}", &hash[7..15]);
    let name = name.unwrap_or(&default_name);
    if json {
        print_json(&json!({"token": tok, "name": name, "hash": hash, "scopes": scopes}))?;
    } else {
        println!("{tok}");
    }
    eprint!("{}", token::toml_snippet(name, &hash, &scopes));
    Ok(ExitCode::SUCCESS)
}

// ---- offline ---------------------------------------------------------------------------------

fn open(data_dir: &Path) -> Result<Engine> {
    anyhow::ensure!(
        trackstore_engine::db_path(data_dir).exists(),
        "{} holds no store (no db/ directory)",
        data_dir.display()
    );
    Engine::open(data_dir, EngineOptions::default()).with_context(|| {
        format!(
            "open the store in {} (is a server running on it?)",
            data_dir.display()
        )
    })
}

fn verify(data_dir: &Path) -> Result<ExitCode> {
    let engine = open(data_dir)?;
    let report = engine.verify().context("read the store")?;
    println!(
        "checked {} events and {} orders",
        report.events, report.orders
    );
    if report.is_ok() {
        println!("OK: no problem found");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &report.problems {
        println!("PROBLEM: {p}");
    }
    let unlisted = report.problem_count - report.problems.len() as u64;
    if unlisted > 0 {
        println!("... and {unlisted} more");
    }
    println!("FAILED: {} problem(s)", report.problem_count);
    Ok(ExitCode::from(1))
}

fn checkpoint(data_dir: &Path, dest: &Path) -> Result<ExitCode> {
    anyhow::ensure!(
        !trackstore_engine::db_path(dest).exists(),
        "{} already holds a store",
        dest.display()
    );
    let engine = open(data_dir)?;
    engine.checkpoint(dest).context("write the checkpoint")?;
    println!(
        "checkpoint of {} events written to {}",
        engine.stats().events,
        dest.display()
    );
    Ok(ExitCode::SUCCESS)
}
