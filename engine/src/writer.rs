//! The writer thread: the only code that writes to the database. It drains the bounded request queue
//! into a group, plans the group (see `plan`), commits it as one `WriteBatch` with one WAL sync, and
//! only then answers each request. A failed write poisons the engine: no later write is acknowledged.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::engine::{CommitInfo, Durability, Shared};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, StoredEvent};
use crate::limits::{EVENTS_PER_REQUEST_MAX, GROUP_BYTES_MAX, GROUP_EVENTS_MAX};
use crate::plan::{GroupPlan, Lookup, Op, Outcome};
use crate::state::OrderState;
use crate::store::{self, Cf};
use crate::time::Timestamp;
use crate::{codec, keys};

pub(crate) type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

pub(crate) enum Command {
    Append {
        events: Vec<Event>,
        reply: Reply<Vec<Outcome>>,
    },
    Replicate {
        entries: Vec<StoredEvent>,
        reply: Reply<Lsn>,
    },
    RecordEpoch {
        epoch: u64,
        reply: Reply<Lsn>,
    },
}

impl Command {
    fn fail(self, e: Error) {
        match self {
            Command::Append { reply, .. } => reply(Err(e)),
            Command::Replicate { reply, .. } => reply(Err(e)),
            Command::RecordEpoch { reply, .. } => reply(Err(e)),
        }
    }
}

/// A planned command waiting for the group's commit.
enum Planned {
    Append(Reply<Vec<Outcome>>, Vec<Outcome>),
    Replicate(Reply<Lsn>, Lsn),
    Epoch(Reply<Lsn>, u64, Lsn),
}

/// Reads the committed state for the planner.
pub(crate) struct DbLookup<'a>(pub &'a DB);

impl Lookup for DbLookup<'_> {
    fn event_id_lsn(&self, event_id: &str) -> Result<Option<Lsn>> {
        let cf = store::handle(self.0, Cf::EventIds)?;
        match self.0.get_pinned_cf(cf, event_id.as_bytes())? {
            Some(v) => Ok(Some(codec::decode_event_id_entry(&v)?)),
            None => Ok(None),
        }
    }

    fn event(&self, lsn: Lsn) -> Result<Option<StoredEvent>> {
        let cf = store::handle(self.0, Cf::Log)?;
        match self.0.get_pinned_cf(cf, keys::log(lsn))? {
            Some(v) => Ok(Some(codec::decode_event(&v)?)),
            None => Ok(None),
        }
    }

    fn order_state(&self, order_id: &str) -> Result<Option<OrderState>> {
        let cf = store::handle(self.0, Cf::Orders)?;
        match self.0.get_pinned_cf(cf, order_id.as_bytes())? {
            Some(v) => Ok(Some(codec::decode_state(&v)?)),
            None => Ok(None),
        }
    }
}

pub(crate) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    durability: Durability,
    mut last_received: Timestamp,
) {
    let mut write_opts = WriteOptions::default();
    write_opts.set_sync(durability == Durability::Sync);
    while let Ok(first) = rx.recv() {
        if let Some(reason) = shared.poisoned.get() {
            first.fail(Error::Poisoned(reason.clone()));
            continue;
        }
        let received_at = Timestamp::now().max(last_received);
        let mut plan = GroupPlan::new(shared.stats.read().expect("stats lock").clone());
        let lookup = DbLookup(&shared.db);
        let mut planned = Vec::new();
        let mut requests = 0usize;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            requests += 1;
            plan_command(&mut plan, &lookup, cmd, received_at, &mut planned);
            let room = plan.event_count() + EVENTS_PER_REQUEST_MAX <= GROUP_EVENTS_MAX
                && plan.bytes() < GROUP_BYTES_MAX;
            if room {
                next = rx.try_recv().ok();
            }
        }
        if planned.is_empty() {
            continue;
        }
        let events = plan.event_count();
        let bytes = plan.bytes();
        let (ops, stats, new_events) = plan.finish();
        let started = Instant::now();
        let written = if events == 0 && !planned.iter().any(|p| matches!(p, Planned::Epoch(..))) {
            // Only duplicates of committed events: nothing new to make durable.
            Ok(())
        } else {
            write_group(&shared.db, ops, &write_opts)
        };
        let write_time = started.elapsed();
        match written {
            Ok(()) => {
                last_received = received_at;
                let last_lsn = stats.last_lsn;
                *shared.stats.write().expect("stats lock") = stats;
                for p in &planned {
                    if let Planned::Epoch(_, epoch, start) = p {
                        shared
                            .epochs
                            .write()
                            .expect("epochs lock")
                            .push((*epoch, *start));
                    }
                }
                shared.commits.publish(&CommitInfo {
                    last_lsn,
                    events: events as u64,
                    requests: requests as u64,
                    bytes: bytes as u64,
                    write_time,
                    new_events: &new_events,
                });
                for p in planned {
                    match p {
                        Planned::Append(reply, outcomes) => reply(Ok(outcomes)),
                        Planned::Replicate(reply, lsn) => reply(Ok(lsn)),
                        Planned::Epoch(reply, _, start) => reply(Ok(start)),
                    }
                }
            }
            Err(reason) => {
                let _ = shared.poisoned.set(reason.clone());
                for p in planned {
                    let e = Error::Poisoned(reason.clone());
                    match p {
                        Planned::Append(reply, _) => reply(Err(e)),
                        Planned::Replicate(reply, _) => reply(Err(e)),
                        Planned::Epoch(reply, ..) => reply(Err(e)),
                    }
                }
            }
        }
    }
}

fn plan_command(
    plan: &mut GroupPlan,
    lookup: &DbLookup<'_>,
    cmd: Command,
    received_at: Timestamp,
    planned: &mut Vec<Planned>,
) {
    match cmd {
        Command::Append { events, reply } => match plan.plan_append(lookup, events, received_at) {
            Ok(outcomes) => planned.push(Planned::Append(reply, outcomes)),
            Err(e) => reply(Err(e)),
        },
        Command::Replicate { entries, reply } => {
            let last = entries.last().map(|e| e.lsn);
            match plan.plan_replicated(lookup, entries) {
                Ok(()) => planned.push(Planned::Replicate(reply, last.unwrap_or_default())),
                Err(e) => reply(Err(e)),
            }
        }
        Command::RecordEpoch { epoch, reply } => {
            let newest = planned
                .iter()
                .filter_map(|p| {
                    if let Planned::Epoch(_, e, _) = p {
                        Some(*e)
                    } else {
                        None
                    }
                })
                .chain(lookup_newest_epoch(lookup))
                .max();
            if newest.is_some_and(|n| n >= epoch) {
                reply(Err(Error::InvalidArgument(format!(
                    "epoch {epoch} is not newer than the newest recorded epoch {}",
                    newest.unwrap_or_default()
                ))));
            } else {
                let start = plan.plan_epoch(epoch);
                planned.push(Planned::Epoch(reply, epoch, start));
            }
        }
    }
}

fn lookup_newest_epoch(lookup: &DbLookup<'_>) -> Option<u64> {
    crate::engine::read_epochs(lookup.0)
        .ok()?
        .last()
        .map(|(e, _)| *e)
}

/// Writes one group durably. Returns the failure as text: the caller poisons the engine with it.
fn write_group(db: &DB, ops: Vec<Op>, opts: &WriteOptions) -> std::result::Result<(), String> {
    fail::fail_point!("engine::write_group", |_| Err(
        "injected write failure".to_owned()
    ));
    let handles = Cf::ALL.map(|cf| store::handle(db, cf));
    let mut batch = WriteBatch::default();
    for op in ops {
        let (Op::Put(cf, ..) | Op::Delete(cf, _)) = &op;
        let Ok(h) = handles[Cf::ALL
            .iter()
            .position(|c| c == cf)
            .expect("every cf is in ALL")]
        else {
            return Err(format!("column family {} is missing", cf.name()));
        };
        match op {
            Op::Put(_, k, v) => batch.put_cf(h, k, v),
            Op::Delete(_, k) => batch.delete_cf(h, k),
        }
    }
    db.write_opt(batch, opts).map_err(|e| e.to_string())
}
